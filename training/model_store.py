"""MMDiffusion models as MLflow models: logged in a run, read back by `training.resolver`.

The logged model is an MLflow `python_function` model built with a *loader module* (this one):
its only data file is the safetensors checkpoint written by `mmdiffusion.checkpoint`, which
carries the model bundle (network config, diffusion, provenance); the MLmodel file repeats the
bundle as metadata for people browsing the registry. Loading therefore never unpickles
anything, unlike `mlflow.pytorch` or a pickled `PythonModel`.
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
from mmdiffusion.bundle import ModelBundle

CHECKPOINT_FILE = "model.safetensors"
"""Name of the weights file inside a logged model's `data` folder."""
MLMODEL_FILE = "MLmodel"
BUNDLE_METADATA_KEY = "mmdiffusion_bundle"


def log_model(
    model: torch.nn.Module,
    bundle: ModelBundle | None = None,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    tags: dict[str, Any] | None = None,
) -> str:
    """Log `model` with its bundle in the active MLflow run (one is started if none is) and
    return its URI. Without `bundle`, as `mmdiffusion.checkpoint.save_model` does.

    With `registered_model_name`, a new version of that registered model is created too.
    """
    import mlflow

    bundle = bundle or ModelBundle.describe(model.config)  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as staging:
        weights = Path(staging) / CHECKPOINT_FILE
        checkpoint.save_model(weights, model, bundle)
        info = mlflow.pyfunc.log_model(
            name=name,
            loader_module=__name__,
            data_path=str(weights),
            registered_model_name=registered_model_name,
            # Listing requirements explicitly skips MLflow's inference, which loads the model
            # in a subprocess just to see what it imports.
            pip_requirements=_pip_requirements(),
            metadata={BUNDLE_METADATA_KEY: bundle.to_dict()},
            tags=tags,
        )
    return info.model_uri


def weights_in_model_folder(mlmodel_text: str, source: str) -> tuple[str, str]:
    """Where the weights of an MLflow model folder can be, relative to it, from its MLmodel
    file: its `data` path, or the checkpoint file inside that folder."""
    flavor = (yaml.safe_load(mlmodel_text).get("flavors") or {}).get("python_function") or {}
    if flavor.get("loader_module") != __name__ or "data" not in flavor:
        raise ValueError(f"model {source!r}: not an mmdiffusion model (its MLmodel has no {__name__} loader)")
    return flavor["data"], f"{flavor['data'].rstrip('/')}/{CHECKPOINT_FILE}"


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
