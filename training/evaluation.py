"""Evaluating a model on held-out clips: the diffusion loss on identical work, and the
distribution metrics (FVD, KVD, FAD) of generated samples against reference clips.

The held-out loss uses fixed timesteps and noise drawn from a generator seeded per clip, so
two models evaluated with the same settings on the same clips do exactly the same work and
their numbers compare directly. Reference clips are read from WebDataset shards (local or
`s3://`); a sample that cannot be decoded is skipped and named in the result.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow.fs as pafs
import torch
from webdataset import tariterators

from mmdiffusion import DiffusionConfig, GaussianDiffusion
from mmdiffusion.constants import AUDIO_CHANNELS, AUDIO_SAMPLES, FRAMES, IMAGE_SIZE, VIDEO_CHANNELS
from mmdiffusion.media import audio_from_int16, video_from_uint8, video_to_uint8
from mmdiffusion.metrics import (
    ExtractorConfig,
    build_audio_extractor,
    build_video_extractor,
    frechet_distance_of_features,
    mmd2_unbiased,
)
from mmdiffusion.sampling import SamplerConfig, clip_shapes, sample_joint
from pipeline.credentials import redacted
from pipeline.shards import SHARD_FOLDER, shard_number
from pipeline.storage import join, read_bytes, resolve

METRICS = ("val_loss", "fvd", "kvd", "fad")
"""All lower-is-better."""
MANIFEST_FILE = "manifest.parquet"
"""Written by `mmdiff preprocess` beside the shards folder."""

Generator = Callable[[int], tuple[np.ndarray, np.ndarray]]
"""`generate(n) -> (video uint8 [n, F, H, W, 3], audio float [n, 1, L] in [-1, 1])`."""


class EvaluationDataError(ValueError):
    """The reference data cannot be used for an evaluation."""


@dataclass(frozen=True)
class EvaluationConfig:
    metrics: tuple[str, ...] = ("val_loss",)
    num_samples: int = 16
    """Reference clips read (and samples generated) for the evaluation; FVD, KVD and FAD
    need at least 2, the held-out loss alone works with 1."""
    loss_timesteps: tuple[int, ...] = (50, 250, 500, 750, 950)
    """Diffusion steps at which every clip's loss is measured."""
    noise_seed: int = 0
    batch_size: int = 4
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
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
        if not self.loss_timesteps or not all(0 <= t < self.diffusion.steps for t in self.loss_timesteps):
            raise ValueError(f"loss_timesteps must lie in 0..{self.diffusion.steps - 1}, got {self.loss_timesteps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def settings_digest(self) -> str:
        """Identifies the evaluation settings: equal digests on equal data mean comparable numbers."""
        settings = {
            "num_samples": self.num_samples,
            "loss_timesteps": list(self.loss_timesteps),
            "noise_seed": self.noise_seed,
            "batch_size": self.batch_size,
            "diffusion": asdict(self.diffusion),
            "sampler": asdict(self.sampler),
            "extractors": {
                key: value for key, value in asdict(self.extractors).items() if key not in ("batch_size", "device")
            },
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ReferenceClips:
    """Held-out clips: video uint8 [N, F, H, W, 3], audio float32 [N, 1, L] in [-1, 1]."""

    video: np.ndarray
    audio: np.ndarray
    keys: list[str]
    data_uri: str
    manifest_sha256: str = "missing"
    """Digest of the dataset's manifest.parquet, "missing" when it has none."""
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def digest(self) -> str:
        """Identifies exactly which clips were used (their keys, in order)."""
        return hashlib.sha256("\n".join(self.keys).encode()).hexdigest()[:16]


@dataclass
class EvaluationResult:
    metrics: dict[str, float]
    data_uri: str
    data_digest: str
    manifest_sha256: str
    settings_digest: str
    num_clips: int
    skipped: list[str]


def _exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_shard_uris(data_uri: str) -> list[str]:
    """The `shard-NNNNNN.tar` files under `DATA/shards` (or `DATA` itself), in order."""
    if not _exists(data_uri):
        raise EvaluationDataError(f"evaluation data {data_uri!r} does not exist")
    folder = join(data_uri, SHARD_FOLDER) if _exists(join(data_uri, SHARD_FOLDER)) else data_uri
    fs, path = resolve(folder)
    names = sorted(
        info.base_name
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=False))
        if info.type == pafs.FileType.File and shard_number(info.base_name) is not None
    )
    if not names:
        raise EvaluationDataError(f"evaluation data {data_uri!r}: no shard-NNNNNN.tar files in {folder!r}")
    return [join(folder, name) for name in names]


def _shard_members(shard_uris: list[str], problems: list[str]) -> Iterator[dict]:
    """WebDataset samples (key -> member bytes) of the shards; unreadable tars are recorded."""

    def record(error: Exception) -> bool:
        problems.append(f"{type(error).__name__}: {error}")
        return True  # keep going past a bad shard or member

    def streams() -> Iterator[dict]:
        for uri in shard_uris:
            fs, path = resolve(uri)
            yield {"url": uri, "stream": fs.open_input_stream(path)}

    yield from tariterators.group_by_keys(tariterators.tar_file_expander(streams(), handler=record), handler=record)


