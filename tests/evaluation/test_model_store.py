"""Models travel through MLflow as safetensors checkpoints and come back by every URI form."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from mmdiffusion import save_model
from tests.evaluation.conftest import micro_model, same_weights
from training.model_store import log_model
from training.resolver import resolve_model


def test_logged_model_loads_back_by_run_version_alias_and_model_id(tracking_uri: str, model_name: str) -> None:
    model = micro_model(seed=0)
    with mlflow.start_run() as run:
        uri = log_model(model, registered_model_name=model_name, tags={"purpose": "test"})
    mlflow.MlflowClient().set_registered_model_alias(model_name, "champion", "1")

    for form in (uri, f"runs:/{run.info.run_id}/model", f"models:/{model_name}/1", f"models:/{model_name}@champion"):
        loaded = resolve_model(form, "coupled_unet").network
        assert same_weights(model, loaded), form
        assert not loaded.training


def test_logged_model_holds_only_safetensors_and_serves_through_pyfunc(
    embedded_tracking_uri: str, model_name: str
) -> None:
    model = micro_model(seed=1)
    with mlflow.start_run():
        log_model(model, registered_model_name=model_name)
    local = mlflow.artifacts.download_artifacts(f"models:/{model_name}/1")
    files = {path.name for path in Path(local).rglob("*") if path.is_file()}
    assert "model.safetensors" in files
    assert not {name for name in files if name.endswith((".pkl", ".pickle", ".pt", ".pth"))}

    served = mlflow.pyfunc.load_model(f"models:/{model_name}/1")
    config = model.config
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(1, config.frames, 3, config.image_size, config.image_size, generator=generator)
    audio = torch.randn(1, 1, config.audio_length, generator=generator)
    output = served.predict({"video": video.numpy(), "audio": audio.numpy(), "timesteps": np.array([10])})
    assert output["video"].shape == tuple(video.shape) and output["audio"].shape == tuple(audio.shape)


def test_local_checkpoint_path_loads_without_mlflow(tmp_path) -> None:
    model = micro_model(seed=2)
    path = save_model(tmp_path / "model.safetensors", model)
    assert same_weights(model, resolve_model(path, "coupled_unet").network)


def test_unknown_model_uri_names_the_uri(tracking_uri: str) -> None:
    with pytest.raises(FileNotFoundError, match="models:/no-such-model@champion"):
        resolve_model("models:/no-such-model@champion", "coupled_unet")
