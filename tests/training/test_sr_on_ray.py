"""`mmdiff train-sr` on a real local Ray: 2 Ray Train workers on the 256×256 frames of the
pipeline's `--sr-size 256` shards, checkpointed, rerun to resume in the same MLflow run, and
the EMA model registered, as the base model is."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from jobs.train_sr import main as train_sr_main
from mmdiffusion.sr_unet import SuperResUNetConfig
from tests.fixtures.mlflow_server import MlflowServer
from training.resolver import resolve_model
from training.session import checkpoint_name
from training.state import EMA_FILE, MODEL_FILE, position_file, read_state

MODEL_NAME = "sr-on-ray"


def test_train_sr_runs_on_two_ray_workers_resumes_and_registers(
    ray_runtime,
    pipeline_shards: Path,
    mlflow_server: MlflowServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    argv = ["--config", "tiny", "--data", str(pipeline_shards), "--output", str(tmp_path / "runs")]
    argv += ["--workers", "2", "--batch-size", "1", "--checkpoint-every", "1", "--log-every", "1"]
    argv += ["--held-out-share", "0", "--run-name", "sr-ray", "--register-as", MODEL_NAME, "--experiment", "sr-ray"]
    assert train_sr_main([*argv, "--steps", "1"]) == 0, capsys.readouterr().err
    assert train_sr_main([*argv, "--steps", "2"]) == 0, capsys.readouterr().err

    run_folder = tmp_path / "runs" / "sr-ray"
    for step in (1, 2):
        folder = run_folder / checkpoint_name(step)
        state = read_state(folder)
        assert (state.step, state.world_size) == (step, 2)
        for name in (MODEL_FILE, EMA_FILE, position_file(0), position_file(1)):
            assert (folder / name).is_file(), folder / name
    client = MlflowClient(mlflow_server.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("sr-ray").experiment_id])
    history = {
        name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
        for name in ("loss", "vb", "resumed_from_step")
    }
    assert [step for step, _ in history["loss"]] == [1, 2] and [step for step, _ in history["vb"]] == [1, 2]
    assert history["resumed_from_step"] == [(1, 1.0)]
    assert run.data.params["task"] == "sr" and run.data.params["workers"] == "2"
    for version, step in (("1", 1), ("2", 2)):
        model = resolve_model(f"models:/{MODEL_NAME}/{version}", "sr_unet")
        assert model.bundle.network == SuperResUNetConfig.named("tiny") and model.bundle.diffusion.learn_sigma
        assert (model.bundle.provenance.run_id, model.bundle.provenance.step) == (run.info.run_id, step)
        assert model.bundle.provenance.weights == "ema"
