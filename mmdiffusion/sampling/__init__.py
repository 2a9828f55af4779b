"""Sampling: reverse-process update rules, the joint audio-video loop, zero-shot conditioning
and super-resolution. The networks know nothing of this package."""

from mmdiffusion.sampling.conditioning import ZeroShotCondition
from mmdiffusion.sampling.joint import NoisedStart, clip_shapes, sample_joint
from mmdiffusion.sampling.schedulers import DEFAULT_STEPS, SAMPLERS, ModalitySampler, SamplerConfig
from mmdiffusion.sampling.super_res import (
    SR_SAMPLER,
    super_res_loss,
    upsample_frames,
    upsample_video,
)

__all__ = [
    "DEFAULT_STEPS",
    "SAMPLERS",
    "SR_SAMPLER",
    "ModalitySampler",
    "NoisedStart",
    "SamplerConfig",
    "ZeroShotCondition",
    "clip_shapes",
    "sample_joint",
    "super_res_loss",
    "upsample_frames",
    "upsample_video",
]
