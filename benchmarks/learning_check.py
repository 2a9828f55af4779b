"""The learning check: a network trained to memorise a few clips, sampled back, must give them back.

A sign or scale bug between the training objective and the samplers makes samples that look
like noise, and so does too little training: only a network that has learnt its data tells the
two apart. This check trains the `tiny` coupled U-Net with `training.run.train` (the real loop,
in-process) on a handful of bouncing-ball clips (`pipeline.synthetic` scenes with distinct
colours and pitches) until it memorises them, then samples with DDIM and DPM-Solver++ and
scores each sample against the training clips: video PSNR and audio correlation.

- **From a noised clip** (SDEdit, `mmdiffusion.sampling.NoisedStart`): each clip noised to
  t ≈ `start_t` and run back to 0. This tests the sampler where a briefly trained network
  predicts x0 well (issue 13: correlation 0.91 at t = 300, 0.06 at t = 700).
- **From pure noise**: each sample is scored against its nearest training clip. An ε network
  (as released) does not learn the high-noise end in a CPU run; a v network (`--prediction v`)
  does (docs/benchmarks.md).
- **Broken chains**: the same network with the sign of its prediction flipped, or scaled, and the
  untrained network: what a bug looks like, for the thresholds.
- **Zero-shot**: audio→video from each clip's audio, video→audio from its video, with the
  replacement and the gradient method; the generated modality must be nearest to the
  conditioning clip's own. From a noised start the generated modality starts from the mean of
  the training clips noised to `start_t` (no clip's own content), and from pure noise.

    nice -n 10 .venv/bin/python -m benchmarks.learning_check [--clips 3] [--steps 300] \\
        [--image-size 16] [--audio-length 2560] [--prediction epsilon|v] [--guidance 1.0] \\
        [--separated-by video|audio] [--output /tmp/mmdiff-learning-check]

The defaults shrink the clip to 16×16 pixels and 2,560 audio samples (the 1.6 s at 1.6 kHz) so
that a CPU run takes minutes; `--image-size 64 --audio-length 25600` is the real geometry.
`tests/training/test_learning_check.py` runs a fast version (one 16-pixel clip).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmdiffusion.bundle import BundledModel
from mmdiffusion.constants import AUDIO_SAMPLES, CLIP_SECONDS, FPS, FRAMES
from mmdiffusion.media import AUDIO_SCALE, video_from_uint8, video_to_uint8
from mmdiffusion.sampling import NoisedStart, SamplerConfig, ZeroShotCondition, clip_shapes, sample_joint
from mmdiffusion.sampling.conditioning import DEFAULT_GUIDANCE, MODALITIES
from pipeline.shard_format import SHARD_FOLDER, encode_members, sample_key, shard_name
from pipeline.synthetic import SOURCE_FPS, SOURCE_SAMPLE_RATE, random_scene, render_audio, render_frames, tone_phase

PALETTE = ((255, 70, 70), (70, 255, 90), (80, 120, 255), (255, 230, 60), (230, 80, 255), (60, 230, 230))
"""One ball colour per clip, so that clips differ at a glance."""
SAMPLERS = {"ddim": SamplerConfig("ddim", 50), "dpm-solver++": SamplerConfig("dpm-solver++", 20)}
CHAINS: dict[str, tuple[float, float]] = {
    "correct": (1.0, 1.0),
    "sign flipped": (-1.0, 1.0),
    "x 0.5": (1.0, 0.5),
}
"""(sign, scale) applied to the network's prediction (ε or v) before the sampler sees it."""
AUDIO_PEAK = 0.9
"""Each clip's audio is scaled to this peak (of full scale)."""
BASE_PITCH_HZ = 220.0
"""Clip i's tone starts at `BASE_PITCH_HZ * PITCH_STEP**i` (the demo's lowest pitch) at the real
audio length; a shorter clip lowers it in proportion (`clip_pitch`)."""
PITCH_STEP = 1.35
SEPARATIONS = ("video", "audio")
"""Which modality tells the learning check's clips apart more (`ball_clips`)."""
NOISE_SAMPLES = 12
"""Samples drawn from pure noise: enough to see which clips they land on, and whether their
video and audio land on the same one."""
VIDEO_PSNR_DB = 18.0
"""A sample reproduces its clip's video at this PSNR or above. Measured from t = 300
(docs/benchmarks.md, the defaults: 3 clips, 300 steps; means over the clips): correct chains
22.2-23.6 dB, worst clip 21.1 dB; ε sign flipped 5.7-6.3 dB, ε halved 12.7-14.5 dB, the
untrained network 8.2-9.6 dB."""
AUDIO_CORRELATION = 0.5
"""... and its clip's audio at this waveform correlation or above. Measured as above: correct
chains 0.61-0.71, worst clip 0.57; ε sign flipped 0.14-0.17, ε halved 0.28-0.37, the untrained
network 0.19-0.25 (the noised clip itself: about 0.20). It does not part a halved v
(`--prediction v`: 0.51-0.57), whose waveform keeps its shape; the video threshold does."""


