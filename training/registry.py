"""Metric-gated promotion in the MLflow model registry, with aliases (never stages).

- `champion`: the version that sampling and downstream jobs load (`models:/NAME@champion`).
- `previous`: the champion before the latest promotion, the target of a rollback.
- `challenger`: the latest candidate that did not beat the champion.

A promotion is judged on gates over several metrics (`PromotionPolicy`): the candidate must be
no worse than the champion on each, within the gate's tolerance, and better on at least one.
Every evaluation used for a decision is recorded as tags on the version (`mmdiff.eval.<metric>`
with its provenance, the data and its digest, the settings digest, the code commit), and the
evidence of each gate as `mmdiff.promotion.gate.<metric>`, so a decision can be checked later.
A version already evaluated with the provenance an evaluation now would give is not evaluated
again; values of different provenance are never compared. The registered model keeps the
history of its champions (`mmdiff.champion_history`), which rollbacks walk back.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

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
PROVENANCE_SUFFIX = ".provenance"
"""`mmdiff.eval.<metric>.provenance`: the JSON of the value's provenance."""
NOT_COMPARED = frozenset({"stable"})
"""Provenance fields that are recorded but never make values incomparable."""
REPLACED_TAG = "mmdiff.promotion.replaced_version"
DECISION_TAG = "mmdiff.promotion.decision"
GATE_TAG = "mmdiff.promotion.gate."
"""`mmdiff.promotion.gate.<metric>`: the evidence of one gate at the candidate's promotion decision."""
ROLLED_BACK_TAG = "mmdiff.promotion.rolled_back"
HISTORY_TAG = "mmdiff.champion_history"
"""On the registered model: the versions that were champion, comma-separated, oldest first."""
HISTORY_LENGTH = 200


class RegistryError(RuntimeError):
    """The registry does not hold what an operation needs (a version, an alias)."""


@dataclass(frozen=True)
class Gate:
    """One metric a candidate is judged on against the champion."""

    metric: str
    mode: Literal["min", "max"] = "min"
    tolerance: float = 0.0
    """How much worse than the champion the candidate may be and still pass (metric units)."""
    min_improvement: float = 0.0
    """How much better than the champion counts as an improvement (metric units)."""

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"gate {self.metric}: mode must be 'min' or 'max', got {self.mode!r}")
        for name in ("tolerance", "min_improvement"):
            if getattr(self, name) < 0:
                raise ValueError(f"gate {self.metric}: {name} must be >= 0, got {getattr(self, name)}")

    def improvement(self, candidate: float, champion: float) -> float:
        """How much better the candidate is (positive: better)."""
        return champion - candidate if self.mode == "min" else candidate - champion

    def passes(self, candidate: float, champion: float) -> bool:
        """No worse than the champion by more than the tolerance."""
        return self.improvement(candidate, champion) >= -self.tolerance

    def improves(self, candidate: float, champion: float) -> bool:
        """Strictly better by more than `min_improvement`; a tie is no improvement."""
        improvement = self.improvement(candidate, champion)
        return improvement > 0 and improvement > self.min_improvement

    def describe(self) -> str:
        return f"{self.metric} ({self.mode}, tolerance {self.tolerance:g}, min improvement {self.min_improvement:g})"


@dataclass(frozen=True)
class PromotionPolicy:
    """The candidate is promoted when it passes every gate (no worse than the champion beyond
    the gate's tolerance) and improves on at least one, so ties never move the champion."""

    gates: tuple[Gate, ...] = (Gate("val_loss"),)

    def __post_init__(self) -> None:
        if not self.gates:
            raise ValueError("a promotion policy needs at least one gate")
        metrics = [gate.metric for gate in self.gates]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"each metric may be gated once, got {', '.join(metrics)}")

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(gate.metric for gate in self.gates)

    @classmethod
    def from_mapping(cls, policy: Mapping[str, Any], modes: Callable[[str], str]) -> PromotionPolicy:
        """From a YAML/JSON policy `{gates: [{metric, tolerance, min_improvement, mode}, ...]}`;
        `modes(metric)` gives a gate's mode when the policy does not."""
        gates = policy.get("gates") if isinstance(policy, Mapping) else None
        if not isinstance(gates, list) or not gates:
            raise ValueError("a promotion policy is a mapping with a non-empty list 'gates'")
        parsed = []
        for entry in gates:
            entry = {"metric": entry} if isinstance(entry, str) else entry
            unknown = set(entry) - {"metric", "mode", "tolerance", "min_improvement"}
            if "metric" not in entry or unknown:
                raise ValueError(f"gate {entry!r}: needs 'metric'; unknown keys {sorted(unknown)}")
            parsed.append(
                Gate(
                    str(entry["metric"]),
                    entry.get("mode", modes(str(entry["metric"]))),
                    float(entry.get("tolerance", 0.0)),
                    float(entry.get("min_improvement", 0.0)),
                )
            )
        return cls(tuple(parsed))


