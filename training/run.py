"""Programmatic entry points: `train(config)` and `train_sr(config)` run a whole training run.

The driver checks the data before any worker starts, opens (or finds again) the MLflow run,
runs `training.loop.train_loop` on a Ray Train `TorchTrainer` (or in-process without Ray), and
finishes the run: it logs the final EMA model, registers it, and attaches the loss curve.
Rerunning with the same `output` and `run_name` resumes from the latest checkpoint and
continues the same MLflow run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmdiffusion.bundle import model_kind
from pipeline.credentials import FABRIC_PREFIXES, forwarded_settings, redact
from pipeline.shard_format import DataError, list_shards, manifest_info
from pipeline.storage import is_remote, join, resolve, write_atomically
from training.config import TrainConfig
from training.loop import loop_config, train_loop
from training.plots import plot_loss_curves
from training.resolver import check_model_source, resolve_model
from training.selection import ManifestSelection, select_manifest
from training.session import LocalSession
from training.tracking import LOSS_METRICS, open_run, resolve_tracking_uri, take_stop_reason

log = logging.getLogger(__name__)

LOSS_CURVE_FILE = "loss_curve.png"
FORWARDED_ENVIRONMENT_PREFIXES = ("AWS_", "MLFLOW_", "MMDIFF_", *FABRIC_PREFIXES)
"""Settings the workers need to reach object storage and the tracking server, this project's
own (`MMDIFF_*`) and the NCCL and network-fabric ones, forwarded from the driver: workers may
run in processes started before they were set, or on other nodes. Credentials are not
forwarded (Ray keeps a runtime env where its dashboard and logs show it): workers take them
from their own environment or credentials files (pipeline/credentials.py)."""


class NonFiniteLossError(RuntimeError):
    """The run stopped after too many consecutive steps with a NaN or infinite loss."""


@dataclass(frozen=True)
class TrainResult:
    run_name: str
    mlflow_run_id: str
    step: int
    metrics: dict[str, float]
    checkpoint: str
    """URI of the final checkpoint folder."""
    model_uri: str
    """MLflow URI of the logged EMA model."""
    registered_version: str | None
    loss_curve: str
    """URI of the loss-curve PNG under the output folder."""


def train(config: TrainConfig, *, in_process: bool = False) -> TrainResult:
    """Train (or resume) the run `config` describes; `in_process` runs one worker without Ray."""
    config = _absolute_local_paths(config)
    shards = list_shards(config.data)  # a missing path or no shards fails here, before any worker
    if config.init_from:
        check_model_source(config.init_from, model_kind(config.model_config()))
    selection = _checked_selection(config)
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    if not in_process:  # connects to Ray: the local one, or the cluster at RAY_ADDRESS
        check_paths_reach_every_node(config, tracking_uri, ray_node_count())
    run_id = open_run(config, tracking_uri, len(shards), selection)
    take_stop_reason(tracking_uri, run_id)  # a stop of an earlier attempt is history now
    inputs = loop_config(config, shards, run_id, tracking_uri, manifest_info(config.data).sha256)
    if in_process:
        if is_remote(config.output):
            raise ValueError(f"in-process training keeps checkpoints in a local folder, not {config.output!r}")
        session = LocalSession(Path(config.output) / config.run_name, keep=config.keep_checkpoints)
        metrics, checkpoints = train_loop(inputs, session).metrics, session.checkpoints()
        checkpoint_uri = str(checkpoints[-1]) if checkpoints else None
    else:
        metrics, checkpoint_uri = _fit_on_ray(config, inputs)
    stop_reason = take_stop_reason(tracking_uri, run_id)
    if stop_reason:
        raise NonFiniteLossError(
            f"run {config.run_name!r} stopped: {stop_reason}; the checkpoints up to the last good step are intact "
            f"(latest: {checkpoint_uri})"
        )
    if checkpoint_uri is None:
        raise RuntimeError(f"run {config.run_name!r} ended without a checkpoint")
    return _finish(config, run_id, tracking_uri, checkpoint_uri, metrics)


def _checked_selection(config: TrainConfig) -> ManifestSelection | None:
    """The `--filter` selection, checked on the driver: a bad expression, an unknown column or a
    filter that keeps nothing fails here, before any worker starts."""
    if not config.filter:
        return None
    try:
        selection = select_manifest(config.data, config.filter)
    except FileNotFoundError as error:
        raise DataError(f"--filter needs the dataset's manifest: {error}") from None
    if selection.kept_clips == 0:
        raise DataError(
            f"--filter {config.filter!r} keeps none of the {selection.manifest_clips} clips of {config.data}"
        )
    log.info("--filter %r keeps %d of %d clips", config.filter, selection.kept_clips, selection.manifest_clips)
    return selection


def train_sr(config: TrainConfig, *, in_process: bool = False) -> TrainResult:
    """Train the super-resolution U-Net (the same infrastructure, the SR task)."""
    return train(config.replace(task="sr"), in_process=in_process)


def _absolute_local_paths(config: TrainConfig) -> TrainConfig:
    """Local paths made absolute: Ray workers run in their own working folders."""

    def absolute(uri: str | None) -> str | None:
        return uri if uri is None or "://" in uri or ":/" in uri else str(Path(uri).expanduser().resolve())

    return config.replace(
        data=absolute(config.data), output=absolute(config.output), init_from=absolute(config.init_from)
    )


def ray_node_count() -> int:
    """The alive nodes of the Ray cluster (started locally, or the one at RAY_ADDRESS)."""
    import ray

    if not ray.is_initialized():
        ray.init()
    return sum(1 for node in ray.nodes() if node["Alive"])


def check_paths_reach_every_node(config: TrainConfig, tracking_uri: str, nodes: int) -> None:
    """On a cluster of several nodes, refuse local paths unless declared shared: rank 0 on
    another node would write the checkpoints (and the MLflow store) where the driver cannot
    read them, and every other rank would keep its data position on its own disk, so a resume
    would silently restart its epoch."""
    if nodes <= 1 or config.shared_filesystem:
        return
    local = [
        f"--{flag} {value}"
        for flag, value in (("data", config.data), ("output", config.output), ("init-from", config.init_from))
        if value is not None and not is_remote(value)
    ]
    if tracking_uri.startswith(("sqlite:", "file:", "/", ".")):  # a database file or folder store
        local.append(f"the MLflow store {redact(tracking_uri)} (MLFLOW_TRACKING_URI)")
    if local:
        raise ValueError(
            f"the Ray cluster has {nodes} nodes, and {', '.join(local)} "
            f"{'is' if len(local) == 1 else 'are'} local to each node: use shared storage or s3:// URIs "
            "(and an MLflow server), or pass --shared-filesystem if these paths are on a filesystem every node mounts"
        )


def _fit_on_ray(config: TrainConfig, inputs: dict[str, Any]) -> tuple[dict[str, float], str | None]:
    from ray.train.torch import TorchTrainer

    scaling_config, run_config = ray_train_configs(config)
    trainer = TorchTrainer(train_loop, train_loop_config=inputs, scaling_config=scaling_config, run_config=run_config)
    result = trainer.fit()
    checkpoint = result.checkpoint
    if checkpoint is None:
        return dict(result.metrics or {}), None
    uri = f"s3://{checkpoint.path}" if is_remote(config.output) else checkpoint.path
    return dict(result.metrics or {}), uri


def worker_environment(config: TrainConfig) -> dict[str, str]:
    """The driver's variables the workers are handed: the standard prefixes and the run's
    `forward_env` ones, credentials left out (pipeline/credentials.py)."""
    return forwarded_settings(FORWARDED_ENVIRONMENT_PREFIXES + tuple(config.forward_env))


def ray_train_configs(config: TrainConfig) -> tuple[Any, Any]:
    """Ray Train's `ScalingConfig` and `RunConfig` for `config`: what workers it reserves, what
    they are handed, where checkpoints go."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    environment = worker_environment(config)
    storage_path, filesystem = _storage(config.output)
    resources = {"CPU": config.worker_cpus, **({"GPU": 1} if config.gpus else {})}
    scaling = ScalingConfig(num_workers=config.workers, use_gpu=config.gpus, resources_per_worker=resources)
    run = RunConfig(
        name=config.run_name,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        failure_config=FailureConfig(max_failures=config.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
        worker_runtime_env={"env_vars": environment} if environment else None,
    )
    return scaling, run


def _storage(output: str) -> tuple[str, Any]:
    """Ray's `storage_path` and `storage_filesystem` for `output`. An S3 filesystem is built with
    the driver's endpoint and region spelled out, because Ray pickles it into its controller
    and workers, which may not see the driver's environment; without keys, so that none is
    pickled: each process that unpickles it takes credentials from AWS's default chain."""
    if not is_remote(output):
        return str(Path(output).expanduser().resolve()), None
    if not output.startswith("s3://"):
        filesystem, path = resolve(output)
        return path, filesystem
    import pyarrow.fs as pafs

    env = os.environ.get
    filesystem = pafs.S3FileSystem(
        endpoint_override=env("AWS_ENDPOINT_URL"),
        region=env("AWS_REGION") or env("AWS_DEFAULT_REGION"),
    )
    return output.removeprefix("s3://").rstrip("/"), filesystem


def _finish(
    config: TrainConfig, run_id: str, tracking_uri: str, checkpoint_uri: str, metrics: dict[str, float]
) -> TrainResult:
    """Log the final EMA model with its bundle (registered under `register_as`) and the loss curve."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from training.model_store import log_model

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    final = resolve_model(checkpoint_uri, model_kind(config.model_config()), weights="ema")
    with tempfile.TemporaryDirectory(prefix="mmdiff-finish-") as staging:
        with mlflow.start_run(run_id=run_id):
            model_uri = log_model(final.network, final.bundle, registered_model_name=config.register_as)
            histories = {
                name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)] for name in LOSS_METRICS
            }
            curve = plot_loss_curves(
                {name: points for name, points in histories.items() if points},
                Path(staging) / LOSS_CURVE_FILE,
                title=f"{config.run_name} ({config.task}, {config.model})",
            )
            mlflow.log_artifact(str(curve))
        loss_curve_uri = join(config.output, config.run_name, LOSS_CURVE_FILE)
        write_atomically(loss_curve_uri, curve.read_bytes())
    version = None
    if config.register_as:
        versions = client.search_model_versions(f"name='{config.register_as}' and run_id='{run_id}'")
        version = str(max(int(v.version) for v in versions)) if versions else None
    return TrainResult(
        run_name=config.run_name,
        mlflow_run_id=run_id,
        step=int(metrics.get("step", 0)),
        metrics=metrics,
        checkpoint=checkpoint_uri,
        model_uri=model_uri,
        registered_version=version,
        loss_curve=loss_curve_uri,
    )
