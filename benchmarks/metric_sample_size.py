"""How FVD, KVD and FAD vary with the number of clips N on the demo's data.

The demo corpus (`pipeline.synthetic.write_demo_corpus`: bouncing balls you can hear) is
written and decoded exactly as preprocessing decodes it (`pipeline.decode.open_source`), and
the I3D and YAMNet features of every clip are computed once. Then, many times over, the
videos are split at random into two halves (so no source has clips on both sides) and N
clips are drawn from each: both sets come from one distribution, so the true distance is 0
and every value measured is the bias and noise of the estimate at that N. Printed as one JSON
line per metric and N: mean, standard deviation and range over the repeats.

    .venv/bin/python -m benchmarks.metric_sample_size [--videos 32] [--sizes 4,8,16,32,64] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmdiffusion.media import audio_from_int16
from mmdiffusion.metrics import (
    ExtractorConfig,
    build_audio_extractor,
    build_video_extractor,
    frechet_distance_of_features,
    mmd2_unbiased,
)
from pipeline.decode import ClipOptions, open_source
from pipeline.synthetic import write_demo_corpus


def decoded_clips(folder: Path, videos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(video uint8 [N, 16, 64, 64, 3], audio float [N, 1, 25600], source index [N])."""
    frames, sounds, sources = [], [], []
    for index, path in enumerate(write_demo_corpus(folder, count=videos)):
        _, clips = open_source(str(path), ClipOptions())
        for clip in clips:
            frames.append(clip.video)
            sounds.append(audio_from_int16(clip.audio).numpy())
            sources.append(index)
    return np.stack(frames), np.stack(sounds), np.array(sources)


def spread(
    features: dict[str, np.ndarray], sources: np.ndarray, sizes: list[int], repeats: int, seed: int = 0
) -> list[dict]:
    """Per metric and N: the values between two same-distribution sets of N clips."""
    rng = np.random.default_rng(seed)
    videos = np.unique(sources)
    values: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats):
        half = rng.permutation(videos)[: len(videos) // 2]
        sides = [np.flatnonzero(np.isin(sources, half)), np.flatnonzero(~np.isin(sources, half))]
        for size in sizes:
            if size > min(len(side) for side in sides):
                continue
            first, second = (rng.choice(side, size, replace=False) for side in sides)
            for metric, name in (("fvd", "video"), ("kvd", "video"), ("fad", "audio")):
                a, b = features[name][first], features[name][second]
                value = frechet_distance_of_features(a, b) if metric != "kvd" else mmd2_unbiased(a, b)
                values.setdefault((metric, size), []).append(value)
    return [
        {
            "metric": metric,
            "n": size,
            "mean": round(float(np.mean(v)), 3),
            "std": round(float(np.std(v)), 3),
            "min": round(float(np.min(v)), 3),
            "max": round(float(np.max(v)), 3),
            "repeats": len(v),
        }
        for (metric, size), v in sorted(values.items())
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=32, help="demo videos (4 clips each)")
    parser.add_argument("--sizes", default="4,8,16,32,64", help="comma-separated N per set")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="metric-sample-size-") as folder:
        started = time.perf_counter()
        video, audio, sources = decoded_clips(Path(folder), args.videos)
        decoded = time.perf_counter()
        config = ExtractorConfig(batch_size=4)
        features = {"video": build_video_extractor(config)(video), "audio": build_audio_extractor(config)(audio)}
        extracted = time.perf_counter()
    print(
        json.dumps(
            {
                "clips": len(video),
                "videos": args.videos,
                "decode_s": round(decoded - started, 1),
                "features_s": round(extracted - decoded, 1),
                "load_average": [round(load, 2) for load in os.getloadavg()],
            }
        )
    )
    for row in spread(features, sources, [int(n) for n in args.sizes.split(",")], args.repeats):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
