"""`mmdiff promote` and `mmdiff evaluate` against a real MLflow server and the embedded SQLite
default: register versions, promote the better one, refuse a worse one, roll back, sample by alias."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from jobs import evaluate as evaluate_job
from jobs import promote as promote_job
from jobs import sample as sample_job
from mmdiffusion import ModelBundle, Provenance
from tests.evaluation.conftest import ReferenceShards, micro_model, same_weights
from training.evaluation import MetricProvenance
from training.model_store import log_model
from training.registry import (
    CHALLENGER,
    CHAMPION,
    COMMIT_TAG,
    DATA_DIGEST_TAG,
    MANIFEST_TAG,
    PREVIOUS,
    Evidence,
    Gate,
    PromotionPolicy,
    ProvenanceMismatch,
    RegistryError,
    champion_history,
    promote,
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
    assert promote_job.main(["--name", model_name, "--version", "2", "--gate", "val_loss", *data]) == 0
    assert (_alias(client, model_name, CHAMPION), _alias(client, model_name, PREVIOUS)) == ("2", "1")
    tags = client.get_model_version(model_name, "2").tags
    assert float(tags["mmdiff.eval.val_loss"]) < float(
        client.get_model_version(model_name, "1").tags["mmdiff.eval.val_loss"]
    )
    assert tags[DATA_DIGEST_TAG] and len(tags[COMMIT_TAG]) in (40, len("unknown"))
    assert tags[MANIFEST_TAG] == hashlib.sha256((reference_shards.root / "manifest.parquet").read_bytes()).hexdigest()
    assert "promoted" in tags["mmdiff.promotion.decision"]
    assert tags["mmdiff.promotion.gate.val_loss"].startswith("pass, improves: val_loss")
    recorded = MetricProvenance.from_json(tags["mmdiff.eval.val_loss.provenance"])
    assert (recorded.reference_split, recorded.num_reference) == ("held_out 0.05", 1)

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


def test_gates_need_no_worse_within_tolerance_and_one_strict_improvement() -> None:
    lower = Gate("val_loss", "min", tolerance=0.05, min_improvement=0.1)
    assert lower.improves(1.0, 1.2) and not lower.improves(1.15, 1.2) and not lower.improves(1.2, 1.2)
    assert lower.passes(1.24, 1.2) and not lower.passes(1.26, 1.2)
    higher = Gate("sync", "max")
    assert higher.improves(0.6, 0.5) and not higher.improves(0.5, 0.5) and not higher.passes(0.49, 0.5)
    with pytest.raises(ValueError, match="mode"):
        Gate("val_loss", mode="lowest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="once"):
        PromotionPolicy((Gate("fvd"), Gate("fvd")))
    policy = PromotionPolicy.from_mapping(
        {"gates": ["val_loss", {"metric": "sync", "tolerance": 0.02}]}, lambda m: "max" if m == "sync" else "min"
    )
    assert policy.gates == (Gate("val_loss"), Gate("sync", "max", 0.02))


def _provenance(metric: str, split: str = "held_out 0.05") -> str:
    return MetricProvenance(
        metric,
        "i3d-kinetics-400",
        "ab" * 32,
        "logits",
        "10 fps",
        "bilinear",
        64,
        64,
        split,
        "cd" * 32,
        "keys",
        "ddim 5 steps",
    ).to_json()


class TableEvaluator:
    """Evaluates a version by looking up its values: the registry's decisions on chosen numbers.
    `splits` gives a version another reference split (as another training share would)."""

    def __init__(self, values: dict[str, dict[str, float]], splits: dict[str, str] | None = None) -> None:
        self.values, self.splits, self.calls = values, splits or {}, Counter()

    def expected_provenance(self, version) -> dict[str, str]:
        split = self.splits.get(str(version.version), "held_out 0.05")
        return {metric: _provenance(metric, split) for metric in self.values[str(version.version)]}

    def __call__(self, version) -> Evidence:
        self.calls[str(version.version)] += 1
        values = self.values[str(version.version)]
        return Evidence(values, self.expected_provenance(version), "data", "digest", "manifest", "settings")


def test_multi_gate_promotion_and_two_step_rollback_against_a_server(server_tracking_uri: str, model_name: str) -> None:
    client = MlflowClient()
    for _ in range(5):
        _register(micro_model(seed=0), model_name)
    evaluator = TableEvaluator(
        {
            "1": {"val_loss": 1.0, "fvd": 100.0, "sync": 0.5},
            "2": {"val_loss": 0.9, "fvd": 105.0, "sync": 0.5},  # fvd worse, within its tolerance
            "3": {"val_loss": 0.8, "fvd": 120.0, "sync": 0.5},  # fvd worse beyond it
            "4": {"val_loss": 0.85, "fvd": 100.0, "sync": 0.6},
            "5": {"val_loss": 0.1, "fvd": 1.0, "sync": 0.9},
        },
        splits={"5": "held_out 0.1"},
    )
    policy = PromotionPolicy((Gate("val_loss"), Gate("fvd", "min", 10.0), Gate("sync", "max")))

    def decide(version: str):
        return promote(client, model_name, client.get_model_version(model_name, version), policy, evaluator)

    assert decide("1").promoted and _alias(client, model_name, CHAMPION) == "1"
    assert decide("2").promoted
    gates = {key: value for key, value in client.get_model_version(model_name, "2").tags.items() if "gate." in key}
    assert sorted(gates) == [f"mmdiff.promotion.gate.{metric}" for metric in ("fvd", "sync", "val_loss")]
    assert gates["mmdiff.promotion.gate.fvd"].startswith("pass: fvd 105 vs 100 (champion, version 1)")
    assert gates["mmdiff.promotion.gate.val_loss"].startswith("pass, improves")
    refused = decide("3")
    assert not refused.promoted and "worse beyond tolerance on fvd" in refused.message
    assert client.get_model_version(model_name, "3").tags["mmdiff.promotion.gate.fvd"].startswith("FAIL")
    assert (_alias(client, model_name, CHAMPION), _alias(client, model_name, CHALLENGER)) == ("2", "3")
    assert decide("4").promoted
    assert evaluator.calls["2"] == 1  # the champion's values were read back from its tags, provenance and all
    assert champion_history(client, model_name) == ["1", "2", "4"]
    assert (_alias(client, model_name, CHAMPION), _alias(client, model_name, PREVIOUS)) == ("4", "2")

    with pytest.raises(ProvenanceMismatch, match=r"reference_split: held_out 0.1 vs held_out 0.05"):
        decide("5")  # far better numbers, but measured on other clips: not compared
    assert _alias(client, model_name, CHAMPION) == "4"

    assert "champion is version 2" in rollback(client, model_name)
    assert (_alias(client, model_name, CHAMPION), _alias(client, model_name, PREVIOUS)) == ("2", "1")
    assert "champion is version 1" in rollback(client, model_name)
    assert (_alias(client, model_name, CHAMPION), _alias(client, model_name, PREVIOUS)) == ("1", None)
    with pytest.raises(RegistryError, match="no 'previous' version"):
        rollback(client, model_name)
    assert decide("4").promoted  # after the rollbacks, 'previous' is the champion it replaced
    assert (_alias(client, model_name, CHAMPION), _alias(client, model_name, PREVIOUS)) == ("4", "1")


def test_promote_refuses_versions_measured_on_different_splits_and_takes_a_yaml_policy(
    embedded_tracking_uri: str, model_name: str, reference_shards: ReferenceShards, tmp_path: Path, capsys
) -> None:
    for network, share in ((micro_model(seed=1, perturbed=True), None), (micro_model(seed=0), 0.5)):
        bundle = ModelBundle.describe(network.config, None, Provenance(held_out_share=share))
        with mlflow.start_run():
            log_model(network, bundle, registered_model_name=model_name)
    data = ["--data", str(reference_shards.root), *FAST]
    assert promote_job.main(["--name", model_name, "--version", "1", *data]) == 0
    capsys.readouterr()
    assert promote_job.main(["--name", model_name, "--version", "2", *data]) == 2
    error = capsys.readouterr().err
    assert "different provenance" in error and "reference_split: held_out 0.5 vs held_out 0.05" in error
    assert _alias(client := MlflowClient(), model_name, CHAMPION) == "1"

    policy = tmp_path / "policy.yaml"
    policy.write_text("gates:\n  - metric: val_loss\n    min_improvement: 0.1\n")
    argv = ["--name", model_name, "--version", "2", "--policy", str(policy), "--held-out-share", "0.05", *data]
    assert promote_job.main(argv) == 0  # both on the clips held out from both
    assert (_alias(client, model_name, CHAMPION), _alias(client, model_name, PREVIOUS)) == ("2", "1")
    assert "min improvement 0.1" in client.get_model_version(model_name, "2").tags["mmdiff.promotion.gate.val_loss"]