@dataclass(frozen=True)
class LearningCheckConfig:
    clips: int = 3
    steps: int = 300
    image_size: int = 16
    audio_length: int = 2560
    lr: float = 2e-3
    start_t: int = 300
    seed: int = 0
    guidance: float = DEFAULT_GUIDANCE
    """λ of the gradient method (default: `mmdiff sample`'s). The 12,000-step v network's a→v from
    t = 300 needs 10 or more (docs/benchmarks.md)."""
    prediction: str = "epsilon"
    """What the network is trained to predict (`DiffusionConfig.prediction`): `epsilon` as
    released, or `v`, whose high-noise end a short run learns (docs/training.md)."""
    separated_by: str = "video"
    """The modality that tells the clips apart more (`SEPARATIONS`). Replacement conditions only
    through the condition's noised version, so it can steer the generated modality only where
    the condition is the more distinct one: a→v by replacement is checked with `audio`, v→a
    with `video` (docs/benchmarks.md)."""


@dataclass(frozen=True)
class Clips:
    """Clips in the model's layout and range: video `[N, F, 3, S, S]`, audio `[N, 1, L]` in [-1, 1]."""

    video: torch.Tensor
    audio: torch.Tensor

    def __len__(self) -> int:
        return len(self.video)


# ---------------------------------------------------------------------- data
def clip_pitch(index: int, audio_length: int) -> float:
    """Clip `index`'s base pitch in Hz: as many samples per period at `audio_length` samples as
    the demo's pitch has at the real `AUDIO_SAMPLES`.

    The audio U-Net divides the length by four per level, so a tone near the Nyquist frequency
    of its input lives in the full-rate level alone: at 2,560 samples the demo's 220-802 Hz
    tones (2.0-7.3 samples per period) were not memorised, the same tones ten times lower were
    (docs/benchmarks.md, *Learning check*)."""
    return BASE_PITCH_HZ * PITCH_STEP**index * audio_length / AUDIO_SAMPLES


