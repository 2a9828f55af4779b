"""`mmdiff preprocess` computes the curation signals while decoding (on by default), stores them
in manifest.parquet and in each sample's json, and marks near-duplicates at the end of the run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.dedup import DUPLICATE_OF
from pipeline.run import PreprocessConfig, preprocess
from pipeline.shard_format import MANIFEST_FILE, read_manifest, sample_key
from pipeline.signals import SIGNAL_COLUMNS, ClipSignals
from tests.curation.conftest import signals_of
from tests.fixtures.curation_media import DUPLICATES_OF_REFERENCE, CurationMedia
from training.selection import select_manifest

NAMES = ("reference", "other", "silence", "black", "cut", *DUPLICATES_OF_REFERENCE)


@pytest.fixture(scope="module")
def corpus(curation_media: CurationMedia, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("curation-corpus")
    for name in NAMES:
        (folder / f"{name}.mp4").symlink_to(curation_media.paths[name])
    return folder


@pytest.fixture(scope="module")
def output(ray_runtime, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("curated") / "out"
    stats = preprocess(PreprocessConfig(input=str(corpus), output=str(output), workers=2, videos_per_shard=4))
    assert stats.errors == 0 and stats.clips == len(NAMES)  # 2 s files: one clip each
    assert stats.duplicates == len(DUPLICATES_OF_REFERENCE)
    return output


def as_stored(signals: ClipSignals) -> dict:
    """The record's values as the float32 columns of the manifest hold them."""
    return {
        name: pytest.approx(value, rel=1e-6) if isinstance(value, float) else value
        for name, value in signals.as_row().items()
    }


def first_clip_key(corpus: Path, name: str) -> str:
    return sample_key(str(corpus / f"{name}.mp4"), 0)


def test_the_manifest_holds_the_signals_the_decoder_measured(
    output: Path, corpus: Path, curation_media: CurationMedia
) -> None:
    rows = {row["key"]: row for row in read_manifest(str(output)).to_pylist()}
    for name in NAMES:
        stored = ClipSignals.from_row(rows[first_clip_key(corpus, name)]).as_row()
        assert stored == as_stored(signals_of(curation_media, name)), name
    # The signals separate what they are meant to, through the whole pipeline.
    reference, silence = rows[first_clip_key(corpus, "reference")], rows[first_clip_key(corpus, "silence")]
    assert silence["audio_rms_db"] < -100 < -40 < reference["audio_rms_db"]
    assert rows[first_clip_key(corpus, "black")]["black_frame_share"] == 1.0
    assert rows[first_clip_key(corpus, "cut")]["scene_cuts"] == 1 and reference["scene_cuts"] == 0


def test_each_sample_json_carries_the_same_signals(output: Path) -> None:
    manifest = {row["key"]: row for row in read_manifest(str(output)).to_pylist()}
    urls = [str(path) for path in sorted((output / "shards").glob("shard-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == len(NAMES)
    for sample in samples:
        metadata = json.loads(sample["json"])
        assert as_stored(ClipSignals.from_row(metadata)) == ClipSignals.from_row(manifest[sample["__key__"]]).as_row()


def test_the_copies_of_a_video_are_marked_duplicates_of_it_and_nothing_else_is(output: Path, corpus: Path) -> None:
    marked = {row["key"]: row[DUPLICATE_OF.name] for row in read_manifest(str(output)).to_pylist()}
    group = {first_clip_key(corpus, name) for name in ("reference", *DUPLICATES_OF_REFERENCE)}
    # The group's first clip in source order stays; every other copy points to it.
    leader = first_clip_key(corpus, min(("reference", *DUPLICATES_OF_REFERENCE)))
    assert marked[leader] is None
    assert all(marked[key] == leader for key in group - {leader})
    assert all(marked[key] is None for key in marked.keys() - group)
    kept = select_manifest(str(output), "duplicate_of is null")
    assert kept.kept_clips == len(NAMES) - len(DUPLICATES_OF_REFERENCE)


def test_without_signals_the_manifest_has_the_base_columns_only(ray_runtime, corpus: Path, tmp_path: Path) -> None:
    output = tmp_path / "plain"
    stats = preprocess(PreprocessConfig(input=str(corpus), output=str(output), workers=2, signals=False))
    columns = pq.read_schema(output / MANIFEST_FILE).names
    assert stats.clips == len(NAMES) and stats.duplicates == 0
    assert not {spec.name for spec in SIGNAL_COLUMNS} & set(columns) and DUPLICATE_OF.name not in columns
