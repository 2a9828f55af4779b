"""The local stack for real: SeaweedFS S3, an MLflow server and a Ray head started by
`infra.local.stack`, a job sent with the `ray job submit` CLI, then a clean stop.

The stack runs on free loopback ports with its own state folder and Ray temp dir, apart from
the session `ray_runtime` (which it must neither join nor stop).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import psutil
import pytest

from infra.local.process import http_ok, pid_alive
from infra.local.stack import MLFLOW_BUCKET, StackConfig, StackState, down, load_stack, status, up
from infra.local.submit import RAY_CLI, ray_job_submit
from tests.fixtures.ray_runtime import LATEST_CLUSTER_FILE


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="module")
def stack(stack_dir: Path) -> Iterator[StackState]:
    config = StackConfig(
        state_dir=stack_dir,
        s3_port=0,
        mlflow_port=0,
        ray_dashboard_port=0,
        ray_num_cpus=1,
        ray_object_store_bytes=100 * 1024**2,
    )
    state = up(config)
    try:
        yield state
    finally:
        down(stack_dir)


def submit(state: StackState, working_dir: Path | None, *entrypoint: str) -> subprocess.CompletedProcess:
    return ray_job_submit(state, entrypoint, working_dir, capture_output=True, timeout_s=120)


def test_stack_is_healthy_and_up_is_idempotent(stack: StackState, stack_dir: Path) -> None:
    assert status(stack_dir) == {"seaweedfs": True, "mlflow": True, "ray-head": True}
    again = up(StackConfig(state_dir=stack_dir, s3_port=0, mlflow_port=0, ray_dashboard_port=0))
    assert [s.pid for s in again.services] == [s.pid for s in stack.services]
    env_file = (stack_dir / "env").read_text()
    assert f"export RAY_ADDRESS={stack.ray_dashboard_url}" in env_file
    assert f"export MLFLOW_TRACKING_URI={stack.mlflow_tracking_uri}" in env_file
    assert f"export AWS_ENDPOINT_URL={stack.s3_endpoint_url}" in env_file
    assert oct((stack_dir / "env").stat().st_mode & 0o777) == "0o600"


def test_stack_head_is_not_what_a_plain_ray_init_finds(stack: StackState) -> None:
    """`ray.init()` without an address joins the latest cluster recorded in the default temp
    dir; the stack's head records itself in its own, so other local runtimes stay apart."""
    gcs_port = stack.ray_gcs_address.rsplit(":", 1)[1]
    assert not LATEST_CLUSTER_FILE.exists() or not LATEST_CLUSTER_FILE.read_text().strip().endswith(f":{gcs_port}")


def test_ray_job_submit_runs_on_the_head_with_store_and_mlflow(stack: StackState, tmp_path: Path) -> None:
    """One submitted job checks the three wirings: Ray cluster, S3 store, MLflow server."""
    (tmp_path / "probe_job.py").write_text(
        textwrap.dedent(
            """
            import pathlib, tempfile
            import boto3, mlflow, ray

            ray.init()
            print("resources", ray.cluster_resources())
            boto3.client("s3").put_object(Bucket="mmdiff", Key="probe/hello.txt", Body=b"hi")
            mlflow.set_experiment("stack-probe")
            with mlflow.start_run() as run:
                mlflow.log_metric("loss", 0.5)
                note = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
                note.write_text("artifact through the server")
                mlflow.log_artifact(str(note))
                print("RUN_ID", run.info.run_id)
            """
        )
    )
    result = submit(stack, tmp_path, "python", "probe_job.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resources {" in result.stdout and "'CPU': 1.0" in result.stdout, result.stdout
    assert "succeeded" in result.stdout + result.stderr
    run_id = result.stdout.split("RUN_ID ")[1].split()[0]

    s3 = boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint_url,
        aws_access_key_id=stack.access_key,
        aws_secret_access_key=stack.secret_key,
        region_name="us-east-1",
    )
    assert s3.get_object(Bucket="mmdiff", Key="probe/hello.txt")["Body"].read() == b"hi"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=MLFLOW_BUCKET)["Contents"]]
    assert any(key.endswith(f"{run_id}/artifacts/note.txt") for key in keys), keys


