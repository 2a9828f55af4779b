"""`mmdiff promote`: move the registry alias `champion` to a version that passes every gate
against it, or roll back."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from jobs.evaluate import add_evaluation_arguments, evaluation_config, format_table
from mmdiffusion.bundle import BundledModel
from pipeline.shard_format import DataSplit
from training.evaluation import (
    METRICS,
    EvaluationConfig,
    EvaluationDataError,
    ReferenceClips,
    evaluate,
    metric_mode,
    metric_provenance,
    read_reference_clips,
    split_for,
    stability_warning,
)
from training.registry import (
    Evidence,
    Gate,
    PromotionPolicy,
    RegistryError,
    get_version,
    promote,
    rollback,
    version_of_run,
)
from training.resolver import resolve_model


class RegistryEvaluator:
    """Evaluates registered versions, each on its own reference split (the held-out part with
    the share it was trained with, unless `held_out_share` sets one for all), reading each
    split's clips and loading each model once."""

    def __init__(
        self, data: str, config: EvaluationConfig, part: str, held_out_share: float | None, device: str
    ) -> None:
        self.data, self.config, self.part, self.held_out_share, self.device = data, config, part, held_out_share, device
        self._models: dict[str, BundledModel] = {}
        self._clips: dict[DataSplit, ReferenceClips] = {}
        self.evaluated: dict[str, dict[str, float]] = {}
        self.warnings: list[str] = []

    def model(self, version: ModelVersion) -> BundledModel:
        uri = f"models:/{version.name}/{version.version}"
        if uri not in self._models:
            self._models[uri] = resolve_model(uri, "coupled_unet", device=self.device)
        return self._models[uri]

    def clips(self, version: ModelVersion, part: str | None = None) -> ReferenceClips:
        """Its reference clips (`part`: another part of its split, e.g. `train`)."""
        split = split_for(part or self.part, self.model(version).bundle, self.held_out_share)  # type: ignore[arg-type]
        if split not in self._clips:
            limit = self.config.training_clips if part == "train" else self.config.num_samples
            self._clips[split] = read_reference_clips(self.data, limit, split)
        return self._clips[split]

    def training(self, version: ModelVersion) -> ReferenceClips | None:
        """Its training split's clips, when memorisation is gated."""
        if "memorisation" not in self.config.metrics:
            return None
        return self.clips(version, "train")

    def expected_provenance(self, version: ModelVersion) -> dict[str, str]:
        provenance = metric_provenance(self.config, self.clips(version), self.training(version))
        return {metric: value.to_json() for metric, value in provenance.items()}

    def __call__(self, version: ModelVersion) -> Evidence:
        result = evaluate(self.model(version), self.clips(version), self.config, training=self.training(version))
        self.evaluated[f"{version.name} v{version.version}"] = result.metrics
        for value in result.provenance.values():
            if (warning := stability_warning(value)) is not None and warning not in self.warnings:
                self.warnings.append(warning)
        return Evidence(
            result.metrics,
            {metric: value.to_json() for metric, value in result.provenance.items()},
            result.data_uri,
            result.data_digest,
            result.manifest_sha256,
            result.settings_digest,
        )


def parse_gate(text: str) -> Gate:
    """`METRIC` or `METRIC:TOLERANCE`; the mode is the metric's own direction."""
    metric, _, tolerance = text.partition(":")
    try:
        return Gate(metric, metric_mode(metric), float(tolerance) if tolerance else 0.0)  # type: ignore[arg-type]
    except ValueError as error:
        raise ValueError(f"--gate {text!r}: {error}") from None


def promotion_policy(args: argparse.Namespace) -> PromotionPolicy:
    """From --policy (a YAML file) or the --gate options (default: val_loss alone)."""
    if args.policy is not None:
        if args.gates:
            raise ValueError("give --policy or --gate, not both")
        with Path(args.policy).open() as stream:
            policy = PromotionPolicy.from_mapping(yaml.safe_load(stream), metric_mode)
    else:
        gates = [parse_gate(text) for text in args.gates or ["val_loss"]]
        first = gates[0]
        gates[0] = Gate(first.metric, first.mode, first.tolerance, args.min_improvement)
        policy = PromotionPolicy(tuple(gates))
    unknown = [metric for metric in policy.metrics if metric not in METRICS]
    if unknown:
        raise ValueError(f"gated metrics {unknown} are not among {', '.join(METRICS)}")
    return policy


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiff promote",
        description="Evaluate a candidate version and the current champion with the same provenance (or reuse "
        "values recorded with it); move alias 'champion' to the candidate only when it passes every gate "
        "(no worse than the champion within the gate's tolerance) and improves on one (the old champion "
        "becomes 'previous'), else set 'challenger' and exit 1. Values of different provenance are never "
        "compared (exit 2). --rollback moves 'champion' back one step in the champion history.",
    )
    parser.add_argument("--name", required=True, help="registered model name")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="candidate version")
    which.add_argument("--run", dest="run_id", help="candidate: the newest version created from this run")
    which.add_argument("--rollback", action="store_true", help="move 'champion' back to 'previous' and exit")
    parser.add_argument(
        "--gate",
        "--metric",
        dest="gates",
        action="append",
        help="METRIC[:TOLERANCE], repeatable: the candidate may be worse than the champion on METRIC by at most "
        "TOLERANCE (default 0); the direction is the metric's own (default: one gate, val_loss)",
    )
    parser.add_argument(
        "--policy", default=None, help="YAML file: gates: [{metric, tolerance, min_improvement, mode}, ...]"
    )
    parser.add_argument(
        "--min-improvement",
        type=float,
        default=0.0,
        help="how much better on the first --gate counts as an improvement (absolute)",
    )
    parser.add_argument(
        "--held-out-share",
        type=float,
        default=None,
        help="evaluate every version on this share's split (default: each version's own training share)",
    )
    add_evaluation_arguments(parser, default_metrics=None, data_required=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.rollback and args.data is None:
        parser.error("--data is required to promote (the candidate and the champion are compared on it)")
    client = MlflowClient()
    if args.rollback:
        try:
            print(rollback(client, args.name))
        except RegistryError as error:
            print(f"mmdiff promote: error: {error}", file=sys.stderr)
            return 2
        return 0
    evaluator = None
    try:
        policy = promotion_policy(args)
        config = evaluation_config(args, metrics=policy.metrics)
        candidate = (
            get_version(client, args.name, args.version)
            if args.version
            else version_of_run(client, args.name, args.run_id)
        )
        evaluator = RegistryEvaluator(args.data, config, args.split, args.held_out_share, config.extractors.device)
        decision = promote(client, args.name, candidate, policy, evaluator)
    except (ValueError, FileNotFoundError, EvaluationDataError, RegistryError, yaml.YAMLError) as error:
        print(f"mmdiff promote: error: {error}", file=sys.stderr)
        return 2
    finally:
        for warning in evaluator.warnings if evaluator else ():
            print(f"mmdiff promote: warning: {warning}", file=sys.stderr)
    if evaluator.evaluated:
        print(format_table(evaluator.evaluated))
    print(decision.message)
    return 0 if decision.promoted else 1


if __name__ == "__main__":
    sys.exit(main())
