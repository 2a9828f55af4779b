"""The per-worker training loop: Ray Train's `train_loop_per_worker`, also runnable in-process.

`train_loop(loop_config)` is what `TorchTrainer` calls on every worker; passing a
`LocalSession` runs the very same loop without Ray. It resumes from the session's latest
checkpoint (model, EMA, optimizer, scaler, step, data position, MLflow run id), else starts
from `init_from` or from scratch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmdiffusion.bundle import KIND_NAMES, ModelBundle, Provenance, describe_diffusion, model_kind
from mmdiffusion.checkpoint import load_checked_state_dict
from mmdiffusion.device import AUTOCAST_DTYPES, device_settings
from mmdiffusion.diffusion import DiffusionConfig
from pipeline.credentials import redact
from training.config import TrainConfig
from training.ema import EMA
from training.faults import CrashDrill
from training.host_memory import release_freed_host_memory
from training.loader import ClipLoader, DataPosition
from training.metrics import IntervalMetrics, StepTally, sum_over_workers
from training.resolver import resolve_model
from training.selection import select_manifest
from training.session import RaySession, Session
from training.state import RunState, read_position, read_state, restore_weights, write_checkpoint
from training.tasks import Task, make_task
from training.tracking import MetricLogger
from training.validation import TrainingWatch

log = logging.getLogger(__name__)


def loop_config(
    config: TrainConfig, shards: list[str], run_id: str, tracking_uri: str, manifest_sha256: str
) -> dict[str, Any]:
    """The plain dict `train_loop` receives (what Ray ships to every worker)."""
    return {
        "config": config.to_dict(),
        "shards": shards,
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "manifest_sha256": manifest_sha256,
    }


@dataclass(frozen=True)
class LoopOutcome:
    step: int
    nonfinite_stop: bool
    """The run stopped after `max_nonfinite` consecutive NaN or infinite losses."""
    metrics: dict[str, float]


@dataclass
class Trainee:
    """The network and everything that updates it."""

    model: nn.Module
    """The bare network: what checkpoints save and the EMA follows."""
    prepared: nn.Module
    """The same weights on the worker's device, wrapped for DDP when distributed."""
    ema: EMA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def train_loop(loop_inputs: dict[str, Any], session: Session | None = None) -> LoopOutcome:
    config = TrainConfig.from_dict(loop_inputs["config"])
    session = session or RaySession()
    settings = device_settings(session.device, config.precision)  # `auto` made concrete, CUDA defaults
    settings.apply()
    config = config.replace(precision=settings.precision)
    task = make_task(config)
    with session.latest_checkpoint() as folder:
        trainee = build_trainee(config, session, task, folder)
        if folder is None:
            state = RunState(step=0, mlflow_run_id=loop_inputs["run_id"], world_size=session.world_size)
            position, resumed_from = DataPosition(), None
        else:
            state = read_state(folder)
            position, resumed_from = read_position(folder, session.rank, session.world_size, state), state.step
    # Different noise and timesteps on each worker, and after each resume.
    torch.manual_seed(config.seed + 1000 * state.step + session.rank + 1)
    loader = ClipLoader(
        loop_inputs["shards"],
        task.sample_spec(),
        batch_size=config.batch_size,
        rank=session.rank,
        world_size=session.world_size,
        shuffle_buffer=config.shuffle_buffer,
        flip=config.flip,
        seed=config.seed,
        position=position,
        split=config.training_split(),
        selected=select_manifest(config.data, config.filter).keys if config.filter else None,
        prefetch=config.prefetch,
        decode_threads=config.decode_threads,
        pin_memory=session.device.type == "cuda",
    )
    logger = MetricLogger(loop_inputs["tracking_uri"], state.mlflow_run_id, enabled=session.rank == 0)
    log.info(
        "rank %d/%d on %s (%d torch threads): %s from step %d",
        session.rank,
        session.world_size,
        session.device,
        torch.get_num_threads(),
        "resuming" if resumed_from is not None else "starting",
        state.step,
    )
    # Provenance travels inside model files and MLflow artifacts: no credential in a URI.
    initialised_from = None if config.init_from is None else redact(config.init_from)
    provenance = Provenance(
        state.mlflow_run_id,
        loop_inputs["manifest_sha256"],
        initialised_from=initialised_from,
        held_out_share=config.held_out_share,
    )
    bundle = ModelBundle.describe(trainee.model.config, task.diffusion.config, provenance)
    finished = False
    try:
        if resumed_from is not None:
            logger.log({"resumed_from_step": float(resumed_from)}, step=resumed_from)
        watch = TrainingWatch.for_worker(config, task, bundle, logger, session.rank)
        outcome = _run_steps(config, session, task, trainee, loader, logger, state, bundle, watch)
        finished = not outcome.nonfinite_stop
        return outcome
    finally:
        loader.close()
        logger.close(finished)


