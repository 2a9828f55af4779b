"""Object-store reads and input stalls.

1. Requests per clip: the shard reader that training and evaluation share
   (`pipeline.shard_format.read_samples`) reads real-size shards from a loopback SeaweedFS,
   unbuffered (tar's 10,240-byte reads, each one ranged GET: the reader before block reads)
   and in `READ_BLOCK_BYTES` blocks; the requests are counted by the server (its Prometheus
   counters), the clips are decoded as training decodes them.
2. Stall per step: `ClipLoader` over a store with a per-request latency and a bandwidth
   (`tests.fixtures.slow_store`), with a training step of fixed length between batches, with
   and without prefetching. The step is a sleep, which is what the host does during a GPU
   step (it waits for the device); the stall is the wall time per step beyond the step.

    .venv/bin/python -m benchmarks.s3_reads [--clips 256] [--latency-ms 30] [--mb-per-s 25] [--step-ms 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import boto3

from benchmarks.loader_throughput import write_shards
from infra.local.process import stop_tree
from infra.local.seaweed import SeaweedConfig, SeaweedPorts, s3_request_count, start_seaweed
from mmdiffusion.constants import AUDIO_SAMPLES, FRAMES, IMAGE_SIZE
from pipeline.shard_format import READ_BLOCK_BYTES, SampleSpec, decode_sample, read_samples
from tests.fixtures.slow_store import slow_filesystem
from training.loader import DEFAULT_PREFETCH, ClipLoader

BUCKET = "read-bench"
SPEC = SampleSpec(FRAMES, IMAGE_SIZE, AUDIO_SAMPLES)


def requests_per_clip(shards: list[Path], clips: int) -> dict[str, dict[str, float]]:
    """Read and decode every clip from S3, unbuffered and in blocks; requests counted by the server."""
    workdir = Path(tempfile.mkdtemp(prefix="read-bench-weed-"))
    config = SeaweedConfig(
        workdir / "data", SeaweedPorts.pick_free(), f"bench-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    )
    pid = start_seaweed(config, workdir / "weed.log", timeout_s=60)
    try:
        os.environ.update(
            AWS_ENDPOINT_URL=config.endpoint_url,
            AWS_ACCESS_KEY_ID=config.access_key,
            AWS_SECRET_ACCESS_KEY=config.secret_key,
            AWS_REGION="us-east-1",
        )
        client = boto3.client("s3", endpoint_url=config.endpoint_url, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        for path in shards:
            client.upload_file(str(path), BUCKET, f"shards/{path.name}")
        total_bytes = sum(path.stat().st_size for path in shards)
        results = {}
        for label, block in (
            ("unbuffered (before)", 0),
            (f"{READ_BLOCK_BYTES >> 20} MiB blocks (after)", READ_BLOCK_BYTES),
        ):
            before, start, seen = s3_request_count(config.metrics_url, BUCKET), time.perf_counter(), 0
            for path in shards:
                for sample in read_samples(f"s3://{BUCKET}/shards/{path.name}", on_error=_raise, block_bytes=block):
                    decode_sample(sample, SPEC)
                    seen += 1
            elapsed = time.perf_counter() - start
            requests = s3_request_count(config.metrics_url, BUCKET) - before
            assert seen == clips, (seen, clips)
            results[label] = {
                "requests": requests,
                "requests_per_clip": round(requests / clips, 3),
                "mb_per_request": round(total_bytes / requests / 1e6, 3),
                "clips_per_s": round(clips / elapsed, 1),
            }
        return results
    finally:
        stop_tree(pid)
        shutil.rmtree(workdir, ignore_errors=True)


def _raise(error: Exception) -> None:
    raise error


def stall_per_step(shards: list[Path], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    store = slow_filesystem(args.latency_ms / 1000, args.mb_per_s * 1e6)
    uris = [str(path) for path in shards]
    step_s = args.step_ms / 1000
    results = {}
    runs = [("loader alone, no step", 0, 0.0), ("step + loader, no prefetch (before)", 0, step_s)]
    runs += [(f"step + loader, prefetch {depth}", depth, step_s) for depth in sorted({DEFAULT_PREFETCH, 4})]
    for label, prefetch, step in runs:
        loader = ClipLoader(uris, SPEC, batch_size=args.batch_size, prefetch=prefetch, filesystem=store)
        batches = iter(loader)
        next(batches)  # the first batch cannot be hidden behind a step: not counted (prefetching gets
        # a head start of `prefetch` batches from it, which the steps measured make small)
        start = time.perf_counter()
        for _ in range(args.steps):
            next(batches)
            time.sleep(step)
        per_step = (time.perf_counter() - start) / args.steps
        loader.close()
        results[label] = {
            "ms_per_step": round(per_step * 1000, 1),
            "stall_ms_per_step": round((per_step - step) * 1000, 1),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60, help="measured steps of the stall measurement")
    parser.add_argument("--latency-ms", type=float, default=30.0, help="slow store: time to first byte per request")
    parser.add_argument("--mb-per-s", type=float, default=25.0, help="slow store: bandwidth of one stream")
    parser.add_argument("--step-ms", type=float, default=100.0, help="the training step's length")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmdiff-read-bench"))
    args = parser.parse_args()
    shards = [Path(uri) for uri in write_shards(args.workdir, args.clips)][: -(-args.clips // 64)]
    clips = sum(1 for path in shards for _ in read_samples(str(path), on_error=_raise))
    print(json.dumps({"requests_per_clip": requests_per_clip(shards, clips)}, indent=2))
    print(json.dumps({"stall_per_step": stall_per_step(shards, args)}, indent=2))


if __name__ == "__main__":
    main()
