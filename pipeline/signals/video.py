"""Video signals of one clip: motion, black and frozen frames, hard cuts, letterbox bars.

Input: the clip's frames as the decoder holds them, uint8 [FRAMES, S, S, 3] at output size,
plus the `PictureBox`: where the source's picture lies in them. With `--resize pad` the
pipeline centres the picture on black bars of its own; every signal is measured inside the
box, so that padding is neither motionless picture nor letterbox. The box is computed from
the source's width and height exactly as `pipeline.frames.fit_square` places the picture,
so no source frame (at full resolution, costly to convert) is needed: the 64×64 frames hold
all these signals need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.frames import ResizeMode, scaled_size

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""BT.601, as FFmpeg converts the usual YUV sources to RGB."""
BLACK_LUMA = 32.0
BLACK_BRIGHT_SHARE = 0.02
"""A frame is black when fewer than this share of its pixels are brighter than BLACK_LUMA."""
FROZEN_DIFFERENCE = 0.5
"""Mean absolute luma difference (levels) below which a frame repeats the one before."""
CUT_HISTOGRAM_LEVELS = 8
"""Per channel: an 8×8×8 = 512-bin colour histogram."""
CUT_DISTANCE = 0.4
"""Total-variation distance of consecutive histograms (0..1) above which the picture jumped."""
BAR_LUMA = 24.0
"""A row (column) of the picture is part of a bar when its mean luma stays below this in every frame."""


@dataclass(frozen=True)
class PictureBox:
    """Where the source's picture lies in the square output frames."""

    top: int
    left: int
    height: int
    width: int

    def of(self, frames: np.ndarray) -> np.ndarray:
        return frames[:, self.top : self.top + self.height, self.left : self.left + self.width]


def picture_box(source_width: int | None, source_height: int | None, side: int, mode: ResizeMode) -> PictureBox:
    """The picture's place in a `side`×`side` frame made by `pipeline.frames.SquareScaler`; the
    whole frame when the size is unknown (an audio-only source)."""
    if not source_width or not source_height:
        return PictureBox(0, 0, side, side)
    width, height = scaled_size(source_width, source_height, side, mode)
    return PictureBox(  # the offsets of `fit_square`: -((height - side) // 2) rows of padding above
        top=max(-((height - side) // 2), 0),
        left=max(-((width - side) // 2), 0),
        height=min(height, side),
        width=min(width, side),
    )


def luma(frames: np.ndarray) -> np.ndarray:
    """float32 [F, H, W] in 0..255."""
    return frames.astype(np.float32) @ LUMA_WEIGHTS


def frame_differences(luma_frames: np.ndarray) -> np.ndarray:
    """Mean absolute luma difference of each frame from the one before ([F-1], levels)."""
    return np.abs(np.diff(luma_frames, axis=0)).mean(axis=(1, 2))


def black_frames(luma_frames: np.ndarray) -> np.ndarray:
    """[F] bool."""
    return (luma_frames > BLACK_LUMA).mean(axis=(1, 2)) < BLACK_BRIGHT_SHARE


def frozen_frames(differences: np.ndarray, black: np.ndarray) -> np.ndarray:
    """[F-1] bool: frame i+1 repeats frame i and is not black."""
    return (differences < FROZEN_DIFFERENCE) & ~black[1:]


def colour_histograms(frames: np.ndarray) -> np.ndarray:
    """[F, 512] normalised 8×8×8 RGB histograms."""
    shift = 8 - int(np.log2(CUT_HISTOGRAM_LEVELS))
    quantised = (frames >> shift).astype(np.int32)
    levels = CUT_HISTOGRAM_LEVELS
    bins = (quantised[..., 0] * levels + quantised[..., 1]) * levels + quantised[..., 2]
    count = len(frames)
    offsets = (np.arange(count) * levels**3)[:, None, None]
    histograms = np.bincount((bins + offsets).reshape(-1), minlength=count * levels**3).reshape(count, -1)
    return histograms / histograms.sum(axis=1, keepdims=True)


def scene_cut_count(frames: np.ndarray) -> int:
    """Hard cuts: the colour histogram jumps between frames t-1 and t and the picture does not
    come back: frame t+1 is still far from frame t-1 and frame t already far from frame t-2.
    So a one-frame flash (a jump in and a jump out) or a passing object is not a cut."""
    histograms = colour_histograms(frames)

    def far(step: int) -> np.ndarray:  # [F - step]: frame j vs frame j + step
        return 0.5 * np.abs(histograms[step:] - histograms[:-step]).sum(axis=1) > CUT_DISTANCE

    jump, skip = far(1), far(2)  # jump[t-1]: t-1 -> t; skip[j]: j -> j+2
    stays_after = np.r_[skip, True]  # t-1 -> t+1 (no frame t+1 after the last transition)
    new_since_before = np.r_[True, skip]  # t-2 -> t (no frame t-2 before the first)
    return int(np.sum(jump & stays_after & new_since_before))


def _bar_length(levels: np.ndarray) -> int:
    """How many entries from the start are dark."""
    bright = np.flatnonzero(levels >= BAR_LUMA)
    return int(bright[0]) if bright.size else levels.size


@dataclass(frozen=True)
class Bars:
    """Dark bars along the picture's edges that stay dark in every frame (rows, columns)."""

    top: int
    bottom: int
    left: int
    right: int
    height: int
    width: int
    """Of the picture the bars were looked for in."""

    @property
    def whole_picture(self) -> bool:
        """Everything is dark: no picture left to tell bars from."""
        return self.top >= self.height or self.left >= self.width

    @property
    def share(self) -> float:
        """Share of the picture the bars cover; 0 when the whole picture is dark."""
        if self.whole_picture:
            return 0.0
        kept = (self.height - self.top - self.bottom) * (self.width - self.left - self.right)
        return 1.0 - kept / (self.height * self.width)

    def inside(self, luma_frames: np.ndarray) -> np.ndarray:
        """The frames without the bars (unchanged when the whole picture is dark)."""
        if self.whole_picture:
            return luma_frames
        return luma_frames[:, self.top : self.height - self.bottom, self.left : self.width - self.right]


def find_bars(luma_frames: np.ndarray) -> Bars:
    """Letterbox (rows above and below) and pillarbox (columns left and right) bars: edge rows
    and columns whose mean luma stays below BAR_LUMA in every frame."""
    rows = luma_frames.mean(axis=2).max(axis=0)
    columns = luma_frames.mean(axis=1).max(axis=0)
    return Bars(
        top=_bar_length(rows),
        bottom=_bar_length(rows[::-1]),
        left=_bar_length(columns),
        right=_bar_length(columns[::-1]),
        height=rows.size,
        width=columns.size,
    )
