"""fp16 bookkeeping: a step whose update the grad scaler skips (gradient overflow) is not counted,
does not move the EMA, and is reported as `skipped_steps`, across resumes."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tests.fixtures.mlflow_server import MlflowServer
from tests.training.test_ema import checkpoint, initial_model
from tests.training.test_loop import small_config
from training.ema import EMA
from training.run import train
from training.state import EMA_FILE, MODEL_FILE, OPTIMIZER_FILE, SCALER_FILE, read_state

STEPS, RESUMED_AT = 4, 2
HUGE_SCALE = 2.0**40
"""A loss scale at which the fp16 backward overflows for sure."""


def loss_scale(folder: Path) -> float:
    return float(torch.load(folder / SCALER_FILE, weights_only=True)["scale"])


def test_overflowed_fp16_steps_are_skipped_not_counted_nor_averaged(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    config = small_config(
        tmp_path,
        mlflow_server.tracking_uri,
        precision="fp16",
        steps=RESUMED_AT,
        checkpoint_every=1,
        keep_checkpoints=STEPS,
        batch_size=1,
    )
    first = train(config, in_process=True)
    paused = checkpoint(config, RESUMED_AT)
    skipped_before = read_state(paused).skipped_steps
    # The default initial scale 2^16 may overflow a few times too: each skip halved it once.
    assert skipped_before == math.log2(65536.0 / loss_scale(paused))
    # Resume with a huge scale, and a back-off that brings it back to the working scale in one skip
    # (halving from 2^40 would cost ~25 slow CPU fp16 steps).
    backoff = loss_scale(paused) / HUGE_SCALE
    scaler_state = torch.load(paused / SCALER_FILE, weights_only=True)
    torch.save({**scaler_state, "scale": HUGE_SCALE, "backoff_factor": backoff}, paused / SCALER_FILE)

    result = train(config.replace(steps=STEPS), in_process=True)

    final = checkpoint(config, STEPS)
    state = read_state(final)
    forced = round(math.log(loss_scale(final) / HUGE_SCALE, backoff))  # one back-off per skip
    assert forced >= 1 and loss_scale(final) == HUGE_SCALE * backoff**forced
    assert state.skipped_steps == skipped_before + forced == result.metrics["skipped_steps"]
    # Counted steps are the optimizer's updates: AdamW took exactly STEPS of them.
    optimizer = torch.load(final / OPTIMIZER_FILE, weights_only=True)
    assert result.step == state.step == STEPS
    assert {float(values["step"]) for values in optimizer["state"].values()} == {float(STEPS)}
    # The EMA took one update per counted step, none for a skipped one: it is the average of the
    # weights after each counted step, replayed.
    assert state.ema_updates == STEPS
    model = initial_model(config)
    replayed = EMA(model, config.ema_schedule())
    for step in range(1, STEPS + 1):
        model.load_state_dict(load_file(str(checkpoint(config, step) / MODEL_FILE)))
        replayed.update(model)
    kept = load_file(str(final / EMA_FILE))
    assert all(torch.equal(kept[name], tensor) for name, tensor in replayed.model.state_dict().items())
    # The metric carried on from the first attempt in the same MLflow run.
    history = MlflowClient(config.tracking_uri).get_metric_history(first.mlflow_run_id, "skipped_steps")
    assert result.mlflow_run_id == first.mlflow_run_id
    assert [m.value for m in sorted(history, key=lambda m: m.step)][-1] == state.skipped_steps
