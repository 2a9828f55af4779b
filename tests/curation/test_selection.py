"""Filter expressions over manifest columns: the right rows, and clear errors for anything
that is not a plain condition over known columns."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.dedup import find_duplicates
from tests.curation.conftest import manifest_of
from tests.fixtures.curation_media import DUPLICATES_OF_REFERENCE
from training.selection import FilterError, parse_filter, select_rows


@pytest.fixture(scope="module")
def manifest(curation_media, clip_signals) -> pa.Table:
    return find_duplicates(manifest_of(curation_media, clip_signals))[0]


def kept(manifest: pa.Table, text: str) -> set[str]:
    return set(select_rows(manifest, text)["key"].to_pylist())


def test_the_issues_example_keeps_audible_uncut_unique_clips(manifest: pa.Table) -> None:
    everything = set(manifest["key"].to_pylist())
    copies = set(manifest.filter(manifest["duplicate_of"].is_valid())["key"].to_pylist())
    assert len(copies) == len(DUPLICATES_OF_REFERENCE)
    expected = everything - {"silence", "cut"} - copies
    assert kept(manifest, "audio_rms_db > -50 and scene_cuts == 0 and duplicate_of is null") == expected


def test_comparisons_chains_negation_and_membership(manifest: pa.Table) -> None:
    assert kept(manifest, "-0.1 <= av_sync_lag_s <= 0.1 and av_sync_strength > 0.9") >= {"reference", "other"}
    assert kept(manifest, "av_sync_lag_s > 0.2") == {"delayed_audio"}
    assert kept(manifest, "not (black_frame_share < 1)") == {"black"}
    assert kept(manifest, "key in ('tone', 'noise', 'nothing')") == {"tone", "noise"}
    assert kept(manifest, "key not in ['tone'] and frozen_frame_share == 1") == {"frozen"}
    assert kept(manifest, "letterbox_share > 0.2 or audio_clipped_share > 0.3") == {"letterbox", "clipped"}


def test_nulls_fail_comparisons_and_are_tested_with_is_null(manifest: pa.Table) -> None:
    unsynced = {"silence", "tone", "frozen", "black"}
    assert kept(manifest, "av_sync_strength is null") == unsynced
    assert kept(manifest, "av_sync_strength is not null") == set(manifest["key"].to_pylist()) - unsynced
    # neither a comparison nor its negation keeps a row whose value is null
    assert not kept(manifest, "av_sync_strength > -2") & unsynced
    assert not kept(manifest, "not (av_sync_strength > -2)") & unsynced
    assert kept(manifest, "video_fingerprint is null") == {"black"}


def test_a_typo_in_a_column_name_fails_naming_the_known_columns(manifest: pa.Table) -> None:
    with pytest.raises(FilterError) as error:
        parse_filter("audio_rms_db > -50 and scene_cut == 0", manifest.schema)
    message = str(error.value)
    assert "unknown column 'scene_cut'" in message and "did you mean 'scene_cuts'?" in message
    assert all(name in message for name in manifest.column_names)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("__import__('os').system('true')", "is not a column name"),
        ("abs(av_sync_lag_s) < 0.1", "is not a column name"),
        ("motion_energy.real > 1", "is not a column name"),
        ("motion_energy + 1 > 2", "is not a column name"),
        ("[x for x in key] == 1", "is not a column name"),
        ("motion_energy", "is a number, not a condition"),
        ("motion_energy > 'fast'", "cannot compare a number with a string"),
        ("duplicate_of == null", "is null"),
        ("duplicate_of is 'x'", "only test for null"),
        ("video_fingerprint == 'ab'", "can only be tested with `is null`"),
        ("key in ('a', 1)", "another type"),
        ("scene_cuts ==", "not a valid expression"),
        ("   ", "empty"),
    ],
)
def test_anything_but_a_plain_condition_is_refused(manifest: pa.Table, text: str, problem: str) -> None:
    with pytest.raises(FilterError) as error:
        parse_filter(text, manifest.schema)
    assert problem in str(error.value)


def test_a_parsed_filter_names_the_columns_it_reads(manifest: pa.Table) -> None:
    selection = parse_filter("scene_cuts == 0 and (audio_rms_db > -50 or scene_cuts > 3)", manifest.schema)
    assert selection.columns == ("scene_cuts", "audio_rms_db")
