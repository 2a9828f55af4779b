"""Server process handling on real processes: failed starts are reported with their log and
leave nothing running; stopping reaches a whole process tree and nothing else; a port in use
stops `make stack` before it starts anything."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from infra.local.process import (
    LOOPBACK,
    ServiceStartError,
    free_port,
    launch_server,
    pid_alive,
    started_at,
    stop_tree,
)
from infra.local.stack import StackConfig, load_stack, up


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_server_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    launch = launch_server(
        "crashing server",
        python("import sys; print('cannot open database'); sys.exit(4)"),
        tmp_path / "server.log",
        f"http://{LOOPBACK}:{free_port()}/health",
    )
    with pytest.raises(ServiceStartError, match="crashing server exited") as raised:
        launch.wait_healthy(timeout_s=30)
    assert "cannot open database" in str(raised.value)


def test_server_that_never_answers_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    launch = launch_server(
        "silent server",
        python("import time; time.sleep(60)"),
        tmp_path / "server.log",
        f"http://{LOOPBACK}:{free_port()}/health",
    )
    with pytest.raises(ServiceStartError, match="did not answer .* within 1 s"):
        launch.wait_healthy(timeout_s=1)
    assert not pid_alive(launch.pid)


def test_stop_tree_stops_children_and_spares_a_reused_pid(tmp_path: Path) -> None:
    parent_code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "time.sleep(60)"
    )
    launch = launch_server("parent", python(parent_code), tmp_path / "p.log", "http://unused")
    deadline = time.monotonic() + 30
    while not psutil.Process(launch.pid).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    (child,) = psutil.Process(launch.pid).children()

    stop_tree(launch.pid, expected_start=started_at(launch.pid) + 5.0)  # another process's
    assert pid_alive(launch.pid) and pid_alive(child.pid)

    stop_tree(launch.pid, grace_s=5)
    assert not pid_alive(launch.pid) and not pid_alive(child.pid)
    stop_tree(launch.pid)  # again: nothing to do, no error


def test_stack_refuses_a_port_in_use_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = StackConfig(state_dir=tmp_path, s3_port=0, mlflow_port=port, ray_dashboard_port=0)
        with pytest.raises(ServiceStartError, match=f"port {port} for the MLflow server is in use"):
            up(config)
    assert load_stack(tmp_path) is None
    assert not (tmp_path / "logs").exists()
