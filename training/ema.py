"""The exponential moving average of a model's weights (the model that gets sampled from).

The average and its decay schedule are diffusers' `EMAModel` (`diffusers.training_utils`): after
its n-th update the decay is

    0                                                      for n <= update_after_step + 1
    clamp(1 − (1 + k / inv_gamma) ** −power, min_decay, rate)   with k = n − update_after_step − 1

with warm-up (improved DDPM's schedule), or `(1 + k) / (10 + k)` instead of the power law without.
So the first update copies the weights, and the average covers about the last 1 / (1 − decay)
steps, growing with the run up to the configured rate: a short run's EMA is not its initial
weights. `EMA` averages in place in the parameters of its own copy of the network, which is what
checkpoints save and evaluation loads; buffers are copied.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EMASchedule:
    """How the decay grows with the updates (the names of diffusers' `EMAModel` in brackets)."""

    rate: float = 0.9999
    """The most the decay reaches (`decay`): the released rate."""
    warmup: bool = True
    """Improved DDPM's power-law warm-up (`use_ema_warmup`); off: `(1 + k) / (10 + k)`."""
    inv_gamma: float = 1.0
    power: float = 0.75
    """Decay 0.99 after 460 updates, 0.999 after 10k, 0.9999 after 215k (`inv_gamma` 1)."""
    update_after_step: int = 0
    """Updates that only copy the weights before averaging starts."""
    min_decay: float = 0.0
    """The least the decay is once averaging has started; equal to `rate`: a constant rate."""

    def problems(self, prefix: str = "ema_") -> list[str]:
        """What is wrong with these settings, each named as the config field `prefix + name`."""
        found = []
        if not 0.0 <= self.rate < 1.0:
            found.append(f"{prefix}rate must lie in [0, 1), got {self.rate}")
        if not 0.0 <= self.min_decay <= self.rate:
            found.append(f"{prefix}min_decay must lie in [0, {prefix}rate], got {self.min_decay}")
        if self.inv_gamma <= 0:
            found.append(f"{prefix}inv_gamma must be positive, got {self.inv_gamma}")
        if self.power <= 0:
            found.append(f"{prefix}power must be positive, got {self.power}")
        if self.update_after_step < 0:
            found.append(f"{prefix}update_after_step must be >= 0, got {self.update_after_step}")
        return found


class EMA:
    """`model` (a copy of the network) holds the average; `update` after every optimizer step."""

    def __init__(self, model: nn.Module, schedule: EMASchedule) -> None:
        from diffusers.training_utils import EMAModel

        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # EMAModel would average in clones of the parameters; it averages in the copy's own ones
        # instead (the same objects follow the copy across `.to(device)`): one set of weights.
        self._average = EMAModel(
            [],
            decay=schedule.rate,
            min_decay=float(schedule.min_decay),
            update_after_step=schedule.update_after_step,
            use_ema_warmup=schedule.warmup,
            inv_gamma=schedule.inv_gamma,
            power=schedule.power,
            foreach=True,
        )
        self._average.shadow_params = list(self.model.parameters())

    @property
    def updates(self) -> int:
        """Updates so far: where the decay schedule stands."""
        return self._average.optimization_step

    @updates.setter
    def updates(self, count: int) -> None:
        self._average.load_state_dict({"optimization_step": int(count)})

    @property
    def decay(self) -> float:
        """The decay the latest update used (0 before the first)."""
        return self._average.get_decay(self.updates)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self._average.step(model.parameters())
        for shadow, buffer in zip(self.model.buffers(), model.buffers(), strict=True):
            shadow.copy_(buffer)