def ball_clips(
    count: int, image_size: int, audio_length: int, seed: int = 0, separated_by: str = "video"
) -> tuple[np.ndarray, np.ndarray]:
    """`count` bouncing-ball clips of the demo corpus's kind, each with its own colour and pitch
    (`clip_pitch`): uint8 video `[N, F, S, S, 3]` (frames at FPS, area-scaled) and int16 audio
    `[N, 1, L]` (the clip's seconds resampled to `audio_length` samples, scaled to `AUDIO_PEAK`).

    `separated_by` (`SEPARATIONS`) picks the modality that tells the clips apart more: `video`,
    the demo's clips (own background, path and colour; a quiet tone under loud knocks); or
    `audio`, one background for all and the tone alone as a full-scale square wave."""
    if separated_by not in SEPARATIONS:
        raise ValueError(f"separated_by must be one of {SEPARATIONS}, got {separated_by!r}")
    rng = np.random.default_rng(seed)
    videos, audios = [], []
    background = None
    for index in range(count):
        scene = dataclasses.replace(
            random_scene(rng), color=PALETTE[index % len(PALETTE)], base_pitch=clip_pitch(index, audio_length)
        )
        if separated_by == "audio":
            background = background or scene.background
            scene = dataclasses.replace(scene, background=background)
        frames = render_frames(scene, CLIP_SECONDS + 0.1)[(np.arange(FRAMES) * SOURCE_FPS) // FPS]
        scaled = F.interpolate(
            torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=image_size, mode="area"
        ).round()
        videos.append(scaled.permute(0, 2, 3, 1).to(torch.uint8).numpy())
        if separated_by == "audio":
            wave = np.sign(np.sin(tone_phase(scene, audio_length / CLIP_SECONDS, audio_length)))
            audios.append((wave * AUDIO_PEAK * 32767).round().astype(np.int16)[None])
            continue
        sound = render_audio(scene, CLIP_SECONDS + 0.1)[0].astype(np.float64)
        source_times = np.arange(len(sound)) / SOURCE_SAMPLE_RATE
        times = np.arange(audio_length) * CLIP_SECONDS / audio_length
        resampled = np.interp(times, source_times, sound)
        # Loud: the demo's quiet tone (RMS 0.18 of full scale) hides under the noise at t = 300.
        audios.append((resampled * AUDIO_PEAK * 32767 / np.abs(resampled).max()).round().astype(np.int16)[None])
    return np.stack(videos), np.stack(audios)


def squared_distances(clips: Clips) -> dict[str, list[float]]:
    """Each modality's squared distance between every pair of clips (0-1, 0-2, ..., 1-2), in the
    model's range. Where one modality's distances are the larger, its own x_t names the clip up to
    higher noise, and only the other modality's branch is rewarded for reading it
    (docs/benchmarks.md, *Why the coupling cannot be learnt before the high-noise end is*)."""
    result = {}
    for name in MODALITIES:
        flat = getattr(clips, name).double().flatten(1)
        pairs = [(i, j) for i in range(len(flat)) for j in range(i + 1, len(flat))]
        result[name] = [round(float((flat[i] - flat[j]).pow(2).sum()), 1) for i, j in pairs]
    return result


def as_clips(video: np.ndarray, audio: np.ndarray) -> Clips:
    """The clips as training reads them (`training.loader.collate`'s scaling)."""
    return Clips(
        torch.stack([video_from_uint8(clip) for clip in video]),
        torch.from_numpy(audio.astype(np.float32) / AUDIO_SCALE),
    )


def write_clip_shards(folder: Path, video: np.ndarray, audio: np.ndarray) -> Path:
    """One WebDataset shard of the clips, one made-up source video each; returns the data folder."""
    import webdataset as wds

    shards = folder / SHARD_FOLDER
    shards.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(shards / shard_name(0))) as writer:
        for index in range(len(video)):
            members = encode_members(video[index], audio[index], {"clip_index": index})
            writer.write({"__key__": sample_key(f"learning-check://ball-{index}.mp4", 0), **members})
    return folder


