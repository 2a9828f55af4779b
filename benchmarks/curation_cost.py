"""What curation costs: the per-clip signals against the decode that produces the clip, and
near-duplicate grouping against the corpus size.

Signals: the benchmark corpus of `preprocess_throughput` (640x360 H.264 30 fps, AAC 44.1 kHz
stereo, generated once into --workdir) is decoded clip by clip exactly as preprocessing does
(`pipeline.decode.open_source`), and `compute_signals` runs on every clip; both are timed as
CPU time of this process (single-threaded, like a worker), so other load on the machine
changes them little. The goal: signals ≤ 10 % of the decode.

Dedup: `find_duplicates` on synthetic manifests of --dedup-clips random fingerprints with 1 %
planted near-duplicates (the measured bit flips of a re-encode and a 5 % crop), reporting wall
time, candidate pairs, and the planted pairs found.

    .venv/bin/python -m benchmarks.curation_cost [--videos 6] [--seconds 16] [--dedup-clips 100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.decode import ClipOptions, open_source
from pipeline.dedup import find_duplicates
from pipeline.signals import compute_signals, picture_box
from pipeline.signals.record import AUDIO_FINGERPRINT_BYTES, VIDEO_FINGERPRINT_BYTES

PLANTED_VIDEO_FLIPS = (4, 16)
"""Bits a planted copy differs in: as measured for a re-encode and a 5 % crop (docs/curation.md)."""


def time_signals(paths: list[Path], resize: str = "pad") -> dict:
    decode_seconds = signal_seconds = 0.0
    clips = 0
    for path in paths:
        started = time.process_time()
        info, stream = open_source(str(path), ClipOptions(resize=resize))
        decoded = list(stream)
        decode_seconds += time.process_time() - started
        box = picture_box(info.width, info.height, decoded[0].video.shape[1], resize)
        started = time.process_time()
        for clip in decoded:
            compute_signals(clip.video, clip.audio, box)
        signal_seconds += time.process_time() - started
        clips += len(decoded)
    return {
        "clips": clips,
        "decode_cpu_ms_per_clip": round(1000 * decode_seconds / clips, 2),
        "signals_cpu_ms_per_clip": round(1000 * signal_seconds / clips, 2),
        "signals_share_of_decode": round(signal_seconds / decode_seconds, 4),
    }


def synthetic_manifest(clips: int, seed: int = 0) -> tuple[pa.Table, set[tuple[int, int]]]:
    """Random fingerprints; every 100th clip is a copy of the clip before it with a few video
    bits flipped and its audio levels moved by one 3 dB step in a tenth of the cells."""
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 256, size=(clips, VIDEO_FINGERPRINT_BYTES), dtype=np.uint8)
    audio = rng.integers(0, 256, size=(clips, AUDIO_FINGERPRINT_BYTES), dtype=np.uint8)
    planted = set()
    for index, copy in enumerate(range(1, clips, 100)):
        bits = np.unpackbits(video[copy - 1])
        flips = rng.choice(bits.size, size=PLANTED_VIDEO_FLIPS[index % 2], replace=False)
        bits[flips] ^= 1
        video[copy] = np.packbits(bits)
        audio[copy] = audio[copy - 1] ^ np.where(rng.random(AUDIO_FINGERPRINT_BYTES) < 0.1, 0x01, 0x00).astype(np.uint8)
        planted.add((copy - 1, copy))
    table = pa.table(
        {
            "key": [f"{index:012d}" for index in range(clips)],
            "source": [f"s3://corpus/{index}.mp4" for index in range(clips)],
            "clip_index": pa.array(np.zeros(clips, dtype=np.int32)),
            "start_seconds": np.zeros(clips),
            "video_fingerprint": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(VIDEO_FINGERPRINT_BYTES), clips, [None, pa.py_buffer(video.tobytes())]
            ),
            "audio_fingerprint": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(AUDIO_FINGERPRINT_BYTES), clips, [None, pa.py_buffer(audio.tobytes())]
            ),
        }
    )
    return table, planted


def time_dedup(clips: int) -> dict:
    manifest, planted = synthetic_manifest(clips)
    started = time.perf_counter()
    table, report = find_duplicates(manifest)
    seconds = time.perf_counter() - started
    duplicate_of = table["duplicate_of"].to_pylist()
    keys = table["key"].to_pylist()
    found = sum(duplicate_of[copy] == keys[original] for original, copy in planted)
    return {
        "clips": clips,
        "seconds": round(seconds, 2),
        "compared_pairs": report.compared_pairs,
        "planted_pairs": len(planted),
        "planted_found": found,
        "duplicates_marked": report.duplicates,
    }


def main(argv: list[str] | None = None) -> int:
    from benchmarks.preprocess_throughput import build_corpus

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=16.0)
    parser.add_argument("--dedup-clips", default="100000,1000000", help="comma-separated corpus sizes")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mmdiff-preprocess-bench")
    args = parser.parse_args(argv)
    paths = build_corpus(args.workdir / f"corpus-{args.videos}x{args.seconds:g}s", args.videos, args.seconds)
    result = {
        "load_average_1min": round(os.getloadavg()[0], 1),
        "signals": time_signals(paths),
        "dedup": [time_dedup(int(count)) for count in args.dedup_clips.split(",")],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
