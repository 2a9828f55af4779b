"""MLflow bookkeeping of a training run.

The driver opens the run (or finds the one an earlier attempt of the same run opened) and
logs its parameters; rank 0 of the workers logs metrics into it; the driver closes it by
logging the EMA model, registering it, and attaching the loss curve. Only the run id travels
to the workers (and into every checkpoint), so restarts and reruns continue the same run.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.credentials import redact, redacted
from pipeline.shard_format import manifest_info
from training.config import TrainConfig
from training.selection import ManifestSelection

RUN_KEY_TAG = "mmdiff.run_key"
"""Identifies a training run across attempts: its output URI and run name."""
STOP_TAG = "mmdiff.stop_reason"
"""Set by rank 0 when the loop stops early on purpose (too many non-finite losses): Ray keeps
only checkpointed metrics, so the driver learns why through the run."""
LOSS_METRICS = ("loss", "video_loss", "audio_loss", "mse", "vb")


def resolve_tracking_uri(configured: str | None = None) -> str:
    """The configured URI, else MLFLOW_TRACKING_URI, else a SQLite file in the working folder."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def run_key(config: TrainConfig) -> str:
    return redact(f"{config.output.rstrip('/')}/{config.run_name}")


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_params(config: TrainConfig, shard_count: int, selection: ManifestSelection | None = None) -> dict[str, str]:
    """Everything that defines the run: the whole config, the resolved model config, the data
    and what its `--filter` keeps; redacted (no URI user information, no value of a secret
    variable of the environment)."""
    manifest = manifest_info(config.data)
    params = dict(_flatten(config.to_dict()))
    params.update(_flatten(config.model_config().to_dict(), "model_config."))
    params.update(_flatten(vars(config.diffusion_config()), "diffusion."))
    params.update(
        {
            "data.manifest_uri": manifest.uri,
            "data.manifest_sha256": manifest.sha256,
            "data.shards": str(shard_count),
            "git_commit": git_commit(),
        }
    )
    if selection is not None:
        params["data.filter_kept_clips"] = str(selection.kept_clips)
        params["data.filter_manifest_clips"] = str(selection.manifest_clips)
    return redacted(params)


def _flatten(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", str(value)


def open_run(
    config: TrainConfig, tracking_uri: str, shard_count: int, selection: ManifestSelection | None = None
) -> str:
    """The id of this training run's MLflow run, created with its parameters on the first attempt."""
    import mlflow
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment)
    key = run_key(config).replace("'", "\\'")
    earlier = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if earlier:
        return earlier[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=config.run_name, tags={RUN_KEY_TAG: run_key(config), "mmdiff.task": config.task}
    )
    params = [Param(name, value[:6000]) for name, value in run_params(config, shard_count, selection).items()]
    for first in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=params[first : first + 100])
    return run.info.run_id


class MetricLogger:
    """Rank 0 logs metrics into the run; the other ranks hold a logger that does nothing."""

    def __init__(self, tracking_uri: str, run_id: str, enabled: bool) -> None:
        self.enabled = enabled
        self.run_id = run_id
        if not enabled:
            return
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.start_run(run_id=run_id, log_system_metrics=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_metrics(metrics, step=step)

    def stop(self, reason: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.set_tag(STOP_TAG, reason)

    def close(self, finished: bool) -> None:
        if self.enabled:
            import mlflow

            mlflow.end_run(status="FINISHED" if finished else "FAILED")


def take_stop_reason(tracking_uri: str, run_id: str) -> str | None:
    """The reason the last attempt stopped early, if it did; cleared for the next attempt."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    reason = client.get_run(run_id).data.tags.get(STOP_TAG)
    if reason:
        client.delete_tag(run_id, STOP_TAG)
    return reason
