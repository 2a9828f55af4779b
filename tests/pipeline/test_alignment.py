"""Alignment proven to the millisecond: in every clip the pipeline makes, each click lies within
2 ms of where the source has it, and each flash shows in exactly the output frames whose
0.1 s instants fall on the flash in the source.

The test media are built so that both measurements are exact enough:

- A click is a 2 ms step to 0.8 whose first high sample is a whole source sample; its onset
  (the half-height crossing of the band-limited step) is known exactly at any rate
  (`click_onset`), and is found in the 16 kHz output by the same crossing, interpolated
  between samples: resolution well under 0.1 ms (measured errors are about 0.01 ms).
- A flash whitens the source frames that overlap [event, event + 50 ms). Every event sits
  20-30 ms before a 0.1 s instant, so that instant falls well inside the white frames and
  its neighbours well outside: the output frames that must be white are determined (every
  instant is checked to be at least MIN_MARGIN from any change of picture).
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest

from mmdiffusion.constants import AUDIO_SAMPLES, CLIP_SECONDS, FPS, FRAMES, SAMPLE_RATE
from pipeline.decode import Clip, ClipOptions, load_clip, open_source
from tests.fixtures.media import CLICK_LEVEL, CLICK_SECONDS, MediaSpec, click_onset, flash_intervals, write_media

AUDIO_TOLERANCE_SECONDS = 0.002
VIDEO_TOLERANCE_SECONDS = 0.5 / FPS
MIN_MARGIN = Fraction(1, 100)
"""Least distance between an output instant and a change of the source picture, so that the
frame the pipeline must pick there is not decided by rounding."""

INSTANTS = (0.7, 1.3, 2.4, 3.0)
EVENTS = tuple(round(instant - lead, 3) for instant, lead in zip(INSTANTS, (0.02, 0.025, 0.03, 0.02), strict=True))
"""Each event 20-30 ms before an instant: two in each of the two clips of every file."""

SMALL = {"width": 48, "height": 32, "seconds": 3.8, "events": EVENTS}

ALIGNMENT_MEDIA: tuple[MediaSpec, ...] = (
    MediaSpec("ntsc_2997fps_44k_stereo", fps=Fraction(30000, 1001), sample_rate=44_100, **SMALL),
    MediaSpec("pal_25fps_48k_51", fps=Fraction(25), sample_rate=48_000, layout="5.1", **SMALL),
    MediaSpec("film_24fps_22k_mono", fps=Fraction(24), sample_rate=22_050, layout="mono", **SMALL),
    MediaSpec("fast_60fps_48k", fps=Fraction(60), sample_rate=48_000, **SMALL),
    MediaSpec(
        "web_30fps_16k_pcm_mov",
        fps=Fraction(30),
        sample_rate=16_000,
        layout="mono",
        pcm_audio=True,
        **SMALL,
        container="mov",
    ),
    MediaSpec("aac_priming_mkv_50fps_32k", fps=Fraction(50), sample_rate=32_000, container="mkv", **SMALL),
    MediaSpec("phone_8k_mono_25fps", fps=Fraction(25), sample_rate=8_000, layout="mono", **SMALL),
    MediaSpec("variable_rate_mp4_48k", fps=Fraction(27), sample_rate=48_000, variable_rate=True, **SMALL),
    MediaSpec(
        "variable_rate_mkv_44k", fps=Fraction(27), sample_rate=44_100, variable_rate=True, container="mkv", **SMALL
    ),
    MediaSpec("late_video_mp4_25fps", fps=Fraction(25), sample_rate=48_000, video_start=0.36, **SMALL),
    MediaSpec("late_video_mkv_2997fps", fps=Fraction(30000, 1001), video_start=0.3003, container="mkv", **SMALL),
    MediaSpec(
        "late_video_variable_rate_mp4",
        fps=Fraction(27),
        sample_rate=48_000,
        variable_rate=True,
        video_start=0.37,
        **SMALL,
    ),
    MediaSpec("late_audio_mp4_16k", fps=Fraction(25), sample_rate=16_000, layout="mono", audio_start=0.43, **SMALL),
    MediaSpec(
        "edit_list_cuts_video_preroll",
        fps=Fraction(25),
        sample_rate=48_000,
        edit_list_trim=0.2,
        **{**SMALL, "events": (-0.1, *EVENTS)},
    ),
    MediaSpec(
        "pcm_10ms_gap_mkv",
        fps=Fraction(25),
        sample_rate=48_000,
        pcm_audio=True,
        audio_frame_samples=256,
        audio_gap=(1.0, 1.011),
        container="mkv",
        **SMALL,
    ),
)
"""Listed rates and layouts; AAC priming (every AAC file: skipped by an MP4 edit list, by
Matroska's codec delay); an explicit edit list that cuts 0.2 s of video (with a flash in it)
off the start; late video (MP4 empty edit, Matroska timestamps) and late audio; variable frame
rates; a 10.7 ms hole in PCM audio whose timestamps say so (a Matroska timestamp is only
exact to 1 ms)."""
BY_NAME = {spec.name: spec for spec in ALIGNMENT_MEDIA}


@pytest.fixture(scope="module")
def media_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[[MediaSpec], str]:
    """The file of a spec, encoded on first use (a tenth of a second or so each)."""
    folder = tmp_path_factory.mktemp("alignment")
    written: dict[str, str] = {}

    def path_of(spec: MediaSpec) -> str:
        if spec.name not in written:
            written[spec.name] = str(write_media(folder / spec.filename, spec))
        return written[spec.name]

    return path_of


def click_onsets(audio: np.ndarray, edge_seconds: float = 0.005) -> list[float]:
    """Onsets of the clicks in a clip's audio, seconds from its start, leaving out clicks
    within `edge_seconds` of either end: where each rises through half its plateau,
    interpolated linearly between the two samples around the crossing."""
    signal = audio[0].astype(np.float64) / 32768
    above = signal > CLICK_LEVEL / 4
    rises = np.flatnonzero(above[1:] & ~above[:-1]) + 1
    click, edge = round(CLICK_SECONDS * SAMPLE_RATE), round(edge_seconds * SAMPLE_RATE)
    onsets: list[float] = []
    for rise in rises:
        if not edge <= rise <= signal.size - edge - click:
            continue
        if onsets and rise <= onsets[-1] * SAMPLE_RATE + click:
            continue  # a wiggle on the plateau of the click just found
        half = np.median(signal[rise + click // 4 : rise + click - click // 4]) / 2
        below = rise - 1
        while signal[below] >= half:
            below -= 1
        fraction = (half - signal[below]) / (signal[below + 1] - signal[below])
        onsets.append((below + fraction) / SAMPLE_RATE)
    return onsets


def expected_white_frames(spec: MediaSpec, clip_start: float) -> list[int]:
    """Output frames whose instant falls on a flash of the source, each instant checked to be
    at least MIN_MARGIN from any start or end of a flash (so rounding cannot decide)."""
    intervals = flash_intervals(spec)
    white = []
    for index in range(FRAMES):
        instant = Fraction(str(clip_start)) + Fraction(index, FPS)
        margin = min(abs(instant - edge) for interval in intervals for edge in interval)
        assert margin >= MIN_MARGIN, (
            f"test media: output instant {float(instant)} s is {float(margin)} s from a flash edge"
        )
        if any(start <= instant < end for start, end in intervals):
            white.append(index)
    return white


def white_frames(video: np.ndarray) -> list[int]:
    brightness = video.reshape(FRAMES, -1).mean(axis=1)
    return [int(index) for index in np.flatnonzero(brightness > 150)]


def click_errors(spec: MediaSpec, clip_start: float, audio: np.ndarray) -> list[float]:
    """Measured minus true onset of each click in the clip, seconds; every click is found."""
    assert audio.shape == (1, AUDIO_SAMPLES)
    edge = 0.005  # clicks this near an end of the clip are left out
    inside = [e for e in spec.events if edge < click_onset(spec, e) - clip_start < CLIP_SECONDS - CLICK_SECONDS - edge]
    measured = click_onsets(audio, edge)
    assert len(measured) == len(inside), f"clicks found at {measured} s for events {inside} of a clip at {clip_start}"
    return [got - (click_onset(spec, e) - clip_start) for got, e in zip(measured, inside, strict=True)]


def flash_errors(spec: MediaSpec, clip_start: float, video: np.ndarray) -> list[float]:
    """Shown minus expected time of each white output frame, seconds (0 or a multiple of 0.1)."""
    expected, white = expected_white_frames(spec, clip_start), white_frames(video)
    assert len(white) == len(expected), f"clip at {clip_start}: white frames {white}, expected {expected}"
    return [(got - want) / FPS for got, want in zip(white, expected, strict=True)]


def assert_aligned(
    spec: MediaSpec, clip_start: float, video: np.ndarray, audio: np.ndarray, every_clip_has_events: bool = True
) -> None:
    """Clicks within AUDIO_TOLERANCE_SECONDS, flashes within half an output frame (that is, in
    exactly the expected frames), so the click-to-flash offset is the source's within both."""
    clicks, flashes = click_errors(spec, clip_start, audio), flash_errors(spec, clip_start, video)
    if every_clip_has_events:
        assert clicks and flashes, f"test media: the clip at {clip_start} s has no click or no flash"
    assert all(abs(error) <= AUDIO_TOLERANCE_SECONDS for error in clicks), f"clip at {clip_start} s: {clicks} s"
    assert all(abs(error) <= VIDEO_TOLERANCE_SECONDS for error in flashes), f"clip at {clip_start} s: {flashes} s"


def assert_media_would_show_half_a_frame(spec: MediaSpec) -> None:
    """The frame checks prove a video error under half an output frame only if a delay or an
    advance of that much would take some 0.1 s instant off its flash."""
    instants = [Fraction(index, FPS) for index in range(round(spec.seconds * FPS))]
    on_flash = [
        (instant - start, end - instant)
        for instant in instants
        for start, end in flash_intervals(spec)
        if start <= instant < end
    ]
    assert min(delay for delay, _ in on_flash) < VIDEO_TOLERANCE_SECONDS, "test media: flashes start too early"
    assert min(advance for _, advance in on_flash) < VIDEO_TOLERANCE_SECONDS, "test media: flashes end too late"


@pytest.mark.parametrize("spec", ALIGNMENT_MEDIA, ids=lambda spec: spec.name)
def test_clicks_within_2_ms_and_flashes_in_the_right_frames(spec: MediaSpec, media_path) -> None:
    assert_media_would_show_half_a_frame(spec)
    clips: list[Clip] = list(open_source(media_path(spec), ClipOptions())[1])
    assert len(clips) == 2
    for clip in clips:
        assert_aligned(spec, clip.start_seconds, clip.video, clip.audio)


@pytest.mark.parametrize(
    "spec", [BY_NAME["ntsc_2997fps_44k_stereo"], BY_NAME["late_video_mp4_25fps"]], ids=lambda spec: spec.name
)
def test_every_overlapping_clip_is_cut_in_step(spec: MediaSpec, media_path) -> None:
    """Clips every 0.3 s: each start cuts audio and video at a different place of the source."""
    clips = list(open_source(media_path(spec), ClipOptions(stride_frames=3))[1])
    assert len(clips) >= 6
    for clip in clips:
        assert_aligned(spec, clip.start_seconds, clip.video, clip.audio, every_clip_has_events=False)


@pytest.mark.parametrize("start", [0.605, 1.505, 2.005])
def test_load_clip_between_grid_points_and_after_a_seek(start: float, media_path) -> None:
    """Starts past 1 s seek to a key frame first; starts off the 0.1 s grid move both grids."""
    spec = BY_NAME["ntsc_2997fps_44k_stereo"]
    video, audio = load_clip(media_path(spec), start)
    assert_aligned(spec, start, video, audio)


@pytest.mark.parametrize("container", ["wav", "m4a"])
def test_audio_only_files_keep_their_clicks_in_place(container: str, media_path) -> None:
    spec = MediaSpec(
        f"voice_{container}",
        sample_rate=44_100,
        layout="mono",
        video=False,
        container=container,
        seconds=3.8,
        events=EVENTS,
    )
    _, audio = load_clip(media_path(spec), 1.6, require_video=False)
    errors = click_errors(spec, 1.6, audio)
    assert len(errors) == 2 and max(map(abs, errors)) <= AUDIO_TOLERANCE_SECONDS, errors
