"""One unit of work: decode a few sources into one shard, then write the unit's part.

A source's media failure becomes an error row with its reason and the unit goes on; so does
any unexpected exception of one source (reason `unexpected_error`). A storage failure that
outlasts the reader's retries, or one while writing, fails the attempt: the unit is tried
again from scratch under the same shard name (bounded exponential backoff), and if it still
fails it is returned unfinished, with no part, for a rerun to redo.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

from pipeline.decode import Clip, ClipOptions, SourceInfo, open_source
from pipeline.errors import MediaError, Reason
from pipeline.faults import InfrastructureError, RetryPolicy, is_infrastructure
from pipeline.parts import UnitRecord, part_schema, write_part
from pipeline.samples import clip_signals, encode_sample
from pipeline.shard_format import sample_key
from pipeline.shards import ShardWriter
from pipeline.signals import ClipSignals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardTask:
    number: int
    sources: list[str]
    first_clips: list[int] | None = None
    """For a unit that redoes recorded errors (--retry-errors): per source, the clips it has in
    earlier shards, which are skipped here. None for a unit of new sources."""


def clip_row(clip: Clip, info: SourceInfo, key: str, shard: str, signals: ClipSignals | None) -> dict:
    """The clip's manifest row (`pipeline.parts.part_schema`)."""
    return {
        "key": key,
        "shard": shard,
        "source": info.uri,
        "clip_index": clip.index,
        "start_seconds": clip.start_seconds,
        "source_fps": info.fps,
        "source_sample_rate": info.sample_rate,
        **(signals.as_row() if signals else {}),
    }


def write_source(
    writer: ShardWriter, uri: str, options: ClipOptions, policy: RetryPolicy, first_clip: int = 0
) -> tuple[list[dict], dict | None]:
    """Append the clips of `uri` from clip `first_clip` on to the shard. Returns their manifest
    rows and, for bad media or an unexpected failure of this source, an error row with its
    reason instead of raising (the clips finished before a mid-file failure are kept: each was
    written whole). Storage failures propagate (InfrastructureError or OSError)."""
    rows: list[dict] = []
    try:
        info, clips = open_source(uri, options, policy)
        for clip in clips:
            if clip.index < first_clip:
                continue
            key = sample_key(uri, clip.index)
            signals = clip_signals(clip, info, options.resize) if options.signals else None
            writer.write(key, encode_sample(clip, info, signals))
            rows.append(clip_row(clip, info, key, writer.relative_path, signals))
    except MediaError as error:
        return rows, error_row(uri, error.reason, str(error), first_clip + len(rows))
    except Exception as error:
        if is_infrastructure(error):
            raise
        message = f"{uri}: {Reason.UNEXPECTED.value}: {type(error).__name__}: {error}"
        return rows, error_row(uri, Reason.UNEXPECTED, message, first_clip + len(rows))
    return rows, None


def error_row(uri: str, reason: Reason, message: str, clips_written: int) -> dict:
    """An errors.parquet row; `clips_written` counts the source's clips in all shards."""
    return {"uri": uri, "reason": reason.value, "message": message, "clips_written": clips_written}


def attempt_unit(task: ShardTask, output_uri: str, options: ClipOptions, policy: RetryPolicy) -> UnitRecord:
    """Decode the task's sources into its shard, commit it, then write the part."""
    started, started_cpu = time.perf_counter(), time.process_time()
    record = UnitRecord(
        number=task.number,
        sources=len(task.sources),
        started=time.time(),
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )
    rows: list[dict] = []
    first_clips = task.first_clips or [0] * len(task.sources)
    with ShardWriter(output_uri, task.number) as writer:
        for uri, first_clip in zip(task.sources, first_clips, strict=True):
            source_rows, error = write_source(writer, uri, options, policy, first_clip)
            rows += source_rows
            record.errors += [error] if error else []
    record.shard = writer.relative_path if writer.samples else None
    record.clips, record.bytes = len(rows), writer.bytes
    record.seconds = round(time.perf_counter() - started, 3)
    record.cpu_seconds = round(time.process_time() - started_cpu, 3)
    write_part(output_uri, record, rows, part_schema(options.signals), policy)
    return record


def run_shard_task(task: ShardTask, output_uri: str, options: ClipOptions, policy: RetryPolicy) -> UnitRecord:
    """The unit's record: finished, or unfinished with the storage failure that outlasted the
    retries (each attempt redoes the whole unit under its shard name, so none duplicates)."""
    delays = policy.delays()
    for attempt in range(policy.attempts):
        try:
            return attempt_unit(task, output_uri, options, policy)
        except Exception as error:
            if not is_infrastructure(error):
                problem = f"unexpected {type(error).__name__}: {error}"
                return UnitRecord(number=task.number, sources=len(task.sources), unfinished=problem)
            problem = str(error) if isinstance(error, InfrastructureError) else f"{type(error).__name__}: {error}"
            if attempt == len(delays):
                return UnitRecord(number=task.number, sources=len(task.sources), unfinished=problem)
            log.warning("unit %d, attempt %d of %d: %s", task.number, attempt + 1, policy.attempts, problem)
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")
