"""MM-Diffusion model library: the coupled audio-video U-Net, its diffusion process and tools.

Pure PyTorch: usable alone in a notebook, without Ray, MLflow or boto3.
"""

from mmdiffusion.checkpoint import load_model, load_reference_checkpoint, save_model
from mmdiffusion.config import CoupledUNetConfig
from mmdiffusion.diffusion import DiffusionConfig, GaussianDiffusion
from mmdiffusion.unet import CoupledUNet

__all__ = [
    "CoupledUNet",
    "CoupledUNetConfig",
    "DiffusionConfig",
    "GaussianDiffusion",
    "load_model",
    "load_reference_checkpoint",
    "save_model",
]

from mmdiffusion.sr_unet import SuperResUNet, SuperResUNetConfig

__all__ += ["SuperResUNet", "SuperResUNetConfig"]
