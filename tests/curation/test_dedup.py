"""Near-duplicates: the re-encoded, cropped and letterboxed copies of the reference are found,
no unrelated pair is, and the grouping scales by buckets, not by pairs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from benchmarks.curation_cost import PLANTED_VIDEO_FLIPS, synthetic_manifest
from mmdiffusion.constants import IMAGE_SIZE
from pipeline.decode import ClipOptions, open_source
from pipeline.dedup import DedupConfig, find_duplicates
from pipeline.signals import SIGNAL_SCHEMA, compute_signals, picture_box
from pipeline.signals.fingerprint import as_array, audio_distance_db, video_distance_bits
from tests.curation.conftest import MANIFEST_BASE_SCHEMA, manifest_of
from tests.fixtures.curation_media import DUPLICATES_OF_REFERENCE, CurationMedia

COPIES = {"reference", *DUPLICATES_OF_REFERENCE}


def duplicate_map(table: pa.Table) -> dict[str, str | None]:
    return dict(zip(table["key"].to_pylist(), table["duplicate_of"].to_pylist(), strict=True))


def test_copies_of_the_reference_are_one_group_and_no_unrelated_pair_matches(curation_media, clip_signals) -> None:
    manifest = manifest_of(curation_media, clip_signals)
    table, report = find_duplicates(manifest)
    marked = duplicate_map(table)
    first = min(COPIES, key=lambda name: str(curation_media.paths[name]))  # first in source order
    assert marked == {name: (first if name in COPIES - {first} else None) for name in clip_signals}
    assert report.groups == 1 and report.duplicates == len(COPIES) - 1
    # the same picture with other sound (silence, tone, noise, clipped, delayed) is not a duplicate
    # of it, and neither is the same sound with another picture (black, frozen)


def test_the_group_leader_does_not_depend_on_the_row_order(curation_media, clip_signals) -> None:
    manifest = manifest_of(curation_media, clip_signals)
    shuffled = manifest.take(np.random.default_rng(3).permutation(manifest.num_rows))
    assert duplicate_map(find_duplicates(shuffled)[0]) == duplicate_map(find_duplicates(manifest)[0])


def test_fingerprints_as_hex_strings_give_the_same_groups(curation_media, clip_signals) -> None:
    manifest = manifest_of(curation_media, clip_signals)
    as_json = pa.Table.from_pylist([{**row, **clip_signals[row["key"]].as_json()} for row in manifest.to_pylist()])
    assert duplicate_map(find_duplicates(as_json)[0]) == duplicate_map(find_duplicates(manifest)[0])


@pytest.mark.parametrize("names", [("reference", "other"), ("reference",), ()])
def test_a_manifest_without_any_candidate_pair_has_no_duplicates(curation_media, clip_signals, names) -> None:
    manifest = manifest_of(curation_media, {name: clip_signals[name] for name in names})
    table, report = find_duplicates(manifest)
    assert table["duplicate_of"].null_count == len(names) and report.duplicates == report.compared_pairs == 0


def test_no_pair_to_compare_gives_no_distances() -> None:
    """When no candidate pair passes the video test, the audio test gets empty arrays."""
    empty = np.zeros((0, 64), dtype=np.uint8)
    assert audio_distance_db(empty, empty).shape == (0,)


def test_overlapping_clips_of_one_source_are_not_duplicates(curation_media: CurationMedia) -> None:
    path = str(curation_media.paths["tone"])  # a steady sound: shifted clips sound the same
    info, clips = open_source(path, ClipOptions(stride_frames=1, max_clips=4))
    box = picture_box(info.width, info.height, IMAGE_SIZE, "pad")
    rows = [
        {"key": f"r-{clip.index}", "source": path, "clip_index": clip.index, "start_seconds": clip.start_seconds}
        | compute_signals(clip.video, clip.audio, box).as_row()
        for clip in clips
    ]
    manifest = pa.Table.from_pylist(rows, schema=pa.schema([*MANIFEST_BASE_SCHEMA, *SIGNAL_SCHEMA]))
    video = [as_array(row["video_fingerprint"]) for row in rows[:2]]
    audio = [as_array(row["audio_fingerprint"]) for row in rows[:2]]
    # 0.1 s apart, they would match by their fingerprints
    assert video_distance_bits(*video) <= DedupConfig().max_video_bits
    assert audio_distance_db(*audio) <= DedupConfig().max_audio_db
    table, report = find_duplicates(manifest)
    assert report.duplicates == 0 and table["duplicate_of"].null_count == len(rows)


def test_lsh_finds_planted_near_duplicates_among_random_clips() -> None:
    manifest, planted = synthetic_manifest(40_000, seed=1)
    table, report = find_duplicates(manifest)
    duplicate_of, keys = table["duplicate_of"].to_pylist(), table["key"].to_pylist()
    found = {pair for pair in planted if duplicate_of[pair[1]] == keys[pair[0]]}
    assert len(found) >= 0.98 * len(planted)  # 99.99 % at 4 flipped bits, 99.5 % at 16
    assert report.duplicates == len(found)  # no random pair matched
    all_pairs = manifest.num_rows * (manifest.num_rows - 1) / 2
    assert report.compared_pairs < 1e-3 * all_pairs  # about 64 / 2^20 of all pairs
    assert PLANTED_VIDEO_FLIPS[1] <= DedupConfig().max_video_bits


def test_comparing_a_table_in_chunks_finds_the_same_groups() -> None:
    manifest, _ = synthetic_manifest(40_000, seed=1)
    whole, whole_report = find_duplicates(manifest)
    chunked, chunked_report = find_duplicates(manifest, DedupConfig(chunk_clips=1_000))
    assert chunked["duplicate_of"].equals(whole["duplicate_of"]) and whole_report.duplicates > 300
    assert chunked_report == whole_report


def test_a_huge_bucket_of_one_picture_is_linked_in_linear_work() -> None:
    manifest, _ = synthetic_manifest(3_000, seed=2)
    same = np.frombuffer(manifest["video_fingerprint"][0].as_py(), dtype=np.uint8)
    video = np.tile(same, (manifest.num_rows, 1))
    manifest = manifest.set_column(
        manifest.column_names.index("video_fingerprint"),
        "video_fingerprint",
        pa.array([row.tobytes() for row in video], type=pa.binary(same.size)),
    )
    audio = manifest["audio_fingerprint"][0].as_py()
    manifest = manifest.set_column(
        manifest.column_names.index("audio_fingerprint"), "audio_fingerprint", pa.array([audio] * 3_000, pa.binary(64))
    )
    table, report = find_duplicates(manifest)
    assert report.oversized_buckets == DedupConfig().tables
    assert report.compared_pairs < 2 * DedupConfig().tables * manifest.num_rows  # linear: not 4.5 million a table
    assert report.groups == 1 and report.duplicates == manifest.num_rows - 1
    assert set(table["duplicate_of"].drop_null().to_pylist()) == {table["key"][0].as_py()}


def test_a_manifest_without_fingerprints_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="video_fingerprint"):
        find_duplicates(pa.table({"key": ["a"], "source": ["x"], "clip_index": [0], "start_seconds": [0.0]}))
