"""Training metrics summed over a logging interval and averaged over every worker, and the
outcomes of steps tallied on the device.

Nothing here reads a device value on the host between sync points (logging and checkpoint
steps): on a GPU each such read stalls the host until the device has caught up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

QUARTILES = 4


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


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
        self.grad_norm_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.grad_norm_count = torch.zeros((), dtype=torch.float64, device=self.device)
        self.clips = 0
        self.started = time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], quartiles: torch.Tensor, clips: int) -> None:
        """Add a micro-batch's per-sample losses; samples with a non-finite loss are left out
        (decided on the device, without a sync)."""
        finite = torch.isfinite(losses["loss"].detach()).double()
        one_hot = torch.nn.functional.one_hot(quartiles.to(self.device), QUARTILES).double() * finite[:, None]
        for row, name in enumerate(self.names):
            values = torch.nan_to_num(losses[name].detach().double(), nan=0.0, posinf=0.0, neginf=0.0) * finite
            self.sums[row, 0] += values.sum()
            self.sums[row, 1:] += values @ one_hot
        self.counts += one_hot.sum(dim=0)
        self.clips += clips

    def add_grad_norm(self, norm: torch.Tensor, applied: torch.Tensor) -> None:
        """Count a step's gradient norm if its update was applied (`applied` a device bool)."""
        self.grad_norm_sum += torch.where(applied, norm.double(), 0.0)
        self.grad_norm_count += applied.double()

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
        # One read of everything (the gradient norms are the same on every worker: DDP averaged them).
        host = torch.cat([packed, torch.stack([self.grad_norm_sum, self.grad_norm_count])]).cpu()
        sums = host[: self.sums.numel()].view_as(self.sums)
        counts, clips = host[self.sums.numel() : self.sums.numel() + QUARTILES], float(host[-3])
        grad_norm_sum, grad_norm_count = float(host[-2]), float(host[-1])
        total = counts.sum().clamp(min=1)
        metrics: dict[str, float] = {}
        for row, name in enumerate(self.names):
            metrics[name] = float(sums[row, 0] / total)
            for quartile in range(QUARTILES):
                if counts[quartile] > 0:
                    metrics[f"{name}_q{quartile}"] = float(sums[row, 1 + quartile] / counts[quartile])
        if grad_norm_count:
            metrics["grad_norm"] = grad_norm_sum / grad_norm_count
        metrics["clips_per_second"] = clips / max(time.perf_counter() - self.started, 1e-9)
        self._reset()
        return metrics


@dataclass(frozen=True)
class Tally:
    """Step outcomes since the previous read, the same on every worker."""

    applied: int
    """Steps whose optimizer update was applied."""
    nonfinite: int
    """Steps skipped for a NaN or infinite loss (on some worker) or, without fp16, gradient."""
    skipped: int
    """fp16 steps whose update the grad scaler skipped for a gradient overflow."""
    consecutive: int
    """Non-finite steps in a row at the end of the window."""
    longest: int
    """The longest run of consecutive non-finite steps in the window (carried over runs)."""


class StepTally:
    """Outcomes of the steps tallied on the device; `read` (a sync point) brings them to the host.

    Per step: `bad_loss` (this worker saw a non-finite loss) and `bad_grad` (the all-reduced
    gradient norm is not finite: the same on every worker). Without fp16 any non-finite step
    is `nonfinite`; with fp16 a non-finite gradient with finite losses is the scaler's
    overflow (`skipped`). Workers may differ in `bad_loss`: `read` takes the maximum over them.
    """

    _FIELDS = 5

    def __init__(self, device: torch.device, fp16: bool) -> None:
        self.device = device
        self.fp16 = fp16
        self.values = torch.zeros(self._FIELDS, dtype=torch.float64, device=device)

    def add(self, bad_loss: torch.Tensor, bad_grad: torch.Tensor) -> None:
        bad = bad_loss | bad_grad
        nonfinite = bad_loss if self.fp16 else bad
        applied, consecutive = (~bad).double(), (self.values[3] + 1) * nonfinite.double()
        update = torch.stack(
            [
                self.values[0] + applied,
                self.values[1] + nonfinite.double(),
                self.values[2] + (bad & ~nonfinite).double(),
                consecutive,
                torch.maximum(self.values[4], consecutive),
            ]
        )
        self.values.copy_(update)

    def read(self) -> Tally:
        """The tally since the previous read (a host sync, and a collective when distributed)."""
        values = self.values.clone()
        if distributed():
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        applied, nonfinite, skipped, consecutive, longest = (int(v) for v in values.tolist())
        self.values.zero_()
        self.values[3] = consecutive
        self.values[4] = consecutive
        return Tally(applied, nonfinite, skipped, consecutive, longest)
