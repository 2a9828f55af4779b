"""On a Ray cluster of more than one node, local `--data`/`--output` paths (and a local MLflow
store) are refused before anything starts, unless declared shared; a second Ray node joins
the session's runtime on this machine for the test and is gone afterwards. It stays on
loopback, as infra/local/ keeps Ray: `ray start` in cluster mode replaces 127.0.0.1 by the
machine's routable address (and the single-machine mode infra/local/ uses refuses a second
node), but keeps any other loopback address, so the node is 127.0.0.2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.ray_head import worker_node_port_flags
from jobs.train import main as train_main
from tests.training.synthetic_shards import write_shards
from training.config import TrainConfig
from training.run import check_paths_reach_every_node, ray_node_count

NODE_START_SECONDS = 120
NODE_IP = "127.0.0.2"


def _wait_for_nodes(count: int, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + NODE_START_SECONDS
    while ray_node_count() != count:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the second Ray node exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Ray cluster did not reach {count} nodes in {NODE_START_SECONDS} s")
        time.sleep(0.5)


@pytest.fixture
def second_node(ray_runtime, tmp_path: Path) -> Iterator[None]:
    """A node without CPUs (nothing of the suite runs there) joined to the session's Ray."""
    import ray

    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--block",
        "--disable-usage-stats",
        f"--address={ray.get_runtime_context().gcs_address}",
        f"--node-ip-address={NODE_IP}",
        "--num-cpus=0",
        "--num-gpus=0",
        *worker_node_port_flags(),
    ]
    with (tmp_path / "second-node.log").open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_nodes(2, process)
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the group this fixture started: the node's processes
            process.wait(timeout=60)
        _wait_for_nodes(1)  # later tests see one node again


def test_local_paths_are_refused_on_a_cluster_of_two_nodes(
    second_node, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import ray

    assert sorted(node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"])[0] == NODE_IP
    write_shards(tmp_path / "data", clips=1, clips_per_shard=1, frames=16, image_size=16, audio_length=2560)
    argv = ["--data", str(tmp_path / "data"), "--output", str(tmp_path / "runs"), "--run-name", "two-nodes"]
    assert train_main([*argv, "--steps", "1"]) == 2
    error = capsys.readouterr().err
    assert f"the Ray cluster has 2 nodes, and --data {tmp_path / 'data'}, --output {tmp_path / 'runs'}" in error
    assert "use shared storage or s3:// URIs" in error and "--shared-filesystem" in error
    assert not (tmp_path / "runs").exists()  # refused before any worker or run folder


def test_shared_or_remote_paths_pass_and_one_node_allows_local_ones(tmp_path: Path) -> None:
    local = TrainConfig(data=str(tmp_path / "data"), output=str(tmp_path / "runs"))
    server = "http://127.0.0.1:5000"
    check_paths_reach_every_node(local, server, nodes=1)
    check_paths_reach_every_node(local.replace(shared_filesystem=True), server, nodes=2)
    check_paths_reach_every_node(local.replace(data="s3://bucket/data", output="s3://bucket/runs"), server, nodes=4)
    with pytest.raises(ValueError, match=r"and the MLflow store sqlite:///mlflow.db \(MLFLOW_TRACKING_URI\) is local"):
        check_paths_reach_every_node(
            local.replace(data="s3://bucket/data", output="s3://bucket/runs"), "sqlite:///mlflow.db", nodes=2
        )
    with pytest.raises(ValueError, match=r"and --init-from /weights/base.pt is local"):
        check_paths_reach_every_node(
            local.replace(data="s3://b/d", output="s3://b/r", init_from="/weights/base.pt"), server, nodes=2
        )
