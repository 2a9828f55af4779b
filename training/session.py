"""Where the training loop runs: inside Ray Train, or in-process without Ray (unit tests).

The loop talks only to a `Session`: its rank, device, the model preparation, the latest
checkpoint to resume from, and `report` (metrics plus an optional checkpoint folder).
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
UPLOAD_ATTEMPTS = 4
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint folder's name, None for anything else (partial copies included)."""
    match = _CHECKPOINT_NAME.match(name)
    return int(match.group(1)) if match else None


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model on this worker's device, wrapped for data parallelism when distributed."""
        ...

    def latest_checkpoint(self) -> Any:
        """A context manager giving the latest checkpoint folder (a Path), or None."""
        ...

    def report(self, metrics: dict[str, float], checkpoint: Path | None, step: int) -> None:
        """Report metrics (and persist `checkpoint`); every rank calls it the same number of times."""
        ...


class RaySession:
    """The session of a Ray Train worker (Train V2 API)."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)

    def report(self, metrics: dict[str, float], checkpoint: Path | None, step: int) -> None:
        import ray.train

        ray.train.report(
            metrics,
            checkpoint=None if checkpoint is None else ray.train.Checkpoint.from_directory(str(checkpoint)),
            checkpoint_dir_name=None if checkpoint is None else checkpoint_name(step),
            checkpoint_upload_fn=None if checkpoint is None else _upload_with_retries,
        )


def _upload_with_retries(checkpoint: Any, dir_name: str) -> Any:
    """Ray's own checkpoint upload, retried: uploads to object storage fail transiently and Ray
    does not retry them itself."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    for attempt in range(UPLOAD_ATTEMPTS):
        try:
            return storage.persist_current_checkpoint(checkpoint, dir_name)
        except FileNotFoundError:
            raise  # the local folder is gone: retrying cannot help
        except OSError as error:
            if attempt == UPLOAD_ATTEMPTS - 1:
                raise
            log.warning("checkpoint %s upload failed (%s), retrying", dir_name, error)
            time.sleep(2**attempt)


class LocalSession:
    """One in-process worker keeping its checkpoints in a local folder (no Ray needed)."""

    def __init__(self, folder: Path, keep: int = 3, device: str = "cpu") -> None:
        self.rank = 0
        self.world_size = 1
        self.device = torch.device(device)
        self.folder = Path(folder)
        self.keep = keep
        self.reports: list[dict[str, float]] = []

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def checkpoints(self) -> list[Path]:
        return sorted(self.folder.glob(f"{CHECKPOINT_PREFIX}*"))

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        found = self.checkpoints()
        yield found[-1] if found else None

    def report(self, metrics: dict[str, float], checkpoint: Path | None, step: int) -> None:
        self.reports.append(dict(metrics))
        if checkpoint is None:
            return
        # Copy under a temporary name first: a crash never leaves a half checkpoint to resume from.
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / checkpoint_name(step)
        partial = self.folder / f".partial-{target.name}"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(checkpoint, partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        for old in self.checkpoints()[: -self.keep]:
            shutil.rmtree(old)
