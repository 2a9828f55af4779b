"""MM-Diffusion model library: the coupled audio-video U-Net, its diffusion process and tools.

Pure PyTorch: usable alone in a notebook, without Ray, MLflow or boto3.
"""

from mmdiffusion.bundle import BundledModel, ModelBundle, Provenance
from mmdiffusion.checkpoint import load_bundled, load_local_model, load_model, load_reference_checkpoint, save_model
from mmdiffusion.config import CoupledUNetConfig
from mmdiffusion.diffusion import DiffusionConfig, GaussianDiffusion
from mmdiffusion.pipeline import MMDiffusionPipeline
from mmdiffusion.sr_unet import SuperResUNet, SuperResUNetConfig
from mmdiffusion.unet import CoupledUNet

__all__ = [
    "BundledModel",
    "CoupledUNet",
    "CoupledUNetConfig",
    "DiffusionConfig",
    "GaussianDiffusion",
    "MMDiffusionPipeline",
    "ModelBundle",
    "Provenance",
    "SuperResUNet",
    "SuperResUNetConfig",
    "load_bundled",
    "load_local_model",
    "load_model",
    "load_reference_checkpoint",
    "save_model",
]
