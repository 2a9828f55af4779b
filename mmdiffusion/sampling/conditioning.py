"""Zero-shot conditional generation with the joint model (audio→video and video→audio).

The joint model was trained unconditionally; it is conditioned at sampling time only. At every
step the condition modality is replaced by a fresh draw of its forward-noised version
q(x_t | condition), so the network sees the condition at the noise level it expects
(*replacement*). The *gradient* method (the reconstruction guidance of Ho et al., "Video
Diffusion Models", that MM-Diffusion adopts) also nudges the generated modality g:

    x̃0_g = x̂0_g − λ · sqrt(ᾱ_t) / 2 · ∇_{g_t} ‖condition − x̂0_c(g_t, c_t)‖²

where x̂0_c is the model's prediction of the clean condition. The corrected x̃0_g is turned back
into the network's kind of prediction (ε or v), so every sampler applies it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from mmdiffusion.diffusion import GaussianDiffusion

Modality = Literal["video", "audio"]
MODALITIES: tuple[str, ...] = ("video", "audio")
CHANNEL_DIM: dict[str, int] = {"video": 2, "audio": 1}
"""Channel axis of each modality's layout: video `[B, F, C, H, W]`, audio `[B, C, L]`."""
ConditionMethod = Literal["replacement", "gradient"]
METHODS: tuple[str, ...] = ("replacement", "gradient")
DEFAULT_GUIDANCE = 1.0
"""λ of the gradient method when the caller names none (`mmdiff sample --guidance`)."""

JointOutputs = dict[str, torch.Tensor]
JointPredictor = Callable[[dict[str, torch.Tensor], torch.Tensor], JointOutputs]


@dataclass
class ZeroShotCondition:
    """A clean condition for one modality and how the other is steered towards it."""

    modality: Modality
    value: torch.Tensor
    """The clean condition in the model's layout and range [-1, 1], batch first."""
    method: ConditionMethod = "replacement"
    guidance: float = 0.0
    """λ of the gradient method."""
    generator: torch.Generator | None = None
    """Draws the forward-process noise of the condition (CPU generator; None: global RNG)."""

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"condition modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.method not in METHODS:
            raise ValueError(f"unknown conditioning method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.guidance < 0:
            raise ValueError(f"guidance weight must be >= 0, got {self.guidance}")
        if self.guidance and self.method != "gradient":
            raise ValueError("a guidance weight applies to the gradient method only")

    @property
    def generated(self) -> str:
        """The modality being generated."""
        return "audio" if self.modality == "video" else "video"

    def noised(self, diffusion: GaussianDiffusion, t: torch.Tensor) -> torch.Tensor:
        """A fresh draw of q(x_t | condition)."""
        noise = torch.randn(self.value.shape, generator=self.generator, dtype=self.value.dtype)
        return diffusion.q_sample(self.value, t, noise.to(self.value.device))

    def guide(
        self, predict: JointPredictor, diffusion: GaussianDiffusion, inputs: dict[str, torch.Tensor], t: torch.Tensor
    ) -> JointOutputs:
        """The model outputs at `inputs`, with the generated modality's prediction corrected by the
        reconstruction gradient (one network evaluation, with a backward pass)."""
        generated, condition = self.generated, self.modality
        with torch.enable_grad():
            x_gen = inputs[generated].detach().requires_grad_(True)
            outputs = predict({**inputs, generated: x_gen}, t)
            prediction_cond, _ = diffusion.split_output(outputs[condition], CHANNEL_DIM[condition])
            x0_cond = diffusion.x0_from_prediction(inputs[condition], t, prediction_cond)
            error = (x0_cond - self.value).pow(2).flatten(1).sum(dim=1)
            (gradient,) = torch.autograd.grad(error.sum(), x_gen)
        outputs = {name: output.detach() for name, output in outputs.items()}
        x_gen = x_gen.detach()
        prediction_gen, variance = diffusion.split_output(outputs[generated], CHANNEL_DIM[generated])
        x0_gen = diffusion.x0_from_prediction(x_gen, t, prediction_gen)
        x0_gen = x0_gen - self.guidance * diffusion.extract("sqrt_alphas_cumprod", t, x_gen) / 2 * gradient
        prediction_gen = diffusion.prediction_from_x0(x_gen, t, x0_gen)
        outputs[generated] = (
            prediction_gen if variance is None else torch.cat([prediction_gen, variance], CHANNEL_DIM[generated])
        )
        return outputs
