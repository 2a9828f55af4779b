"""Exactly-once bookkeeping: the plan of units and the options it pins, which units are
finished, which shards are orphans, and the units that redo recorded media errors."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from pipeline.faults import RetryPolicy, retrying
from pipeline.parts import FORMAT_CHANGES, FORMAT_VERSION, PARTS_FOLDER, read_parts
from pipeline.shards import SHARD_FOLDER, shard_number
from pipeline.storage import TEMPORARY_PREFIX, join, read_bytes, resolve, write_atomically
from pipeline.task import ShardTask

PLAN_FILE = "_plan.json"


class OptionsMismatch(ValueError):
    """A rerun asked for other clip options than the output was made with."""


@dataclass
class Plan:
    """Every unit any run of this output planned, and what every unit's clips are made with.

    A planned unit keeps its number and sources for ever, so a rerun redoes an unfinished unit
    under the same shard name: even a task of a killed run that still finishes it writes the
    same shard and part, never a second copy of its clips. The options are fixed by the first
    run: one output never mixes two clip formats."""

    options: dict[str, object]
    units: list[ShardTask]
    format_version: int = FORMAT_VERSION

    def next_number(self) -> int:
        return max((unit.number for unit in self.units), default=-1) + 1


def read_plan(output_uri: str, policy: RetryPolicy) -> Plan | None:
    """The output's plan, None for a new output; ValueError for an output of another format."""
    uri = join(output_uri, PLAN_FILE)
    fs, path = resolve(uri)
    if retrying(lambda: fs.get_file_info(path).type, f"{uri}: stat", policy) == pafs.FileType.NotFound:
        return None
    data = json.loads(retrying(lambda: read_bytes(uri), f"{uri}: read", policy))
    version = data.get("format_version", 1)
    changes = [
        f"{number}: {change.text}"
        for number, change in FORMAT_CHANGES.items()
        if number > version and change.concerns(data.get("options", {}))
    ]
    if version > FORMAT_VERSION or changes:
        raise ValueError(
            f"{output_uri} was written in preprocessing format {version}; this version writes format "
            f"{FORMAT_VERSION} ({'; '.join(changes) or 'older than the output'}) and cannot add to it: "
            "write to a new output"
        )
    # An output no change since its format concerns is one of this format.
    return Plan(options=data["options"], units=[ShardTask(**unit) for unit in data["units"]])


def check_options(plan: Plan, options: dict[str, object], output_uri: str) -> None:
    """Refuse options that differ from the plan's, naming each with its old and new value."""
    differing = [
        f"{name}: {plan.options.get(name)!r} in the output, {value!r} now"
        for name, value in options.items()
        if plan.options.get(name) != value
    ]
    if differing:
        raise OptionsMismatch(
            f"{output_uri} was made with other clip options ({'; '.join(differing)}); rerun with the "
            "output's options or write to a new output (nothing was changed)"
        )


def new_units(plan: Plan, inputs: list[str], videos_per_shard: int) -> list[ShardTask]:
    """Units for the inputs no planned unit holds, numbered after the plan's."""
    known = {source for unit in plan.units for source in unit.sources}
    new = [uri for uri in inputs if uri not in known]
    first = plan.next_number()
    return [
        ShardTask(number=first + index, sources=new[start : start + videos_per_shard])
        for index, start in enumerate(range(0, len(new), videos_per_shard))
    ]


def write_plan(output_uri: str, plan: Plan, policy: RetryPolicy) -> None:
    uri = join(output_uri, PLAN_FILE)
    data = {
        "format_version": plan.format_version,
        "options": plan.options,
        "units": [{name: value for name, value in asdict(unit).items() if value is not None} for unit in plan.units],
    }
    encoded = json.dumps(data).encode("utf-8")
    retrying(lambda: write_atomically(uri, encoded), f"{uri}: write", policy)


def superseded_sources(plan: Plan, finished: set[int]) -> dict[str, int]:
    """Source -> the latest finished unit that redid it (--retry-errors): the source's error
    rows of earlier units no longer stand."""
    redone: dict[str, int] = {}
    for unit in plan.units:
        if unit.first_clips is not None and unit.number in finished:
            for source in unit.sources:
                redone[source] = max(unit.number, redone.get(source, -1))
    return redone


def retry_units(
    plan: Plan, finished: set[int], videos_per_shard: int, output_uri: str, policy: RetryPolicy
) -> list[ShardTask]:
    """New units that redo every source standing in errors.parquet (--retry-errors), numbered
    after the plan's. Each source restarts after the clips it already has in an earlier shard
    (`clips_written` counts them all), so none is written twice. A source that a planned retry unit already holds (a retry run cut
    short) is left to that unit."""
    retried = {source: unit.number for unit in plan.units if unit.first_clips is not None for source in unit.sources}
    standing: dict[str, int] = {}
    for _, record in read_parts(output_uri, sorted(finished), policy):
        for error in record.errors:
            if retried.get(error["uri"], -1) <= record.number:
                standing[error["uri"]] = error["clips_written"]
    sources = sorted(standing)
    first = plan.next_number()
    return [
        ShardTask(
            number=first + index,
            sources=sources[start : start + videos_per_shard],
            first_clips=[standing[source] for source in sources[start : start + videos_per_shard]],
        )
        for index, start in enumerate(range(0, len(sources), videos_per_shard))
    ]


def remove_unfinished(output_uri: str, finished: set[int], policy: RetryPolicy) -> list[str]:
    """Delete shards without a part and leftover temporaries (a crash between committing a
    shard and recording it); their sources are redone. Returns the removed names."""

    def unfinished_shard(name: str) -> bool:
        number = shard_number(name)
        return name.startswith(TEMPORARY_PREFIX) or (number is not None and number not in finished)

    removed = []
    for folder, unfinished in (
        (join(output_uri, SHARD_FOLDER), unfinished_shard),
        (join(output_uri, PARTS_FOLDER), lambda name: name.startswith(TEMPORARY_PREFIX)),
    ):
        fs, path = resolve(folder)

        def listing(fs: pafs.FileSystem = fs, path: str = path) -> list[pafs.FileInfo]:
            if fs.get_file_info(path).type != pafs.FileType.Directory:
                return []
            return [info for info in fs.get_file_info(pafs.FileSelector(path)) if info.type == pafs.FileType.File]

        for info in retrying(listing, f"{folder}: listing", policy):
            if unfinished(info.base_name):
                retrying(lambda info=info, fs=fs: fs.delete_file(info.path), f"{folder}: delete", policy)
                removed.append(info.base_name)
    return removed


def unfinished_units(plan: Plan, finished: set[int]) -> list[ShardTask]:
    return [unit for unit in plan.units if unit.number not in finished]
