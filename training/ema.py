"""An exponential moving average of a model's weights (the model that gets sampled from)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """`shadow = rate · shadow + (1 - rate) · weights` after every optimizer step; buffers are copied."""

    def __init__(self, model: nn.Module, rate: float) -> None:
        self.rate = rate
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for shadow, weight in zip(self.model.parameters(), model.parameters(), strict=True):
            shadow.lerp_(weight.detach(), 1.0 - self.rate)
        for shadow, buffer in zip(self.model.buffers(), model.buffers(), strict=True):
            shadow.copy_(buffer)
