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
from training.loader import ClipLoader, DataPosition
from training.metrics import IntervalMetrics, all_workers_agree, sum_over_workers
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
        torch.optim.AdamW(
            prepared.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            fused=device_settings(session.device, config.precision).fused_adamw or None,
        ),
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
    step, nonfinite, consecutive, skipped = state.step, state.nonfinite_steps, 0, state.skipped_steps
    metrics: dict[str, float] = {"step": float(step)}
    drill = CrashDrill.from_environment()
    trainee.prepared.train()
    while step < config.steps:
        grad_norm = _train_step(config, session, task, trainee, batches, interval)
        if drill is not None:
            drill.crash_if_due(session.rank, step + 1)
        if grad_norm is None:
            nonfinite += 1
            consecutive += 1
            log.warning("step %d: non-finite loss or gradient, skipped (%d in a row)", step + 1, consecutive)
            if consecutive >= config.max_nonfinite:
                metrics = {"step": float(step), "nonfinite_steps": float(nonfinite)}
                logger.log(metrics, step=step)
                logger.stop(f"{consecutive} consecutive steps after step {step} had a NaN or infinite loss or gradient")
                session.report(metrics, None, step)
                return LoopOutcome(step, True, metrics)
            continue
        consecutive = 0
        if not math.isfinite(grad_norm):  # fp16: the grad scaler found an overflow and lowered its scale
            skipped += 1
            log.info("step %d: fp16 gradient overflow, update skipped (%d so far)", step + 1, skipped)
            continue
        step += 1
        trainee.ema.update(trainee.model)
        interval.add_grad_norm(grad_norm)
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


def _train_step(
    config: TrainConfig,
    session: Session,
    task: Task,
    trainee: Trainee,
    batches: Iterator[dict[str, torch.Tensor]],
    interval: IntervalMetrics,
) -> float | None:
    """One optimizer step over `grad_accum` micro-batches; the gradient norm, or None when the
    step was skipped because a loss or the gradient was not finite on some worker. With fp16 an
    overflowed gradient is the grad scaler's to handle: the update is skipped, the scale lowered,
    and the (non-finite) norm returned. The norm is read on the host every step anyway, so
    telling a skip costs no extra device sync (unlike comparing `scaler.get_scale()` around
    `update()`); DDP's all-reduced gradients make every worker tell the same."""
    model, optimizer, scaler = trainee.prepared, trainee.optimizer, trainee.scaler
    optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast(
        session.device.type, dtype=AUTOCAST_DTYPES.get(config.precision), enabled=config.precision != "fp32"
    )
    for micro in range(config.grad_accum):
        batch = {name: tensor.to(session.device, non_blocking=True) for name, tensor in next(batches).items()}
        # DDP all-reduces gradients on the last micro-batch only.
        last = micro == config.grad_accum - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast:
                losses, t = task.losses(model, batch)
            loss = losses["loss"].float().mean()
            if not all_workers_agree(bool(torch.isfinite(loss)), session.device):
                optimizer.zero_grad(set_to_none=True)
                return None
            scaler.scale(loss / config.grad_accum).backward()
        interval.add(losses, task.diffusion.quartile(t), config.batch_size)
    scaler.unscale_(optimizer)
    max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        if not scaler.is_enabled():
            return None
        scaler.update()  # `unscale_` saw the overflow: the scale backs off
        return grad_norm
    scaler.step(optimizer)
    scaler.update()
    return grad_norm


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
