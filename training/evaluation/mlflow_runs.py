"""Evaluation results as MLflow runs, linked to the run that produced the evaluated model."""

from __future__ import annotations

from dataclasses import asdict

from pipeline.credentials import redacted
from training.evaluation.provenance import MetricProvenance
from training.evaluation.scoring import EvaluationConfig, EvaluationResult
from training.resolver import model_source_run

EVALUATION_EXPERIMENT = "mmdiff-evaluation"
"""Where evaluation runs go when the evaluated model has no run of its own (a local file)."""
PROVENANCE_PARAM = "provenance."
"""`provenance.<metric>`: the JSON of the metric's `MetricProvenance`."""
UNSTABLE_TAG = "mmdiff.eval.unstable_metrics"
"""Comma-separated metrics computed on fewer clips than they need to be stable."""
BUNDLE_ARTIFACT = "evaluation/model_bundle.json"
SKIPPED_ARTIFACT = "evaluation/skipped.json"
FIGURES_FOLDER = "evaluation/memorisation"
"""The memorisation score's worst cases, as PNG: generated frames over the nearest training clip's."""


def log_evaluation(result: EvaluationResult, model_uri: str, config: EvaluationConfig) -> str:
    """Log `result` as an evaluation run, in the experiment of the model's run and tagged
    with that run's id (a model with no run here goes to `EVALUATION_EXPERIMENT`), with the
    diffusion it was measured with. Returns the evaluation run's id."""
    import mlflow

    client = mlflow.MlflowClient()
    source_run = model_source_run(model_uri, result.bundle)
    if source_run is not None:
        experiment_id = client.get_run(source_run).info.experiment_id
    else:
        experiment = client.get_experiment_by_name(EVALUATION_EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(EVALUATION_EXPERIMENT)
    tags = {"mmdiff.evaluated_model": model_uri, "mmdiff.run_kind": "evaluation"}
    if source_run is not None:
        tags["mmdiff.model_run_id"] = source_run
    params: dict[str, object] = {
        "data_uri": result.data_uri,
        "data_digest": result.data_digest,
        "data_manifest_sha256": result.manifest_sha256,
        "settings_digest": result.settings_digest,
        "num_clips": result.num_clips,
        "split": result.split.part,
        "held_out_share": result.split.held_out_share,
        "weights": result.weights,
        "metrics": ",".join(config.metrics),
        "loss_timesteps": ",".join(map(str, config.loss_timesteps)),
        "noise_seed": config.noise_seed,
        "condition": config.condition or "none",
    }
    params.update({PROVENANCE_PARAM + metric: value.to_json() for metric, value in result.provenance.items()})
    unstable = [metric for metric, value in result.provenance.items() if not value.stable]
    if unstable:
        tags[UNSTABLE_TAG] = ",".join(unstable)
    if result.bundle is not None:
        params.update({f"diffusion.{key}": value for key, value in asdict(result.bundle.diffusion).items()})
        params["diffusion.origin"] = result.bundle.provenance.diffusion_origin
    with mlflow.start_run(
        experiment_id=experiment_id, run_name="evaluation", tags=redacted(tags), nested=mlflow.active_run() is not None
    ) as run:
        mlflow.log_metrics(result.metrics)
        mlflow.log_params(redacted(params))
        if result.bundle is not None:
            mlflow.log_dict(result.bundle.to_dict(), BUNDLE_ARTIFACT)
        for name, image in result.figures.items():
            mlflow.log_image(image, artifact_file=f"{FIGURES_FOLDER}/{name}")
        if result.skipped:
            mlflow.log_dict({"skipped": result.skipped}, SKIPPED_ARTIFACT)
        return run.info.run_id


def logged_provenance(run_id: str) -> dict[str, MetricProvenance]:
    """The provenance of every metric of the evaluation run `run_id`, as logged."""
    import mlflow

    params = mlflow.MlflowClient().get_run(run_id).data.params
    return {
        key.removeprefix(PROVENANCE_PARAM): MetricProvenance.from_json(value)
        for key, value in params.items()
        if key.startswith(PROVENANCE_PARAM)
    }
