"""A training step reads nothing from the device on the host: on a GPU every such read
(`.item()`, `float(t)`, `bool(t)`, `.cpu()`, ...) stalls the host until the device has caught up.

A counted wrapper around those calls (and `all_reduce`) stands in for CUDA's sync debug mode on
the CPU; the step's outcomes still reach the host, at the sync point that reads the tally.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.training.test_loop import SMALL
from training.config import TrainConfig
from training.loop import _train_step, build_trainee
from training.metrics import IntervalMetrics, StepTally
from training.session import LocalSession
from training.tasks import make_task

SYNCING = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
HOST_ONLY_CALLERS = {"draw_shifts"}
"""Callers whose tensors never leave the host: the U-Net draws its RS-MMA shifts from a CPU generator."""


@contextlib.contextmanager
def counted_syncs() -> Iterator[Counter]:
    """Count every call that brings a tensor's value to the host, by name."""
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}
    original_all_reduce = dist.all_reduce

    def counting(name, original):
        def wrapper(*args, **kwargs):
            if sys._getframe(1).f_code.co_name not in HOST_ONLY_CALLERS:
                counts[name] += 1
            return original(*args, **kwargs)

        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(name, original))
    dist.all_reduce = counting("all_reduce", original_all_reduce)
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        dist.all_reduce = original_all_reduce


def batches(nan_at: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    for index in range(100):
        video = torch.rand(2, 16, 3, 16, 16, generator=generator) * 2 - 1
        if index == nan_at:
            video[0, 0, 0, 0, 0] = float("nan")
        yield {"video": video, "audio": torch.rand(2, 1, 2560, generator=generator) * 2 - 1}


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_steps_between_sync_points_do_not_read_the_device(tmp_path: Path, grad_accum: int) -> None:
    config = TrainConfig(
        data=str(tmp_path),
        output=str(tmp_path),
        model="tiny",
        model_overrides=SMALL,
        batch_size=2,
        grad_accum=grad_accum,
    )
    session = LocalSession(tmp_path)
    task = make_task(config)
    trainee = build_trainee(config, session, task, None)
    interval, tally = IntervalMetrics(task.loss_names, session.device), StepTally(session.device, fp16=False)
    data = batches(nan_at=2 * grad_accum)  # the third step sees a NaN
    weights = {}
    with counted_syncs() as counts:
        for step in range(4):
            _train_step(config, session, task, trainee, data, interval, tally)
            trainee.ema.update(trainee.model)
            if step == 1:
                weights = {name: p.detach().clone() for name, p in trainee.model.named_parameters()}
            if step == 2:
                after_nan = {name: p.detach().clone() for name, p in trainee.model.named_parameters()}
    assert counts == Counter(), f"host syncs in steps between sync points: {dict(counts)}"
    # The outcomes are all there at the sync point, and the NaN step left the weights alone.
    outcome = tally.read()
    assert (outcome.applied, outcome.nonfinite, outcome.skipped, outcome.consecutive, outcome.longest) == (
        3,
        1,
        0,
        0,
        1,
    )
    assert all(torch.equal(after_nan[name], weights[name]) for name in weights)
    assert trainee.optimizer.state[next(iter(trainee.model.parameters()))]["step"].item() == 3
    summary = interval.summary()
    assert all(torch.isfinite(torch.tensor(value)) for value in summary.values()), summary
