"""RS-MMA forward+backward: the vectorised block against the per-frame loop oracle, once with
the projections shared across the loop and once projecting inside it (see the oracle's doc).

Sizes are the paper config's three cross-attention levels (batch 1):
level 1: video 16×32×32 tokens, audio 6,400 tokens, 256 channels, S=1;
level 2: 16×16×16, 1,600, 384 channels, S=4; level 3: 16×8×8, 400, 512 channels, S=8.

    .venv/bin/python -m benchmarks.rsmma_speed [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch

from mmdiffusion.attention import RSMMA
from mmdiffusion.constants import AUDIO_SAMPLES, FRAMES, IMAGE_SIZE
from tests.model.rsmma_oracle import loop_rsmma

LEVELS = [  # (level, channels, window)
    (1, 256, 1),
    (2, 384, 4),
    (3, 512, 8),
]


def time_forward_backward(fn: Callable[[], tuple[torch.Tensor, torch.Tensor]], repeats: int) -> float:
    def once() -> float:
        start = time.perf_counter()
        video, audio = fn()
        (video.square().mean() + audio.square().mean()).backward()
        return time.perf_counter() - start

    once()  # warm-up
    return statistics.median(once() for _ in range(repeats))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| level | video tokens | audio tokens | channels | S | vectorised s "
        "| loop, shared projections s | speed-up | loop, per-frame projections s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for level, channels, window in LEVELS:
        side = IMAGE_SIZE // 2**level
        audio_len = AUDIO_SAMPLES // 4**level
        block = RSMMA(channels, 64, FRAMES, window, random_shift=True)
        video = torch.randn(1, channels, FRAMES, side, side, requires_grad=True)
        audio = torch.randn(1, channels, audio_len, requires_grad=True)
        shift = FRAMES - window
        fast = time_forward_backward(functools.partial(block, video, audio, shift), args.repeats)
        shared = time_forward_backward(functools.partial(loop_rsmma, block, video, audio, shift), args.repeats)
        per_frame = time_forward_backward(functools.partial(loop_rsmma, block, video, audio, shift, True), args.repeats)
        print(
            f"| {level} | {FRAMES}×{side}×{side} | {audio_len} | {channels} | {window} | {fast:.3f} "
            f"| {shared:.3f} | {shared / fast:.1f}× | {per_frame:.3f} | {per_frame / fast:.1f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
