"""`mmdiff promote`: move the registry alias `champion` to a version that beats it, or roll back."""

from __future__ import annotations

import argparse
import sys

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from jobs.evaluate import add_evaluation_arguments, evaluation_config, format_table
from training.evaluation import METRICS, EvaluationDataError, evaluate, read_reference_clips
from training.registry import Evidence, PromotionPolicy, RegistryError, get_version, promote, rollback, version_of_run
from training.resolver import resolve_model


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiff promote",
        description="Evaluate a candidate version and the current champion on the same data (or reuse their "
        "recorded values for the same data and settings); move alias 'champion' to the candidate only "
        "when it is better (the old champion becomes 'previous'), else set 'challenger' and exit 1. "
        "--rollback moves 'champion' back to 'previous'.",
    )
    parser.add_argument("--name", required=True, help="registered model name")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="candidate version")
    which.add_argument("--run", dest="run_id", help="candidate: the newest version created from this run")
    which.add_argument("--rollback", action="store_true", help="move 'champion' back to 'previous' and exit")
    parser.add_argument("--metric", default="val_loss", help="metric that decides (default val_loss)")
    parser.add_argument(
        "--mode",
        choices=("min", "max"),
        default="min",
        help="min: lower is better, as for every built-in metric (default)",
    )
    parser.add_argument(
        "--min-improvement", type=float, default=0.0, help="how much better the candidate must be (absolute)"
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
    try:
        if args.metric not in METRICS:
            raise ValueError(f"--metric {args.metric!r} is not one of {', '.join(METRICS)}")
        policy = PromotionPolicy(args.metric, args.mode, args.min_improvement)
        config = evaluation_config(args, metrics=(args.metric,))
        candidate = (
            get_version(client, args.name, args.version)
            if args.version
            else version_of_run(client, args.name, args.run_id)
        )
        clips = read_reference_clips(args.data, config.num_samples)
        evidence = Evidence(clips.data_uri, clips.digest, clips.manifest_sha256, config.settings_digest())
        evaluated: dict[str, dict[str, float]] = {}

        def evaluate_version(version: ModelVersion) -> dict[str, float]:
            model = resolve_model(
                f"models:/{version.name}/{version.version}", "coupled_unet", device=config.extractors.device
            )
            evaluated[f"{version.name} v{version.version}"] = evaluate(model, clips, config).metrics
            return evaluated[f"{version.name} v{version.version}"]

        decision = promote(client, args.name, candidate, policy, evidence, evaluate_version)
    except (ValueError, FileNotFoundError, EvaluationDataError, RegistryError) as error:
        print(f"mmdiff promote: error: {error}", file=sys.stderr)
        return 2
    if evaluated:
        print(format_table(evaluated))
    print(decision.message)
    return 0 if decision.promoted else 1


if __name__ == "__main__":
    sys.exit(main())
