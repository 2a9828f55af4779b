"""Training on a real local Ray: 2-worker DDP on shards made by the pipeline, checkpoints on a
real S3 server on loopback, a worker killed mid-run, a resumed rerun, the model registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from jobs.train import main as train_main
from mmdiffusion import CoupledUNet
from mmdiffusion.config import CoupledUNetConfig
from tests.fixtures.mlflow_server import MlflowServer
from tests.fixtures.s3_server import S3Server
from tests.training.synthetic_shards import write_shards
from training.config import TrainConfig
from training.faults import CRASH_DRILL_VARIABLE, CrashDrill
from training.resolver import resolve_model
from training.run import TrainResult, train

BUCKET = "training-test"
MODEL_NAME = "ddp-tiny"
CRASH_STEP = 2


@dataclass
class DdpRun:
    config: TrainConfig
    result: TrainResult
    server: MlflowServer
    s3: S3Server
    marker: Path


@pytest.fixture(scope="module")
def ddp_run(
    ray_runtime,
    pipeline_shards: Path,
    s3_server: S3Server,
    mlflow_server: MlflowServer,
    tmp_path_factory: pytest.TempPathFactory,
):
    """Two CPU workers, tiny model at the real clip size; rank 1 is killed in the last step."""
    patch = pytest.MonkeyPatch()
    for name, value in s3_server.env().items():
        patch.setenv(name, value)
    marker = tmp_path_factory.mktemp("drill") / "rank1-killed"
    patch.setenv(CRASH_DRILL_VARIABLE, CrashDrill(step=CRASH_STEP, rank=1, marker=str(marker)).to_environment())
    config = TrainConfig(
        data=str(pipeline_shards),
        held_out_share=0.0,  # two videos under temporary paths: hold none out, or a worker may get none
        output=f"{s3_server.make_bucket(BUCKET)}/runs",
        model="tiny",
        workers=2,
        steps=CRASH_STEP,
        batch_size=1,
        log_every=1,
        checkpoint_every=1,
        run_name="ddp-tiny-run",
        register_as=MODEL_NAME,
        tracking_uri=mlflow_server.tracking_uri,
        max_failures=1,
    )
    try:
        yield DdpRun(config, train(config), mlflow_server, s3_server, marker)
    finally:
        patch.undo()


def metric_steps(server: MlflowServer, run_id: str, name: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(server.tracking_uri).get_metric_history(run_id, name)]


def test_two_worker_run_on_pipeline_shards_registers_the_ema_model(ddp_run: DdpRun) -> None:
    assert ddp_run.result.step == CRASH_STEP
    assert ddp_run.result.registered_version == "1"
    model = resolve_model(f"models:/{MODEL_NAME}/1", "coupled_unet")
    assert model.bundle.network == CoupledUNetConfig.named("tiny")
    assert (model.bundle.provenance.run_id, model.bundle.provenance.step) == (ddp_run.result.mlflow_run_id, CRASH_STEP)
    assert model.bundle.provenance.weights == "ema" and model.bundle.provenance.data_manifest_sha256 != "missing"
    run = MlflowClient(ddp_run.server.tracking_uri).get_run(ddp_run.result.mlflow_run_id)
    assert run.data.params["workers"] == "2" and run.data.params["data.manifest_sha256"] != "missing"
    assert len(run.data.params["git_commit"]) == 40
    for name in ("loss", "video_loss", "audio_loss", "lr", "grad_norm", "clips_per_second"):
        assert name in run.data.metrics
    assert any(name.startswith("loss_q") for name in run.data.metrics)
    artifacts = [item.path for item in MlflowClient(ddp_run.server.tracking_uri).list_artifacts(run.info.run_id)]
    assert "loss_curve.png" in artifacts


def test_checkpoints_live_on_the_s3_server(ddp_run: DdpRun) -> None:
    keys = [item["Key"] for item in ddp_run.s3.client().list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]]
    final = f"runs/ddp-tiny-run/checkpoint-{CRASH_STEP:08d}/"
    for name in (
        "model.safetensors",
        "ema.safetensors",
        "optimizer.pt",
        "scaler.pt",
        "state.json",
        "data-rank0000.json",
        "data-rank0001.json",
    ):
        assert final + name in keys
    assert "runs/ddp-tiny-run/loss_curve.png" in keys
    assert ddp_run.result.checkpoint == f"s3://{BUCKET}/{final.rstrip('/')}"


def test_no_credential_reaches_what_ray_records(ddp_run: DdpRun) -> None:
    """Ray logs every worker runtime env (runtime_env_agent.log, readable by all): the
    settings the workers were handed are there, the store's secret key is not (the workers
    had it from the environment their Ray runtime started with)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    recorded = "\n".join(path.read_text(errors="replace") for path in logs.rglob("*") if path.is_file())
    assert ddp_run.s3.endpoint_url in recorded
    assert ddp_run.s3.secret_access_key not in recorded


