"""The files beside the shards: manifest.parquet, errors.parquet and stats.json."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import PreprocessStats
from pipeline.shard_format import MANIFEST_FILE
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


def _write_table(uri: str, rows: list[dict], schema: pa.Schema) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    write_atomically(uri, buffer.getvalue())


def write_outputs(output_uri: str, records: list[ShardRecord], stats: PreprocessStats) -> None:
    """Rewrite the manifest and error tables from all records, and this run's stats."""
    _write_table(join(output_uri, MANIFEST_FILE), [row for r in records for row in r.clips], MANIFEST_SCHEMA)
    _write_table(join(output_uri, "errors.parquet"), [row for r in records for row in r.errors], ERRORS_SCHEMA)
    summary = {
        **asdict(stats),
        "clips_per_second": round(stats.clips_per_second, 3),
        "bytes_per_clip": round(stats.bytes_per_clip, 1),
    }
    write_atomically(join(output_uri, "stats.json"), json.dumps(summary, indent=2).encode("utf-8"))
