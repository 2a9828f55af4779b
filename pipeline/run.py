"""`preprocess(config)`: the distributed preprocessing job.

plan (driver: the options pinned, units of `videos_per_shard` sources) -> decoding Ray tasks,
one CPU each, up to `workers` (or the cluster's CPUs) at once, each decoding its unit
straight into one shard and writing its part -> manifest and errors streamed from the parts,
stats. Only a small record per unit travels through Ray and the driver keeps no clip rows, so
the driver's memory grows with the units and a worker's stays bounded by one unit.
"""

from __future__ import annotations

import logging
import os
import time

from pipeline.config import PreprocessConfig, PreprocessStats, UnfinishedUnit
from pipeline.credentials import forwarded_settings
from pipeline.decode import ClipOptions
from pipeline.faults import RetryPolicy, retrying
from pipeline.listing import list_inputs
from pipeline.outputs import write_stats
from pipeline.parts import UnitRecord, finished_units, merge_parts
from pipeline.resume import (
    Plan,
    check_options,
    new_units,
    read_plan,
    remove_unfinished,
    retry_units,
    superseded_sources,
    unfinished_units,
    write_plan,
)
from pipeline.shards import SHARD_FOLDER, shard_name
from pipeline.task import ShardTask, run_shard_task

__all__ = ["PreprocessConfig", "PreprocessStats", "preprocess"]

log = logging.getLogger(__name__)

LOST_WORKER_RETRIES = 3
"""Times Ray reruns a unit whose worker process or node was lost (Ray's own default)."""
QUEUED_PER_CPU = 1
"""Without --workers, units submitted beyond the cluster's CPUs, per CPU: they wait in Ray's
queue, start the moment a CPU frees, and are the demand an autoscaling cluster grows on."""


def storage_environment() -> dict[str, str]:
    """The driver's AWS_* settings but credentials (endpoint, region), handed to workers that
    may run in processes started before they were set; workers take credentials from their own
    environment or credentials files (pipeline/credentials.py)."""
    return forwarded_settings(("AWS_",))


def run_unit(
    task: ShardTask, output_uri: str, options: ClipOptions, policy: RetryPolicy, environment: dict[str, str]
) -> UnitRecord:
    """A Ray task: run one unit and return its record (no clip rows).

    A task Ray retries (its worker process or node lost) rewrites the same shard name, so
    retries cannot duplicate clips."""
    os.environ.update(environment)
    return run_shard_task(task, output_uri, options, policy)


def ensure_ray() -> None:
    """Start a local Ray, or join RAY_ADDRESS's cluster, unless this process already did."""
    import ray

    if not ray.is_initialized():
        ray.init()


class Progress:
    """A periodic line: units done / total, clips, errors, clips/s, units left unfinished."""

    def __init__(self, total: int, every_seconds: float) -> None:
        self.total, self.every = total, every_seconds
        self.started = self.last = time.perf_counter()
        self.done = self.clips = self.errors = self.unfinished = 0

    def add(self, record: UnitRecord) -> None:
        self.done += 1
        self.clips += record.clips
        self.errors += len(record.errors)
        self.unfinished += record.unfinished is not None
        now = time.perf_counter()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        rate = self.clips / max(now - self.started, 1e-9)
        left = f", {self.unfinished} unfinished" if self.unfinished else ""
        return f"units {self.done}/{self.total}, clips {self.clips}, errors {self.errors}, {rate:.1f} clips/s{left}"


def task_slots(config: PreprocessConfig) -> int:
    """Units in flight: `config.workers` (so at most that many run at once), else
    `QUEUED_PER_CPU` + 1 per CPU the cluster has now (read again as nodes join)."""
    import ray

    if config.workers:
        return config.workers
    return (QUEUED_PER_CPU + 1) * max(1, int(ray.cluster_resources().get("CPU", 1)))


