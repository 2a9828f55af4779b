"""The local stack for real: SeaweedFS S3, an MLflow server and a Ray head started by
`infra.local.stack`, a job sent with the `ray job submit` CLI, then a clean stop.

The stack runs on free loopback ports with its own state folder and Ray temp dir, apart from
the session `ray_runtime` (which it must neither join nor stop).
"""

from __future__ import annotations

import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from infra.local.process import http_ok, pid_alive
from infra.local.stack import MLFLOW_BUCKET, StackConfig, StackState, down, load_stack, status, up
from infra.local.submit import ray_job_submit


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
    latest = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    gcs_port = stack.ray_gcs_address.rsplit(":", 1)[1]
    assert not latest.exists() or not latest.read_text().strip().endswith(f":{gcs_port}")


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


def test_down_stops_everything_and_is_idempotent(stack: StackState, stack_dir: Path) -> None:
    assert sorted(down(stack_dir)) == ["mlflow", "ray-head", "seaweedfs"]
    assert not any(pid_alive(service.pid) for service in stack.services)
    assert not http_ok(f"{stack.s3_endpoint_url}/healthz")
    assert load_stack(stack_dir) is None
    assert down(stack_dir) == []
