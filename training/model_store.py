"""MMDiffusion models as MLflow models: log them in a run, load them back from any model URI.

The logged model is an MLflow `python_function` model built with a *loader module* (this one):
its only data file is the safetensors checkpoint written by `mmdiffusion.checkpoint`, which
carries the network's config. Loading therefore never unpickles anything, unlike
`mlflow.pytorch` or a pickled `PythonModel`.

URIs accepted by `load_model`: a local checkpoint file, a local MLflow model folder,
`runs:/RUN_ID/NAME`, `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `models:/m-<model id>`,
and any artifact URI MLflow can download (`s3://...`).
"""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mmdiffusion import checkpoint

CHECKPOINT_FILE = "model.safetensors"
"""Name of the weights file inside a logged model's `data` folder."""

MLMODEL_FILE = "MLmodel"


def log_model(
    model: torch.nn.Module,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    tags: dict[str, Any] | None = None,
) -> str:
    """Log `model` in the active MLflow run (one is started if none is) and return its URI.

    With `registered_model_name`, a new version of that registered model is created too.
    """
    import mlflow

    with tempfile.TemporaryDirectory() as staging:
        weights = Path(staging) / CHECKPOINT_FILE
        checkpoint.save_model(weights, model)
        info = mlflow.pyfunc.log_model(
            name=name,
            loader_module=__name__,
            data_path=str(weights),
            registered_model_name=registered_model_name,
            # Listing requirements explicitly skips MLflow's inference, which loads the model
            # in a subprocess just to see what it imports.
            pip_requirements=_pip_requirements(),
            tags=tags,
        )
    return info.model_uri


def load_model(uri: str | Path, device: str = "cpu") -> torch.nn.Module:
    """Load the network behind `uri` in eval mode on `device` (see the module doc for URIs)."""
    local = Path(uri)
    if local.exists():
        return checkpoint.load_model(_checkpoint_file(local, uri), device=device)
    import mlflow

    with tempfile.TemporaryDirectory(prefix="mmdiff-model-") as staging:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=str(uri), dst_path=staging))
        except Exception as error:  # MLflow raises several types for "not there"
            raise FileNotFoundError(f"model {uri!r}: cannot be downloaded from MLflow ({error})") from error
        return checkpoint.load_model(_checkpoint_file(path, uri), device=device)


def _checkpoint_file(path: Path, uri: str | Path) -> Path:
    """The safetensors file for a checkpoint file or an MLflow model folder at `path`."""
    if path.is_file():
        return path
    mlmodel = path / MLMODEL_FILE
    if not mlmodel.is_file():
        raise FileNotFoundError(
            f"model {uri!r}: {path} is neither a checkpoint file nor an MLflow model folder (no MLmodel)"
        )
    flavor = (yaml.safe_load(mlmodel.read_text()).get("flavors") or {}).get("python_function") or {}
    if flavor.get("loader_module") != __name__ or "data" not in flavor:
        raise ValueError(f"model {uri!r}: not an mmdiffusion model (its MLmodel has no {__name__} loader)")
    data = path / flavor["data"]
    return data if data.is_file() else data / CHECKPOINT_FILE


def _pip_requirements() -> list[str]:
    try:
        return [f"mmdiffusion=={metadata.version('mmdiffusion')}"]
    except metadata.PackageNotFoundError:
        return ["mmdiffusion"]


class _DenoiserPyfunc:
    """What `mlflow.pyfunc.load_model` returns: one denoising step of the loaded network.

    Input: a dict of arrays `video` [B, F, C, H, W], `audio` [B, 1, L] and `timesteps` [B];
    output: the predicted noise, `{"video": ..., "audio": ...}`.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def predict(
        self, model_input: dict[str, np.ndarray], params: dict[str, Any] | None = None
    ) -> dict[str, np.ndarray]:
        video = torch.as_tensor(np.asarray(model_input["video"]), dtype=torch.float32)
        audio = torch.as_tensor(np.asarray(model_input["audio"]), dtype=torch.float32)
        timesteps = torch.as_tensor(np.asarray(model_input["timesteps"]), dtype=torch.long)
        video_eps, audio_eps = self.model(video, audio, timesteps)
        return {"video": video_eps.numpy(), "audio": audio_eps.numpy()}


def _load_pyfunc(data_path: str) -> _DenoiserPyfunc:
    """Entry point MLflow calls for `mlflow.pyfunc.load_model` (the loader-module protocol)."""
    path = Path(data_path)
    return _DenoiserPyfunc(checkpoint.load_model(path if path.is_file() else path / CHECKPOINT_FILE))
