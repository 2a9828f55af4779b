"""Each unit's part file, and streaming the parts into manifest.parquet and errors.parquet.

A unit is finished when its part `OUTPUT/_parts/shard-NNNNNN.parquet` exists. The part is
written (atomically) only after the unit's shard was committed; its rows are the unit's
manifest rows and its key-value metadata holds the unit's record: the sources, the error
rows, the shard, sizes and times. So the driver learns which units are finished from one
listing, and it builds the tables beside the shards by reading one part at a time: its
memory grows with the number of units, never with the number of clips.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mmdiffusion.constants import FRAMES, SR_IMAGE_SIZE
from pipeline.dedup import DUPLICATE_OF, find_duplicates
from pipeline.dedup import REQUIRED_COLUMNS as DEDUP_COLUMNS
from pipeline.faults import RetryPolicy, retrying
from pipeline.shard_format import MANIFEST_FILE, sr_frame_member_name, sr_strip_member_name
from pipeline.signals import SIGNAL_SCHEMA
from pipeline.storage import AtomicWriter, join, resolve, write_atomically

PARTS_FOLDER = "_parts"
ERRORS_FILE = "errors.parquet"


@dataclass(frozen=True)
class FormatChange:
    text: str
    only_with: str | None = None
    """The clip option the change concerns: an output whose plan pins it unset (None) was
    written the same before and after, so the change does not stand between it and a rerun."""

    def concerns(self, options: dict[str, object]) -> bool:
        """Whether an output with these pinned options differs by it (one that pinned none,
        before format 2, may)."""
        return self.only_with is None or self.only_with not in options or options[self.only_with] is not None


FORMAT_CHANGES = {
    2: FormatChange("parquet parts and clip options pinned in the plan (format 1: JSON part records)"),
    3: FormatChange(
        f"one JPEG member per SR frame, {sr_frame_member_name(SR_IMAGE_SIZE, 0)} to "
        f"{sr_frame_member_name(SR_IMAGE_SIZE, FRAMES - 1)} (format 2: all frames in one strip, "
        f"{sr_strip_member_name(SR_IMAGE_SIZE)})",
        only_with="sr_size",
    ),
}
"""What each format version changed; a refused rerun names the changes since its output's."""
FORMAT_VERSION = max(FORMAT_CHANGES)
"""Version of what a run writes (shards, parts, plan); a rerun into an output of another
version is refused."""

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("source", pa.string()),
        ("clip_index", pa.int32()),
        ("start_seconds", pa.float64()),
        ("source_fps", pa.float64()),
        ("source_sample_rate", pa.int32()),
    ]
)
"""The manifest's columns (docs/data-format.md); per-clip columns added here reach the parts
and the manifest alike. With curation signals (the default) `part_schema` adds theirs, and the
merged manifest `duplicate_of`."""
ERRORS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("clips_written", pa.int32()),
    ]
)

_UNIT_KEY = b"mmdiff.unit"
_MERGED_KEY = b"mmdiff.parts"
"""Manifest metadata: a digest of the parts it was built from (a no-op rerun keeps it)."""
log = logging.getLogger(__name__)
_PART_NAME = re.compile(r"^shard-(\d{6})\.parquet$")
_READ_THREADS = 16
"""Parts read ahead at once while merging (on S3 each part is a request)."""


def part_schema(signals: bool) -> pa.Schema:
    """The columns of a unit's part: the manifest's, with the curation signals' when computed."""
    return pa.schema([*MANIFEST_SCHEMA, *SIGNAL_SCHEMA]) if signals else MANIFEST_SCHEMA


def merged_schema(signals: bool) -> pa.Schema:
    """The columns of manifest.parquet: a part's, and `duplicate_of` when there are fingerprints."""
    schema = part_schema(signals)
    return schema.append(pa.field(DUPLICATE_OF.name, DUPLICATE_OF.arrow_type)) if signals else schema


def part_name(number: int) -> str:
    return f"shard-{number:06d}.parquet"


def part_number(name: str) -> int | None:
    match = _PART_NAME.match(name)
    return int(match.group(1)) if match else None


