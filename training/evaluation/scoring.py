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
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mmdiffusion.bundle import BundledModel, ModelBundle
from mmdiffusion.diffusion import GaussianDiffusion
from mmdiffusion.media import video_from_uint8, video_to_uint8
from mmdiffusion.metrics import (
    ExtractorConfig,
    build_audio_extractor,
    build_video_extractor,
    frechet_distance_of_features,
    mmd2_unbiased,
)
from mmdiffusion.pipeline import MMDiffusionPipeline
from mmdiffusion.sampling import SamplerConfig
from training.evaluation.reference import EvaluationDataError, ReferenceClips

METRICS = ("val_loss", "fvd", "kvd", "fad")
"""All lower-is-better."""
LOSS_PARTS = ("loss", "video_loss", "audio_loss")

Generator = Callable[[int], tuple[np.ndarray, np.ndarray]]
"""`generate(n) -> (video uint8 [n, F, H, W, 3], audio float [n, 1, L] in [-1, 1])`."""


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

    def __post_init__(self) -> None:
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

    def settings_digest(self) -> str:
        """Identifies the evaluation settings: equal digests on equal data mean comparable numbers."""
        settings = {
            "num_samples": self.num_samples,
            "loss_timesteps": list(self.loss_timesteps),
            "noise_seed": self.noise_seed,
            "batch_size": self.batch_size,
            "sampler": asdict(self.sampler),
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
    bundle: ModelBundle | None = None
    """The evaluated model's bundle: its diffusion is the one the numbers were measured with."""


_Work = tuple[int, int, torch.Tensor, torch.Tensor]
"""(clip index, timestep, video noise, audio noise)"""


@torch.no_grad()
def held_out_loss(model: BundledModel, clips: ReferenceClips, config: EvaluationConfig) -> dict[str, float]:
    """Mean joint, video and audio diffusion loss over every clip × every fixed timestep,
    with the model's own diffusion process (`val_loss`, `val_video_loss`, `val_audio_loss`),
    and each over the timesteps of every quarter of the schedule that has some
    (`val_loss_q0` … `val_loss_q3`, the quartiles of the training metrics).

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
    totals: dict[str, float] = defaultdict(float)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.noise_seed)
        for start in range(0, len(work), config.batch_size):
            _add_batch_loss(model.network, diffusion, work[start : start + config.batch_size], clips, totals)
    counts = Counter(f"_q{int(diffusion.quartile(torch.tensor(t)))}" for _, t, *_ in work)
    counts[""] = len(work)
    return {f"val_{name}{part}": totals[name + part] / count for name in LOSS_PARTS for part, count in counts.items()}


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
    quartiles = diffusion.quartile(t).tolist()
    for name in LOSS_PARTS:
        values = losses[name].double().cpu().tolist()
        totals[name] += sum(values)
        for quartile, value in zip(quartiles, values, strict=True):
            totals[f"{name}_q{quartile}"] += value


@dataclass(frozen=True)
class SamplerGenerator:
    """The default `Generator`: `model`'s own samples from the sampling pipeline, drawn with a
    fixed seed so that two models are compared on the same starting noise."""

    model: BundledModel
    sampler: SamplerConfig
    seed: int = 0
    batch_size: int = 4

    def __call__(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        pipeline = MMDiffusionPipeline(self.model, sampler=self.sampler)
        videos, audios = [], []
        for batch in pipeline.batches(count, seed=self.seed, batch_size=self.batch_size):
            videos.extend(video_to_uint8(clip) for clip in batch.video)
            audios.append(batch.audio.float().cpu().numpy())
        return np.stack(videos), np.concatenate(audios)


def distribution_metrics(
    generated_video: np.ndarray,
    generated_audio: np.ndarray,
    clips: ReferenceClips,
    metrics: tuple[str, ...],
    extractors: ExtractorConfig,
) -> dict[str, float]:
    """FVD and KVD on I3D logits, FAD on audio embeddings, generated vs reference clips."""
    results: dict[str, float] = {}
    if {"fvd", "kvd"} & set(metrics):
        video_features = build_video_extractor(extractors)
        generated, reference = video_features(generated_video), video_features(clips.video)
        if "fvd" in metrics:
            results["fvd"] = frechet_distance_of_features(generated, reference)
        if "kvd" in metrics:
            results["kvd"] = mmd2_unbiased(generated, reference)
    if "fad" in metrics:
        audio_features = build_audio_extractor(extractors)
        results["fad"] = frechet_distance_of_features(audio_features(generated_audio), audio_features(clips.audio))
    return results


def evaluate(
    model: BundledModel, clips: ReferenceClips, config: EvaluationConfig, *, generate: Generator | None = None
) -> EvaluationResult:
    """Every metric of `config.metrics` for `model` on `clips`.

    `generate` supplies the samples for FVD/KVD/FAD; by default the model samples with
    `config.sampler`, seeded with `config.noise_seed`.
    """
    metrics: dict[str, float] = {}
    if "val_loss" in config.metrics:
        metrics.update(held_out_loss(model, clips, config))
    sample_metrics = tuple(name for name in config.metrics if name != "val_loss")
    if sample_metrics:
        generate = generate or SamplerGenerator(model, config.sampler, config.noise_seed, config.batch_size)
        if len(clips) < 2:
            raise EvaluationDataError(
                f"{', '.join(sample_metrics)} need at least 2 reference clips, {clips.data_uri!r} has {len(clips)}"
            )
        video, audio = generate(len(clips))
        _check_generated(video, audio, clips)
        metrics.update(
            distribution_metrics(video, np.asarray(audio, dtype=np.float32), clips, sample_metrics, config.extractors)
        )
    return EvaluationResult(
        metrics,
        clips.data_uri,
        clips.digest,
        clips.manifest_sha256,
        config.settings_digest(),
        len(clips),
        list(clips.skipped),
        model.bundle,
    )


def _check_generated(video: np.ndarray, audio: np.ndarray, clips: ReferenceClips) -> None:
    video, audio = np.asarray(video), np.asarray(audio)
    if video.dtype != np.uint8 or video.shape != clips.video.shape:
        raise ValueError(f"generated video must be uint8 {clips.video.shape}, got {video.dtype} {video.shape}")
    if audio.shape != clips.audio.shape:
        raise ValueError(f"generated audio must be {clips.audio.shape}, got {audio.shape}")
