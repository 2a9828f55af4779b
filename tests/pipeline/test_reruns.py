"""Reruns into an existing output: other clip options are refused untouched, and
--retry-errors redoes recorded media errors with each clip still exactly once."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.preprocess import main as preprocess_main
from pipeline.decode import ClipOptions, open_source
from pipeline.run import PreprocessConfig, preprocess
from pipeline.shard_format import sample_key
from tests.fixtures.media import MediaSet, MediaSpec, write_media
from tests.pipeline.test_preprocess import read_shards


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under `folder`: its modification time and digest."""
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_rerun_with_other_clip_options_is_refused_and_changes_nothing(
    ray_runtime, media_set: MediaSet, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(media_set.good["film_24fps_22k_mono"], corpus / "a.mp4")
    output = tmp_path / "out"
    common = ["--input", str(corpus), "--output", str(output), "--workers", "1", "--max-clips-per-video", "1"]
    assert preprocess_main([*common, "--resize", "pad"]) == 0
    shutil.copy(media_set.good["pal_25fps_48k_51"], corpus / "b.mp4")  # work a rerun would do
    before = snapshot(output)
    capsys.readouterr()
    assert preprocess_main([*common, "--resize", "crop", "--stride", "0.8"]) == 2
    err = capsys.readouterr().err
    assert "resize: 'pad' in the output, 'crop' now" in err
    assert "stride: 1.6 in the output, 0.8 now" in err and "nothing was changed" in err
    assert snapshot(output) == before
    assert preprocess_main([*common, "--resize", "pad"]) == 0  # the output's own options still work
    assert len(read_shards(output)) == 2


def clip_count(path: Path) -> int:
    return len(list(open_source(str(path), ClipOptions())[1]))


def test_retry_errors_redoes_fixed_media_and_gives_each_clip_exactly_once(
    ray_runtime, media_set: MediaSet, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(media_set.good["film_24fps_22k_mono"], corpus / "good.mp4")
    shutil.copy(media_set.bad["decode_error"], corpus / "cut_short.mp4")  # gives 1 clip, then fails
    shutil.copy(media_set.bad["unreadable_text"], corpus / "not_yet.mp4")
    config = PreprocessConfig(input=str(corpus), output=str(tmp_path / "out"), workers=2, videos_per_shard=2)
    first = preprocess(config)
    errors = {row["uri"]: row for row in pq.read_table(tmp_path / "out" / "errors.parquet").to_pylist()}
    cut_short, not_yet = str(corpus / "cut_short.mp4"), str(corpus / "not_yet.mp4")
    assert set(errors) == {cut_short, not_yet} and errors[cut_short]["clips_written"] == 1

    assert preprocess(config).units == 0  # a plain rerun leaves recorded errors alone
    write_media(corpus / "cut_short.mp4", MediaSpec("indexed", faststart=True))  # the whole file now
    shutil.copy(media_set.good["pal_25fps_48k_51"], corpus / "not_yet.mp4")
    retried = preprocess(PreprocessConfig(**{**vars(config), "retry_errors": True}))

    sources = {
        str(corpus / "good.mp4"): clip_count(corpus / "good.mp4"),
        cut_short: clip_count(corpus / "cut_short.mp4"),
        not_yet: clip_count(corpus / "not_yet.mp4"),
    }
    expected = sorted(sample_key(uri, index) for uri, count in sources.items() for index in range(count))
    keys = [sample["__key__"] for sample in read_shards(tmp_path / "out")]
    assert sorted(keys) == expected and sources[cut_short] > 1
    assert retried.clips == sources[cut_short] - 1 + sources[not_yet] and retried.errors == 0
    assert retried.clips_total == len(expected) == first.clips_total + retried.clips
    assert sorted(pq.read_table(tmp_path / "out" / "manifest.parquet").column("key").to_pylist()) == expected
    assert pq.read_table(tmp_path / "out" / "errors.parquet").num_rows == 0
    again = preprocess(PreprocessConfig(**{**vars(config), "retry_errors": True}))
    assert (again.units, again.clips, again.clips_total) == (0, 0, len(expected))
