"""`mmdiff curate`: what the curation signals of a preprocessed corpus look like, and what
common filters would keep, read from its manifest.parquet alone (no media, no shards)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa

from pipeline.dedup import DUPLICATE_OF
from pipeline.shard_format import read_manifest
from pipeline.signals import SIGNAL_COLUMNS, ColumnSpec
from training.selection import FilterError, parse_filter

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
COMMON_FILTERS: dict[str, str] = {
    "audible": "audio_rms_db > -50",
    "mostly sound": "audio_silent_share <= 0.25",
    "not clipped": "audio_clipped_share < 0.01",
    "moving": "motion_energy >= 0.5",
    "no black frames": "black_frame_share == 0",
    "not frozen": "frozen_frame_share < 0.5",
    "no cuts": "scene_cuts == 0",
    "no letterbox": "letterbox_share < 0.05",
    "in sync": "av_sync_strength >= 0.5 and -0.1 <= av_sync_lag_s <= 0.1",
    "unique": "duplicate_of is null",
}
"""Name -> expression: the filters whose kept share the report shows (thresholds: docs/curation.md)."""
ALL_COMMON = "all of the above"


def _numeric(spec: ColumnSpec) -> bool:
    return pa.types.is_integer(spec.arrow_type) or pa.types.is_floating(spec.arrow_type)


def signal_statistics(manifest: pa.Table) -> dict[str, dict[str, float | int | None]]:
    """Per signal column present: clips with a value, nulls, and for numbers mean, min,
    percentiles and max."""
    statistics: dict[str, dict[str, float | int | None]] = {}
    for spec in (*SIGNAL_COLUMNS, DUPLICATE_OF):
        if spec.name not in manifest.column_names:
            continue
        column = manifest[spec.name]
        row: dict[str, float | int | None] = {"count": len(column) - column.null_count, "nulls": column.null_count}
        if _numeric(spec):
            values = column.drop_null().to_numpy().astype(np.float64)
            summary = [values.mean(), values.min(), *np.percentile(values, PERCENTILES), values.max()]
            names = ["mean", "min", *(f"p{p}" for p in PERCENTILES), "max"]
            row |= {
                name: round(float(value), 4) if values.size else None
                for name, value in zip(names, summary if values.size else [None] * len(names), strict=True)
            }
        statistics[spec.name] = row
    return statistics


def filter_shares(manifest: pa.Table, filters: dict[str, str]) -> dict[str, dict]:
    """Per filter: its expression, the rows it keeps and their share; filters that name a
    column the manifest lacks are reported as such, not applied."""
    shares = {}
    for name, text in filters.items():
        try:
            kept = parse_filter(text, manifest.schema).apply(manifest).num_rows
        except FilterError as error:
            shares[name] = {"expression": text, "error": str(error)}
            continue
        shares[name] = {"expression": text, "kept": kept, "share": round(kept / max(manifest.num_rows, 1), 4)}
    return shares


def plot_histograms(manifest: pa.Table, folder: Path) -> list[Path]:
    """One PNG per numeric signal column: the histogram of its values, nulls counted in the title."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in SIGNAL_COLUMNS:
        if not _numeric(spec) or spec.name not in manifest.column_names:
            continue
        column = manifest[spec.name]
        values = column.drop_null().to_numpy().astype(np.float64)
        figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
        if values.size:
            bins = np.arange(values.min(), values.max() + 2) - 0.5 if pa.types.is_integer(spec.arrow_type) else 40
            axes.hist(values, bins=bins, color="#3b6ea5")
        axes.set_xlabel(f"{spec.name} ({spec.unit})")
        axes.set_ylabel("clips")
        axes.set_title(f"{spec.name}: {values.size} clips, {column.null_count} null", fontsize=10)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        path = folder / f"{spec.name}.png"
        figure.savefig(path)
        plt.close(figure)
        written.append(path)
    return written


def _format_statistics(statistics: dict[str, dict]) -> str:
    headers = ["column", "count", "nulls", "mean", "min", *(f"p{p}" for p in PERCENTILES), "max"]
    cells = [headers] + [
        [name, *("-" if row.get(h) is None else f"{row[h]:.4g}" for h in headers[1:])]
        for name, row in statistics.items()
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in cells)


def _format_shares(shares: dict[str, dict], clips: int) -> str:
    lines = [f"filters (of {clips} clips):"]
    for name, result in shares.items():
        if "error" in result:
            lines.append(f"  {name:<16} not applicable: {result['error']}")
        else:
            shown = "" if name == ALL_COMMON else result["expression"]
            lines.append(f"  {name:<16} {result['share']:7.1%}  {result['kept']:>9}  {shown}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiff curate",
        description="Summarise the curation signals of a preprocessed corpus from its manifest.parquet: a "
        "table of every signal (count, mean, percentiles), a PNG histogram per signal, and the share of "
        "clips that common filters (and --filter expressions) keep. Columns: docs/data-format.md.",
    )
    parser.add_argument("--data", required=True, help="preprocessing output (folder or s3://) or a manifest .parquet")
    parser.add_argument(
        "--report", type=Path, default=Path("curation-report"), help="local folder for the PNGs and summary.json"
    )
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="EXPR",
        help="also show what this expression keeps, e.g. 'audio_rms_db > -50 and scene_cuts == 0' (repeatable)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        manifest = read_manifest(args.data)
        for text in args.filter:  # a user's own expression must be right: fail before any work
            parse_filter(text, manifest.schema)
    except (FileNotFoundError, FilterError) as error:
        print(f"mmdiff curate: error: {error}", file=sys.stderr)
        return 2
    statistics = signal_statistics(manifest)
    if not any(spec.name in statistics for spec in SIGNAL_COLUMNS):
        print(
            f"mmdiff curate: error: {args.data}: the manifest has no signal columns "
            f"({', '.join(spec.name for spec in SIGNAL_COLUMNS)}); it was written without curation signals",
            file=sys.stderr,
        )
        return 2
    filters = COMMON_FILTERS | {
        ALL_COMMON: " and ".join(f"({text})" for text in COMMON_FILTERS.values()),
        **{f"--filter {index + 1}": text for index, text in enumerate(args.filter)},
    }
    shares = filter_shares(manifest, filters)
    plots = plot_histograms(manifest, args.report)
    summary = {"data": args.data, "clips": manifest.num_rows, "signals": statistics, "filters": shares}
    (args.report / "summary.json").write_text(json.dumps(summary, indent=2))
    print(_format_statistics(statistics))
    print()
    print(_format_shares(shares, manifest.num_rows))
    print(f"\n{len(plots)} histograms and summary.json in {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