# ---------------------------------------------------------------------- training
def train_memoriser(
    config: LearningCheckConfig, data: Path, output: Path, tracking_uri: str, **train_changes
) -> tuple[BundledModel, BundledModel]:
    """Train on every clip at every step (batch = the clips); the final (EMA, raw) models."""
    from training.config import TrainConfig
    from training.resolver import resolve_model
    from training.run import train

    values = dict(
        data=str(data),
        output=str(output),
        model="tiny",
        model_overrides={"image_size": config.image_size, "audio_length": config.audio_length},
        steps=config.steps,
        batch_size=config.clips,
        lr=config.lr,
        log_every=max(config.steps // 20, 1),
        checkpoint_every=config.steps,
        held_out_share=0.0,
        flip=False,
        seed=config.seed,
        run_name="learning-check",
        experiment="learning-check",
        tracking_uri=tracking_uri,
        diffusion_overrides={"prediction": config.prediction},
    )
    train_config = TrainConfig(**{**values, **train_changes})
    result = train(train_config, in_process=True)
    return tuple(resolve_model(result.checkpoint, "coupled_unet", weights=w) for w in ("ema", "raw"))  # type: ignore[return-value]


# ---------------------------------------------------------------------- sampling and scores
def miswired(network: torch.nn.Module, sign: float, scale: float) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The network with `sign * scale` times its prediction: a chain whose sampler reads the
    network wrongly."""

    def predict(video: torch.Tensor, audio: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        video_out, audio_out = network(video, audio, t)
        return sign * scale * video_out, sign * scale * audio_out

    return predict


def draw(
    model: BundledModel,
    sampler: SamplerConfig,
    count: int,
    *,
    start: NoisedStart | None = None,
    condition: ZeroShotCondition | None = None,
    chain: tuple[float, float] = (1.0, 1.0),
    seed: int = 0,
) -> Clips:
    """`count` samples with fixed noise and RS-MMA shifts (seeded as `MMDiffusionPipeline` seeds them)."""
    network = model.network
    previous = network.shift_generator
    network.shift_generator = torch.Generator().manual_seed(seed + 2)
    if condition is not None:
        condition = dataclasses.replace(condition, generator=torch.Generator().manual_seed(seed + 1))
    try:
        video, audio = sample_joint(
            network if chain == (1.0, 1.0) else miswired(network, *chain),
            model.diffusion,
            sampler,
            clip_shapes(model.bundle.network, count),
            condition=condition,
            generator=torch.Generator().manual_seed(seed),
            start=start,
        )
    finally:
        network.shift_generator = previous
    return Clips(video.float(), audio.float())


def video_psnr(generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of every generated clip `[N, ...]` against every reference `[M, ...]`: `[N, M]`,
    on uint8 frames (what a viewer sees)."""
    ours = torch.from_numpy(np.stack([video_to_uint8(clip) for clip in generated])).double()
    theirs = torch.from_numpy(np.stack([video_to_uint8(clip) for clip in reference])).double()
    mse = ((ours[:, None] - theirs[None]) ** 2).flatten(2).mean(dim=2)
    return 10 * torch.log10(255.0**2 / mse.clamp(min=1e-10))


def audio_correlation(generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every generated waveform with every reference one: `[N, M]`."""

    def standardised(audio: torch.Tensor) -> torch.Tensor:
        flat = audio.double().flatten(1)
        flat = flat - flat.mean(dim=1, keepdim=True)
        return flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12)

    return standardised(generated) @ standardised(reference).T


@dataclass(frozen=True)
class Scores:
    """Per generated clip: its score against its own clip, and against the best other clip."""

    own: list[float]
    best_other: list[float]

    @property
    def picks_own(self) -> bool:
        return all(own > other for own, other in zip(self.own, self.best_other, strict=True))

    def summary(self) -> dict[str, float | bool]:
        result: dict[str, float | bool] = {"mean": float(np.mean(self.own)), "min": float(np.min(self.own))}
        if self.best_other:
            result.update(best_other=float(np.max(self.best_other)), picks_own=self.picks_own)
        return result


def scores(matrix: torch.Tensor, own: list[int] | None = None) -> Scores:
    """Row i's score against clip `own[i]` (default: i) and its best against the others; without
    pairing (`own=[]`), against its nearest clip."""
    if own == []:
        return Scores(matrix.max(dim=1).values.tolist(), [])
    own = list(range(len(matrix))) if own is None else own
    best_other = [
        max((float(value) for column, value in enumerate(row) if column != own[i]), default=float("-inf"))
        for i, row in enumerate(matrix)
    ]
    return Scores([float(matrix[i, own[i]]) for i in range(len(matrix))], best_other)


def reconstruction(model: BundledModel, clips: Clips, sampler: SamplerConfig, start_t: int | None, chain=(1.0, 1.0)):
    """Joint samples from the clips noised to `start_t` (paired with them), or `NOISE_SAMPLES`
    from pure noise (each scored against its nearest clip); (samples, video PSNR matrix,
    audio correlation matrix), each matrix samples × clips."""
    start = None if start_t is None else NoisedStart(clips.video, clips.audio, start_t)
    generated = draw(model, sampler, len(clips) if start_t is not None else NOISE_SAMPLES, start=start, chain=chain)
    return generated, video_psnr(generated.video, clips.video), audio_correlation(generated.audio, clips.audio)


def modalities_agree(psnr: torch.Tensor, correlation: torch.Tensor) -> float:
    """The share of joint samples whose video and audio are nearest to the same clip: 1 when the
    network generates the two together, about 1 / clips when it draws each on its own."""
    return float((psnr.argmax(dim=1) == correlation.argmax(dim=1)).double().mean())


def zero_shot(
    model: BundledModel, clips: Clips, sampler: SamplerConfig, direction: str, method: str, start_t, guidance: float
):
    """Each clip's audio (a→v) or video (v→a) as the condition; the generated modality scored
    against every clip. A noised start begins the generated modality at the clips' mean."""
    modality = "audio" if direction == "a->v" else "video"
    condition = ZeroShotCondition(
        modality,  # type: ignore[arg-type]
        getattr(clips, modality),
        method,  # type: ignore[arg-type]
        guidance if method == "gradient" else 0.0,
    )
    start = None
    if start_t is not None:
        mean = {
            name: getattr(clips, name).mean(dim=0, keepdim=True).expand_as(getattr(clips, name))
            for name in ("video", "audio")
        }
        start = NoisedStart(
            clips.video if modality == "video" else mean["video"],
            clips.audio if modality == "audio" else mean["audio"],
            start_t,
        )
    generated = draw(model, sampler, len(clips), start=start, condition=condition)
    if modality == "audio":
        return generated, scores(video_psnr(generated.video, clips.video))
    return generated, scores(audio_correlation(generated.audio, clips.audio))


# ---------------------------------------------------------------------- figure
def frame_grid(path: Path, rows: dict[str, torch.Tensor], frames: tuple[int, ...] = (0, 5, 10, 15)) -> Path:
    """A PNG with one row per named video `[F, 3, S, S]`, the chosen frames side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(rows), len(frames), figsize=(1.3 * len(frames) + 1.6, 1.3 * len(rows)), dpi=100)
    axes = np.atleast_2d(axes)
    for row, (name, video) in enumerate(rows.items()):
        images = video_to_uint8(video)
        for column, frame in enumerate(frames):
            axes[row, column].imshow(images[frame], interpolation="nearest")
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
            if row == 0:
                axes[row, column].set_title(f"frame {frame}", fontsize=8)
        axes[row, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------- the benchmark
def run(config: LearningCheckConfig, output: Path) -> dict:
    output.mkdir(parents=True, exist_ok=True)
    video, audio = ball_clips(config.clips, config.image_size, config.audio_length, config.seed, config.separated_by)
    clips = as_clips(video, audio)
    distances = squared_distances(clips)
    print("squared distances between the clips:", json.dumps(distances), flush=True)
    data = write_clip_shards(output / "data", video, audio)
    started = time.perf_counter()
    ema, raw = train_memoriser(config, data, output / "runs", f"sqlite:///{output / 'mlflow.db'}")
    results: dict = {
        "config": dataclasses.asdict(config),
        "squared_distances": distances,
        "train_seconds": time.perf_counter() - started,
    }
    print(f"trained {config.steps} steps in {results['train_seconds']:.0f} s", flush=True)
    from mmdiffusion.bundle import build_model

    torch.manual_seed(config.seed)
    untrained = BundledModel(build_model(ema.bundle.network), ema.bundle, "untrained")
    figure_rows: dict[str, torch.Tensor] = {f"training clip {index}": clips.video[index] for index in range(len(clips))}
    for start_t in (config.start_t, None):
        where = f"t={start_t}" if start_t is not None else "noise"
        if start_t is not None:
            t = torch.full((1,), start_t)
            figure_rows[f"clip 0 noised to {where}"] = ema.diffusion.q_sample(
                clips.video[:1], t, torch.randn(clips.video[:1].shape, generator=torch.Generator().manual_seed(0))
            )[0]
        for sampler_name, sampler in SAMPLERS.items():
            # The broken chains and the untrained network are the baselines of the noised start;
            # from pure noise the trained chain alone is worth its time.
            runs = [("ema", ema, name) for name in (CHAINS if start_t is not None else ["correct"])]
            if start_t is not None:
                runs += [("untrained", untrained, "correct")] + (
                    [("raw", raw, "correct")] if sampler_name == "ddim" else []
                )
            for model_name, model, chain_name in runs:
                generated, psnr, correlation = reconstruction(model, clips, sampler, start_t, CHAINS[chain_name])
                key = f"joint from {where} | {sampler_name} | {model_name} | {chain_name}"
                pairing = None if start_t is not None else []
                results[key] = {
                    "video_psnr_db": scores(psnr, pairing).summary(),
                    "audio_correlation": scores(correlation, pairing).summary(),
                }
                if start_t is None:
                    results[key]["nearest_clips"] = {
                        "video": psnr.argmax(dim=1).tolist(),
                        "audio": correlation.argmax(dim=1).tolist(),
                    }
                    results[key]["modalities_agree"] = modalities_agree(psnr, correlation)
                print(key, json.dumps(results[key]), flush=True)
                if model_name != "raw" and (sampler_name == "ddim" or chain_name == "correct"):
                    figure_rows[f"{sampler_name} from {where}\n{model_name}, {chain_name}"] = generated.video[0]
            if start_t is None and sampler_name == "ddim":
                continue  # zero-shot from pure noise: DPM-Solver++ only (fewer steps)
            for direction in ("a->v", "v->a"):
                for method in ("replacement", "gradient"):
                    generated, score = zero_shot(ema, clips, sampler, direction, method, start_t, config.guidance)
                    key = f"{direction} from {where} | {sampler_name} | {method}"
                    unit = "video_psnr_db" if direction == "a->v" else "audio_correlation"
                    results[key] = {unit: score.summary()}
                    print(key, json.dumps(results[key]), flush=True)
                    if direction == "a->v" and sampler_name == "ddim":
                        figure_rows[f"a->v {method} from {where}\n(audio of clip 0)"] = generated.video[0]
                    if direction == "a->v" and start_t is None:
                        for index in range(len(clips)):
                            figure_rows[f"a->v {method} from {where}\n(audio of clip {index})"] = generated.video[index]
    (output / "learning_check.json").write_text(json.dumps(results, indent=2))
    frame_grid(output / "learning_check_frames.png", figure_rows)
    return results


def main(argv: list[str] | None = None) -> int:
    defaults = LearningCheckConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(LearningCheckConfig):
        flag = f"--{field.name.replace('_', '-')}"
        parser.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name))
    parser.add_argument("--output", type=Path, default=Path(tempfile.gettempdir()) / "mmdiff-learning-check")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("MMDIFF_BENCH_THREADS", "1")))
    config = LearningCheckConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LearningCheckConfig)})
    run(config, args.output)
    print(f"results: {args.output / 'learning_check.json'}, frames: {args.output / 'learning_check_frames.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