def run_tasks(tasks: list[ShardTask], config: PreprocessConfig) -> list[UnitRecord]:
    """Every task's record, from `task_slots` Ray tasks in flight, the next submitted the
    moment one ends. A task Ray gave up on (its worker lost more than `LOST_WORKER_RETRIES`
    times), or one that never ran because Ray itself stopped, comes back unfinished: the job
    finishes what it can and says what is left.

    Plain Ray tasks rather than a Ray Data map: Ray Data's executor notices a finished task
    only on its next polling round and starts the next one a round later (about 0.2 s a task
    measured with sleeping tasks, 10-14 % of the workers' time on real units), and starts its
    second task up to a second late (docs/benchmarks.md)."""
    import ray

    ensure_ray()
    remote_unit = ray.remote(num_cpus=1, max_retries=LOST_WORKER_RETRIES)(run_unit)
    shared = [ray.put(value) for value in (config.output, config.clip_options(), config.retry, storage_environment())]
    waiting = list(reversed(tasks))
    running: dict[ray.ObjectRef, ShardTask] = {}
    progress = Progress(len(tasks), config.progress_seconds)
    finished: dict[int, UnitRecord] = {}
    try:
        while waiting or running:
            slots = task_slots(config)
            while waiting and len(running) < slots:
                task = waiting.pop()
                running[remote_unit.remote(task, *shared)] = task
            done, _ = ray.wait(list(running), num_returns=1)
            task = running.pop(done[0])
            try:
                record = ray.get(done[0])
            except ray.exceptions.RayError as error:  # the worker or node lost once too often
                record = UnitRecord(task.number, len(task.sources), unfinished=ray_failure(error))
            finished[task.number] = record
            progress.add(record)
    except Exception as error:  # Ray itself failed (e.g. the cluster went away)
        log.error("the decoding tasks stopped: %s: %s", type(error).__name__, error)
        for task in tasks:
            if task.number not in finished:
                finished[task.number] = UnitRecord(task.number, len(task.sources), unfinished=ray_failure(error))
    return [finished[task.number] for task in tasks]


def ray_failure(error: BaseException) -> str:
    """An unfinished unit's reason: the Ray error's type and the first line of its message."""
    first_line = str(error).splitlines()[0] if str(error) else ""
    return f"Ray stopped the task: {type(error).__name__}: {first_line}"


def plan_run(config: PreprocessConfig) -> tuple[Plan, list[str], set[int], bool]:
    """The output's plan, checked against the config before any work, with units for new
    inputs (and, with --retry-errors, for the recorded errors); the inputs; the finished
    units; whether the plan gained units."""
    policy = config.retry
    plan = read_plan(config.output, policy)
    if plan is not None:
        check_options(plan, config.pinned_options(), config.output)
    inputs = retrying(lambda: list_inputs(config.input), f"{config.input}: listing", policy)
    is_new = plan is None
    plan = plan or Plan(options=config.pinned_options(), units=[])
    finished = finished_units(config.output, policy)
    added = new_units(plan, inputs, config.videos_per_shard)
    plan.units += added
    if config.retry_errors:
        retried = retry_units(plan, finished, config.videos_per_shard, config.output, policy)
        plan.units += retried
        added += retried
    return plan, inputs, finished, is_new or bool(added)


def preprocess(config: PreprocessConfig) -> PreprocessStats:
    """Decode every unfinished source of `config.input` into shards under `config.output`.

    Safe to rerun: finished units are skipped and unfinished ones are redone under the shard
    names planned for them, so each clip is written exactly once. A rerun with other clip
    options is refused (OptionsMismatch, a ValueError) before anything is written. Units that
    storage failures left unfinished are listed in the stats (`unfinished_summary`).
    """
    started = time.perf_counter()
    policy = config.retry
    plan, inputs, finished, changed = plan_run(config)
    if changed:
        write_plan(config.output, plan, policy)
    for name in remove_unfinished(config.output, finished, policy):
        log.warning("removed unfinished %s left by an interrupted run", name)
    tasks = unfinished_units(plan, finished)
    log.info("%d inputs, %d to decode in %d units", len(inputs), sum(len(t.sources) for t in tasks), len(tasks))
    records = run_tasks(tasks, config) if tasks else []
    finished_before = set(finished)
    finished |= {record.number for record in records if record.unfinished is None}
    for name in remove_unfinished(config.output, finished, policy):  # left by attempts Ray retried
        log.info("removed %s left by a lost attempt", name)
    merged = merge_parts(config.output, finished, superseded_sources(plan, finished), config.signals, policy)
    new = [record for record in records if record.unfinished is None]
    stats = PreprocessStats(
        inputs=len(inputs),
        inputs_skipped=sum(len(unit.sources) for unit in plan.units if unit.number in finished_before),
        clips=sum(record.clips for record in new),
        errors=sum(len(record.errors) for record in new),
        shards=sum(record.shard is not None for record in new),
        bytes=sum(record.bytes for record in new),
        seconds=round(time.perf_counter() - started, 3),
        cpu_seconds=round(sum(record.cpu_seconds for record in new), 3),
        clips_total=merged.clips,
        duplicates=merged.duplicates,
        units=len(tasks),
        unfinished=tuple(
            UnfinishedUnit(record.number, f"{SHARD_FOLDER}/{shard_name(record.number)}", record.unfinished)
            for record in records
            if record.unfinished is not None
        ),
    )
    write_stats(config.output, stats, policy)
    if stats.unfinished:
        log.error("%s", stats.unfinished_summary())
    return stats
