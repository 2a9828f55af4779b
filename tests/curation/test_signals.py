"""Every signal separates the test clips it is meant to separate, measured on clips decoded
exactly as preprocessing decodes them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest

from mmdiffusion.constants import FRAMES, IMAGE_SIZE
from pipeline.dedup import DUPLICATE_OF
from pipeline.frames import SquareScaler
from pipeline.signals import SIGNAL_COLUMNS, SIGNAL_SCHEMA, ClipSignals, compute_signals, picture_box
from tests.curation.conftest import signals_of
from tests.fixtures.curation_media import AUDIO_DELAY, CurationMedia

REPO = Path(__file__).resolve().parents[2]


def others(signals: dict[str, ClipSignals], *names: str) -> dict[str, ClipSignals]:
    return {name: record for name, record in signals.items() if name not in names}


def test_digital_silence_reads_as_the_floor_and_every_window_silent(clip_signals) -> None:
    silence = clip_signals["silence"]
    assert silence.audio_rms_db == -120.0 and silence.audio_silent_share == 1.0
    for name, record in others(clip_signals, "silence").items():
        assert record.audio_rms_db > -30, name
        assert record.audio_silent_share == 0.0, name


def test_loudness_is_the_rms_relative_to_full_scale(clip_signals) -> None:
    assert clip_signals["tone"].audio_rms_db == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=0.3)
    # the knocks' bed: lossy coding and resampling move it by well under a dB
    assert clip_signals["reencoded"].audio_rms_db == pytest.approx(clip_signals["reference"].audio_rms_db, abs=0.5)


def test_clipped_share_singles_out_the_clipped_tone(clip_signals) -> None:
    assert clip_signals["clipped"].audio_clipped_share > 0.3
    for name, record in others(clip_signals, "clipped").items():
        assert record.audio_clipped_share < 0.001, name


def test_tone_has_no_onsets_and_white_noise_no_synchrony(clip_signals) -> None:
    assert clip_signals["tone"].av_sync_strength is None and clip_signals["tone"].av_sync_lag_s is None
    noise, reference = clip_signals["noise"], clip_signals["reference"]
    assert noise.av_sync_strength is not None and noise.av_sync_strength < 0.7
    assert reference.av_sync_strength > 0.9


def test_sync_finds_the_audio_delay(clip_signals) -> None:
    for name in ("reference", "reencoded", "cropped", "letterbox", "other"):
        assert clip_signals[name].av_sync_lag_s == 0.0, name
        assert clip_signals[name].av_sync_strength > 0.9, name
    delayed = clip_signals["delayed_audio"]
    assert delayed.av_sync_lag_s == pytest.approx(AUDIO_DELAY) and delayed.av_sync_strength > 0.9


def test_sync_is_null_without_sound_or_without_motion(clip_signals) -> None:
    for name in ("silence", "frozen", "black"):
        assert clip_signals[name].av_sync_lag_s is None and clip_signals[name].av_sync_strength is None, name


def test_black_frames_are_counted_only_in_the_black_clip(clip_signals) -> None:
    black = clip_signals["black"]
    assert black.black_frame_share == 1.0 and black.motion_energy == 0.0 and black.video_fingerprint is None
    assert black.frozen_frame_share == 0.0  # black frames are black, not frozen
    for name, record in others(clip_signals, "black").items():
        assert record.black_frame_share == 0.0, name


def test_a_frozen_frame_has_no_motion_and_every_frame_frozen(clip_signals) -> None:
    frozen = clip_signals["frozen"]
    assert frozen.frozen_frame_share == 1.0 and frozen.motion_energy < 0.05
    for name, record in others(clip_signals, "frozen", "black", "reencoded").items():
        assert record.frozen_frame_share == 0.0, name
        assert record.motion_energy > 2.0, name
    # x264 at crf 36 and 64×48 sometimes skips one frame's 1-pixel drift of the smooth field (its
    # smallest frame difference ranged 0.39-1.68 levels over 12 builds of the media; libx264's
    # output here varies from build to build even with one thread), so a frame that nearly
    # repeats the one before is real in this clip: at most one of its 15, still far from frozen.
    reencoded = clip_signals["reencoded"]
    assert reencoded.frozen_frame_share <= 1 / (FRAMES - 1) and reencoded.motion_energy > 2.0


def test_the_hard_cut_is_one_scene_cut_and_no_other_clip_has_any(clip_signals) -> None:
    assert clip_signals["cut"].scene_cuts == 1
    for name, record in others(clip_signals, "cut").items():
        assert record.scene_cuts == 0, name  # the jumping block and drifting field are no cuts


def test_letterbox_bars_are_found_and_the_pipelines_own_padding_is_not(curation_media: CurationMedia) -> None:
    for resize in ("pad", "crop"):
        letterbox = signals_of(curation_media, "letterbox", resize).letterbox_share
        assert letterbox == pytest.approx(0.25, abs=0.03), resize  # 18 of 72 source rows
        for name in ("reference", "cropped", "reencoded", "cut"):
            assert signals_of(curation_media, name, resize).letterbox_share == 0.0, (name, resize)


def test_a_one_frame_flash_is_no_cut_and_a_spliced_picture_is(curation_media: CurationMedia) -> None:
    reference, other = curation_media.clip("reference"), curation_media.clip("other")
    box = picture_box(reference.source_width, reference.source_height, IMAGE_SIZE, "pad")
    flash = reference.video.copy()
    flash[6] = 255
    assert compute_signals(flash, reference.audio, box).scene_cuts == 0
    spliced = np.concatenate([reference.video[:6], other.video[6:]])
    assert compute_signals(spliced, reference.audio, box).scene_cuts == 1


@pytest.mark.parametrize("size", [(96, 72), (72, 96), (96, 71), (71, 96), (200, 50), (64, 64), (33, 200)])
@pytest.mark.parametrize("resize", ["pad", "crop"])
def test_picture_box_is_where_fit_square_puts_the_picture(size: tuple[int, int], resize: str) -> None:
    width, height = size
    frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 255, dtype=np.uint8), format="rgb24")
    square = SquareScaler(IMAGE_SIZE, resize)(frame).max(axis=2) > 0
    rows, columns = np.flatnonzero(square.any(axis=1)), np.flatnonzero(square.any(axis=0))
    box = picture_box(width, height, IMAGE_SIZE, resize)
    assert (box.top, box.left) == (rows[0], columns[0])
    assert (box.height, box.width) == (rows.size, columns.size)


def test_float_audio_gives_the_signals_of_int16_audio(curation_media: CurationMedia) -> None:
    clip = curation_media.clip("reference")
    box = picture_box(clip.source_width, clip.source_height, IMAGE_SIZE, "pad")
    assert compute_signals(clip.video, clip.audio.astype(np.float32) / 32768, box) == compute_signals(
        clip.video, clip.audio, box
    )


def test_record_columns_are_the_fields_and_round_trip_through_parquet_and_json(clip_signals) -> None:
    assert [spec.name for spec in SIGNAL_COLUMNS] == [field.name for field in dataclasses.fields(ClipSignals)]
    assert SIGNAL_SCHEMA.names == [spec.name for spec in SIGNAL_COLUMNS]
    records = list(clip_signals.values())
    table = pa.Table.from_pylist([record.as_row() for record in records], schema=SIGNAL_SCHEMA)
    for row, record in zip(table.to_pylist(), records, strict=True):
        assert ClipSignals.from_row(row).as_json() == record.as_json()
        assert ClipSignals.from_row(json.loads(json.dumps(record.as_json()))).as_row() == record.as_row()


def test_every_column_is_documented_with_its_unit_and_range() -> None:
    text = (REPO / "docs" / "data-format.md").read_text()
    for spec in (*SIGNAL_COLUMNS, DUPLICATE_OF):
        row = next((line for line in text.splitlines() if line.startswith(f"| `{spec.name}` |")), None)
        assert row is not None, f"docs/data-format.md has no row for {spec.name}"
        assert spec.unit in row and spec.range in row, f"{spec.name}: unit or range differs from the record"
