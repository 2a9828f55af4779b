"""MM-Diffusion model library: the coupled audio-video U-Net, its diffusion process and tools.

Pure PyTorch: usable alone in a notebook, without Ray, MLflow or boto3.
"""

from mmdiffusion.config import CoupledUNetConfig
from mmdiffusion.unet import CoupledUNet

__all__ = ["CoupledUNet", "CoupledUNetConfig"]
