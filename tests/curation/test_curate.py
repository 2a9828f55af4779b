"""`mmdiff curate`: a table of every signal, a histogram per signal, and what filters keep,
from a manifest alone."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import main as mmdiff
from jobs.curate import COMMON_FILTERS
from pipeline.dedup import find_duplicates
from pipeline.signals import SIGNAL_COLUMNS
from tests.curation.conftest import manifest_of
from tests.fixtures.curation_media import DUPLICATES_OF_REFERENCE


@pytest.fixture(scope="module")
def output(curation_media, clip_signals, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A preprocessing output folder holding just the manifest of the test clips."""
    folder = tmp_path_factory.mktemp("curate") / "data"
    folder.mkdir()
    pq.write_table(find_duplicates(manifest_of(curation_media, clip_signals))[0], folder / "manifest.parquet")
    return folder


def test_curate_reports_every_signal_and_what_the_filters_keep(output: Path, tmp_path: Path, capsys) -> None:
    report = tmp_path / "report"
    code = mmdiff(["curate", "--data", str(output), "--report", str(report), "--filter", "scene_cuts == 0"])
    printed = capsys.readouterr().out
    assert code == 0
    for spec in SIGNAL_COLUMNS:
        assert spec.name in printed
    numeric = [spec.name for spec in SIGNAL_COLUMNS if "fingerprint" not in spec.name]
    for name in numeric:
        with Image.open(report / f"{name}.png") as image:
            assert image.format == "PNG" and image.size[0] > 300
    summary = json.loads((report / "summary.json").read_text())
    clips = summary["clips"]
    assert clips == 13
    assert summary["signals"]["audio_rms_db"]["min"] == -120.0
    assert summary["signals"]["av_sync_strength"]["nulls"] == 4  # silence, tone, frozen, black
    filters = summary["filters"]
    assert set(COMMON_FILTERS) <= set(filters)
    assert filters["audible"]["kept"] == clips - 1  # the digital silence
    assert filters["no cuts"]["kept"] == filters["--filter 1"]["kept"] == clips - 1
    assert filters["no black frames"]["kept"] == clips - 1
    assert filters["unique"]["kept"] == clips - len(DUPLICATES_OF_REFERENCE)
    assert filters["no letterbox"]["kept"] == clips - 1
    assert filters["unique"]["share"] == pytest.approx(filters["unique"]["kept"] / clips, abs=1e-4)


def test_a_typo_in_a_filter_fails_before_any_work(output: Path, tmp_path: Path, capsys) -> None:
    code = mmdiff(["curate", "--data", str(output), "--report", str(tmp_path / "r"), "--filter", "scene_cut == 0"])
    assert code == 2
    error = capsys.readouterr().err
    assert "unknown column 'scene_cut'" in error and "known columns:" in error and "scene_cuts" in error
    assert not (tmp_path / "r").exists()


def test_a_manifest_without_signals_or_no_manifest_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert mmdiff(["curate", "--data", str(tmp_path)]) == 2
    assert f"no manifest.parquet in {tmp_path}" in capsys.readouterr().err
    pq.write_table(pa.table({"key": ["a"], "shard": ["shards/shard-000000.tar"]}), tmp_path / "manifest.parquet")
    assert mmdiff(["curate", "--data", str(tmp_path), "--report", str(tmp_path / "r")]) == 2
    assert "no signal columns" in capsys.readouterr().err
