"""Metric-gated promotion in the MLflow model registry, with aliases (never stages).

- `champion`: the version that sampling and downstream jobs load (`models:/NAME@champion`).
- `previous`: the champion before the latest promotion, the target of a rollback.
- `challenger`: the latest candidate that did not beat the champion.

Every evaluation used for a decision is recorded as tags on the version
(`mmdiff.eval.<metric>`, the data and its digest, the settings digest, the code commit), so a
decision can be checked later and a version already evaluated on the same data with the same
settings is not evaluated again. A promotion also records on the new champion which version
it replaced, which lets rollbacks go back more than one step.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"

EVAL_TAG = "mmdiff.eval."
DATA_URI_TAG = EVAL_TAG + "data_uri"
DATA_DIGEST_TAG = EVAL_TAG + "data_digest"
MANIFEST_TAG = EVAL_TAG + "data_manifest_sha256"
SETTINGS_TAG = EVAL_TAG + "settings_digest"
COMMIT_TAG = EVAL_TAG + "commit"
REPLACED_TAG = "mmdiff.promotion.replaced_version"
DECISION_TAG = "mmdiff.promotion.decision"


class RegistryError(RuntimeError):
    """The registry does not hold what an operation needs (a version, an alias)."""


@dataclass(frozen=True)
class PromotionPolicy:
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    min_improvement: float = 0.0
    """How much better than the champion a candidate must be (absolute, in metric units)."""

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.min_improvement < 0:
            raise ValueError(f"min_improvement must be >= 0, got {self.min_improvement}")

    def improvement(self, candidate: float, champion: float) -> float:
        """How much better the candidate is (positive: better)."""
        return champion - candidate if self.mode == "min" else candidate - champion

    def beats(self, candidate: float, champion: float) -> bool:
        """Strictly better by more than `min_improvement`; ties never move the champion."""
        improvement = self.improvement(candidate, champion)
        return improvement > 0 and improvement > self.min_improvement


@dataclass(frozen=True)
class Evidence:
    """Where metric values come from: the data (URI, digest of the clips used, the dataset's
    manifest) and the evaluation settings."""

    data_uri: str
    data_digest: str
    manifest_sha256: str
    settings_digest: str

    def tags(self) -> dict[str, str]:
        return {
            DATA_URI_TAG: self.data_uri,
            DATA_DIGEST_TAG: self.data_digest,
            MANIFEST_TAG: self.manifest_sha256,
            SETTINGS_TAG: self.settings_digest,
            COMMIT_TAG: source_commit(),
        }

    def matches(self, version: ModelVersion) -> bool:
        tags = version.tags or {}
        return tags.get(DATA_DIGEST_TAG) == self.data_digest and tags.get(SETTINGS_TAG) == self.settings_digest


Evaluator = Callable[[ModelVersion], Mapping[str, float]]
"""Evaluates one registered version on the evidence's data; returns metric name -> value."""


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    candidate: str
    champion_before: str | None
    candidate_value: float
    champion_value: float | None
    message: str


def source_commit() -> str:
    """The git commit of the running code, or "unknown" outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as error:
        raise RegistryError(f"registered model {name!r} has no version {version!r}") from error


def version_of_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion:
    """The newest version of `name` created from run `run_id`."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        raise RegistryError(f"registered model {name!r} has no version from run {run_id!r}")
    return max(versions, key=lambda version: int(version.version))


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def metric_value(
    client: MlflowClient, version: ModelVersion, metric: str, evidence: Evidence, evaluate: Evaluator
) -> float:
    """The version's metric on the evidence's data: read from its tags when they match the
    data and settings, evaluated (and recorded as tags) otherwise."""
    tag = EVAL_TAG + metric
    if evidence.matches(version) and tag in (version.tags or {}):
        return float(version.tags[tag])
    values = dict(evaluate(version))
    if metric not in values:
        raise RegistryError(
            f"evaluation of {version.name} version {version.version} produced no {metric!r} (got {sorted(values)})"
        )
    record_evaluation(client, version, values, evidence)
    return float(values[metric])


