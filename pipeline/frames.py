"""Square frames from any source frame: keep the aspect ratio, then pad or centre-crop."""

from __future__ import annotations

from typing import Literal

import av
import numpy as np

ResizeMode = Literal["pad", "crop"]
RESIZE_MODES: tuple[str, ...] = ("pad", "crop")


def scaled_size(width: int, height: int, side: int, mode: ResizeMode) -> tuple[int, int]:
    """(width, height) after scaling so the long side ("pad") or short side ("crop") is `side`."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    scale = side / (max(width, height) if mode == "pad" else min(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_square(image: np.ndarray, side: int) -> np.ndarray:
    """Centre `image` (H, W, 3) on a black `side`×`side` canvas, cropping what overflows."""
    height, width = image.shape[:2]
    top, left = (height - side) // 2, (width - side) // 2
    cropped = image[max(top, 0) : max(top, 0) + side, max(left, 0) : max(left, 0) + side]
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    y, x = max(-top, 0), max(-left, 0)
    canvas[y : y + cropped.shape[0], x : x + cropped.shape[1]] = cropped
    return canvas


def square_rgb(frame: av.VideoFrame, side: int, mode: ResizeMode) -> np.ndarray:
    """`frame` as uint8 RGB (side, side, 3): area-averaged down-scaling, then pad or crop."""
    width, height = scaled_size(frame.width, frame.height, side, mode)
    scaled = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
    return fit_square(scaled.to_ndarray(), side)
