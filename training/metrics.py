"""Training metrics summed over a logging interval and averaged over every worker."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

QUARTILES = 4


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_workers_agree(flag: bool, device: torch.device) -> bool:
    """True only when `flag` holds on every worker (the same answer on all of them)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    if distributed():
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def sum_over_workers(value: float, device: torch.device) -> float:
    total = torch.tensor([float(value)], dtype=torch.float64, device=device)
    if distributed():
        dist.all_reduce(total)
    return total.item()


class IntervalMetrics:
    """Per-sample losses (overall and per timestep quartile), gradient norms and clips seen
    since the last `summary`, which all-reduces them so every worker logs the same numbers."""

    def __init__(self, loss_names: tuple[str, ...], device: torch.device) -> None:
        self.names = ("loss", *loss_names)
        self.device = device
        self._reset()

    def _reset(self) -> None:
        # Per name: the sum over samples, then the sum per quartile; then sample counts per quartile.
        self.sums = torch.zeros(len(self.names), 1 + QUARTILES, dtype=torch.float64, device=self.device)
        self.counts = torch.zeros(QUARTILES, dtype=torch.float64, device=self.device)
        self.grad_norms: list[float] = []
        self.clips = 0
        self.started = time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], quartiles: torch.Tensor, clips: int) -> None:
        one_hot = torch.nn.functional.one_hot(quartiles.to(self.device), QUARTILES).double()
        for row, name in enumerate(self.names):
            values = losses[name].detach().double()
            self.sums[row, 0] += values.sum()
            self.sums[row, 1:] += values @ one_hot
        self.counts += one_hot.sum(dim=0)
        self.clips += clips

    def add_grad_norm(self, norm: float) -> None:
        self.grad_norms.append(norm)

    def summary(self) -> dict[str, float]:
        """The interval's means over all workers, then a fresh interval."""
        packed = torch.cat(
            [
                self.sums.flatten(),
                self.counts,
                torch.tensor([float(self.clips)], device=self.device, dtype=torch.float64),
            ]
        )
        if distributed():
            dist.all_reduce(packed)
        sums = packed[: self.sums.numel()].view_as(self.sums)
        counts, clips = packed[self.sums.numel() : -1], packed[-1].item()
        total = counts.sum().clamp(min=1)
        metrics: dict[str, float] = {}
        for row, name in enumerate(self.names):
            metrics[name] = (sums[row, 0] / total).item()
            for quartile in range(QUARTILES):
                if counts[quartile] > 0:
                    metrics[f"{name}_q{quartile}"] = (sums[row, 1 + quartile] / counts[quartile]).item()
        if self.grad_norms:
            metrics["grad_norm"] = sum(self.grad_norms) / len(self.grad_norms)
        metrics["clips_per_second"] = clips / max(time.perf_counter() - self.started, 1e-9)
        self._reset()
        return metrics