def record_evaluation(
    client: MlflowClient, version: ModelVersion, values: Mapping[str, float], evidence: Evidence
) -> None:
    tags = {EVAL_TAG + name: repr(float(value)) for name, value in values.items()} | evidence.tags()
    for key, value in tags.items():
        client.set_model_version_tag(version.name, str(version.version), key, value)


def promote(
    client: MlflowClient,
    name: str,
    candidate: ModelVersion,
    policy: PromotionPolicy,
    evidence: Evidence,
    evaluate: Evaluator,
) -> PromotionDecision:
    """Move `champion` to `candidate` if it beats the current champion on the same data.

    Promoted: the old champion becomes `previous`. Refused: the candidate becomes
    `challenger` and `champion` stays where it was.
    """
    champion = version_by_alias(client, name, CHAMPION)
    candidate_id = str(candidate.version)  # the SQLite store gives ints, a server strings
    champion_id = None if champion is None else str(champion.version)
    candidate_value = metric_value(client, candidate, policy.metric, evidence, evaluate)
    if champion_id == candidate_id:
        return PromotionDecision(
            True,
            candidate_id,
            champion_id,
            candidate_value,
            candidate_value,
            f"{name} version {candidate_id} already is the champion ({policy.metric}={candidate_value:.6g})",
        )
    if champion is None:
        _make_champion(client, name, candidate, replaced=None)
        message = f"{name} version {candidate_id} is the first champion ({policy.metric}={candidate_value:.6g})"
        client.set_model_version_tag(name, candidate_id, DECISION_TAG, message)
        return PromotionDecision(True, candidate_id, None, candidate_value, None, message)

    champion_value = metric_value(client, champion, policy.metric, evidence, evaluate)
    comparison = (
        f"{policy.metric} {candidate_value:.6g} (version {candidate_id}) vs {champion_value:.6g} "
        f"(champion, version {champion_id}); mode {policy.mode}, min improvement {policy.min_improvement:g}"
    )
    if policy.beats(candidate_value, champion_value):
        _make_champion(client, name, candidate, replaced=champion)
        message = f"promoted {name} version {candidate_id} to champion: {comparison}"
        client.set_model_version_tag(name, candidate_id, DECISION_TAG, message)
        return PromotionDecision(True, candidate_id, champion_id, candidate_value, champion_value, message)

    client.set_registered_model_alias(name, CHALLENGER, candidate_id)
    message = f"{name} version {candidate_id} is not better than the champion: {comparison}; champion unchanged, version {candidate_id} is now {CHALLENGER!r}"
    client.set_model_version_tag(name, candidate_id, DECISION_TAG, message)
    return PromotionDecision(False, candidate_id, champion_id, candidate_value, champion_value, message)


def _make_champion(client: MlflowClient, name: str, candidate: ModelVersion, replaced: ModelVersion | None) -> None:
    candidate_id = str(candidate.version)
    if replaced is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(replaced.version))
        client.set_model_version_tag(name, candidate_id, REPLACED_TAG, str(replaced.version))
    client.set_registered_model_alias(name, CHAMPION, candidate_id)
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is not None and str(challenger.version) == candidate_id:
        client.delete_registered_model_alias(name, CHALLENGER)


def rollback(client: MlflowClient, name: str) -> str:
    """Move `champion` back to `previous`; `previous` then points one step further back
    (the version the restored champion had replaced) or is removed. Returns a message."""
    previous = version_by_alias(client, name, PREVIOUS)
    if previous is None:
        raise RegistryError(f"registered model {name!r} has no {PREVIOUS!r} version to roll back to")
    demoted = version_by_alias(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, str(previous.version))
    earlier = (previous.tags or {}).get(REPLACED_TAG)
    if earlier:
        client.set_registered_model_alias(name, PREVIOUS, earlier)
    else:
        client.delete_registered_model_alias(name, PREVIOUS)
    demoted_text = f" (was version {demoted.version})" if demoted is not None else ""
    return f"rolled {name} back: champion is version {previous.version}{demoted_text}"
