"""Decoding without Ray: every clip of every test file keeps its flash and its click together,
at the place the clip's start second says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmdiffusion.constants import AUDIO_SAMPLES, FPS, FRAMES, IMAGE_SIZE, SAMPLES_PER_FRAME
from pipeline.decode import ClipOptions, load_clip, open_source
from pipeline.errors import MediaError, Reason
from tests.fixtures.media import GOOD_MEDIA, MediaSet, MediaSpec, write_media


def flash_frame(video: np.ndarray) -> int:
    return int(np.argmax(video.reshape(FRAMES, -1).mean(axis=1)))


def click_frame(audio: np.ndarray) -> float:
    """Where the click is, in output frames from the clip start."""
    return int(np.argmax(np.abs(audio[0].astype(np.int32)))) / SAMPLES_PER_FRAME


def assert_flash_and_click_at(video: np.ndarray, audio: np.ndarray, event_frame: float) -> None:
    """The flash and the click agree with each other and with the event, within one output frame."""
    assert video.reshape(FRAMES, -1).mean(axis=1).max() > 120, "no flash in this clip"
    assert abs(flash_frame(video) - click_frame(audio)) <= 1
    assert abs(flash_frame(video) - event_frame) <= 1
    assert abs(click_frame(audio) - event_frame) <= 1


@pytest.mark.parametrize("spec", GOOD_MEDIA, ids=lambda spec: spec.name)
def test_every_clip_keeps_flash_and_click_aligned_with_its_start_second(media_set: MediaSet, spec: MediaSpec) -> None:
    info, clips = open_source(str(media_set.good[spec.name]), ClipOptions())
    clips = list(clips)
    assert len(clips) == 2  # non-overlapping 1.6 s clips of 3.4-4 s files
    assert info.sample_rate == spec.sample_rate and info.fps == pytest.approx(float(spec.fps), abs=1e-3)
    assert clips[0].start_seconds >= spec.audio_start
    assert clips[1].start_seconds == pytest.approx(clips[0].start_seconds + FRAMES / FPS)
    for clip in clips:
        assert clip.video.shape == (FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3) and clip.video.dtype == np.uint8
        assert clip.audio.shape == (1, AUDIO_SAMPLES) and clip.audio.dtype == np.int16
        events = [e for e in spec.events if clip.start_seconds <= e < clip.start_seconds + FRAMES / FPS - 0.1]
        assert events, f"test media must put an event in every clip: {clip.start_seconds}"
        assert_flash_and_click_at(clip.video, clip.audio, (events[0] - clip.start_seconds) * FPS)


def test_late_audio_shifts_the_first_clip_to_where_both_streams_play(media_set: MediaSet) -> None:
    _, clips = open_source(str(media_set.good["late_audio_25fps_44k"]), ClipOptions())
    assert next(clips).start_seconds == pytest.approx(0.5)  # first grid frame after audio starts at 0.43 s


def test_stride_and_max_clips_choose_the_clip_starts(media_set: MediaSet) -> None:
    path = str(media_set.good["pal_25fps_48k_51"])
    _, clips = open_source(path, ClipOptions(stride_frames=5, max_clips=4))
    assert [clip.start_seconds for clip in clips] == pytest.approx([0.0, 0.5, 1.0, 1.5])


@pytest.mark.parametrize("start", [0.3, 1.5, 2.37])
def test_load_clip_starts_where_asked(media_set: MediaSet, start: float) -> None:
    spec = media_set.specs["ntsc_2997fps_44k_stereo"]
    video, audio = load_clip(str(media_set.good[spec.name]), start)
    event = next(e for e in spec.events if start <= e < start + FRAMES / FPS)
    assert_flash_and_click_at(video, audio, (event - start) * FPS)


def test_load_clip_accepts_audio_only_files_only_when_asked(tmp_path: Path) -> None:
    for spec in (
        MediaSpec("voice", video=False, container="wav"),
        MediaSpec("song", video=False, container="m4a", layout="mono"),
    ):
        path = str(write_media(tmp_path / spec.filename, spec))
        video, audio = load_clip(path, 1.5, require_video=False)
        assert video.shape == (FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3) and not video.any()
        assert abs(click_frame(audio) - (2.1 - 1.5) * FPS) <= 1
        with pytest.raises(ValueError, match="no_video"):
            load_clip(path)


def test_pad_keeps_the_whole_frame_and_crop_fills_the_square(media_set: MediaSet) -> None:
    path = str(media_set.good["ntsc_2997fps_44k_stereo"])  # 96x72 landscape
    padded, _ = load_clip(path, resize="pad")
    cropped, _ = load_clip(path, resize="crop")
    assert not padded[:, :8].any() and not padded[:, -8:].any() and padded[:, 8:-8].min() > 0
    assert cropped.min() > 0


@pytest.mark.parametrize("reason", ["unreadable", "unreadable_text", "unreadable_truncated", "no_audio", "too_short"])
def test_bad_files_raise_a_clear_error_with_their_reason(media_set: MediaSet, reason: str) -> None:
    path = str(media_set.bad[reason])
    with pytest.raises(MediaError) as raised:
        load_clip(path)
    assert raised.value.reason == Reason(reason.split("_")[0] if reason.startswith("unreadable") else reason)
    assert path in str(raised.value)


def test_failure_in_the_middle_is_a_decode_error_after_the_finished_clips(media_set: MediaSet) -> None:
    path = str(media_set.bad["decode_error"])  # index intact, data cut at 70 %
    _, clips = open_source(path, ClipOptions())
    assert next(clips).video.shape == (FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3)
    with pytest.raises(MediaError, match="decoding failed after 1 clips") as raised:
        next(clips)
    assert raised.value.reason == Reason.DECODE_ERROR


def test_load_clip_past_the_end_is_too_short(media_set: MediaSet) -> None:
    with pytest.raises(ValueError, match="too_short"):
        load_clip(str(media_set.good["pal_25fps_48k_51"]), 3.0)
