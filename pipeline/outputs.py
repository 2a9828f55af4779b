"""stats.json beside the shards (manifest.parquet and errors.parquet: `pipeline.parts`)."""

from __future__ import annotations

import json
from dataclasses import asdict

from pipeline.config import PreprocessStats
from pipeline.faults import RetryPolicy, retrying
from pipeline.storage import join, write_atomically

STATS_FILE = "stats.json"


def write_stats(output_uri: str, stats: PreprocessStats, policy: RetryPolicy) -> None:
    """Write what this run did."""
    summary = {
        **asdict(stats),
        "clips_per_second": round(stats.clips_per_second, 3),
        "bytes_per_clip": round(stats.bytes_per_clip, 1),
    }
    data = json.dumps(summary, indent=2).encode("utf-8")
    uri = join(output_uri, STATS_FILE)
    retrying(lambda: write_atomically(uri, data), f"{uri}: write", policy)
