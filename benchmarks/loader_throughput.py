"""Shard loader throughput: `training.loader.ClipLoader` (webdataset's tar reader) against Ray
Data's `read_webdataset` + `iter_torch_batches`, both from the same local shards at the real
clip size, both producing float32 batches in [-1, 1] in the model layouts.

Shards are synthetic (written once into --workdir). Each loader runs --repeats times,
interleaved, and the fastest run counts (the machine is shared). The ClipLoader runs with one
torch thread, as inside a Ray Train worker (`OMP_NUM_THREADS=1`), and its defaults: batches
made in a background thread (`prefetch` 2) by one decoding thread. Reads from object storage
and input stalls: `benchmarks/s3_reads.py`.

    .venv/bin/python -m benchmarks.loader_throughput [--clips 1024] [--batch-size 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from mmdiffusion.constants import AUDIO_SAMPLES, FRAMES, IMAGE_SIZE
from pipeline.shard_format import SampleSpec, list_shards
from training.loader import AUDIO_SCALE, ClipLoader

CLIPS_PER_SHARD = 64


def write_shards(folder: Path, clips: int) -> list[str]:
    """Random clips at the real sizes (content does not change the cost of reading npy)."""
    shard_dir = folder / "shards"
    if shard_dir.exists() and len(list(shard_dir.glob("shard-*.tar"))) * CLIPS_PER_SHARD >= clips:
        return list_shards(str(folder))
    shard_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for number, first in enumerate(range(0, clips, CLIPS_PER_SHARD)):
        with wds.TarWriter(str(shard_dir / f"shard-{number:06d}.tar")) as writer:
            for index in range(first, min(first + CLIPS_PER_SHARD, clips)):
                writer.write(
                    {
                        "__key__": f"clip-{index:06d}",
                        "video.npy": rng.integers(0, 256, (FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
                        "audio.npy": rng.integers(-20000, 20000, (1, AUDIO_SAMPLES), dtype=np.int16),
                        "json": {"clip_index": index},
                    }
                )
    return list_shards(str(folder))


def clip_loader(shards: list[str], clips: int, batch_size: int) -> float:
    torch.set_num_threads(1)
    loader = ClipLoader(shards, SampleSpec(FRAMES, IMAGE_SIZE, AUDIO_SAMPLES), batch_size=batch_size, shuffle_buffer=64)
    batches = iter(loader)
    start, seen = time.perf_counter(), 0
    while seen < clips:
        seen += next(batches)["video"].shape[0]
    return seen / (time.perf_counter() - start)


def ray_data_loader(shards: list[str], clips: int, batch_size: int) -> float:
    import ray
    from ray.data.collate_fn import NumpyBatchCollateFn

    class ToModelLayout(NumpyBatchCollateFn):
        """The same float conversion and layout as `training.loader.collate`."""

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
            video = torch.from_numpy(np.stack(batch["video.npy"])).permute(0, 1, 4, 2, 3)
            audio = torch.from_numpy(np.stack(batch["audio.npy"]))
            return {
                "video": video.to(torch.float32, memory_format=torch.contiguous_format).mul_(1 / 127.5).sub_(1.0),
                "audio": audio.to(torch.float32).div_(AUDIO_SCALE),
            }

    dataset = ray.data.read_webdataset(shards, suffixes=["video.npy", "audio.npy"])
    start, seen = time.perf_counter(), 0
    for batch in dataset.iter_torch_batches(
        batch_size=batch_size, collate_fn=ToModelLayout(), local_shuffle_buffer_size=64
    ):
        seen += batch["video"].shape[0]
        if seen >= clips:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmdiff-loader-bench"))
    args = parser.parse_args()
    import ray

    shards = write_shards(args.workdir, args.clips)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    results: dict[str, list[float]] = {"webdataset ClipLoader": [], "Ray Data read_webdataset": []}
    for _ in range(args.repeats):
        results["webdataset ClipLoader"].append(clip_loader(shards, args.clips, args.batch_size))
        results["Ray Data read_webdataset"].append(ray_data_loader(shards, args.clips, args.batch_size))
    print(
        json.dumps(
            {
                name: {"best_clips_per_s": round(max(v), 1), "runs": [round(x, 1) for x in v]}
                for name, v in results.items()
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
