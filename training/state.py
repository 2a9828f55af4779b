"""The training checkpoint: one folder that Ray Train persists (locally or on S3).

model.safetensors   the optimizer's weights and their model bundle (network and diffusion
                    config, provenance: run, data manifest, step, `raw`); `mmdiffusion.load_bundled`
ema.safetensors     the EMA weights, same format (provenance `ema`)
optimizer.pt        AdamW state (tensors and numbers only: loads with weights_only=True)
scaler.pt           the fp16 GradScaler state
state.json          step, MLflow run id, world size, counters
data-rankNNNN.json  where each worker's data stream stood (every rank writes its own;
                    Ray merges the workers' folders into one checkpoint)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from mmdiffusion.bundle import ModelBundle
from mmdiffusion.checkpoint import load_checked_state_dict, save_model
from training.ema import EMA
from training.loader import DataPosition

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCALER_FILE = "scaler.pt"
STATE_FILE = "state.json"


@dataclass(frozen=True)
class RunState:
    step: int
    mlflow_run_id: str | None
    world_size: int
    nonfinite_steps: int = 0
    """Steps skipped so far because of a NaN or infinite loss or gradient."""
    corrupt_samples: int = 0
    """Samples skipped as corrupt so far, over all workers and attempts."""
    skipped_steps: int = 0
    """fp16 steps whose update the grad scaler skipped (gradient overflow); not counted in `step`."""
    ema_updates: int | None = None
    """Where the EMA's decay schedule stands; None (checkpoints from before it was kept): `step`."""


def position_file(rank: int) -> str:
    return f"data-rank{rank:04d}.json"


def write_checkpoint(
    folder: Path,
    *,
    rank: int,
    state: RunState,
    position: DataPosition,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    bundle: ModelBundle,
) -> None:
    """Rank 0 writes the weights and state, every rank its data position. `bundle` describes
    the model at this step; each weights file gets it with its own `weights` provenance."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / position_file(rank)).write_text(json.dumps(dataclasses.asdict(position)))
    if rank != 0:
        return
    save_model(folder / MODEL_FILE, model, bundle.with_provenance(weights="raw"))
    save_model(folder / EMA_FILE, ema.model, bundle.with_provenance(weights="ema"))
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    torch.save(scaler.state_dict(), folder / SCALER_FILE)
    (folder / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), indent=2))


def read_state(folder: Path) -> RunState:
    return RunState(**json.loads((folder / STATE_FILE).read_text()))


def restore_weights(
    folder: Path, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> None:
    load_checked_state_dict(model, load_file(str(folder / MODEL_FILE)), source=str(folder / MODEL_FILE))
    load_checked_state_dict(ema.model, load_file(str(folder / EMA_FILE)), source=str(folder / EMA_FILE))
    state = read_state(folder)
    ema.updates = state.step if state.ema_updates is None else state.ema_updates
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    scaler.load_state_dict(torch.load(folder / SCALER_FILE, map_location="cpu", weights_only=True))


def read_position(folder: Path, rank: int, world_size: int, state: RunState) -> DataPosition:
    """Where worker `rank` resumes its stream. When the worker count changed (elastic restart),
    the old streams do not map onto the new ones: every worker starts a fresh epoch after the
    furthest one reached."""
    if state.world_size == world_size and (folder / position_file(rank)).is_file():
        return DataPosition(**json.loads((folder / position_file(rank)).read_text()))
    epochs = [json.loads(path.read_text())["epoch"] for path in folder.glob("data-rank*.json")]
    return DataPosition(epoch=max(epochs, default=0) + 1)