def build_trainee(config: TrainConfig, session: Session, task: Task, checkpoint: Path | None) -> Trainee:
    """The network, its EMA, optimizer and scaler: restored from `checkpoint`, else fresh (or
    from `init_from`), with the same initial weights on every worker."""
    torch.manual_seed(config.seed)
    model = task.build_model()
    if checkpoint is None and config.init_from:
        initialise_from(model, config.init_from, task.diffusion.config)
    ema = EMA(model, config.ema_schedule())
    prepared = session.prepare(model)
    ema.model.to(session.device)
    # The optimizer is built after the move to the device, so its state loads onto it.
    trainee = Trainee(
        model,
        prepared,
        ema,
        torch.optim.AdamW(prepared.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True),
        torch.amp.GradScaler(session.device.type, enabled=config.precision == "fp16"),
    )
    if checkpoint is not None:
        restore_weights(checkpoint, model, ema, trainee.optimizer, trainee.scaler)
    return trainee


def _run_steps(
    config: TrainConfig,
    session: Session,
    task: Task,
    trainee: Trainee,
    loader: ClipLoader,
    logger: MetricLogger,
    state: RunState,
    bundle: ModelBundle,
    watch: TrainingWatch | None = None,
) -> LoopOutcome:
    """Train up to `config.steps`; checkpoints carry `bundle` with their step; rank 0's `watch`
    validates and samples (no collective inside: the ranks' reports stay in step)."""
    batches = iter(loader)
    interval = IntervalMetrics(task.loss_names, session.device)
    tally = StepTally(session.device, fp16=config.precision == "fp16")
    step, nonfinite, skipped = state.step, state.nonfinite_steps, state.skipped_steps
    metrics: dict[str, float] = {"step": float(step)}
    drill = CrashDrill.from_environment()
    trainee.prepared.train()
    # The host learns the steps' outcomes only at sync points: the steps that would be logging or
    # checkpoint steps if every step since the last sync applied its update, and every step after
    # a sync found one that did not (until the next logging or checkpoint step). With fp16 every
    # step is a sync point: the grad scaler skips steps routinely, and a skipped step must neither
    # count nor move the EMA; with fp32 and bf16 a skip is rare (a non-finite loss or gradient).
    every_step = config.precision == "fp16"
    unsynced, exact = 0, every_step
    while step < config.steps:
        applied = _train_step(config, session, task, trainee, batches, interval, tally)
        if drill is not None:
            drill.crash_if_due(session.rank, step + unsynced + 1)
        unsynced += 1
        guess = step + unsynced
        if not (exact or _is_sync_step(config, guess)):
            trainee.ema.update(trainee.model)  # between sync points the update is presumed applied
            continue
        outcome = tally.read()
        exact = every_step or outcome.applied < unsynced or outcome.consecutive > 0
        step, nonfinite, skipped = step + outcome.applied, nonfinite + outcome.nonfinite, skipped + outcome.skipped
        unsynced = 0
        if outcome.nonfinite:
            log.warning(
                "steps up to %d: %d with a non-finite loss or gradient, skipped (%d in a row)",
                step,
                outcome.nonfinite,
                outcome.consecutive,
            )
        if outcome.skipped:
            log.info(
                "steps up to %d: %d fp16 gradient overflows, updates skipped (%d so far)",
                step,
                outcome.skipped,
                skipped,
            )
        if outcome.longest >= config.max_nonfinite:
            metrics = {"step": float(step), "nonfinite_steps": float(nonfinite)}
            logger.log(metrics, step=step)
            logger.stop(f"{outcome.longest} consecutive steps after step {step} had a NaN or infinite loss or gradient")
            session.report(metrics, None, step)
            return LoopOutcome(step, True, metrics)
        if not bool(applied):  # known now without a further sync: `read` waited for the step
            continue
        trainee.ema.update(trainee.model)
        last = step == config.steps
        logging_now, checkpointing_now = (
            step % config.log_every == 0 or last,
            step % config.checkpoint_every == 0 or last,
        )
        if logging_now or checkpointing_now:  # the same steps on every worker: the sum is a collective
            corrupt = state.corrupt_samples + int(sum_over_workers(loader.counters.corrupt_samples, session.device))
        if logging_now:
            metrics = {
                **interval.summary(),
                "step": float(step),
                "lr": trainee.optimizer.param_groups[0]["lr"],
                "nonfinite_steps": float(nonfinite),
                "skipped_steps": float(skipped),
                "ema_decay": trainee.ema.decay,
                "corrupt_samples": float(corrupt),
                "epoch": float(loader.position.epoch),
            }
            logger.log(metrics, step=step)
        if watch is not None:
            watch.after_step(step, trainee)
        if checkpointing_now:
            run_state = RunState(
                step,
                state.mlflow_run_id,
                session.world_size,
                nonfinite,
                corrupt,
                skipped_steps=skipped,
                ema_updates=trainee.ema.updates,
            )
            with tempfile.TemporaryDirectory(prefix="mmdiff-ckpt-") as staging:
                write_checkpoint(
                    Path(staging),
                    rank=session.rank,
                    state=run_state,
                    position=loader.position,
                    model=trainee.model,
                    ema=trainee.ema,
                    optimizer=trainee.optimizer,
                    scaler=trainee.scaler,
                    bundle=bundle.with_provenance(step=step),
                )
                session.report(metrics, Path(staging), step)
    if state.step >= config.steps:  # nothing left to do: still report once, as every attempt must
        session.report(metrics, None, step)
    return LoopOutcome(step, False, metrics)


