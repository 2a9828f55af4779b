"""Preprocessing throughput: `pipeline.run.preprocess` with 1 and 2 workers (curation signals
on, the default) against the floor of decoding the same files with the ffmpeg CLI to the same
outputs (10 fps 64x64 rgb24 video and 16 kHz mono s16le audio, both to /dev/null); and 2
workers with `--no-signals`, for the signals' share of the workers' CPU per clip.

Each setting runs --repeats times, interleaved, and the fastest run counts, since the
machine is shared with other work. The corpus is synthetic but shaped like web video: 640x360 H.264 at 30 fps with a textured,
moving picture, AAC 44.1 kHz stereo; it is generated once into --workdir. The ffmpeg floor is
the faster of (a) files one after another with ffmpeg's own threading and (b) two ffmpeg
processes side by side with one thread each. Needs the `ffmpeg` binary on PATH
(Debian: apt-get install ffmpeg).

    .venv/bin/python -m benchmarks.preprocess_throughput [--videos 16] [--seconds 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mmdiffusion.constants import FPS, IMAGE_SIZE, SAMPLE_RATE
from pipeline.faults import RetryPolicy
from pipeline.parts import finished_units, read_parts
from pipeline.run import PreprocessConfig, preprocess

WIDTH, HEIGHT, SOURCE_FPS, SOURCE_RATE = 640, 360, 30, 44_100


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour field twice the frame size, to scroll across the frame."""
    coarse = rng.integers(0, 256, size=(HEIGHT // 8, WIDTH // 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 16, axis=0), 8, axis=1)


def write_corpus_video(path: Path, seconds: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    texture = _texture(rng)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=SOURCE_FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "23"}
        audio = container.add_stream("aac", rate=SOURCE_RATE, layout="stereo")
        frames = int(seconds * SOURCE_FPS)
        samples_per_frame = SOURCE_RATE // SOURCE_FPS
        for index in range(frames):
            y, x = (index * 2) % HEIGHT, (index * 3) % WIDTH
            noise = rng.integers(0, 12, size=(HEIGHT, WIDTH, 1), dtype=np.uint8)
            image = texture[y : y + HEIGHT, x : x + WIDTH] + noise
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, SOURCE_FPS)
            for packet in video.encode(frame):
                container.mux(packet)
            tone = np.sin(2 * np.pi * 440 * (index * samples_per_frame + np.arange(samples_per_frame)) / SOURCE_RATE)
            chunk = np.stack([tone, tone]).astype(np.float32) * 0.3
            sound = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            sound.sample_rate, sound.pts = SOURCE_RATE, index * samples_per_frame
            for packet in audio.encode(sound):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                container.mux(packet)


def build_corpus(folder: Path, videos: int, seconds: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"video{index:03d}.mp4" for index in range(videos)]
    for index, path in enumerate(paths):
        if not path.exists():
            write_corpus_video(path, seconds, seed=index)
    return paths


def ffmpeg_command(path: Path, threads: int | None) -> list[str]:
    thread_flags = ["-threads", str(threads)] if threads else []
    return [
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        *thread_flags,
        "-i",
        str(path),
        "-map",
        "0:v:0",
        "-vf",
        f"fps={FPS},scale={IMAGE_SIZE}:{IMAGE_SIZE}",
        "-pix_fmt",
        "rgb24",
        "-f",
        "rawvideo",
        "-y",
        "/dev/null",
        "-map",
        "0:a:0",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-f",
        "s16le",
        "-y",
        "/dev/null",
    ]


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_ffmpeg(paths: list[Path], processes: int, threads: int | None) -> tuple[float, float]:
    """Wall seconds and CPU seconds of decoding `paths` with the ffmpeg CLI."""
    started, started_cpu = time.perf_counter(), _children_cpu_seconds()
    with ThreadPoolExecutor(processes) as pool:
        list(pool.map(lambda path: subprocess.run(ffmpeg_command(path, threads), check=True), paths))
    return time.perf_counter() - started, _children_cpu_seconds() - started_cpu


def time_preprocess(corpus: Path, output: Path, workers: int, signals: bool = True) -> dict:
    shutil.rmtree(output, ignore_errors=True)
    started_epoch, started = time.time(), time.perf_counter()
    config = PreprocessConfig(
        input=str(corpus), output=str(output), workers=workers, videos_per_shard=2, signals=signals
    )
    stats = preprocess(config)
    seconds = time.perf_counter() - started
    return {
        "workers": workers,
        "signals": signals,
        "clips": stats.clips,
        "seconds": round(seconds, 2),
        "clips_per_second": round(stats.clips / seconds, 2),
        "bytes_per_clip": round(stats.bytes_per_clip),
        "worker_cpu_ms_per_clip": round(1000 * stats.cpu_seconds / stats.clips, 1),
        "where_the_time_goes": timeline(output, started_epoch, started_epoch + seconds, workers),
    }


def timeline(output: Path, started: float, ended: float, workers: int) -> dict:
    """Where the workers' time went, from the units' own start times and durations: the
    driver before the first unit, the units, the driver after the last, and the worker
    time left idle inside the span (the second worker's late start, the tail of the last
    unit, scheduling gaps)."""
    policy = RetryPolicy()
    records = [record for _, record in read_parts(str(output), sorted(finished_units(str(output), policy)), policy)]
    first = min(record.started for record in records)
    last = max(record.started + record.seconds for record in records)
    busy = sum(record.seconds for record in records)
    ends: dict[str, float] = {}
    starts: dict[str, float] = {}
    for record in records:
        ends[record.worker] = max(ends.get(record.worker, 0.0), record.started + record.seconds)
        starts[record.worker] = min(starts.get(record.worker, float("inf")), record.started)
    return {
        "driver_before_first_unit_s": round(first - started, 2),
        "units_span_s": round(last - first, 2),
        "driver_after_last_unit_s": round(ended - last, 2),
        "worker_processes": len(ends),
        "idle_worker_seconds_in_span": round(workers * (last - first) - busy, 2),
        "late_start_of_other_workers_s": round(sum(start - first for start in starts.values()), 2),
        "tail_after_other_workers_s": round(sum(last - end for end in ends.values()), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=16.0)
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs of each setting; the fastest counts (the machine is shared)"
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mmdiff-preprocess-bench")
    args = parser.parse_args(argv)
    if shutil.which("ffmpeg") is None:
        raise SystemExit("the ffmpeg CLI is needed for the floor (Debian: apt-get install ffmpeg)")
    import ray

    load_before = [round(value, 1) for value in os.getloadavg()]
    corpus = args.workdir / f"corpus-{args.videos}x{args.seconds:g}s"
    paths = build_corpus(corpus, args.videos, args.seconds)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    time_preprocess(corpus, args.workdir / "warmup", 2)  # worker processes and imports warm
    attempts, sequential, parallel = [], [], []
    for _ in range(args.repeats):  # pipeline and floor back to back, so that both see the same load
        for workers, signals in ((2, True), (1, True), (2, False)):
            output = args.workdir / f"out-{workers}-{'signals' if signals else 'plain'}"
            attempts.append(time_preprocess(corpus, output, workers, signals))
        parallel.append(time_ffmpeg(paths, processes=2, threads=1))
        sequential.append(time_ffmpeg(paths, processes=1, threads=None)[0])
    ray.shutdown()
    runs = [
        min((run for run in attempts if (run["workers"], run["signals"]) == setting), key=lambda run: run["seconds"])
        for setting in ((1, True), (2, True), (2, False))
    ]
    cpu_with, cpu_without = (
        min(run["worker_cpu_ms_per_clip"] for run in attempts if run["signals"] == on) for on in (True, False)
    )
    clips = runs[0]["clips"]
    floor_sequential = min(sequential)
    floor_parallel, floor_cpu = min(parallel)
    floor_seconds = min(floor_sequential, floor_parallel)
    result = {
        "corpus": {"videos": args.videos, "seconds_each": args.seconds, "size": f"{WIDTH}x{HEIGHT}", "fps": SOURCE_FPS},
        "load_average_1min": round(os.getloadavg()[0], 1),
        "load_average_before_1_5_15min": load_before,
        "ffmpeg_floor": {
            "sequential_threaded_s": round(floor_sequential, 2),
            "two_processes_s": round(floor_parallel, 2),
            "clips_per_second": round(clips / floor_seconds, 2),
            "cpu_ms_per_clip": round(1000 * floor_cpu / clips, 1),
        },
        "preprocess": runs,
        "ratio_2_workers_to_floor": round(runs[1]["clips_per_second"] / (clips / floor_seconds), 2),
        "speedup_1_to_2_workers": round(runs[1]["clips_per_second"] / runs[0]["clips_per_second"], 2),
        "signals": {
            "worker_cpu_ms_per_clip_with": cpu_with,
            "worker_cpu_ms_per_clip_without": cpu_without,
            "share_of_the_decode": round((cpu_with - cpu_without) / cpu_without, 3),
            "ratio_2_workers_without_signals_to_floor": round(runs[2]["clips_per_second"] / (clips / floor_seconds), 2),
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
