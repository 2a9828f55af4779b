"""One unit of work: decode a few sources into one shard, then record the unit as done.

A unit is finished when its record `OUTPUT/_parts/shard-NNNNNN.json` exists. The record is
written only after the shard was committed, and lists the unit's sources, its clips (the
manifest rows) and the sources that gave errors, so a rerun skips finished units exactly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from pipeline.decode import Clip, ClipOptions, open_source
from pipeline.errors import MediaError, Reason
from pipeline.samples import clip_signals, encode_sample
from pipeline.shard_format import sample_key
from pipeline.shards import ShardWriter, shard_name
from pipeline.storage import join, write_atomically

PARTS_FOLDER = "_parts"


def part_uri(output_uri: str, number: int) -> str:
    return join(output_uri, PARTS_FOLDER, shard_name(number).replace(".tar", ".json"))


@dataclass(frozen=True)
class ShardTask:
    number: int
    sources: list[str]


@dataclass
class ShardRecord:
    """What one finished unit produced; stored as its part record."""

    number: int
    sources: list[str]
    shard: str | None = None
    """Shard path relative to the output, None when no source gave a clip."""
    clips: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    """CPU time of the worker process on this unit (decoding is single-threaded)."""


def decoding_failures_as_media_errors(clips: Iterator[Clip], uri: str) -> Iterator[Clip]:
    """Any unexpected failure inside decoding becomes a decode_error of this source, so that
    one strange file cannot fail the shard; failures while writing still propagate."""
    try:
        yield from clips
    except MediaError:
        raise
    except Exception as error:
        raise MediaError(Reason.DECODE_ERROR, uri, f"{type(error).__name__}: {error}") from error


def write_source(writer: ShardWriter, uri: str, options: ClipOptions) -> tuple[list[dict], dict | None]:
    """Append the clips of `uri` to the shard. Returns their manifest rows and, for bad media,
    an error row with its reason instead of raising (the clips finished before a mid-file
    failure are kept: each was written whole)."""
    rows: list[dict] = []
    try:
        info, clips = open_source(uri, options)
        for clip in decoding_failures_as_media_errors(clips, uri):
            key = sample_key(uri, clip.index)
            signals = clip_signals(clip, info, options.resize) if options.signals else None
            writer.write(key, encode_sample(clip, info, signals))
            rows.append(
                {
                    "key": key,
                    "shard": writer.relative_path,
                    "source": uri,
                    "clip_index": clip.index,
                    "start_seconds": clip.start_seconds,
                    "source_fps": info.fps,
                    "source_sample_rate": info.sample_rate,
                    **(signals.as_json() if signals else {}),  # the record is JSON: fingerprints as hex
                }
            )
    except MediaError as error:
        return rows, {"uri": uri, "reason": error.reason.value, "message": str(error), "clips_written": len(rows)}
    return rows, None


def run_shard_task(task: ShardTask, output_uri: str, options: ClipOptions) -> ShardRecord:
    """Decode the task's sources into its shard, commit it, then write the part record."""
    started, started_cpu = time.perf_counter(), time.process_time()
    record = ShardRecord(number=task.number, sources=list(task.sources))
    with ShardWriter(output_uri, task.number) as writer:
        for uri in task.sources:
            rows, error = write_source(writer, uri, options)
            record.clips += rows
            record.errors += [error] if error else []
    record.shard = writer.relative_path if writer.samples else None
    record.bytes = writer.bytes
    record.seconds = round(time.perf_counter() - started, 3)
    record.cpu_seconds = round(time.process_time() - started_cpu, 3)
    write_atomically(part_uri(output_uri, task.number), json.dumps(asdict(record)).encode("utf-8"))
    return record


def record_from_json(data: bytes) -> ShardRecord:
    return ShardRecord(**json.loads(data))
