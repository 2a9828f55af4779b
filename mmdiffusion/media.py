"""Turning sampled tensors into files a person can open: mp4 with sound, and PNG previews.

Model range is [-1, 1]. Video frames are stored as uint8 `[F, H, W, 3]` and audio as int16
`[C, L]` (the layouts `pipeline.decode.load_clip` returns), so a written clip decodes back to
what was sampled, up to compression. matplotlib is used through its Agg canvas only (no pyplot
state, no display).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from mmdiffusion.constants import FPS, SAMPLE_RATE

AUDIO_SCALE = 32768.0
"""int16 full scale: audio in [-1, 1) times this is the int16 sample."""
AAC_BIT_RATE = 128_000
VIDEO_CRF = "18"
"""x264 quality: visually lossless at these sizes."""


# ---------------------------------------------------------------------- conversions
def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """`[F, C, H, W]` in [-1, 1] → uint8 `[F, H, W, C]`."""
    scaled = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def video_from_uint8(frames: np.ndarray) -> torch.Tensor:
    """uint8 `[F, H, W, C]` → `[F, C, H, W]` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def audio_to_int16(audio: torch.Tensor) -> np.ndarray:
    """`[C, L]` in [-1, 1] → int16 `[C, L]`."""
    scaled = (audio.detach().float().cpu() * AUDIO_SCALE).round().clamp(-AUDIO_SCALE, AUDIO_SCALE - 1)
    return scaled.to(torch.int16).numpy()


def audio_from_int16(samples: np.ndarray) -> torch.Tensor:
    """int16 `[C, L]` → `[C, L]` in [-1, 1)."""
    return torch.from_numpy(np.ascontiguousarray(samples)).float() / AUDIO_SCALE


# ---------------------------------------------------------------------- mp4
def write_mp4(
    path: str | Path, frames: np.ndarray, audio: np.ndarray, fps: int = FPS, sample_rate: int = SAMPLE_RATE
) -> Path:
    """Write uint8 frames `[F, H, W, 3]` as H.264 (yuv420p) and int16 audio `[C, L]` as AAC."""
    path = Path(path)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    if audio.dtype != np.int16 or audio.ndim != 2:
        raise ValueError(f"audio must be int16 [C, L], got {audio.dtype} {list(audio.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
    with av.open(str(path), mode="w", format="mp4") as container:
        video_stream = container.add_stream("libx264", rate=fps)
        video_stream.width, video_stream.height = width, height
        video_stream.pix_fmt = "yuv420p"
        video_stream.options = {"crf": VIDEO_CRF}
        audio_stream = container.add_stream("aac", rate=sample_rate, layout=layout)
        audio_stream.bit_rate = AAC_BIT_RATE
        for frame in frames:
            container.mux(video_stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video_stream.encode(None))
        # Planar s16 ("s16p"), one row per channel; the encoder's own resampler converts it.
        sound = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="s16p", layout=layout)
        sound.sample_rate = sample_rate
        sound.pts = 0
        sound.time_base = Fraction(1, sample_rate)
        container.mux(audio_stream.encode(sound))
        container.mux(audio_stream.encode(None))
    return path


# ---------------------------------------------------------------------- previews
def _figure(width_inches: float, height_inches: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_inches, height_inches), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def write_contact_sheet(path: str | Path, frames: np.ndarray, columns: int = 8, fps: int = FPS) -> Path:
    """A PNG grid of all frames, each titled with its index and time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = len(frames)
    rows = -(-count // columns)
    figure = _figure(columns * 1.6, rows * 1.8)
    for index in range(rows * columns):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.axis("off")
        if index < count:
            axes.imshow(frames[index], interpolation="nearest")
            axes.set_title(f"{index}  {index / fps:.1f} s", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def write_audio_plot(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """A PNG with the waveform above its spectrogram (first channel)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    signal = audio[0].astype(np.float32) / AUDIO_SCALE
    seconds = np.arange(len(signal)) / sample_rate
    figure = _figure(8, 5)
    wave, spectrum = figure.subplots(2, 1, sharex=True)
    wave.plot(seconds, signal, linewidth=0.5)
    wave.set(ylim=(-1, 1), ylabel="amplitude", title="waveform")
    spectrum.specgram(signal, NFFT=512, Fs=sample_rate, noverlap=384, cmap="magma")
    spectrum.set(xlabel="time (s)", ylabel="frequency (Hz)", title="spectrogram")
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


# ---------------------------------------------------------------------- one sample's files
def write_sample(
    output: Path, index: int, video: torch.Tensor, audio: torch.Tensor, video_sr: torch.Tensor | None
) -> list[Path]:
    """The files of one sampled clip in `output` (model tensors in [-1, 1]): `sample_NNN.mp4`
    (base size), `sample_NNN_<size>.mp4` with SR, `sample_NNN_frames.png` (the largest frames)
    and `sample_NNN_audio.png`. What `mmdiff sample` writes and training logs to MLflow."""
    stem = Path(output) / f"sample_{index:03d}"
    frames = video_to_uint8(video)
    sound = audio_to_int16(audio)
    paths = [write_mp4(stem.with_suffix(".mp4"), frames, sound)]
    if video_sr is not None:
        frames = video_to_uint8(video_sr)
        paths.append(write_mp4(stem.with_name(f"{stem.name}_{frames.shape[1]}.mp4"), frames, sound))
    paths.append(write_contact_sheet(stem.with_name(f"{stem.name}_frames.png"), frames))
    paths.append(write_audio_plot(stem.with_name(f"{stem.name}_audio.png"), sound))
    return paths
