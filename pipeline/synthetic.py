"""A small synthetic corpus for the demo: bouncing balls that you can hear.

Each video shows a coloured ball bouncing on a floor. Its sound is a tone whose pitch follows
the ball's height, with a knock at every bounce, so audio and video are tied together the way
MM-Diffusion's training data is, and a model trained for minutes learns something visible.
The files are ordinary mp4s (H.264 + AAC) at rates other than the clip rates, so they travel
through the same decoding and resampling as any user corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmdiffusion.media import write_mp4

SOURCE_FPS = 25
SOURCE_SAMPLE_RATE = 22_050
SOURCE_SIZE = 96
BALL_RADIUS = 11


@dataclass(frozen=True)
class BallScene:
    """One video's parameters."""

    color: tuple[int, int, int]
    background: tuple[int, int, int]
    bounce_seconds: float
    drift: float
    """Horizontal pixels per second."""
    base_pitch: float
    """Tone frequency (Hz) with the ball on the floor; it rises an octave at the top."""


def random_scene(rng: np.random.Generator) -> BallScene:
    color = tuple(int(c) for c in rng.integers(120, 256, 3))
    background = tuple(int(c) for c in rng.integers(0, 60, 3))
    return BallScene(
        color=color,  # type: ignore[arg-type]
        background=background,  # type: ignore[arg-type]
        bounce_seconds=float(rng.uniform(0.6, 1.2)),
        drift=float(rng.uniform(-30, 30)),
        base_pitch=float(rng.uniform(220, 440)),
    )


def ball_height(scene: BallScene, seconds: np.ndarray) -> np.ndarray:
    """Height above the floor in [0, 1]: a parabola per bounce."""
    phase = (seconds / scene.bounce_seconds) % 1.0
    return 4 * phase * (1 - phase)


def render_frames(scene: BallScene, seconds: float) -> np.ndarray:
    """uint8 `[N, SOURCE_SIZE, SOURCE_SIZE, 3]` at SOURCE_FPS."""
    times = np.arange(int(seconds * SOURCE_FPS)) / SOURCE_FPS
    floor = SOURCE_SIZE - BALL_RADIUS - 4
    ys = floor - ball_height(scene, times) * (SOURCE_SIZE - 2 * BALL_RADIUS - 8)
    xs = (SOURCE_SIZE / 2 + scene.drift * times) % SOURCE_SIZE
    grid_y, grid_x = np.mgrid[0:SOURCE_SIZE, 0:SOURCE_SIZE]
    frames = np.empty((len(times), SOURCE_SIZE, SOURCE_SIZE, 3), dtype=np.uint8)
    frames[:] = np.array(scene.background, dtype=np.uint8)
    frames[:, floor + BALL_RADIUS :, :] = 90  # the floor
    for index, (x, y) in enumerate(zip(xs, ys, strict=True)):
        dx = np.minimum(np.abs(grid_x - x), SOURCE_SIZE - np.abs(grid_x - x))  # wraps around the sides
        inside = dx**2 + (grid_y - y) ** 2 <= BALL_RADIUS**2
        frames[index][inside] = scene.color
    return frames


def tone_phase(scene: BallScene, sample_rate: float, samples: int) -> np.ndarray:
    """The phase (radians) of the height-following tone at each of `samples` samples."""
    times = np.arange(samples) / sample_rate
    frequency = scene.base_pitch * 2 ** ball_height(scene, times)
    return 2 * np.pi * np.cumsum(frequency) / sample_rate


def render_audio(scene: BallScene, seconds: float) -> np.ndarray:
    """int16 mono `[1, N]` at SOURCE_SAMPLE_RATE: a height-following tone and bounce knocks."""
    times = np.arange(int(seconds * SOURCE_SAMPLE_RATE)) / SOURCE_SAMPLE_RATE
    signal = 0.25 * np.sin(tone_phase(scene, SOURCE_SAMPLE_RATE, len(times)))
    since_bounce = times % scene.bounce_seconds
    signal += 0.6 * np.exp(-since_bounce * 60) * np.sin(2 * np.pi * 90 * since_bounce)
    return (np.clip(signal, -1, 1) * 32767).astype(np.int16)[None, :]


def write_demo_corpus(folder: str | Path, count: int = 12, seconds: float = 6.5, seed: int = 0) -> list[Path]:
    """Write `count` bouncing-ball videos of `seconds` each into `folder`; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        scene = random_scene(rng)
        path = folder / f"ball_{index:03d}.mp4"
        write_mp4(path, render_frames(scene, seconds), render_audio(scene, seconds), SOURCE_FPS, SOURCE_SAMPLE_RATE)
        paths.append(path)
    return paths