def test_killed_worker_comes_back_from_the_checkpoint(ddp_run: DdpRun) -> None:
    assert ddp_run.marker.exists()
    resumed = metric_steps(ddp_run.server, ddp_run.result.mlflow_run_id, "resumed_from_step")
    assert resumed == [(CRASH_STEP - 1, float(CRASH_STEP - 1))]
    logged = {step for step, _ in metric_steps(ddp_run.server, ddp_run.result.mlflow_run_id, "loss")}
    assert logged == set(range(1, CRASH_STEP + 1))


def test_rerun_with_the_same_name_resumes_the_step_count_and_the_mlflow_run(ddp_run: DdpRun, monkeypatch) -> None:
    for name, value in ddp_run.s3.env().items():
        monkeypatch.setenv(name, value)
    # Elastic this time (1 to 2 workers), and the data given relative to the working folder,
    # which Ray's workers do not share.
    data = Path(ddp_run.config.data)
    monkeypatch.chdir(data.parent)
    config = ddp_run.config.replace(data=data.name, steps=CRASH_STEP + 1, workers=(1, 2))
    result = train(config)
    assert result.mlflow_run_id == ddp_run.result.mlflow_run_id
    assert result.step == CRASH_STEP + 1 and result.registered_version == "2"
    resumed = metric_steps(ddp_run.server, result.mlflow_run_id, "resumed_from_step")
    assert (CRASH_STEP, float(CRASH_STEP)) in resumed
    assert max(step for step, _ in metric_steps(ddp_run.server, result.mlflow_run_id, "loss")) == CRASH_STEP + 1


def test_train_starts_from_a_released_checkpoint_named_on_the_command_line(
    ray_runtime, mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = {"image_size": 16, "audio_length": 2560}
    write_shards(tmp_path / "data", clips=1, clips_per_shard=1, frames=16, image_size=16, audio_length=2560)
    (tmp_path / "run.yaml").write_text("model: tiny\nmodel_overrides: {image_size: 16, audio_length: 2560}\n")
    torch.manual_seed(7)
    released = CoupledUNet(CoupledUNetConfig.named("tiny", **small))
    with torch.no_grad():
        for parameter in released.parameters():
            parameter.normal_(0.0, 0.05)  # nothing a fresh model would have
    path = tmp_path / "released.pt"
    torch.save({"state_dict": {f"module.{key}": value for key, value in released.state_dict().items()}}, path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    argv = [
        "--config",
        str(tmp_path / "run.yaml"),
        "--data",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "runs"),
    ]
    argv += [
        "--init-from",
        str(path),
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--lr",
        "1e-9",
        "--run-name",
        "from-released",
    ]
    assert train_main(argv) == 0
    trained = resolve_model(tmp_path / "runs" / "from-released", "coupled_unet", weights="raw")
    assert trained.bundle.provenance.initialised_from == str(path) and trained.bundle.provenance.step == 1
    for key, value in released.state_dict().items():  # one step of 1e-9 away from the released weights
        assert torch.allclose(trained.network.state_dict()[key], value, atol=1e-6), key
