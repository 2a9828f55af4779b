"""Lost Ray workers and nodes: a decoding worker killed mid-unit, and a second Ray node of the
cluster killed mid-run; every clip still ends up in the shards exactly once."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from infra.local.process import stop_tree
from infra.local.ray_head import RayHeadConfig, RayHeadPorts, start_ray_head, worker_node_port_flags
from pipeline.run import PreprocessConfig, preprocess
from pipeline.storage import TEMPORARY_PREFIX
from tests.fixtures.media import MediaSet
from tests.pipeline.test_preprocess import CLIPS_BEFORE_DECODE_ERROR, CLIPS_PER_GOOD_FILE, read_shards

COPIES = 3


def expected_clips(media_set: MediaSet) -> int:
    return CLIPS_PER_GOOD_FILE * len(media_set.good) + CLIPS_BEFORE_DECODE_ERROR


def worker_writing_a_shard(shards: Path) -> psutil.Process | None:
    """The Ray worker process that has a shard of `shards` open for writing (mid-unit)."""
    if not shards.is_dir() or not any(path.name.startswith(TEMPORARY_PREFIX) for path in shards.iterdir()):
        return None
    for process in psutil.process_iter(["cmdline"]):
        if not any("ray::" in part or "default_worker" in part for part in process.info["cmdline"] or []):
            continue
        try:
            if any(Path(item.path).parent == shards for item in process.open_files()):
                return process
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def run_while(action: Callable[[], bool], timeout_s: float = 120.0) -> threading.Thread:
    """Call `action` every 20 ms in a thread until it returns True (or the timeout)."""

    def loop() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not action():
            time.sleep(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_a_worker_killed_mid_unit_is_retried_and_every_clip_is_written_once(
    ray_runtime, media_set: MediaSet, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    killed: list[int] = []

    def kill_the_worker_writing_a_shard() -> bool:
        worker = worker_writing_a_shard(output / "shards")
        if worker is None:
            return False
        os.kill(worker.pid, signal.SIGKILL)
        killed.append(worker.pid)
        return True

    watcher = run_while(kill_the_worker_writing_a_shard)
    config = PreprocessConfig(input=str(media_set.folder), output=str(output), workers=2, videos_per_shard=5)
    stats = preprocess(config)
    watcher.join()
    assert killed and not psutil.pid_exists(killed[0]), "a worker must have been killed mid-unit"
    assert stats.unfinished == () and stats.clips_total == expected_clips(media_set)
    keys = [sample["__key__"] for sample in read_shards(output)]
    assert len(keys) == len(set(keys)) == expected_clips(media_set)
    assert not [path for path in (output / "shards").iterdir() if path.name.startswith(TEMPORARY_PREFIX)]


LOOPBACK_WORKER_NODE = """
import sys
import ray._private.services as services
from ray.scripts.scripts import main

services.resolve_ip_for_localhost = lambda host: host
services.get_node_ip_address = lambda address=None: "127.0.0.1"
sys.argv[0] = "ray"
sys.exit(main())
"""
"""`ray start` for a second node on this machine that stays on loopback. Ray's single-machine
mode (infra.local's, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) refuses a second node, and its
cluster mode moves a loopback node IP to the machine's address: this runs the cluster-mode
CLI with the node IP kept at 127.0.0.1 (the raylet and its workers then bind loopback)."""


def _node_command(config: RayHeadConfig, num_cpus: int) -> list[str]:
    """A second node of the head's cluster on this machine, every port explicit."""
    return [
        sys.executable,
        "-c",
        LOOPBACK_WORKER_NODE,
        "start",
        f"--address={config.gcs_address}",
        "--block",
        "--disable-usage-stats",
        f"--node-ip-address={config.host}",
        f"--num-cpus={num_cpus}",
        '--resources={"second_node": 1}',
        *worker_node_port_flags(),
    ]


def test_a_second_node_killed_mid_run_loses_no_clip_and_duplicates_none(media_set: MediaSet, tmp_path: Path) -> None:
    temp_dir = Path(tempfile.mkdtemp(prefix="rk-", dir="/tmp"))
    config = RayHeadConfig(ports=RayHeadPorts.pick_free(), temp_dir=temp_dir, num_cpus=1)
    fast_death = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"}
    head = start_ray_head(config, tmp_path / "head.log", extra_env=fast_death)
    env = {**os.environ, **config.client_env(), **fast_death, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("RAY_ADDRESS")
    node_env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
    with (tmp_path / "node.log").open("wb") as node_log:
        node = subprocess.Popen(
            _node_command(config, num_cpus=2),
            env=node_env,
            stdout=node_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    corpus = tmp_path / "corpus"  # every file three times: units enough for both nodes to get some
    for copy in range(COPIES):
        shutil.copytree(media_set.folder, corpus / f"copy{copy}")
    output = tmp_path / "out"
    job = [sys.executable, "-m", "jobs.preprocess", "--input", str(corpus), "--output", str(output)]
    job += ["--workers", "3", "--videos-per-shard", "1"]
    job_env = {**env, "RAY_ADDRESS": config.gcs_address}
    try:
        wait_for_nodes(job_env, 2)
        killed: list[int] = []

        def kill_the_node_once_it_runs_a_unit() -> bool:
            tree = psutil.Process(node.pid).children(recursive=True)
            if not any(running_a_unit(process) for process in tree):
                return False
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            for process in tree:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            killed.append(node.pid)
            return True

        watcher = run_while(kill_the_node_once_it_runs_a_unit, timeout_s=240)
        first = subprocess.run(job, env=job_env, capture_output=True, text=True, timeout=300)
        watcher.join()
        assert killed, f"the second node never ran a unit:\n{first.stderr[-3000:]}"
        if first.returncode != 0:  # units Ray could not place again are left for a rerun
            assert first.returncode == 1 and "rerun the same command" in first.stderr, first.stderr[-3000:]
            rerun = subprocess.run(job, env=job_env, capture_output=True, text=True, timeout=300)
            assert rerun.returncode == 0, rerun.stderr[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        node.wait()
        stop_tree(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    keys = [sample["__key__"] for sample in read_shards(output)]
    assert len(keys) == len(set(keys)) == COPIES * expected_clips(media_set)


def running_a_unit(process: psutil.Process) -> bool:
    """A Ray worker in the middle of a decoding task: Ray titles a worker `ray::IDLE` between
    tasks and after the task it runs (`ray::Map(run_unit)`...) while it runs one. (A unit is over
    in well under a second here, too quick to catch reliably by its open shard file.)"""
    with contextlib.suppress(psutil.Error):
        title = " ".join(process.cmdline())
        return title.startswith("ray::") and "run_unit" in title
    return False


def wait_for_nodes(env: dict[str, str], count: int, timeout_s: float = 120.0) -> None:
    """Until the cluster has `count` live nodes (asked from a separate driver process)."""
    probe = (
        "import ray, sys, time\n"
        "ray.init(log_to_driver=False)\n"
        f"deadline = time.monotonic() + {timeout_s}\n"
        f"while sum(n['Alive'] for n in ray.nodes()) < {count} and time.monotonic() < deadline:\n"
        "    time.sleep(0.5)\n"
        f"sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= {count} else 1)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=timeout_s + 60
    )
    assert result.returncode == 0, f"the second Ray node did not join:\n{result.stderr[-3000:]}"