def _decode_clip(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """(video uint8 [F, H, W, 3], audio float32 [1, L]) of one sample, or ValueError saying why not."""
    for member in ("video.npy", "audio.npy"):
        if member not in sample:
            raise ValueError(f"no {member} member")
    video = np.load(io.BytesIO(sample["video.npy"]), allow_pickle=False)
    audio = np.load(io.BytesIO(sample["audio.npy"]), allow_pickle=False)
    if video.dtype != np.uint8 or video.shape != (FRAMES, IMAGE_SIZE, IMAGE_SIZE, VIDEO_CHANNELS):
        raise ValueError(
            f"video.npy is {video.dtype} {video.shape}, expected uint8 {(FRAMES, IMAGE_SIZE, IMAGE_SIZE, VIDEO_CHANNELS)}"
        )
    if audio.dtype != np.int16 or audio.shape != (AUDIO_CHANNELS, AUDIO_SAMPLES):
        raise ValueError(f"audio.npy is {audio.dtype} {audio.shape}, expected int16 {(AUDIO_CHANNELS, AUDIO_SAMPLES)}")
    return video, audio_from_int16(audio).numpy()


def read_reference_clips(data_uri: str, limit: int) -> ReferenceClips:
    """The first `limit` decodable clips of the dataset, in shard order."""
    problems: list[str] = []
    videos, audios, keys = [], [], []
    for sample in _shard_members(list_shard_uris(data_uri), problems):
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        try:
            video, audio = _decode_clip(sample)
        except ValueError as error:
            problems.append(f"{name}: {error}")
            continue
        videos.append(video)
        audios.append(audio)
        keys.append(str(sample["__key__"]))
        if len(keys) == limit:
            break
    if not keys:
        raise EvaluationDataError(
            f"evaluation data {data_uri!r}: no usable clips"
            + (f"; problems: {'; '.join(problems[:5])}" if problems else "")
        )
    return ReferenceClips(np.stack(videos), np.stack(audios), keys, data_uri, _manifest_sha256(data_uri), problems)


def _manifest_sha256(data_uri: str) -> str:
    """The manifest beside the shards: in DATA, or in the parent when DATA is the shards folder."""
    for candidate in (join(data_uri, MANIFEST_FILE), join(data_uri.rstrip("/").rsplit("/", 1)[0], MANIFEST_FILE)):
        if _exists(candidate):
            return hashlib.sha256(read_bytes(candidate)).hexdigest()
    return "missing"


_Work = tuple[int, int, torch.Tensor, torch.Tensor]
"""(clip index, timestep, video noise, audio noise)"""


@torch.no_grad()
def held_out_loss(model: torch.nn.Module, clips: ReferenceClips, config: EvaluationConfig) -> dict[str, float]:
    """Mean joint, video and audio diffusion loss over every clip × every fixed timestep.

    Clip i's noise comes from a generator seeded with (noise_seed, i), in timestep order, so
    it does not depend on the batch size or on the model. Randomness inside the network (the
    RS-MMA random shift) draws from torch's global generator, seeded with `noise_seed` here, so
    with the same batch size it is the same for every model too.
    """
    diffusion = GaussianDiffusion(config.diffusion)
    device = next(model.parameters()).device
    work: list[_Work] = []
    for index in range(len(clips)):
        generator = torch.Generator().manual_seed(config.noise_seed * 1_000_003 + index)
        for t in config.loss_timesteps:
            video_noise = torch.randn((FRAMES, VIDEO_CHANNELS, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
            audio_noise = torch.randn((AUDIO_CHANNELS, AUDIO_SAMPLES), generator=generator)
            work.append((index, t, video_noise, audio_noise))
    totals = {"loss": 0.0, "video_loss": 0.0, "audio_loss": 0.0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.noise_seed)
        for start in range(0, len(work), config.batch_size):
            _add_batch_loss(model, diffusion, work[start : start + config.batch_size], clips, totals, device)
    return {f"val_{name}": total / len(work) for name, total in totals.items()}


def _add_batch_loss(
    model: torch.nn.Module,
    diffusion: GaussianDiffusion,
    batch: list[_Work],
    clips: ReferenceClips,
    totals: dict[str, float],
    device: torch.device,
) -> None:
    indices = [index for index, *_ in batch]
    video = torch.stack([video_from_uint8(clips.video[index]) for index in indices]).to(device)
    audio = torch.from_numpy(clips.audio[indices]).to(device)
    t = torch.tensor([step for _, step, *_ in batch], device=device)
    noise = (torch.stack([item[2] for item in batch]).to(device), torch.stack([item[3] for item in batch]).to(device))
    losses = diffusion.joint_loss(model, video, audio, t, noise=noise)
    for name in totals:
        totals[name] += float(losses[name].sum())


@dataclass(frozen=True)
class SamplerGenerator:
    """The default `Generator`: `model`'s own samples, drawn with a fixed seed so that two
    models are compared on the same starting noise."""

    model: torch.nn.Module
    diffusion: DiffusionConfig
    sampler: SamplerConfig
    seed: int = 0
    batch_size: int = 4

    def __call__(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        diffusion = GaussianDiffusion(self.diffusion)
        generator = torch.Generator().manual_seed(self.seed)
        device = next(self.model.parameters()).device
        videos, audios = [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # randomness inside the network (RS-MMA shifts)
            for start in range(0, count, self.batch_size):
                shapes = clip_shapes(self.model.config, min(self.batch_size, count - start))
                video, audio = sample_joint(
                    self.model, diffusion, self.sampler, shapes, generator=generator, device=device
                )
                videos.extend(video_to_uint8(clip) for clip in video)
                audios.append(audio.float().cpu().numpy())
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
    model: torch.nn.Module,
    clips: ReferenceClips,
    config: EvaluationConfig,
    generate: Generator | None = None,
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
        generate = generate or SamplerGenerator(
            model, config.diffusion, config.sampler, config.noise_seed, config.batch_size
        )
        if len(clips) < 2:
            raise EvaluationDataError(
                f"{', '.join(sample_metrics)} need at least 2 reference clips, {clips.data_uri!r} has {len(clips)}"
            )
        video, audio = generate(len(clips))
        _check_generated(video, audio, len(clips))
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
    )


def _check_generated(video: np.ndarray, audio: np.ndarray, count: int) -> None:
    if np.asarray(video).dtype != np.uint8 or np.asarray(video).shape != (
        count,
        FRAMES,
        IMAGE_SIZE,
        IMAGE_SIZE,
        VIDEO_CHANNELS,
    ):
        raise ValueError(
            f"generated video must be uint8 {(count, FRAMES, IMAGE_SIZE, IMAGE_SIZE, VIDEO_CHANNELS)}, got {np.asarray(video).dtype} {np.asarray(video).shape}"
        )
    if np.asarray(audio).shape != (count, AUDIO_CHANNELS, AUDIO_SAMPLES):
        raise ValueError(
            f"generated audio must be {(count, AUDIO_CHANNELS, AUDIO_SAMPLES)}, got {np.asarray(audio).shape}"
        )


EVALUATION_EXPERIMENT = "mmdiff-evaluation"
"""Where evaluation runs go when the evaluated model has no run of its own (a local file)."""


def model_source_run(model_uri: str) -> str | None:
    """The MLflow run that produced the model at `model_uri`, None for a local file."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if model_uri.startswith("runs:/"):
        return model_uri.removeprefix("runs:/").split("/", 1)[0]
    if not model_uri.startswith("models:/"):
        return None
    reference = model_uri.removeprefix("models:/")
    if reference.startswith("m-") and "/" not in reference and "@" not in reference:
        return client.get_logged_model(reference).source_run_id
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return client.get_model_version_by_alias(name, alias).run_id
    name, version = reference.rsplit("/", 1)
    return client.get_model_version(name, version).run_id


def log_evaluation(result: EvaluationResult, model_uri: str, config: EvaluationConfig) -> str:
    """Log `result` as an evaluation run, in the experiment of the model's run and tagged
    with that run's id (a local model's evaluation goes to `EVALUATION_EXPERIMENT`).
    Returns the evaluation run's id."""
    import mlflow

    client = mlflow.MlflowClient()
    source_run = model_source_run(model_uri)
    if source_run is not None:
        experiment_id = client.get_run(source_run).info.experiment_id
    else:
        experiment = client.get_experiment_by_name(EVALUATION_EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(EVALUATION_EXPERIMENT)
    tags = {"mmdiff.evaluated_model": model_uri, "mmdiff.run_kind": "evaluation"}
    if source_run is not None:
        tags["mmdiff.model_run_id"] = source_run
    with mlflow.start_run(
        experiment_id=experiment_id, run_name="evaluation", tags=redacted(tags), nested=mlflow.active_run() is not None
    ) as run:
        mlflow.log_metrics(result.metrics)
        mlflow.log_params(
            redacted(
                {
                    "data_uri": result.data_uri,
                    "data_digest": result.data_digest,
                    "data_manifest_sha256": result.manifest_sha256,
                    "settings_digest": result.settings_digest,
                    "num_clips": result.num_clips,
                    "metrics": ",".join(config.metrics),
                    "loss_timesteps": ",".join(map(str, config.loss_timesteps)),
                    "noise_seed": config.noise_seed,
                }
            )
        )
        if result.skipped:
            mlflow.log_dict({"skipped": result.skipped}, "evaluation/skipped.json")
        return run.info.run_id
