"""MM-Diffusion model library: the coupled audio-video U-Net, its diffusion process and tools.

Pure PyTorch: usable alone in a notebook, without Ray, MLflow or boto3. The names below are
imported on first use, so that `mmdiffusion.constants` (read by preprocessing drivers and
decoding workers) does not pay seconds of importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BundledModel": "mmdiffusion.bundle",
    "ModelBundle": "mmdiffusion.bundle",
    "Provenance": "mmdiffusion.bundle",
    "load_bundled": "mmdiffusion.checkpoint",
    "load_local_model": "mmdiffusion.checkpoint",
    "load_model": "mmdiffusion.checkpoint",
    "load_reference_checkpoint": "mmdiffusion.checkpoint",
    "save_model": "mmdiffusion.checkpoint",
    "CoupledUNetConfig": "mmdiffusion.config",
    "DiffusionConfig": "mmdiffusion.diffusion",
    "GaussianDiffusion": "mmdiffusion.diffusion",
    "MMDiffusionPipeline": "mmdiffusion.pipeline",
    "SuperResUNet": "mmdiffusion.sr_unet",
    "SuperResUNetConfig": "mmdiffusion.sr_unet",
    "CoupledUNet": "mmdiffusion.unet",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mmdiffusion' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
