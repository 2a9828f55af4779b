"""The files beside the shards: manifest.parquet, errors.parquet and stats.json."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, replace

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import PreprocessStats
from pipeline.dedup import DUPLICATE_OF, DedupReport, find_duplicates
from pipeline.shard_format import MANIFEST_FILE
from pipeline.signals import SIGNAL_SCHEMA
from pipeline.storage import join, write_atomically
from pipeline.task import ShardRecord

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
ERRORS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("clips_written", pa.int32()),
    ]
)


SIGNAL_MANIFEST_SCHEMA = pa.schema(
    [
        *MANIFEST_SCHEMA,
        *(field.with_nullable(True) for field in SIGNAL_SCHEMA),
        (DUPLICATE_OF.name, DUPLICATE_OF.arrow_type),
    ]
)
"""The manifest of a run with curation signals (the default): nullable, so that clips of an
earlier run without them can stand beside the others."""

log = logging.getLogger(__name__)


def _write_table(uri: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_atomically(uri, buffer.getvalue())


def manifest_table(rows: list[dict]) -> tuple[pa.Table, DedupReport | None]:
    """The manifest of these clip rows; with signals, near-duplicates marked in `duplicate_of`
    (`pipeline.dedup`) and the report of that search."""
    if not any(SIGNAL_SCHEMA.names[0] in row for row in rows):
        return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), None
    fingerprints = [
        name for name in SIGNAL_SCHEMA.names if pa.types.is_fixed_size_binary(SIGNAL_SCHEMA.field(name).type)
    ]
    rows = [{**row, **{name: bytes.fromhex(row[name]) for name in fingerprints if row.get(name)}} for row in rows]
    return find_duplicates(pa.Table.from_pylist(rows, schema=SIGNAL_MANIFEST_SCHEMA))


def write_outputs(output_uri: str, records: list[ShardRecord], stats: PreprocessStats) -> PreprocessStats:
    """Rewrite the manifest and error tables from all records, and this run's stats (completed
    with the duplicates found); returns the stats."""
    manifest, dedup = manifest_table([row for record in records for row in record.clips])
    if dedup is not None:
        stats = replace(stats, duplicates=dedup.duplicates)
        log.info("near-duplicates: %d clips in %d groups (of %d clips)", dedup.duplicates, dedup.groups, dedup.clips)
    _write_table(join(output_uri, MANIFEST_FILE), manifest)
    errors = pa.Table.from_pylist([row for record in records for row in record.errors], schema=ERRORS_SCHEMA)
    _write_table(join(output_uri, "errors.parquet"), errors)
    summary = {
        **asdict(stats),
        "clips_per_second": round(stats.clips_per_second, 3),
        "bytes_per_clip": round(stats.bytes_per_clip, 1),
    }
    write_atomically(join(output_uri, "stats.json"), json.dumps(summary, indent=2).encode("utf-8"))
    return stats
