"""Reference data of the released MM-Diffusion implementation, carried in the repository.

- `coupled_unet_paper.json`, `sr_unet_paper.json`: every state-dict key and shape of the released
  models at the published flags.
- `*_compact_golden.pt`: a small coupled U-Net and a small SR U-Net with the released
  implementation's outputs. The large weight tensors are not stored: tensor number i of `keys`
  with two or more dimensions is rebuilt as
  `randn(shape, generator=manual_seed(seed + i)) / sqrt(prod(shape[1:]))`; 1-D tensors are stored.
- `ddim_golden.pt`: the released DDIM trajectories (eta 0, x0 clipped, ε re-derived from the
  clipped x0) of those two networks from stored noise.

The full-size golden files of the release (with the R that each RS-MMA block drew) are an optional
extra: set `MMDIFF_REFERENCE_DIR` to the folder holding them to run the tests that need them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

FOLDER = Path(__file__).resolve().parent


def load(name: str) -> Any:
    """A `.pt` (tensors only) or `.json` file of this folder."""
    path = FOLDER / name
    return json.loads(path.read_text()) if path.suffix == ".json" else torch.load(path, weights_only=True)


def rebuilt_state_dict(compact: dict) -> dict[str, torch.Tensor]:
    """The state dict (released key names and order) a compact golden file describes."""
    state_dict = {}
    for index, (key, shape) in enumerate(compact["keys"]):
        if len(shape) >= 2:
            generator = torch.Generator().manual_seed(compact["seed"] + index)
            state_dict[key] = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
        else:
            state_dict[key] = compact["small_tensors"][key]
    return state_dict


def compact_golden(name: str) -> dict:
    """A compact golden file with its weights rebuilt under `state_dict`."""
    compact = load(name)
    return {**compact, "state_dict": rebuilt_state_dict(compact)}


def full_reference_dir() -> Path | None:
    """The folder of the release's full-size golden files, when `MMDIFF_REFERENCE_DIR` names one."""
    folder = os.environ.get("MMDIFF_REFERENCE_DIR")
    return Path(folder) if folder and Path(folder).is_dir() else None


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())
