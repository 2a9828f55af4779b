"""`mmdiff sample`: draw audio-video clips (jointly, or one modality given the other) and write
them as mp4 with sound, a PNG contact sheet and a PNG of the waveform and spectrogram.

This module parses the arguments, finds the models (`training.resolver`), decodes the
condition file and writes the files; the sampling itself is `mmdiffusion.MMDiffusionPipeline`.
`run_sampling(SampleConfig(...))` does the same in-process and returns the written files.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mmdiffusion import media
from mmdiffusion.bundle import describe_bundle
from mmdiffusion.config import CoupledUNetConfig
from mmdiffusion.constants import FRAMES, IMAGE_SIZE
from mmdiffusion.device import device_settings, resolve_device
from mmdiffusion.media import write_sample
from mmdiffusion.pipeline import MMDiffusionPipeline
from mmdiffusion.sampling import DEFAULT_STEPS, SAMPLERS, SR_SAMPLER, SamplerConfig, ZeroShotCondition, clip_shapes
from mmdiffusion.sampling.conditioning import DEFAULT_GUIDANCE, METHODS
from training.resolver import MODEL_FORMS, resolve_model


@dataclass(frozen=True)
class SampleConfig:
    """What to sample and where to write it. Paths and URIs as on the command line."""

    model: str
    output: Path
    num: int = 1
    sampler: str = "dpm-solver++"
    steps: int | None = None
    eta: float = 0.0
    seed: int = 0
    batch_size: int = 4
    """Samples per network batch."""
    config: str = "paper"
    """Named `CoupledUNetConfig` of a released `.pt` base checkpoint."""
    sr_model: str | None = None
    sr_config: str = "paper"
    """Named `SuperResUNetConfig` of a released `.pt` SR checkpoint."""
    sr_steps: int = SR_SAMPLER.num_steps
    sr_batch_size: int = 16
    """Frames per SR network batch."""
    condition_audio: str | None = None
    condition_video: str | None = None
    method: str | None = None
    """Zero-shot method with a condition (None: replacement)."""
    guidance: float | None = None
    """λ of the gradient method (default `DEFAULT_GUIDANCE`)."""
    device: str = "auto"
    precision: str = "auto"
    """Autocast of the networks: auto (bf16 on a CUDA device that has it, else fp32), fp32, bf16."""
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("num", "batch_size", "sr_steps", "sr_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.condition_audio and self.condition_video:
            problems.append("give --condition-audio or --condition-video, not both")
        if self.method is not None and self.method not in METHODS:
            problems.append(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method is not None and self.condition is None:
            problems.append("--method needs --condition-audio or --condition-video")
        if self.guidance is not None and self.method != "gradient":
            problems.append("--guidance applies to --method gradient only")
        if self.precision not in ("auto", "fp32", "bf16"):
            problems.append(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.guidance is not None and self.guidance < 0:
            problems.append(f"--guidance must be >= 0, got {self.guidance}")
        if problems:
            raise ValueError("; ".join(problems))
        SamplerConfig(self.sampler, self.steps, self.eta)  # raises on a bad sampler, steps or eta

    @property
    def condition(self) -> tuple[str, str] | None:
        """(modality, file) of the condition, if any."""
        if self.condition_audio:
            return "audio", self.condition_audio
        if self.condition_video:
            return "video", self.condition_video
        return None


# ---------------------------------------------------------------------- loading
def load_condition(modality: str, path: str, model_config: CoupledUNetConfig) -> torch.Tensor:
    """The condition clip of `path`, decoded as preprocessing decodes, in the model's layout and
    range, one for all samples (`[1, ...]`)."""
    from pipeline.decode import load_clip

    video, audio = load_clip(path, require_video=modality == "video")
    value = media.video_from_uint8(video) if modality == "video" else media.audio_from_int16(audio)
    expected = clip_shapes(model_config, 1)[modality][1:]
    if tuple(value.shape) != expected:
        raise ValueError(f"{path}: the decoded {modality} is {list(value.shape)}, the model takes {list(expected)}")
    return value.unsqueeze(0)


# ---------------------------------------------------------------------- sampling
def build_pipeline(config: SampleConfig) -> MMDiffusionPipeline:
    """The models `config` names, each with its own diffusion, and the samplers it asks for."""
    device = resolve_device(config.device)
    base = resolve_model(config.model, "coupled_unet", released_config=config.config, device=str(device))
    sr = None
    if config.sr_model:
        sr = resolve_model(config.sr_model, "sr_unet", released_config=config.sr_config, device=str(device))
    for model in (base, sr):
        if model is not None:
            print(f"{model.source}: {describe_bundle(model.bundle)}", file=sys.stderr)
    return MMDiffusionPipeline(
        base,
        sr,
        sampler=SamplerConfig(config.sampler, config.steps, config.eta),
        sr_sampler=replace(SR_SAMPLER, steps=config.sr_steps),
    )


def zero_shot_condition(config: SampleConfig, model_config: CoupledUNetConfig) -> ZeroShotCondition | None:
    if config.condition is None:
        return None
    modality, path = config.condition
    method = config.method or "replacement"
    guidance = (config.guidance if config.guidance is not None else DEFAULT_GUIDANCE) if method == "gradient" else 0.0
    return ZeroShotCondition(modality, load_condition(modality, path, model_config), method, guidance)  # type: ignore[arg-type]


def run_sampling(config: SampleConfig) -> list[Path]:
    """Sample `config.num` clips and write their files; returns every written path in order."""
    pipeline = build_pipeline(config)
    condition = zero_shot_condition(config, pipeline.base.bundle.network)
    settings = device_settings(resolve_device(config.device), config.precision)  # type: ignore[arg-type]
    settings.apply()
    written: list[Path] = []
    with settings.autocast():
        for batch in pipeline.batches(
            config.num,
            seed=config.seed,
            batch_size=config.batch_size,
            condition=condition,
            sr_batch_size=config.sr_batch_size,
            progress=config.progress,
        ):
            for offset in range(len(batch)):
                written += write_sample(
                    config.output,
                    batch.start + offset,
                    batch.video[offset],
                    batch.audio[offset],
                    None if batch.video_sr is None else batch.video_sr[offset],
                )
    return written


# ---------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiff sample",
        description=f"Sample {FRAMES}-frame {IMAGE_SIZE}x{IMAGE_SIZE} audio-video clips (optionally upsampled) "
        "and write mp4 + PNG previews.",
    )
    parser.add_argument("--model", required=True, help=f"the coupled U-Net: {MODEL_FORMS} (--config)")
    parser.add_argument("--config", default="paper", help="named config of a released .pt base model (default: paper)")
    parser.add_argument("--sr-model", default=None, help="the SR U-Net, same forms as --model (--sr-config)")
    parser.add_argument("--sr-config", default="paper", help="named config of a released .pt SR model (default: paper)")
    parser.add_argument("--sr-steps", type=int, default=SR_SAMPLER.num_steps, help="DDIM steps of the SR model")
    parser.add_argument("--sr-batch-size", type=int, default=16, help="frames per SR network batch")
    parser.add_argument("--num", type=int, default=1, help="number of clips")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per network batch")
    parser.add_argument("--sampler", choices=SAMPLERS, default="dpm-solver++")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampling steps = network evaluations (default: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items())
        + ")",
    )
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (ddim only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, type=Path, help="folder for the mp4 and PNG files")
    condition = parser.add_mutually_exclusive_group()
    condition.add_argument(
        "--condition-audio",
        default=None,
        metavar="FILE",
        help="generate video for this audio (any file with an audio stream)",
    )
    condition.add_argument(
        "--condition-video",
        default=None,
        metavar="FILE",
        help="generate audio for this video (a file with a video stream)",
    )
    parser.add_argument(
        "--method", choices=METHODS, default=None, help="zero-shot conditioning method (default: replacement)"
    )
    parser.add_argument(
        "--guidance", type=float, default=None, help=f"lambda of --method gradient (default {DEFAULT_GUIDANCE})"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="autocast of the networks (default auto: bf16 on a CUDA device that supports it, else fp32)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = SampleConfig(
            model=args.model,
            output=args.output,
            num=args.num,
            sampler=args.sampler,
            steps=args.steps,
            eta=args.eta,
            seed=args.seed,
            batch_size=args.batch_size,
            config=args.config,
            sr_model=args.sr_model,
            sr_config=args.sr_config,
            sr_steps=args.sr_steps,
            sr_batch_size=args.sr_batch_size,
            condition_audio=args.condition_audio,
            condition_video=args.condition_video,
            method=args.method,
            guidance=args.guidance,
            device=args.device,
            precision=args.precision,
            progress=not args.no_progress,
        )
        paths = run_sampling(config)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"mmdiff sample: error: {error}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
