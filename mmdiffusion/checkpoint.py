"""Loading released MM-Diffusion checkpoints, and saving and loading our own.

Our checkpoints are safetensors files whose metadata carries the model kind and its config as
JSON: loading one never unpickles anything. Released checkpoints are PyTorch state dicts and
are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

# kind -> (module, model class, config class). Imported lazily so each model stays optional.
MODEL_KINDS: dict[str, tuple[str, str, str]] = {
    "coupled_unet": ("mmdiffusion.unet", "CoupledUNet", "CoupledUNetConfig"),
    "sr_unet": ("mmdiffusion.sr_unet", "SuperResUNet", "SuperResUNetConfig"),
}
_CONFIG_MODULES = {"coupled_unet": "mmdiffusion.config", "sr_unet": "mmdiffusion.sr_unet"}


def _model_class(kind: str) -> type[nn.Module]:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODEL_KINDS)}")
    module, model_name, _ = MODEL_KINDS[kind]
    return getattr(importlib.import_module(module), model_name)


def _config_class(kind: str) -> type:
    return getattr(importlib.import_module(_CONFIG_MODULES[kind]), MODEL_KINDS[kind][2])


def model_kind(model_or_config: Any) -> str:
    """The registry kind of a model or a config object."""
    name = type(model_or_config).__name__
    for kind, (_, model_name, config_name) in MODEL_KINDS.items():
        if name in (model_name, config_name):
            return kind
    raise TypeError(f"{name} is not a model or config this library knows")


def build_model(config: Any) -> nn.Module:
    """The model a config object describes."""
    return _model_class(model_kind(config))(config)


def save_model(path: str | Path, model: nn.Module, extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write the model's weights and config to a safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config  # type: ignore[attr-defined]
    metadata = {"mmdiffusion_kind": model_kind(model), "config": json.dumps(config.to_dict())}
    metadata.update(extra_metadata or {})
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A model saved by `save_model`, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model checkpoint at {path}")
    metadata = read_metadata(path)
    if "mmdiffusion_kind" not in metadata or "config" not in metadata:
        raise ValueError(f"{path} is not an mmdiffusion checkpoint (its metadata lacks the model kind and config)")
    kind = metadata["mmdiffusion_kind"]
    config = _config_class(kind).from_dict(json.loads(metadata["config"]))
    model = _model_class(kind)(config)
    load_checked_state_dict(model, load_file(str(path)), source=str(path))
    return model.to(device).eval()


def load_checked_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a state dict after checking every key and shape, naming what does not fit."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:5])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:5])})")
    if mismatched:
        problems.append(f"{len(mismatched)} mis-shaped tensors ({'; '.join(mismatched[:5])})")
    if problems:
        raise ValueError(f"checkpoint {source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(dict(state_dict), strict=True)


def _unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the usual wrappers (`state_dict`, `model`, `ema`), and drop
    the `module.` prefix that DDP adds."""
    for key in ("state_dict", "model", "ema"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_reference_checkpoint(path_or_state_dict: str | Path | Mapping[str, torch.Tensor], config: Any) -> nn.Module:
    """A released MM-Diffusion model (coupled U-Net or SR U-Net) in eval mode.

    `config` is a `CoupledUNetConfig`/`SuperResUNetConfig`, or the released code's constructor
    arguments as a dict (for the coupled U-Net).
    """
    if isinstance(config, Mapping):
        from mmdiffusion.config import CoupledUNetConfig

        config = CoupledUNetConfig.from_reference(dict(config))
    if isinstance(path_or_state_dict, (str, Path)):
        source = str(path_or_state_dict)
        if not Path(source).is_file():
            raise FileNotFoundError(f"no checkpoint at {source}")
        if source.endswith(".safetensors"):
            raw: Any = load_file(source)
        else:
            raw = torch.load(source, map_location="cpu", weights_only=True)
    else:
        source, raw = "the given state dict", path_or_state_dict
    model = build_model(config)
    load_checked_state_dict(model, _unwrap_state_dict(raw, source), source)
    return model.eval()