def test_failed_job_makes_ray_job_submit_fail(stack: StackState) -> None:
    """Also: without a working dir, the job runs the project installed in the environment."""
    result = submit(stack, None, "python", "-c", "import jobs.cli; raise SystemExit(3)")
    assert result.returncode != 0
    assert "exit code 3" in result.stdout + result.stderr


def test_job_api_refuses_a_wrong_token(stack: StackState) -> None:
    url = f"{stack.ray_dashboard_url}/api/jobs/"
    assert not http_ok(url, {"Authorization": "Bearer not-the-token"})
    assert http_ok(url, {"Authorization": f"Bearer {stack.ray_auth_token}"})


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str
    ip: str
    port: int


def stack_listeners(state: StackState) -> list[Listener]:
    """Every listening TCP socket and bound, unconnected UDP socket of the stack's processes
    and their descendants (Ray's agents, workers and job drivers included)."""
    found = []
    for service in state.services:
        root = psutil.Process(service.pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                name, connections = process.name(), process.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            found += [
                Listener(process.pid, name, c.laddr.ip, c.laddr.port)
                for c in connections
                if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)
            ]
    return found


def test_no_process_of_the_stack_listens_beyond_loopback(stack: StackState, tmp_path: Path) -> None:
    """Read while a job's task runs, so that a job driver and a Ray worker listen too."""
    started, release = tmp_path / "task-started", tmp_path / "release"
    code = (
        "import pathlib, time, ray\n"
        "ray.init()\n"
        "@ray.remote\n"
        "def hold():\n"
        f"    pathlib.Path({str(started)!r}).touch()\n"
        f"    while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.1)\n"
        "ray.get(hold.remote())\n"
    )
    job = subprocess.Popen(
        [RAY_CLI, "job", "submit", "--", sys.executable, "-c", code],
        env={**os.environ, **stack.client_env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not started.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.exists(), "the job's task did not start"
        listeners = stack_listeners(stack)
    finally:
        release.touch()
        output, _ = job.communicate(timeout=60)
    assert job.returncode == 0, output
    exposed = [listener for listener in listeners if not is_loopback(listener.ip)]
    assert not exposed, exposed
    ports = {listener.port for listener in listeners}
    addresses = [stack.ray_gcs_address, stack.ray_dashboard_url, stack.mlflow_tracking_uri, stack.s3_endpoint_url]
    assert {int(address.rstrip("/").rsplit(":", 1)[1]) for address in addresses} <= ports
    names = {listener.process for listener in listeners}
    assert {"gcs_server", "raylet"} <= names and any(name.startswith("ray::hold") for name in names), names


def test_seaweedfs_logs_only_into_the_state_folder(stack: StackState, stack_dir: Path) -> None:
    """SeaweedFS writes `weed.<host>.<user>.log.<level>.<time>.<pid>` files into /tmp unless
    told otherwise; the stack's goes only into its log under the state folder, owner-only."""
    seaweed = next(service for service in stack.services if service.name == "seaweedfs")
    temp_dirs = {Path(tempfile.gettempdir()), Path("/tmp")}
    assert not [path for folder in temp_dirs for path in folder.glob(f"weed.*.{seaweed.pid}")]
    log = Path(seaweed.log_path)
    assert log.parent == stack_dir.resolve() / "logs"
    assert "Start Seaweed Master" in log.read_text()
    for service in stack.services:
        assert Path(service.log_path).stat().st_mode & 0o077 == 0, service.log_path


def test_down_stops_everything_and_is_idempotent(stack: StackState, stack_dir: Path) -> None:
    assert sorted(down(stack_dir)) == ["mlflow", "ray-head", "seaweedfs"]
    assert not any(pid_alive(service.pid) for service in stack.services)
    assert not http_ok(f"{stack.s3_endpoint_url}/healthz")
    assert load_stack(stack_dir) is None
    assert down(stack_dir) == []