@dataclass(frozen=True)
class Evidence:
    """The values of one evaluation of a version and where they come from: the data (URI,
    digest of the clips used, the dataset's manifest), the settings, and the provenance of
    each metric (JSON of `training.evaluation.MetricProvenance`, compared as text here)."""

    values: Mapping[str, float]
    provenance: Mapping[str, str]
    """Metric -> provenance JSON."""
    data_uri: str
    data_digest: str
    manifest_sha256: str
    settings_digest: str

    def tags(self) -> dict[str, str]:
        return (
            {EVAL_TAG + name: repr(float(value)) for name, value in self.values.items()}
            | {EVAL_TAG + metric + PROVENANCE_SUFFIX: text for metric, text in self.provenance.items()}
            | {
                DATA_URI_TAG: self.data_uri,
                DATA_DIGEST_TAG: self.data_digest,
                MANIFEST_TAG: self.manifest_sha256,
                SETTINGS_TAG: self.settings_digest,
                COMMIT_TAG: source_commit(),
            }
        )


class VersionEvaluator(Protocol):
    """Evaluates registered versions for a promotion."""

    def expected_provenance(self, version: ModelVersion) -> Mapping[str, str]:
        """Metric -> the provenance JSON an evaluation of `version` would give now."""
        ...

    def __call__(self, version: ModelVersion) -> Evidence:
        """Evaluate `version` on every gated metric."""
        ...


class ProvenanceMismatch(RegistryError):
    """The candidate's and the champion's values of a metric come from different provenance."""


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    candidate: float
    champion: float

    @property
    def passed(self) -> bool:
        return self.gate.passes(self.candidate, self.champion)

    @property
    def improved(self) -> bool:
        return self.gate.improves(self.candidate, self.champion)

    def describe(self, champion_id: str) -> str:
        verdict = "pass" if self.passed else "FAIL"
        better = ", improves" if self.improved else ""
        return (
            f"{verdict}{better}: {self.gate.metric} {self.candidate:.6g} vs {self.champion:.6g} (champion, version "
            f"{champion_id}); {self.gate.mode}, tolerance {self.gate.tolerance:g}, "
            f"min improvement {self.gate.min_improvement:g}"
        )


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    candidate: str
    champion_before: str | None
    candidate_values: dict[str, float]
    champion_values: dict[str, float] | None
    message: str
    gates: tuple[GateResult, ...] = ()


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


def gated_values(
    client: MlflowClient, version: ModelVersion, policy: PromotionPolicy, evaluate: VersionEvaluator
) -> tuple[dict[str, float], dict[str, str]]:
    """The version's value and provenance of every gated metric: read from its tags when they
    were recorded with the provenance an evaluation now would give, evaluated (and recorded as
    tags) otherwise."""
    tags = version.tags or {}
    expected = evaluate.expected_provenance(version)
    recorded = all(
        EVAL_TAG + metric in tags and tags.get(EVAL_TAG + metric + PROVENANCE_SUFFIX) == expected[metric]
        for metric in policy.metrics
    )
    if recorded:
        return {m: float(tags[EVAL_TAG + m]) for m in policy.metrics}, {m: expected[m] for m in policy.metrics}
    evidence = evaluate(version)
    missing = [metric for metric in policy.metrics if metric not in evidence.values]
    if missing:
        raise RegistryError(
            f"evaluation of {version.name} version {version.version} produced no {', '.join(missing)} "
            f"(got {sorted(evidence.values)})"
        )
    for key, value in evidence.tags().items():
        client.set_model_version_tag(version.name, str(version.version), key, value)
    return (
        {m: float(evidence.values[m]) for m in policy.metrics},
        {m: evidence.provenance[m] for m in policy.metrics},
    )


def provenance_differences(candidate: Mapping[str, str], champion: Mapping[str, str]) -> dict[str, list[str]]:
    """Metric -> the fields whose provenance differs (`field: candidate's vs champion's`)."""
    differences = {}
    for metric, text in candidate.items():
        mine, theirs = json.loads(text), json.loads(champion[metric])
        fields = [
            f"{key}: {mine.get(key)} vs {theirs.get(key)}"
            for key in sorted(set(mine) | set(theirs))
            if key not in NOT_COMPARED and mine.get(key) != theirs.get(key)
        ]
        if fields:
            differences[metric] = fields
    return differences


