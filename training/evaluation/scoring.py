"""Scoring a model on reference clips: the diffusion loss on identical work, and the
distribution metrics (FVD, KVD, FAD) of its samples against the clips.

The held-out loss uses fixed timesteps and noise drawn from a generator seeded per clip, so
two models evaluated with the same settings on the same clips do exactly the same work and
their numbers compare directly. Both the loss and the samples use the model's own diffusion
process, from its bundle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mmdiffusion.bundle import BundledModel, ModelBundle
from mmdiffusion.constants import FPS, SAMPLE_RATE
from mmdiffusion.device import DeviceSettings, Precision, device_settings
from mmdiffusion.diffusion import GaussianDiffusion
from mmdiffusion.media import video_from_uint8, video_to_uint8
from mmdiffusion.metrics import (
    ExtractorConfig,
    audio_feature_source,
    build_audio_extractor,
    build_video_extractor,
    frechet_distance_of_features,
    mmd2_unbiased,
    video_feature_source,
)
from mmdiffusion.pipeline import MMDiffusionPipeline
from mmdiffusion.sampling import SamplerConfig, ZeroShotCondition
from pipeline.shard_format import DataSplit
from training.evaluation import sync
from training.evaluation.memorisation import memorisation_metrics
from training.evaluation.provenance import MIN_STABLE_N, MetricProvenance
from training.evaluation.reference import HELD_OUT, EvaluationDataError, ReferenceClips
from training.evaluation.sync import sync_metrics

METRICS = ("val_loss", "fvd", "kvd", "fad", "sync", "memorisation")
"""What `--metrics` names; each reports the values of `REPORTED`."""
REPORTED: dict[str, tuple[str, ...]] = {
    "val_loss": ("val_loss", "val_video_loss", "val_audio_loss"),
    "fvd": ("fvd",),
    "kvd": ("kvd",),
    "fad": ("fad",),
    "sync": ("sync", "sync_reference", "sync_mismatched"),
    "memorisation": ("memorisation", "memorisation_feature", "memorisation_pixel", "memorisation_ratio"),
}
"""The values each metric reports: the first is the metric itself, the others stand beside it."""
HIGHER_IS_BETTER: frozenset[str] = frozenset({"sync"})
"""Metrics for which higher is better; every other one is lower-is-better."""


def metric_mode(metric: str) -> str:
    """`max` for a higher-is-better metric, else `min`."""
    return "max" if metric in HIGHER_IS_BETTER else "min"


def reported_by(name: str) -> str:
    """The metric that reports the value `name` (e.g. `val_loss` for `val_video_loss`)."""
    for metric, names in REPORTED.items():
        if name in names:
            return metric
    raise ValueError(f"{name!r} is not a value any metric reports; metrics: {', '.join(METRICS)}")


Generator = Callable[[int], tuple[np.ndarray, np.ndarray]]
"""`generate(n) -> (video uint8 [n, F, H, W, 3], audio float [n, 1, L] in [-1, 1])`."""
CONDITIONS = ("audio", "video")
NOT_GENERATED: dict[str, frozenset[str]] = {
    "audio": frozenset({"fad"}),
    "video": frozenset({"fvd", "kvd", "memorisation"}),
}
"""Metrics of the modality a zero-shot condition supplies: they would measure the condition."""


@dataclass(frozen=True)
class EvaluationConfig:
    metrics: tuple[str, ...] = ("val_loss",)
    num_samples: int = 16
    """Reference clips read (and samples generated) for the evaluation; FVD, KVD and FAD
    need at least 2, the held-out loss alone works with 1."""
    loss_timesteps: tuple[int, ...] = (50, 250, 500, 750, 950)
    """Diffusion steps at which every clip's loss is measured (below the model's step count)."""
    noise_seed: int = 0
    batch_size: int = 4
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """How samples are generated for FVD/KVD/FAD (seeded with `noise_seed`)."""
    extractors: ExtractorConfig = field(default_factory=ExtractorConfig)
    condition: str | None = None
    """Zero-shot evaluation: `audio` (each reference clip's audio given, its video generated:
    a→v) or `video` (v→a); None samples both jointly."""
    training_clips: int = 64
    """Training-split clips searched for each generated clip's nearest neighbour (memorisation)."""

    precision: Precision = "auto"
    """Autocast of the evaluated network (`mmdiffusion.device`): auto is bf16 on a CUDA device
    that supports it, fp32 elsewhere. The feature networks run as they are."""

    def __post_init__(self) -> None:
        self.device_settings()  # a bad precision, or bf16 where the device has none, fails here
        if self.condition is not None and self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {', '.join(CONDITIONS)} or None, got {self.condition!r}")
        measured = sorted(NOT_GENERATED.get(self.condition or "", frozenset()) & set(self.metrics))
        if measured:
            raise ValueError(
                f"with the {self.condition} given as the condition, {', '.join(measured)} would measure the "
                "condition itself, not what the model generates"
            )
        if self.training_clips < 1:
            raise ValueError(f"training_clips must be >= 1, got {self.training_clips}")
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown or not self.metrics:
            raise ValueError(f"unknown metrics {unknown or '(none given)'}; choose from {', '.join(METRICS)}")
        minimum = 2 if set(self.metrics) - {"val_loss"} else 1
        if self.num_samples < minimum:
            raise ValueError(
                f"num_samples must be >= {minimum} for metrics {', '.join(self.metrics)}, got {self.num_samples}"
            )
        if not self.loss_timesteps or min(self.loss_timesteps) < 0:
            raise ValueError(f"loss_timesteps must be diffusion steps >= 0, got {self.loss_timesteps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def device_settings(self) -> DeviceSettings:
        return device_settings(self.extractors.device, self.precision)

    def settings_digest(self) -> str:
        """Identifies the evaluation settings: equal digests on equal data mean comparable numbers.
        The precision the network ran at counts (fp32, as before it was a setting, adds nothing)."""
        precision = self.device_settings().precision
        settings = {
            **({} if precision == "fp32" else {"precision": precision}),
            "num_samples": self.num_samples,
            "loss_timesteps": list(self.loss_timesteps),
            "noise_seed": self.noise_seed,
            "batch_size": self.batch_size,
            "sampler": asdict(self.sampler),
            "condition": self.condition,
            "training_clips": self.training_clips,
            "extractors": {
                key: value for key, value in asdict(self.extractors).items() if key not in ("batch_size", "device")
            },
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class EvaluationResult:
    metrics: dict[str, float]
    data_uri: str
    data_digest: str
    manifest_sha256: str
    settings_digest: str
    num_clips: int
    skipped: list[str]
    provenance: dict[str, MetricProvenance] = field(default_factory=dict)
    """Per metric of the evaluation (not per reported value): where its values come from."""
    figures: dict[str, np.ndarray] = field(default_factory=dict)
    """Artifact name -> RGB image: the memorisation score's worst cases."""
    bundle: ModelBundle | None = None
    """The evaluated model's bundle: its diffusion is the one the numbers were measured with."""
    split: DataSplit = HELD_OUT
    """The part of the data the reference clips came from."""

    @property
    def weights(self) -> str:
        """Which weights were scored: `ema`, `raw`, or `unknown` when the model does not say."""
        return (self.bundle.provenance.weights if self.bundle is not None else None) or "unknown"


_Work = tuple[int, int, torch.Tensor, torch.Tensor]
"""(clip index, timestep, video noise, audio noise)"""


@torch.no_grad()
def held_out_loss(model: BundledModel, clips: ReferenceClips, config: EvaluationConfig) -> dict[str, float]:
    """Mean joint, video and audio diffusion loss over every clip × every fixed timestep,
    with the model's own diffusion process.

    Clip i's noise comes from a generator seeded with (noise_seed, i), in timestep order, so
    it does not depend on the batch size or on the model. Randomness inside the network (the
    RS-MMA random shift) draws from torch's global generator, seeded with `noise_seed` here, so
    with the same batch size it is the same for every model too.
    """
    diffusion = model.diffusion
    if max(config.loss_timesteps) >= diffusion.num_steps:
        raise ValueError(
            f"loss_timesteps must lie in 0..{diffusion.num_steps - 1} for {model.source} "
            f"(its diffusion has {diffusion.num_steps} steps), got {config.loss_timesteps}"
        )
    frames, height, width, channels = clips.video.shape[1:]
    work: list[_Work] = []
    for index in range(len(clips)):
        generator = torch.Generator().manual_seed(config.noise_seed * 1_000_003 + index)
        for t in config.loss_timesteps:
            video_noise = torch.randn((frames, channels, height, width), generator=generator)
            audio_noise = torch.randn(clips.audio.shape[1:], generator=generator)
            work.append((index, t, video_noise, audio_noise))
    totals = {"loss": 0.0, "video_loss": 0.0, "audio_loss": 0.0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.noise_seed)
        for start in range(0, len(work), config.batch_size):
            _add_batch_loss(model.network, diffusion, work[start : start + config.batch_size], clips, totals)
    return {f"val_{name}": total / len(work) for name, total in totals.items()}


def _add_batch_loss(
    network: torch.nn.Module,
    diffusion: GaussianDiffusion,
    batch: list[_Work],
    clips: ReferenceClips,
    totals: dict[str, float],
) -> None:
    device = next(network.parameters()).device
    indices = [index for index, *_ in batch]
    video = torch.stack([video_from_uint8(clips.video[index]) for index in indices]).to(device)
    audio = torch.from_numpy(clips.audio[indices]).to(device)
    t = torch.tensor([step for _, step, *_ in batch], device=device)
    noise = (torch.stack([item[2] for item in batch]).to(device), torch.stack([item[3] for item in batch]).to(device))
    losses = diffusion.joint_loss(network, video, audio, t, noise=noise)
    for name in totals:
        totals[name] += float(losses[name].sum())


@dataclass(frozen=True)
class SamplerGenerator:
    """The default `Generator`: `model`'s own samples from the sampling pipeline, drawn with a
    fixed seed so that two models are compared on the same starting noise."""

    model: BundledModel
    sampler: SamplerConfig
    seed: int = 0
    batch_size: int = 4
    condition: ZeroShotCondition | None = None
    """Zero-shot: the condition of every sample (`value` [count, ...]); the returned clips then
    hold the condition in its modality, as the pipeline gives them."""

    def __call__(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        pipeline = MMDiffusionPipeline(self.model, sampler=self.sampler)
        videos, audios = [], []
        for batch in pipeline.batches(count, seed=self.seed, batch_size=self.batch_size, condition=self.condition):
            videos.extend(video_to_uint8(clip) for clip in batch.video)
            audios.append(batch.audio.float().cpu().numpy())
        return np.stack(videos), np.concatenate(audios)


def distribution_metrics(
    generated_video: np.ndarray,
    generated_audio: np.ndarray,
    clips: ReferenceClips,
    metrics: tuple[str, ...],
    extractors: ExtractorConfig,
    video_features: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """FVD and KVD on I3D logits, FAD on audio embeddings, generated vs reference clips."""
    results: dict[str, float] = {}
    if {"fvd", "kvd"} & set(metrics):
        video_features = video_features or build_video_extractor(extractors)
        generated, reference = video_features(generated_video), video_features(clips.video)
        if "fvd" in metrics:
            results["fvd"] = frechet_distance_of_features(generated, reference)
        if "kvd" in metrics:
            results["kvd"] = mmd2_unbiased(generated, reference)
    if "fad" in metrics:
        audio_features = build_audio_extractor(extractors)
        results["fad"] = frechet_distance_of_features(audio_features(generated_audio), audio_features(clips.audio))
    return results


def condition_of(config: EvaluationConfig, clips: ReferenceClips) -> ZeroShotCondition | None:
    """The zero-shot condition of `config.condition`: every reference clip's own audio or video."""
    if config.condition is None:
        return None
    if config.condition == "video":
        value = torch.stack([video_from_uint8(clip) for clip in clips.video])
    else:
        value = torch.from_numpy(np.ascontiguousarray(clips.audio))
    return ZeroShotCondition(config.condition, value)  # type: ignore[arg-type]


def evaluate(
    model: BundledModel,
    clips: ReferenceClips,
    config: EvaluationConfig,
    *,
    generate: Generator | None = None,
    training: ReferenceClips | None = None,
) -> EvaluationResult:
    """Every metric of `config.metrics` for `model` on `clips`.

    `generate` supplies the samples for the sample metrics; by default the model samples with
    `config.sampler`, seeded with `config.noise_seed`, zero-shot when `config.condition` says.
    `training` (clips of the training split) is needed for memorisation.
    """
    metrics: dict[str, float] = {}
    figures: dict[str, np.ndarray] = {}
    autocast = config.device_settings().autocast
    if "val_loss" in config.metrics:
        with autocast():
            metrics.update(held_out_loss(model, clips, config))
    sample_metrics = tuple(name for name in config.metrics if name != "val_loss")
    if "memorisation" in sample_metrics and training is None:
        raise ValueError("memorisation needs the training clips (`training`) to look for neighbours in")
    if sample_metrics:
        generate = generate or SamplerGenerator(
            model, config.sampler, config.noise_seed, config.batch_size, condition_of(config, clips)
        )
        if len(clips) < 2:
            raise EvaluationDataError(
                f"{', '.join(sample_metrics)} need at least 2 reference clips, {clips.data_uri!r} has {len(clips)}"
            )
        with autocast():
            video, audio = generate(len(clips))
        _check_generated(video, audio, clips)
        audio = np.asarray(audio, dtype=np.float32)
        video_features = (
            build_video_extractor(config.extractors) if {"fvd", "kvd", "memorisation"} & set(sample_metrics) else None
        )
        metrics.update(distribution_metrics(video, audio, clips, sample_metrics, config.extractors, video_features))
        if "sync" in sample_metrics:
            metrics.update(sync_metrics(video, audio, clips.video, clips.audio))
        if "memorisation" in sample_metrics:
            assert training is not None and video_features is not None
            values, figures = memorisation_metrics(video, clips, training, video_features)
            metrics.update(values)
    return EvaluationResult(
        metrics,
        clips.data_uri,
        clips.digest,
        clips.manifest_sha256,
        config.settings_digest(),
        len(clips),
        list(clips.skipped),
        metric_provenance(config, clips, training),  # `_check_generated`: one sample per clip
        figures,
        model.bundle,
        clips.split,
    )


def describe_split(split: DataSplit) -> str:
    return "all" if split.part == "all" else f"{split.part} {split.held_out_share:g}"


def metric_provenance(
    config: EvaluationConfig, clips: ReferenceClips, training: ReferenceClips | None = None
) -> dict[str, MetricProvenance]:
    """The provenance of every metric of `config` evaluated on `clips` (and, for memorisation,
    against `training`), one sample per clip. Computed without evaluating, so that recorded
    values can be checked against what an evaluation now would give."""
    num_generated = len(clips)
    sampler = config.sampler
    reference = {
        "num_reference": len(clips),
        "reference_split": describe_split(clips.split),
        "reference_manifest_sha256": clips.manifest_sha256,
        "reference_digest": clips.digest,
    }
    sampling = {
        "num_generated": num_generated,
        "sampler": f"{sampler.name} {sampler.num_steps} steps" + (f", eta {sampler.eta:g}" if sampler.eta else ""),
        "settings": f"seed {config.noise_seed}; batch {config.batch_size}",
        "condition": config.condition or "none",
    }
    provenance = {}
    for metric in config.metrics:
        if metric == "val_loss":
            values = {
                "extractor": "diffusion-loss",
                "extractor_weights_sha256": "none",
                "feature_layer": "ε-prediction MSE per modality",
                "sample_rate": "-",
                "resize": "-",
                "num_generated": 0,
                "sampler": "none",
                "settings": f"timesteps {','.join(map(str, config.loss_timesteps))}; seed {config.noise_seed}; "
                f"batch {config.batch_size}",
            }
        elif metric == "sync":
            values = {
                "extractor": sync.SIGNAL,
                "extractor_weights_sha256": "none",
                "feature_layer": sync.FEATURES,
                "sample_rate": f"{SAMPLE_RATE} Hz, {FPS} fps",
                "resize": "-",
                **sampling,
            }
        else:
            source = (
                audio_feature_source(config.extractors) if metric == "fad" else video_feature_source(config.extractors)
            )
            values = {
                "extractor": source.extractor,
                "extractor_weights_sha256": source.weights_sha256,
                "feature_layer": source.layer,
                "sample_rate": source.sample_rate,
                "resize": source.resize,
                **sampling,
            }
            if metric == "memorisation":
                against = (
                    "no training clips" if training is None else f"{len(training)} training clips {training.digest}"
                )
                values["feature_layer"] = f"{source.layer} and pixels; nearest of {against}"
        provenance[metric] = MetricProvenance(metric, **values, **reference, stable=len(clips) >= MIN_STABLE_N[metric])  # type: ignore[arg-type]
    return provenance


def _check_generated(video: np.ndarray, audio: np.ndarray, clips: ReferenceClips) -> None:
    video, audio = np.asarray(video), np.asarray(audio)
    if video.dtype != np.uint8 or video.shape != clips.video.shape:
        raise ValueError(f"generated video must be uint8 {clips.video.shape}, got {video.dtype} {video.shape}")
    if audio.shape != clips.audio.shape:
        raise ValueError(f"generated audio must be {clips.audio.shape}, got {audio.shape}")
