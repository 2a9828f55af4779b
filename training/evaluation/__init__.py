"""Evaluating a model on held-out clips: reference data (`reference`), scoring (`scoring`:
the held-out loss and FVD, KVD, FAD of the model's samples) and logging (`mlflow_runs`)."""

from training.evaluation.mlflow_runs import EVALUATION_EXPERIMENT, log_evaluation, logged_provenance
from training.evaluation.provenance import MIN_STABLE_N, MetricProvenance, stability_warning
from training.evaluation.reference import EvaluationDataError, ReferenceClips, read_reference_clips, split_for
from training.evaluation.scoring import (
    CONDITIONS,
    METRICS,
    REPORTED,
    EvaluationConfig,
    EvaluationResult,
    Generator,
    SamplerGenerator,
    condition_of,
    distribution_metrics,
    evaluate,
    held_out_loss,
    metric_mode,
    metric_provenance,
    reported_by,
)

__all__ = [
    "CONDITIONS",
    "EVALUATION_EXPERIMENT",
    "METRICS",
    "MIN_STABLE_N",
    "REPORTED",
    "EvaluationConfig",
    "EvaluationDataError",
    "EvaluationResult",
    "Generator",
    "MetricProvenance",
    "ReferenceClips",
    "SamplerGenerator",
    "condition_of",
    "distribution_metrics",
    "evaluate",
    "held_out_loss",
    "log_evaluation",
    "logged_provenance",
    "metric_mode",
    "metric_provenance",
    "read_reference_clips",
    "reported_by",
    "split_for",
    "stability_warning",
]
