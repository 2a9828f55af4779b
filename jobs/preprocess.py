"""`mmdiff preprocess`: video corpus -> WebDataset shards of aligned 16-frame clips with audio."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from mmdiffusion.constants import CLIP_SECONDS, FPS, FRAMES, IMAGE_SIZE, SAMPLE_RATE, SR_IMAGE_SIZE
from pipeline.faults import InfrastructureError, RetryPolicy
from pipeline.frames import RESIZE_MODES
from pipeline.run import PreprocessConfig, preprocess


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiff preprocess",
        description=f"Decode videos into {FRAMES}-frame {IMAGE_SIZE}x{IMAGE_SIZE} {FPS} fps clips with aligned "
        f"{SAMPLE_RATE // 1000} kHz mono audio, written as WebDataset shards plus manifest.parquet, "
        "errors.parquet and stats.json. "
        "Runs on a local Ray, or on RAY_ADDRESS's cluster; s3:// URIs use the standard AWS "
        "variables (AWS_ENDPOINT_URL, keys, profile). Rerunning resumes; storage failures leave units "
        "for a rerun (exit status 1), other clip options than the output's are refused (status 2).",
    )
    parser.add_argument(
        "--input", required=True, help="folder, s3://bucket/prefix, or a .txt/.csv/.parquet list (column 'uri')"
    )
    parser.add_argument("--output", required=True, help="folder or s3://bucket/prefix")
    parser.add_argument("--workers", type=int, default=None, help="most decoding workers at once (default: all CPUs)")
    parser.add_argument(
        "--stride",
        type=float,
        default=CLIP_SECONDS,
        help=f"seconds between clip starts, a multiple of {1 / FPS:g} (default {CLIP_SECONDS:g}: no overlap)",
    )
    parser.add_argument(
        "--resize", choices=RESIZE_MODES, default="pad", help="keep aspect ratio, then pad (default) or centre-crop"
    )
    parser.add_argument(
        "--sr-size",
        type=int,
        default=None,
        metavar=str(SR_IMAGE_SIZE),
        help="also store each clip's frames at this size for super-resolution training",
    )
    parser.add_argument("--max-clips-per-video", type=int, default=None, help="stop after this many clips of one video")
    parser.add_argument(
        "--videos-per-shard",
        type=int,
        default=PreprocessConfig.videos_per_shard,
        help="videos decoded into one shard (the unit of resumable work)",
    )
    parser.add_argument(
        "--no-signals",
        dest="signals",
        action="store_false",
        help="skip the curation signals and near-duplicate marking (on by default; docs/curation.md)",
    )
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        help="also redo the videos recorded in errors.parquet (e.g. after a decoder upgrade); each clip still once",
    )
    parser.add_argument(
        "--storage-attempts",
        type=int,
        default=RetryPolicy.attempts,
        help="tries of each storage read or write and of each unit before it is left for a rerun "
        f"(waits from {RetryPolicy.first_delay_s:g} s, doubling, at most {RetryPolicy.max_delay_s:g} s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = PreprocessConfig(
            input=args.input,
            output=args.output,
            workers=args.workers,
            stride=args.stride,
            resize=args.resize,
            sr_size=args.sr_size,
            max_clips_per_video=args.max_clips_per_video,
            videos_per_shard=args.videos_per_shard,
            signals=args.signals,
            retry_errors=args.retry_errors,
            retry=RetryPolicy(attempts=args.storage_attempts),
        )
        stats = preprocess(config)
    except ValueError as error:
        print(f"mmdiff preprocess: error: {error}", file=sys.stderr)
        return 2
    except InfrastructureError as error:
        print(f"mmdiff preprocess: storage error: {error}; rerun the same command to go on", file=sys.stderr)
        return 1
    print(json.dumps({**asdict(stats), "clips_per_second": round(stats.clips_per_second, 3)}, indent=2))
    summary = stats.unfinished_summary()
    if summary:
        print(f"mmdiff preprocess: {summary}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
