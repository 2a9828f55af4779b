"""`preprocess(config)`: the streaming Ray Data job.

listing (driver) -> units of `videos_per_shard` sources -> decoding tasks, one CPU each,
scaled by Ray Data up to `workers` (or the free CPUs), each decoding its unit straight into
one shard and recording it -> manifest, errors and stats rebuilt from every unit's record.
Only the small records travel through Ray; clips stream from the decoder into the shard, so
memory stays bounded per worker.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict

from pipeline.config import PreprocessConfig, PreprocessStats
from pipeline.credentials import forwarded_settings
from pipeline.decode import ClipOptions
from pipeline.listing import list_inputs
from pipeline.outputs import write_outputs
from pipeline.resume import extend_plan, read_plan, read_records, remove_unfinished, unfinished_units, write_plan
from pipeline.task import ShardRecord, ShardTask, record_from_json, run_shard_task

__all__ = ["PreprocessConfig", "PreprocessStats", "preprocess"]

log = logging.getLogger(__name__)


def storage_environment() -> dict[str, str]:
    """The driver's AWS_* settings but credentials (endpoint, region), handed to workers that
    may run in processes started before they were set; workers take credentials from their own
    environment or credentials files (pipeline/credentials.py)."""
    return forwarded_settings(("AWS_",))


def run_unit(row: dict, output_uri: str, options: ClipOptions, environment: dict[str, str]) -> dict:
    """A Ray Data task: run the unit in `row` and return its record as JSON.

    Tasks, not actors: Ray reuses warm worker processes between tasks, while a fresh actor
    pool pays process start and imports on every run (seconds each on a busy machine). A
    retried task rewrites the same shard name, so retries cannot duplicate clips."""
    os.environ.update(environment)
    record = run_shard_task(ShardTask(**json.loads(row["task"])), output_uri, options)
    return {"record": json.dumps(asdict(record))}


def ensure_ray() -> None:
    """Start a local Ray, or join RAY_ADDRESS's cluster, unless this process already did."""
    import ray

    if not ray.is_initialized():
        ray.init()


def run_tasks(tasks: list[ShardTask], config: PreprocessConfig) -> list[ShardRecord]:
    import ray

    ensure_ray()
    dataset = ray.data.from_items(
        [{"task": json.dumps(asdict(task))} for task in tasks], override_num_blocks=len(tasks)
    )
    records = dataset.map(
        run_unit,
        fn_kwargs={"output_uri": config.output, "options": config.clip_options(), "environment": storage_environment()},
        compute=ray.data.TaskPoolStrategy(size=config.workers),  # None: as many as free CPUs
        num_cpus=1,
    )
    finished = []
    for row in records.iter_rows():
        record = record_from_json(row["record"])
        log.info(
            "shard %06d: %d clips, %d errors, %.1f s",
            record.number,
            len(record.clips),
            len(record.errors),
            record.seconds,
        )
        finished.append(record)
    return finished


def preprocess(config: PreprocessConfig) -> PreprocessStats:
    """Decode every unfinished source of `config.input` into shards under `config.output`.

    Safe to rerun: finished units are skipped and unfinished ones are redone under the shard
    names planned for them, so each clip is written exactly once.
    """
    started = time.perf_counter()
    inputs = list_inputs(config.input)
    earlier = read_records(config.output)
    plan = extend_plan(read_plan(config.output), earlier, inputs, config.videos_per_shard)
    write_plan(config.output, plan)
    for name in remove_unfinished(config.output, earlier):
        log.warning("removed unfinished %s left by an interrupted run", name)
    tasks = unfinished_units(plan, earlier)
    log.info("%d inputs, %d to decode in %d shards", len(inputs), sum(len(t.sources) for t in tasks), len(tasks))
    new = run_tasks(tasks, config) if tasks else []
    records = sorted(earlier + new, key=lambda record: record.number)
    done_before = {source for record in earlier for source in record.sources}
    stats = PreprocessStats(
        inputs=len(inputs),
        inputs_skipped=sum(uri in done_before for uri in inputs),
        clips=sum(len(record.clips) for record in new),
        errors=sum(len(record.errors) for record in new),
        shards=sum(record.shard is not None for record in new),
        bytes=sum(record.bytes for record in new),
        seconds=round(time.perf_counter() - started, 3),
        cpu_seconds=round(sum(record.cpu_seconds for record in new), 3),
        clips_total=sum(len(record.clips) for record in records),
    )
    return write_outputs(config.output, records, stats)
