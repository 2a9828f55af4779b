"""`mmdiff promote` and `mmdiff evaluate` against a real MLflow server and the embedded SQLite
default: register versions, promote the better one, refuse a worse one, roll back, sample by alias."""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from jobs import evaluate as evaluate_job
from jobs import promote as promote_job
from jobs import sample as sample_job
from tests.evaluation.conftest import ReferenceShards, micro_model, same_weights
from training.model_store import log_model
from training.registry import (
    CHALLENGER,
    CHAMPION,
    COMMIT_TAG,
    DATA_DIGEST_TAG,
    MANIFEST_TAG,
    PREVIOUS,
    PromotionPolicy,
    RegistryError,
    rollback,
    version_by_alias,
)
from training.resolver import resolve_model

FAST = ["--num", "1", "--loss-timesteps", "300", "--batch-size", "1"]
"""One clip, one network call per evaluation (see test_evaluation.FAST)."""


def _register(model, name: str) -> str:
    """Log `model` in its own run as a new version of `name`; returns the run id."""
    with mlflow.start_run() as run:
        log_model(model, registered_model_name=name)
    return run.info.run_id


def _alias(client: MlflowClient, name: str, alias: str) -> str | None:
    version = version_by_alias(client, name, alias)
    return None if version is None else str(version.version)  # int from SQLite, str from a server


def test_promote_refuse_rollback_and_sample_by_alias(
    tracking_uri: str, model_name: str, reference_shards: ReferenceShards, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    client = MlflowClient()
    worse, better, worst = micro_model(seed=1, perturbed=True), micro_model(seed=0), micro_model(seed=2, perturbed=True)
    _register(worse, model_name)
    data = ["--data", str(reference_shards.root), *FAST]

    assert promote_job.main(["--name", model_name, "--version", "1", *data]) == 0
    assert _alias(client, model_name, CHAMPION) == "1"

    _register(better, model_name)
    assert (
        promote_job.main(["--name", model_name, "--version", "2", "--metric", "val_loss", "--mode", "min", *data]) == 0
    )
    assert (_alias(client, model_name, CHAMPION), _alias(client, model_name, PREVIOUS)) == ("2", "1")
    tags = client.get_model_version(model_name, "2").tags
    assert float(tags["mmdiff.eval.val_loss"]) < float(
        client.get_model_version(model_name, "1").tags["mmdiff.eval.val_loss"]
    )
    assert tags[DATA_DIGEST_TAG] and len(tags[COMMIT_TAG]) in (40, len("unknown"))
    assert tags[MANIFEST_TAG] == hashlib.sha256((reference_shards.root / "manifest.parquet").read_bytes()).hexdigest()
    assert "promoted" in tags["mmdiff.promotion.decision"]

    worst_run = _register(worst, model_name)
    capsys.readouterr()
    assert promote_job.main(["--name", model_name, "--run", worst_run, *data]) == 1
    assert "not better than the champion" in capsys.readouterr().out
    assert (_alias(client, model_name, CHAMPION), _alias(client, model_name, CHALLENGER)) == ("2", "3")

    assert promote_job.main(["--name", model_name, "--rollback"]) == 0
    assert _alias(client, model_name, CHAMPION) == "1"
    assert same_weights(resolve_model(f"models:/{model_name}@{CHAMPION}", "coupled_unet").network, worse)

    assert (
        sample_job.main(
            [
                "--model",
                f"models:/{model_name}@{CHAMPION}",
                "--output",
                str(tmp_path / "samples"),
                "--num",
                "1",
                "--sampler",
                "ddim",
                "--steps",
                "1",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert list((tmp_path / "samples").rglob("*.mp4"))


def test_evaluate_prints_a_table_and_logs_a_run_linked_to_the_models_run(
    server_tracking_uri: str, model_name: str, reference_shards: ReferenceShards, capsys: pytest.CaptureFixture
) -> None:
    source_run = _register(micro_model(seed=0), model_name)
    MlflowClient().set_registered_model_alias(model_name, CHAMPION, "1")
    uri = f"models:/{model_name}@{CHAMPION}"
    assert evaluate_job.main(["--model", uri, "--data", str(reference_shards.root), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "val_loss" in printed and uri in printed and "logged to MLflow run" in printed
    runs = mlflow.search_runs(
        search_all_experiments=True, output_format="list", filter_string=f"tags.`mmdiff.model_run_id` = '{source_run}'"
    )
    assert len(runs) == 1 and runs[0].data.tags["mmdiff.evaluated_model"] == uri
    assert runs[0].data.metrics["val_loss"] == pytest.approx(2.0, abs=0.1)  # a fresh model predicts zero noise


def test_rollback_without_previous_and_unknown_versions_fail_clearly(
    tracking_uri: str, model_name: str, capsys
) -> None:
    client = MlflowClient()
    _register(micro_model(seed=0), model_name)
    with pytest.raises(RegistryError, match="no 'previous' version"):
        rollback(client, model_name)
    assert promote_job.main(["--name", model_name, "--version", "7", "--data", "unused"]) == 2
    assert "has no version '7'" in capsys.readouterr().err


def test_promotion_policy_needs_a_strict_improvement_beyond_the_margin() -> None:
    lower = PromotionPolicy("val_loss", "min", min_improvement=0.1)
    assert lower.beats(1.0, 1.2) and not lower.beats(1.15, 1.2) and not lower.beats(1.2, 1.2)
    higher = PromotionPolicy("score", "max")
    assert higher.beats(2.0, 1.0) and not higher.beats(1.0, 1.0)
    with pytest.raises(ValueError, match="mode"):
        PromotionPolicy(mode="lowest")  # type: ignore[arg-type]
