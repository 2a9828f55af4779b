"""SR frames in the shards: one JPEG per frame (format 3) against the single strip of format 2.

For SR training keeping `--kept` of a clip's 16 frames at 256×256: the CPU time
`decode_sample` takes per sample with each layout (the strip must be decoded whole, the
per-frame layout decodes only the kept frames' members), the CPU time to encode a clip's SR
frames, and the bytes per clip in the tar (each member adds a 512-byte header and pads its
data to 512 bytes). The clips are the pipeline's own (`open_source` with `sr_size`), cut from
one source of `benchmarks.preprocess_throughput`'s corpus: 640×360 H.264 with fine per-frame
noise, the hard case for JPEG. CPU time is the process's (one thread: PIL decodes on the
calling thread), so the load of a shared machine changes it little.

    .venv/bin/python -m benchmarks.sr_decode [--clips 8] [--kept 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.preprocess_throughput import write_corpus_video
from mmdiffusion.constants import AUDIO_SAMPLES, FRAMES, IMAGE_SIZE, SR_IMAGE_SIZE
from pipeline.decode import ClipOptions, open_source
from pipeline.shard_format import SampleSpec, decode_sample, jpeg_bytes, sr_members, sr_strip_member_name

TAR_BLOCK = 512


def tar_bytes(members: dict[str, bytes]) -> int:
    """What the members take in a tar: a header block each, data padded to whole blocks."""
    return sum(TAR_BLOCK + -(-len(data) // TAR_BLOCK) * TAR_BLOCK for data in members.values())


def cpu_ms_per_call(calls: list[Callable[[], object]], repeats: int) -> float:
    """The fastest of `repeats` passes over `calls`, in CPU milliseconds per call."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for call in calls:
            call()
        best = min(best, time.process_time() - start)
    return best / len(calls) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--kept", type=int, default=1, help="frames kept per clip, as SR training's frames_kept")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the source video is written (a temporary folder)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as temporary:
        source = (args.workdir or Path(temporary)) / "sr-source.mp4"
        source.parent.mkdir(parents=True, exist_ok=True)
        if not source.exists():
            write_corpus_video(source, seconds=1.6 * args.clips + 0.5, seed=0)
        _, clips = open_source(str(source), ClipOptions(max_clips=args.clips, sr_size=SR_IMAGE_SIZE))
        frames = [clip.video_sr for clip in clips]

    spec = SampleSpec(FRAMES, IMAGE_SIZE, AUDIO_SAMPLES, sr_size=SR_IMAGE_SIZE, frames_kept=args.kept)
    strip_name = sr_strip_member_name(SR_IMAGE_SIZE)
    start = time.process_time()
    strips = [{strip_name: jpeg_bytes(np.concatenate(clip))} for clip in frames]
    strip_encode = (time.process_time() - start) / len(frames) * 1000
    start = time.process_time()
    per_frame = [sr_members(clip) for clip in frames]
    per_frame_encode = (time.process_time() - start) / len(frames) * 1000

    def same_pixels(strip: dict[str, bytes], members: dict[str, bytes]) -> bool:
        return np.array_equal(decode_sample(strip, spec)["video_sr"], decode_sample(members, spec)["video_sr"])

    picks = random.Random(0)
    kept = [picks.sample(range(FRAMES), args.kept) for _ in frames]

    def decodes(samples: list[dict[str, bytes]], chosen: list[list[int] | None]) -> list[Callable[[], object]]:
        return [lambda s=s, c=c: decode_sample(s, spec, c) for s, c in zip(samples, chosen, strict=True)]

    everything: list[list[int] | None] = [None] * len(frames)
    strip_bytes = sum(tar_bytes(sample) for sample in strips) / len(frames)
    per_frame_bytes = sum(tar_bytes(sample) for sample in per_frame) / len(frames)
    result = {
        "clips": len(frames),
        "sr_size": SR_IMAGE_SIZE,
        "kept": args.kept,
        "decode_cpu_ms_per_sample": {
            "strip": round(cpu_ms_per_call(decodes(strips, kept), args.repeats), 2),
            "per_frame": round(cpu_ms_per_call(decodes(per_frame, kept), args.repeats), 2),
            "per_frame_all_16": round(cpu_ms_per_call(decodes(per_frame, everything), args.repeats), 2),
        },
        "encode_cpu_ms_per_clip": {"strip": round(strip_encode, 1), "per_frame": round(per_frame_encode, 1)},
        "tar_bytes_per_clip": {"strip": round(strip_bytes), "per_frame": round(per_frame_bytes)},
        "per_frame_bytes_over_strip": round(per_frame_bytes / strip_bytes - 1, 4),
        "same_pixels_as_strip": all(same_pixels(s, m) for s, m in zip(strips, per_frame, strict=True)),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