@dataclass
class UnitRecord:
    """What one unit produced: stored in its part, returned (without the rows) to the driver."""

    number: int
    sources: int
    """How many sources the unit holds."""
    shard: str | None = None
    """Shard path relative to the output, None when no source gave a clip."""
    clips: int = 0
    errors: list[dict] = field(default_factory=list)
    """errors.parquet rows of the unit's sources that gave a media error."""
    bytes: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    """CPU time of the worker process on this unit (decoding is single-threaded)."""
    started: float = 0.0
    """When the unit's (last) attempt began, seconds since the epoch (where a run's time goes)."""
    worker: str = ""
    """host:pid of the process that ran it."""
    unfinished: str | None = None
    """Why the unit is left for a rerun (a storage failure that outlasted the retries);
    None for a finished unit. An unfinished unit has no part."""


def write_part(
    output_uri: str, record: UnitRecord, clip_rows: list[dict], schema: pa.Schema, policy: RetryPolicy
) -> None:
    """Write the unit's part: its manifest rows, with the record as metadata. Marks the unit finished."""
    table = pa.Table.from_pylist(clip_rows, schema=schema)
    table = table.replace_schema_metadata({_UNIT_KEY: json.dumps(asdict(record)).encode("utf-8")})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    uri = join(output_uri, PARTS_FOLDER, part_name(record.number))
    retrying(lambda: write_atomically(uri, buffer.getvalue()), f"{uri}: write", policy)


def finished_units(output_uri: str, policy: RetryPolicy) -> set[int]:
    """The numbers of the units with a part: one listing, no part is opened."""
    fs, path = resolve(join(output_uri, PARTS_FOLDER))

    def listing() -> list[pafs.FileInfo]:
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return []
        return fs.get_file_info(pafs.FileSelector(path))

    infos = retrying(listing, f"{output_uri}: listing {PARTS_FOLDER}", policy)
    return {number for info in infos if (number := part_number(info.base_name)) is not None}


def read_part(
    output_uri: str, number: int, policy: RetryPolicy, columns: list[str] | None = None
) -> tuple[pa.Table, UnitRecord]:
    """The part's rows (all columns, or those named) and the unit's record."""
    uri = join(output_uri, PARTS_FOLDER, part_name(number))
    fs, path = resolve(uri)

    def read() -> pa.Table:
        with fs.open_input_file(path) as stream:
            return pq.read_table(stream, columns=columns)

    table = retrying(read, f"{uri}: read", policy)
    record = UnitRecord(**json.loads(table.schema.metadata[_UNIT_KEY]))
    return table.replace_schema_metadata(None), record


def read_parts(
    output_uri: str, numbers: Iterable[int], policy: RetryPolicy, columns: list[str] | None = None
) -> Iterator[tuple[pa.Table, UnitRecord]]:
    """The parts of `numbers` (all columns, or those named), in that order, a bounded window
    read ahead in parallel."""
    numbers = list(numbers)
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        for start in range(0, len(numbers), _READ_THREADS):
            window = numbers[start : start + _READ_THREADS]
            yield from pool.map(lambda number: read_part(output_uri, number, policy, columns), window)


