"""Evaluating a model on held-out clips: reference data (`reference`), scoring (`scoring`:
the held-out loss and FVD, KVD, FAD of the model's samples) and logging (`mlflow_runs`)."""

from training.evaluation.mlflow_runs import EVALUATION_EXPERIMENT, log_evaluation
from training.evaluation.reference import EvaluationDataError, ReferenceClips, read_reference_clips, split_for
from training.evaluation.scoring import (
    METRICS,
    EvaluationConfig,
    EvaluationResult,
    Generator,
    SamplerGenerator,
    distribution_metrics,
    evaluate,
    held_out_loss,
)

__all__ = [
    "EVALUATION_EXPERIMENT",
    "METRICS",
    "EvaluationConfig",
    "EvaluationDataError",
    "EvaluationResult",
    "Generator",
    "ReferenceClips",
    "SamplerGenerator",
    "distribution_metrics",
    "evaluate",
    "held_out_loss",
    "log_evaluation",
    "read_reference_clips",
    "split_for",
]
