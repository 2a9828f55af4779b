"""Driver scale of `mmdiff preprocess`: listing + planning, finishing (parts streamed into
manifest.parquet and errors.parquet) and a no-op rerun, at 10^4 and 10^5 inputs, each
measured in a fresh process for its wall time and peak RSS.

The inputs are hard links to one tiny video, 1,000 per folder. The finished output is
fabricated with the pipeline's own part writer (`pipeline.parts.write_part`: CLIPS_PER_VIDEO
manifest rows per video, one error row per ERROR_EVERY videos), not by decoding 10^5 videos:
the driver's work on a finished output is the same either way, and its shards are never
opened by the driver. With the curation signals (the default; `--no-signals` leaves them out)
every fabricated clip gets random fingerprints, so finishing also runs the near-duplicate
search over all clips, as a real run's does.

    .venv/bin/python -m benchmarks.driver_scale [--sizes 10000 100000] [--no-signals] [--workdir /tmp/mmdiff-driver-scale]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

CLIPS_PER_VIDEO = 10
ERROR_EVERY = 50
VIDEOS_PER_FOLDER = 1000
LINKS_PER_FILE = 50_000


def make_inputs(folder: Path, count: int) -> None:
    """`count` hard links to one tiny video (made once with the test media maker)."""
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.mp4")) == count:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    from tests.fixtures.media import MediaSpec, write_media

    original = write_media(folder.parent / f"tiny-{count}.mp4", MediaSpec("tiny", seconds=2.0))
    for index in range(count):
        sub = folder / f"d{index // VIDEOS_PER_FOLDER:04d}"
        if index % VIDEOS_PER_FOLDER == 0:
            sub.mkdir()
        if index % LINKS_PER_FILE == 0:  # a file may have only so many links (ext4: 65,000)
            source = shutil.copy(original, folder.parent / f"tiny-{count}-{index // LINKS_PER_FILE}.mp4")
        os.link(source, sub / f"v{index:07d}.mp4")


def fabricated_signals(rng: random.Random) -> dict:
    """A clip's signal columns: random fingerprints, zero for every other signal."""
    import pyarrow as pa

    from pipeline.signals import SIGNAL_COLUMNS

    row: dict = {}
    for spec in SIGNAL_COLUMNS:
        if pa.types.is_fixed_size_binary(spec.arrow_type):
            row[spec.name] = rng.randbytes(spec.arrow_type.byte_width)
        else:
            row[spec.name] = 0 if pa.types.is_integer(spec.arrow_type) else 0.0
    return row


def fabricate_finished(input_folder: Path, output: Path, signals: bool) -> None:
    """Plan `output` as a run would, then write every unit's part as a finished run would."""
    from pipeline.config import PreprocessConfig
    from pipeline.errors import Reason
    from pipeline.parts import UnitRecord, part_schema, write_part
    from pipeline.resume import write_plan
    from pipeline.run import plan_run
    from pipeline.shard_format import sample_key
    from pipeline.task import error_row

    config = PreprocessConfig(input=str(input_folder), output=str(output), signals=signals)
    rng = random.Random(0)
    plan, _, _, _ = plan_run(config)
    write_plan(str(output), plan, config.retry)
    for unit in plan.units:
        shard = f"shards/shard-{unit.number:06d}.tar"
        rows, errors = [], []
        for position, uri in enumerate(unit.sources):
            if (unit.number * len(unit.sources) + position) % ERROR_EVERY == 0:
                errors.append(error_row(uri, Reason.TOO_SHORT, f"{uri}: too_short: fabricated", 0))
                continue
            rows += [
                {
                    "key": sample_key(uri, clip),
                    "shard": shard,
                    "source": uri,
                    "clip_index": clip,
                    "start_seconds": clip * 1.6,
                    "source_fps": 30.0,
                    "source_sample_rate": 44100,
                    **(fabricated_signals(rng) if signals else {}),
                }
                for clip in range(CLIPS_PER_VIDEO)
            ]
        record = UnitRecord(number=unit.number, sources=len(unit.sources), shard=shard, clips=len(rows), errors=errors)
        write_part(str(output), record, rows, part_schema(config.signals), config.retry)


def phase(name: str, input_folder: Path, output: Path, signals: bool) -> dict:
    """Run one phase in this (fresh) process; wall times and peak RSS."""
    started = time.perf_counter()
    from pipeline.config import PreprocessConfig
    from pipeline.resume import write_plan
    from pipeline.run import plan_run, preprocess

    imported = time.perf_counter()
    config = PreprocessConfig(input=str(input_folder), output=str(output), signals=signals)
    result: dict = {"phase": name, "signals": signals}
    if name == "plan":
        plan, inputs, _, _ = plan_run(config)
        write_plan(str(output), plan, config.retry)
        result.update(inputs=len(inputs), units=len(plan.units))
    else:  # "finish" (no manifest yet: the parts are streamed into it) or "noop"
        stats = preprocess(config)
        assert stats.units == 0, "the fabricated output must be finished"
        result.update(clips_total=stats.clips_total, inputs=stats.inputs)
    done = time.perf_counter()
    result.update(
        import_seconds=round(imported - started, 2),
        seconds=round(done - imported, 2),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        torch_imported="torch" in sys.modules,
    )
    return result


def run_phase(name: str, input_folder: Path, output: Path, signals: bool) -> dict:
    started = time.perf_counter()
    command = [sys.executable, "-m", "benchmarks.driver_scale", "--phase", name]
    command += ["--input", str(input_folder), "--output", str(output), *([] if signals else ["--no-signals"])]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(time.perf_counter() - started, 2)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmdiff-driver-scale"))
    parser.add_argument("--no-signals", dest="signals", action="store_false", help="clips without curation signals")
    parser.add_argument("--phase", choices=("plan", "finish", "noop"), help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(phase(args.phase, args.input, args.output, args.signals)))
        return
    print(f"load average before: {os.getloadavg()}")
    for size in args.sizes:
        inputs, output = args.workdir / f"inputs-{size}", args.workdir / f"output-{size}"
        make_inputs(inputs, size)
        shutil.rmtree(output, ignore_errors=True)
        print(json.dumps({"inputs": size, **run_phase("plan", inputs, output, args.signals)}))
        shutil.rmtree(output, ignore_errors=True)
        started = time.perf_counter()
        fabricate_finished(inputs, output, args.signals)
        print(json.dumps({"inputs": size, "fabricated_seconds": round(time.perf_counter() - started, 1)}))
        print(json.dumps({"inputs": size, **run_phase("finish", inputs, output, args.signals)}))
        print(json.dumps({"inputs": size, **run_phase("noop", inputs, output, args.signals)}))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