def promote(
    client: MlflowClient, name: str, candidate: ModelVersion, policy: PromotionPolicy, evaluate: VersionEvaluator
) -> PromotionDecision:
    """Move `champion` to `candidate` if it passes every gate of `policy` against the current
    champion and improves on at least one.

    Promoted: the old champion becomes `previous` and the candidate goes on top of the
    champion history. Refused: the candidate becomes `challenger` and `champion` stays. Values
    computed under different provenance are never compared: `ProvenanceMismatch`, naming the
    fields that differ. The evidence of every gate goes in the candidate's tags.
    """
    champion = version_by_alias(client, name, CHAMPION)
    candidate_id = str(candidate.version)  # the SQLite store gives ints, a server strings
    champion_id = None if champion is None else str(champion.version)
    values, provenance = gated_values(client, candidate, policy, evaluate)
    summary = ", ".join(f"{metric}={value:.6g}" for metric, value in values.items())
    if champion_id == candidate_id:
        message = f"{name} version {candidate_id} already is the champion ({summary})"
        return PromotionDecision(True, candidate_id, champion_id, values, values, message)
    if champion is None:
        _make_champion(client, name, candidate, replaced=None)
        message = f"{name} version {candidate_id} is the first champion ({summary})"
        client.set_model_version_tag(name, candidate_id, DECISION_TAG, message)
        return PromotionDecision(True, candidate_id, None, values, None, message)

    champion_values, champion_provenance = gated_values(client, champion, policy, evaluate)
    differences = provenance_differences(provenance, champion_provenance)
    if differences:
        named = "; ".join(f"{metric}: {', '.join(fields)}" for metric, fields in differences.items())
        raise ProvenanceMismatch(
            f"{name} version {candidate_id} and the champion (version {champion_id}) were measured under different "
            f"provenance, so they are not compared (candidate vs champion): {named}"
        )
    results = tuple(GateResult(gate, values[gate.metric], champion_values[gate.metric]) for gate in policy.gates)
    for result in results:
        client.set_model_version_tag(name, candidate_id, GATE_TAG + result.gate.metric, result.describe(champion_id))
    comparison = "; ".join(result.describe(champion_id) for result in results)
    failed = [result.gate.metric for result in results if not result.passed]
    if not failed and any(result.improved for result in results):
        _make_champion(client, name, candidate, replaced=champion)
        message = f"promoted {name} version {candidate_id} to champion: {comparison}"
        client.set_model_version_tag(name, candidate_id, DECISION_TAG, message)
        return PromotionDecision(True, candidate_id, champion_id, values, champion_values, message, results)

    client.set_registered_model_alias(name, CHALLENGER, candidate_id)
    why = f"worse beyond tolerance on {', '.join(failed)}" if failed else "no gate improves"
    message = (
        f"{name} version {candidate_id} is not better than the champion ({why}): {comparison}; champion "
        f"unchanged, version {candidate_id} is now {CHALLENGER!r}"
    )
    client.set_model_version_tag(name, candidate_id, DECISION_TAG, message)
    return PromotionDecision(False, candidate_id, champion_id, values, champion_values, message, results)


def champion_history(client: MlflowClient, name: str) -> list[str]:
    """The versions that were champion, oldest first, the current one last: the registered
    model's `HISTORY_TAG`; for a registry from before it existed, `previous` and `champion`."""
    try:
        tags = client.get_registered_model(name).tags or {}
    except MlflowException as error:
        raise RegistryError(f"no registered model {name!r}") from error
    if HISTORY_TAG in tags:
        return [entry for entry in tags[HISTORY_TAG].split(",") if entry]
    return [
        str(version.version)
        for version in (version_by_alias(client, name, PREVIOUS), version_by_alias(client, name, CHAMPION))
        if version is not None
    ]


def _set_history(client: MlflowClient, name: str, history: list[str]) -> None:
    """Store the history (the newest `HISTORY_LENGTH`) and point `champion` and `previous` at its
    last two entries (`previous` removed when there is only one)."""
    history = history[-HISTORY_LENGTH:]
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
    client.set_registered_model_alias(name, CHAMPION, history[-1])
    if len(history) > 1:
        client.set_registered_model_alias(name, PREVIOUS, history[-2])
    elif version_by_alias(client, name, PREVIOUS) is not None:
        client.delete_registered_model_alias(name, PREVIOUS)


def _make_champion(client: MlflowClient, name: str, candidate: ModelVersion, replaced: ModelVersion | None) -> None:
    candidate_id = str(candidate.version)
    history = champion_history(client, name)
    if replaced is not None:
        client.set_model_version_tag(name, candidate_id, REPLACED_TAG, str(replaced.version))
        if not history or history[-1] != str(replaced.version):
            history.append(str(replaced.version))
    _set_history(client, name, [*history, candidate_id])
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is not None and str(challenger.version) == candidate_id:
        client.delete_registered_model_alias(name, CHALLENGER)


def rollback(client: MlflowClient, name: str) -> str:
    """Move `champion` back to the champion before it (`previous`); `previous` then points one
    step further back in the champion history, or is removed. Repeated rollbacks walk the
    history back to the first champion. Returns a message."""
    history = champion_history(client, name)
    if len(history) < 2:
        raise RegistryError(f"registered model {name!r} has no {PREVIOUS!r} version to roll back to")
    demoted = history.pop()
    _set_history(client, name, history)
    client.set_model_version_tag(name, demoted, ROLLED_BACK_TAG, f"rolled back to version {history[-1]}")
    earlier = f"; previous is version {history[-2]}" if len(history) > 1 else "; no earlier champion"
    return f"rolled {name} back: champion is version {history[-1]} (was version {demoted}){earlier}"