def _is_sync_step(config: TrainConfig, step: int) -> bool:
    """A step the host must know it has reached: a logging, checkpoint, validation or sample
    step (the last step is all of them). The same on every worker: it depends on the config only."""
    intervals = (config.log_every, config.checkpoint_every, config.val_every, config.sample_every)
    return step >= config.steps or any(every and step % every == 0 for every in intervals)


def _train_step(
    config: TrainConfig,
    session: Session,
    task: Task,
    trainee: Trainee,
    batches: Iterator[dict[str, torch.Tensor]],
    interval: IntervalMetrics,
    tally: StepTally,
) -> torch.Tensor:
    """One optimizer step over `grad_accum` micro-batches, without a host sync: returns whether
    the update was applied, as a device bool, and records the outcome in `interval` and `tally`.

    A non-finite loss on any worker makes the whole gradient NaN (its backward is scaled by
    NaN), so DDP's gradient all-reduce carries it to every worker with no collective of its
    own; a non-finite gradient norm then skips the update on the device: the fused AdamW (or,
    with fp16, the grad scaler through it) takes `found_inf` and leaves the weights, its
    moments and its step count as they were. With fp16 the scaler also lowers its scale."""
    model, optimizer, scaler = trainee.prepared, trainee.optimizer, trainee.scaler
    optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast(
        session.device.type, dtype=AUTOCAST_DTYPES.get(config.precision), enabled=config.precision != "fp32"
    )
    bad_loss = torch.zeros((), dtype=torch.bool, device=session.device)
    for micro in range(config.grad_accum):
        batch = {name: tensor.to(session.device, non_blocking=True) for name, tensor in next(batches).items()}
        # DDP all-reduces gradients on the last micro-batch only.
        last = micro == config.grad_accum - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast:
                losses, t = task.losses(model, batch)
            loss = losses["loss"].float().mean()
            finite = torch.isfinite(loss)
            bad_loss |= ~finite
            poison = torch.where(finite, 1.0, math.nan)
            release_freed_host_memory(session.device)
            scaler.scale(loss * poison / config.grad_accum).backward()
        interval.add(losses, task.diffusion.quartile(t), config.batch_size)
    scaler.unscale_(optimizer)
    max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    bad_grad = ~torch.isfinite(grad_norm)
    if scaler.is_enabled():
        scaler.step(optimizer)  # passes its own found_inf to the fused optimizer: no sync
        scaler.update()
    else:
        _step_unless(optimizer, bad_grad)
    applied = ~(bad_loss | bad_grad)
    tally.add(bad_loss, bad_grad)
    interval.add_grad_norm(grad_norm, applied)
    return applied


def _step_unless(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """`optimizer.step()` unless the device bool `skip` holds, decided on the device where the
    optimizer takes `found_inf` (the fused Adam family), else with one host sync."""
    if optimizer.defaults.get("fused"):
        optimizer.grad_scale, optimizer.found_inf = None, skip.float()
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
    elif not bool(skip):
        optimizer.step()


def initialise_from(model: nn.Module, uri: str, diffusion: DiffusionConfig | None = None) -> None:
    """Load starting weights from any model `training.resolver` takes (a released checkpoint
    is read with this model's config; a checkpoint folder gives its EMA weights). A source
    trained with another diffusion than `diffusion` is allowed, and logged."""
    source = resolve_model(uri, model_kind(model), released_config=model.config)
    load_checked_state_dict(model, source.network.state_dict(), source=uri)
    if diffusion is not None and source.bundle.diffusion != diffusion:
        log.warning(
            "--init-from %s: %s trained with %s (%s), this run trains with %s",
            uri,
            KIND_NAMES[source.bundle.kind],
            describe_diffusion(source.bundle.diffusion),
            source.bundle.provenance.diffusion_origin,
            describe_diffusion(diffusion),
        )