def parts_digest(numbers: Iterable[int]) -> str:
    return hashlib.sha256(",".join(str(number) for number in sorted(numbers)).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class MergedTables:
    clips: int
    """Rows of manifest.parquet."""
    errors: int
    """Rows of errors.parquet."""
    rebuilt: bool
    """False when the tables already held exactly these parts."""
    duplicates: int = 0
    """Clips of the manifest marked as near-duplicates of another (`duplicate_of` set)."""


def merged_digest(output_uri: str) -> str | None:
    """The parts digest recorded in the manifest, None when there is none (or no manifest)."""
    fs, path = resolve(join(output_uri, MANIFEST_FILE))
    try:
        with fs.open_input_file(path) as stream:
            metadata = pq.read_schema(stream).metadata or {}
    except FileNotFoundError:
        return None
    digest = metadata.get(_MERGED_KEY)
    return digest.decode("ascii") if digest else None


def manifest_rows(output_uri: str) -> int:
    fs, path = resolve(join(output_uri, MANIFEST_FILE))
    with fs.open_input_file(path) as stream:
        return pq.ParquetFile(stream).metadata.num_rows


def errors_rows(output_uri: str) -> int:
    fs, path = resolve(join(output_uri, ERRORS_FILE))
    with fs.open_input_file(path) as stream:
        return pq.ParquetFile(stream).metadata.num_rows


def marked_duplicates(output_uri: str) -> int:
    """Rows of manifest.parquet with `duplicate_of` set, from the row groups' statistics alone."""
    fs, path = resolve(join(output_uri, MANIFEST_FILE))
    with fs.open_input_file(path) as stream:
        metadata = pq.ParquetFile(stream).metadata
        names = metadata.schema.names
        if DUPLICATE_OF.name not in names:
            return 0
        column = names.index(DUPLICATE_OF.name)
        groups = [metadata.row_group(index) for index in range(metadata.num_row_groups)]
        return sum(group.num_rows - group.column(column).statistics.null_count for group in groups)


def merge_parts(
    output_uri: str, numbers: set[int], superseded: dict[str, int], signals: bool, policy: RetryPolicy
) -> MergedTables:
    """Rebuild manifest.parquet and errors.parquet from the parts of `numbers`, streaming one
    part at a time (a ParquetWriter per table, one row group per part). An error row of a
    source is left out when a later finished unit (`superseded`: source -> the unit that
    redid it, --retry-errors) took the source up again. With `signals`, near-duplicates over
    the whole manifest are marked in `duplicate_of` (`pipeline.dedup`). Nothing is rewritten
    when the manifest already holds exactly these parts."""
    digest = parts_digest(numbers)
    reading = f"{output_uri}: reading {MANIFEST_FILE}"
    if retrying(lambda: merged_digest(output_uri), reading, policy) == digest:
        return MergedTables(
            clips=retrying(lambda: manifest_rows(output_uri), reading, policy),
            errors=retrying(lambda: errors_rows(output_uri), f"{output_uri}: reading {ERRORS_FILE}", policy),
            rebuilt=False,
            duplicates=retrying(lambda: marked_duplicates(output_uri), reading, policy),
        )
    return retrying(
        lambda: _write_merged(output_uri, sorted(numbers), superseded, digest, signals, policy),
        f"{output_uri}: writing {MANIFEST_FILE} and {ERRORS_FILE}",
        policy,
    )


def _duplicate_column(output_uri: str, numbers: list[int], policy: RetryPolicy) -> tuple[pa.ChunkedArray, int]:
    """`duplicate_of` of every clip of the parts, in their order, and how many are set. The
    search needs the fingerprints of the whole corpus at once: about 150 bytes per clip."""
    parts = read_parts(output_uri, numbers, policy, columns=list(DEDUP_COLUMNS))
    marked, report = find_duplicates(pa.concat_tables(table for table, _ in parts))
    log.info("near-duplicates: %d clips in %d groups, of %d", report.duplicates, report.groups, report.clips)
    return marked[DUPLICATE_OF.name], report.duplicates


def _write_merged(
    output_uri: str, numbers: list[int], superseded: dict[str, int], digest: str, signals: bool, policy: RetryPolicy
) -> MergedTables:
    clips = errors = duplicates = 0
    duplicate_of = None
    if signals and numbers:
        duplicate_of, duplicates = _duplicate_column(output_uri, numbers, policy)
    schema = merged_schema(signals)
    manifest_schema = schema.with_metadata({_MERGED_KEY: digest.encode("ascii")})
    # the errors are published first: the manifest, whose digest says "done", last
    with (
        AtomicWriter(join(output_uri, MANIFEST_FILE)) as manifest_stream,
        AtomicWriter(join(output_uri, ERRORS_FILE)) as errors_stream,
        pq.ParquetWriter(manifest_stream, manifest_schema) as manifest_writer,
        pq.ParquetWriter(errors_stream, ERRORS_SCHEMA) as errors_writer,
    ):
        for table, record in read_parts(output_uri, numbers, policy):
            kept = [row for row in record.errors if superseded.get(row["uri"], -1) <= record.number]
            if duplicate_of is not None:
                table = table.append_column(DUPLICATE_OF.name, duplicate_of.slice(clips, table.num_rows))
            if table.num_rows:
                manifest_writer.write_table(table.cast(schema))
            if kept:
                errors_writer.write_table(pa.Table.from_pylist(kept, schema=ERRORS_SCHEMA))
            clips += table.num_rows
            errors += len(kept)
    return MergedTables(clips=clips, errors=errors, rebuilt=True, duplicates=duplicates)
