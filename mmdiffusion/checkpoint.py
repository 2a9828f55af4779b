"""Saving and loading our models, and loading released MM-Diffusion checkpoints.

Our checkpoints are safetensors files whose metadata carries the model bundle
(`mmdiffusion.bundle`: kind, network config, diffusion, provenance) as JSON: loading one never
unpickles anything. Released checkpoints are PyTorch state dicts and are read with
`torch.load(weights_only=True)`. `load_local_model` takes either kind of file and is the
library's own model resolver; `training.resolver` adds folders and MLflow URIs on top of it.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from mmdiffusion.bundle import (
    KIND_KEY,
    KIND_NAMES,
    BundledModel,
    ModelBundle,
    ModelKind,
    Provenance,
    build_model,
    config_class,
)

RELEASED_SUFFIXES = (".pt", ".pth")
"""Released checkpoints are PyTorch state dicts; ours are safetensors files."""
SAFETENSORS_SUFFIX = ".safetensors"


def save_model(path: str | Path, model: nn.Module, bundle: ModelBundle | None = None) -> Path:
    """Write the model's weights and its bundle to a safetensors file (atomically).

    Without `bundle`, the network's config with the default diffusion is written, marked as
    such in the provenance (`ModelBundle.describe`).
    """
    path = Path(path)
    bundle = bundle or ModelBundle.describe(model.config)  # type: ignore[attr-defined]
    BundledModel(model, bundle, str(path))  # the bundle must describe this network
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=bundle.to_metadata())
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None


def read_bundle(path: str | Path, source: str | None = None) -> ModelBundle:
    """The bundle of a file written by `save_model`, without reading its weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model checkpoint at {source or path}")
    return ModelBundle.from_metadata(read_metadata(path), source or str(path))


def load_bundled(path: str | Path, device: str | torch.device = "cpu", source: str | None = None) -> BundledModel:
    """A model saved by `save_model` with its bundle, in eval mode. `source` names the file in
    messages (for a downloaded copy: where it came from)."""
    bundle = read_bundle(path, source)
    model = bundle.build_network()
    load_checked_state_dict(model, load_file(str(path)), source=source or str(path))
    return BundledModel(model.to(device).eval(), bundle, source or str(path))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The network of a file saved by `save_model`, in eval mode (`load_bundled` also gives
    its bundle)."""
    return load_bundled(path, device).network


def load_released(
    path: str | Path, config: Any, device: str | torch.device = "cpu", source: str | None = None
) -> BundledModel:
    """A released checkpoint (`load_reference_checkpoint`) with its bundle: the default
    diffusion of its kind (the released one) and `released_from` in the provenance."""
    source = source or str(path)
    model = load_reference_checkpoint(path, config)
    bundle = ModelBundle.describe(model.config, None, Provenance(released_from=source))  # type: ignore[attr-defined]
    return BundledModel(model.to(device), bundle, source)


def load_local_model(
    path: str | Path,
    kind: ModelKind | None,
    *,
    released_config: str | Any = "paper",
    device: str | torch.device = "cpu",
    source: str | None = None,
) -> BundledModel:
    """A model from a local file: ours (`.safetensors` with a bundle) or a released state dict
    (`.pt`/`.pth`, or a `.safetensors` file without our metadata), which needs `kind` and its
    config (a preset name of that kind's config class, or a config object). With `kind`, a
    model of another kind is an error that names both."""
    path = Path(path)
    source = source or str(path)
    if not path.is_file():
        raise FileNotFoundError(f"model {source!r}: no such file")
    if path.suffix not in (*RELEASED_SUFFIXES, SAFETENSORS_SUFFIX):
        raise ValueError(
            f"model {source!r}: neither one of ours ({SAFETENSORS_SUFFIX}) nor a released checkpoint "
            f"({', '.join(RELEASED_SUFFIXES)}, or a {SAFETENSORS_SUFFIX} state dict)"
        )
    if path.suffix == SAFETENSORS_SUFFIX and KIND_KEY in read_metadata(path):
        if kind is not None:
            check_kind(read_bundle(path, source), kind, source)
        return load_bundled(path, device, source)
    if kind is None:
        raise ValueError(f"model {source!r}: a released checkpoint needs the model kind to be read")
    config = config_class(kind).named(released_config) if isinstance(released_config, str) else released_config
    return load_released(path, config, device, source)


def check_kind(bundle: ModelBundle, expected: ModelKind, source: str) -> None:
    if bundle.kind != expected:
        raise ValueError(f"model {source!r} is {KIND_NAMES[bundle.kind]}, expected {KIND_NAMES[expected]}")


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
        try:
            if source.endswith(".safetensors"):
                raw: Any = load_file(source)
            else:
                raw = torch.load(source, map_location="cpu", weights_only=True)
        except (SafetensorError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as error:
            raise ValueError(f"{source} is not a readable checkpoint ({type(error).__name__}: {error})") from None
    else:
        source, raw = "the given state dict", path_or_state_dict
    model = build_model(config)
    load_checked_state_dict(model, _unwrap_state_dict(raw, source), source)
    return model.eval()
