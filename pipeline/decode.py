"""Streaming PyAV decoding of one media file into aligned clips.

Both streams are placed on one timeline by presentation timestamps (stream start offsets and
edit lists are honoured by the demuxer and show in the frames' timestamps). Time zero is the
container's start plus an optional offset. On that timeline:

- video grid frame g is the source frame on screen at g / FPS (the last frame whose
  presentation time is not after it), so any frame rate, variable ones included, becomes FPS;
- audio sample n is at n / SAMPLE_RATE, after PyAV's resampler made it mono 16 kHz s16.

A clip starting at grid frame g holds grid frames g .. g+FRAMES-1 and audio samples
g*SAMPLES_PER_FRAME .. +AUDIO_SAMPLES, so both cover the same CLIP_SECONDS exactly. The first
clip starts at the first grid frame where both streams have begun. Only the frames and samples
of clips not yet complete are held, so a long file never sits whole in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import av
import numpy as np

from mmdiffusion.constants import AUDIO_SAMPLES, FPS, FRAMES, IMAGE_SIZE, SAMPLE_RATE, SAMPLES_PER_FRAME
from pipeline.errors import MediaError, Reason
from pipeline.faults import InfrastructureError, RetryPolicy, SourceReader, is_infrastructure
from pipeline.frames import ResizeMode, SquareScaler
from pipeline.storage import is_remote, resolve

DEFAULT_RETRY = RetryPolicy()

_TIME_EPSILON = 1e-6
"""Seconds of float error tolerated when comparing a frame's time with a grid time."""

AUDIO_JUMP_SECONDS = 0.0005
"""How far an audio frame's timestamp may disagree with the samples counted since the anchor,
beyond the resolution of the timestamps (one tick of the stream's time base: half a tick of
rounding on the frame, half on the anchor), before the samples are placed anew by the
timestamp: 0.5 ms for sample-exact time bases, 1.5 ms for millisecond ones (Matroska, WebM,
FLV). A smaller gap or overlap is absorbed; a larger one shifts nothing after it."""


@dataclass(frozen=True)
class ClipOptions:
    """How clips are cut from one file."""

    resize: ResizeMode = "pad"
    stride_frames: int = FRAMES
    max_clips: int | None = None
    sr_size: int | None = None
    require_video: bool = True
    start_seconds: float = 0.0
    signals: bool = True
    """Compute each clip's curation signals (`pipeline.signals`) from its decoded frames and samples."""


@dataclass(frozen=True)
class SourceInfo:
    """What the json of each clip says about its source."""

    uri: str
    fps: float | None
    sample_rate: int
    width: int | None
    height: int | None
    duration_seconds: float | None


@dataclass
class Clip:
    index: int
    start_seconds: float
    video: np.ndarray
    """uint8 (FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3)."""
    audio: np.ndarray
    """int16 (1, AUDIO_SAMPLES)."""
    video_sr: np.ndarray | None = None
    """uint8 (FRAMES, sr_size, sr_size, 3) when asked for."""


@dataclass
class _GridFrame:
    """One grid frame: the base-size image and, when asked for, the SR-size one."""

    base: np.ndarray
    sr: np.ndarray | None


class VideoGrid:
    """Turns source frames at any (even variable) rate into frames on the FPS grid."""

    def __init__(self, convert: Callable[[av.VideoFrame], _GridFrame]) -> None:
        self._convert = convert
        self._next_index: int | None = None
        self._shown: av.VideoFrame | None = None
        self._shown_time = 0.0
        self._shown_converted: _GridFrame | None = None

    def push(self, frame: av.VideoFrame, time: float) -> list[tuple[int, _GridFrame]]:
        """Grid frames decided by the arrival of a frame shown from `time` (seconds)."""
        if self._shown is not None and time < self._shown_time:
            return []  # out-of-order timestamp: keep what is on screen
        emitted = self._emit_until(time)
        self._shown, self._shown_time, self._shown_converted = frame, time, None
        if self._next_index is None:
            self._next_index = max(0, math.ceil(time * FPS - _TIME_EPSILON))
        return emitted

    def finish(self, end_time: float) -> list[tuple[int, _GridFrame]]:
        """Grid frames covered by the last frame, which stays on screen until `end_time`."""
        return self._emit_until(end_time)

    def _emit_until(self, time: float) -> list[tuple[int, _GridFrame]]:
        emitted = []
        while self._shown is not None and self._next_index / FPS < time - _TIME_EPSILON:
            if self._shown_converted is None:
                self._shown_converted = self._convert(self._shown)
            emitted.append((self._next_index, self._shown_converted))
            self._next_index += 1
        return emitted


class AudioTrack:
    """Resamples audio frames to mono SAMPLE_RATE s16 and places them on the sample grid.

    Samples run on contiguously from the first frame's timestamp while the frames' own
    timestamps agree with that count; when they jump (a gap, an overlap, a change of sample
    rate or layout) the resampler is flushed and the samples are placed anew from the jumping
    frame's timestamp, so the audio stays where its presentation times put it."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._next_index = 0
        self._anchor_time = 0.0
        self._input_seconds = 0.0
        self._input_format: tuple | None = None

    def push(self, frame: av.AudioFrame | None, time: float = 0.0) -> list[tuple[int, np.ndarray]]:
        """Placed chunks (grid index of the first sample, samples) decided by `frame`; None
        flushes the resampler at the end of the stream."""
        placed = []
        if frame is not None and self._jumps(frame, time):
            placed += self._flush()
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            self._next_index = round(time * SAMPLE_RATE)
            self._anchor_time, self._input_seconds = time, 0.0
            self._input_format = (frame.sample_rate, frame.layout.name, frame.format.name)
        if frame is None:
            return placed + self._flush()
        self._input_seconds += frame.samples / frame.sample_rate
        return placed + self._place(self._resampler.resample(frame))

    def _jumps(self, frame: av.AudioFrame, time: float) -> bool:
        if self._resampler is None or self._input_format != (frame.sample_rate, frame.layout.name, frame.format.name):
            return True
        resolution = float(frame.time_base) if frame.time_base else 0.0
        return abs(time - (self._anchor_time + self._input_seconds)) > AUDIO_JUMP_SECONDS + resolution

    def _flush(self) -> list[tuple[int, np.ndarray]]:
        return self._place(self._resampler.resample(None)) if self._resampler is not None else []

    def _place(self, frames: list[av.AudioFrame]) -> list[tuple[int, np.ndarray]]:
        if not frames:
            return []
        samples = np.concatenate([out.to_ndarray().reshape(-1) for out in frames])
        first = self._next_index
        self._next_index += samples.size
        return [(first, samples)]


@dataclass
class ClipCutter:
    """Collects grid frames and grid samples; hands out each clip once both cover it."""

    options: ClipOptions
    with_video: bool = True
    first_video_index: int | None = None
    first_audio_sample: int | None = None
    frames: dict[int, _GridFrame] = field(default_factory=dict)
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    audio_start: int = 0
    clips_made: int = 0

    def add_frames(self, grid_frames: list[tuple[int, _GridFrame]]) -> None:
        for index, frame in grid_frames:
            if self.first_video_index is None:
                self.first_video_index = index
            self.frames[index] = frame

    def add_samples(self, placed: list[tuple[int, np.ndarray]]) -> None:
        """Put samples at their grid indices: silence fills a gap, an overlap keeps the earlier."""
        for first, samples in placed:
            end = self.audio_start + self.audio.size
            if self.first_audio_sample is not None and first < end:  # overlap
                samples, first = samples[end - first :], end
            if first < 0:  # before time zero
                samples, first = samples[-first:], 0
            if not samples.size:
                continue
            if self.first_audio_sample is None:
                self.first_audio_sample = self.audio_start = first
            gap = np.zeros(first - (self.audio_start + self.audio.size), dtype=np.int16)
            self.audio = np.concatenate([self.audio, gap, samples])

    @property
    def done(self) -> bool:
        return self.options.max_clips is not None and self.clips_made >= self.options.max_clips

    def ready_clips(self) -> Iterator[Clip]:
        start = self._next_start()
        while start is not None and not self.done and self._covers(start):
            yield self._cut(start)
            self._forget_before(start + self.options.stride_frames)
            start = self._next_start()

    def _next_start(self) -> int | None:
        if self.first_audio_sample is None or (self.with_video and self.first_video_index is None):
            return None
        first = math.ceil(self.first_audio_sample / SAMPLES_PER_FRAME)
        if self.with_video:
            first = max(first, self.first_video_index)
        return first + self.clips_made * self.options.stride_frames

    def _covers(self, start: int) -> bool:
        audio_end = start * SAMPLES_PER_FRAME + AUDIO_SAMPLES
        video_ready = not self.with_video or (start + FRAMES - 1) in self.frames
        return video_ready and self.audio_start + self.audio.size >= audio_end

    def _cut(self, start: int) -> Clip:
        offset = start * SAMPLES_PER_FRAME - self.audio_start
        audio = self.audio[offset : offset + AUDIO_SAMPLES].reshape(1, AUDIO_SAMPLES).copy()
        if self.with_video:
            grid = [self.frames[start + i] for i in range(FRAMES)]
            video = np.stack([frame.base for frame in grid])
            video_sr = np.stack([frame.sr for frame in grid]) if self.options.sr_size else None
        else:
            video, video_sr = np.zeros((FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8), None
        clip = Clip(
            index=self.clips_made,
            start_seconds=round(self.options.start_seconds + start / FPS, 6),
            video=video,
            audio=audio,
            video_sr=video_sr,
        )
        self.clips_made += 1
        return clip

    def _forget_before(self, start: int) -> None:
        for index in [index for index in self.frames if index < start]:
            del self.frames[index]
        drop = min(max(0, start * SAMPLES_PER_FRAME - self.audio_start), self.audio.size)
        self.audio = self.audio[drop:]
        self.audio_start += drop


def open_media(uri: str, policy: RetryPolicy) -> tuple[av.container.InputContainer, SourceReader | None]:
    """Open `uri` (local path or s3://) for streaming reads, with the reader of a remote file.

    Raises MediaError(unreadable) when the bytes are there but are no media (or the file is
    missing), InfrastructureError when the storage failed."""
    reader = None
    try:
        if not is_remote(uri):
            return av.open(resolve(uri)[1], mode="r"), None
        fs, path = resolve(uri)
        reader = SourceReader(uri, fs, path, policy)
        return av.open(reader, mode="r"), reader
    except Exception as error:
        if reader is not None:
            reader.close()
        if (reader is not None and reader.failure is not None) or is_infrastructure(error):
            raise as_infrastructure(error, reader, uri) from error
        if isinstance(error, av.error.FFmpegError | OSError):
            raise MediaError(Reason.UNREADABLE, uri, f"cannot open as media ({error})") from error
        raise


def as_infrastructure(error: BaseException, reader: SourceReader | None, uri: str) -> InfrastructureError:
    """The storage failure behind `error`: the reader's own when it had one."""
    if reader is not None and reader.failure is not None:
        return reader.failure
    if isinstance(error, InfrastructureError):
        return error
    return InfrastructureError(f"{uri}: {type(error).__name__}: {error}")


def _storage_cause(error: BaseException) -> BaseException | None:
    """The infrastructure failure `error` is or wraps (a MediaError made from an FFmpeg I/O
    error of a local path), None when it is a failure of the content."""
    for candidate in (error, error.__cause__):
        if candidate is not None and not isinstance(candidate, MediaError) and is_infrastructure(candidate):
            return candidate
    return None


def source_info(container: av.container.InputContainer, uri: str) -> SourceInfo:
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0]
    rate = video.average_rate if video is not None else None
    return SourceInfo(
        uri=uri,
        fps=round(float(rate), 6) if rate else None,
        sample_rate=int(audio.sample_rate or audio.codec_context.sample_rate),
        width=video.codec_context.width if video is not None else None,
        height=video.codec_context.height if video is not None else None,
        duration_seconds=round(container.duration / av.time_base, 6) if container.duration else None,
    )


def _grid_converter(options: ClipOptions) -> Callable[[av.VideoFrame], _GridFrame]:
    base = SquareScaler(IMAGE_SIZE, options.resize)
    sr = SquareScaler(options.sr_size, options.resize) if options.sr_size else None

    def convert(frame: av.VideoFrame) -> _GridFrame:
        return _GridFrame(base=base(frame), sr=sr(frame) if sr else None)

    return convert


def _frame_end(frame: av.VideoFrame, stream: av.video.stream.VideoStream, time: float) -> float:
    """When `frame`, shown from `time`, leaves the screen (its duration, else 1 / frame rate)."""
    if frame.duration and frame.time_base:
        return time + float(frame.duration * frame.time_base)
    rate = stream.average_rate or stream.guessed_rate
    return time + (1.0 / float(rate) if rate else 0.0)


def _chosen_streams(container: av.container.InputContainer, uri: str, require_video: bool):
    """The first video stream (None for an accepted audio-only file) and the first audio stream."""
    if require_video and not container.streams.video:
        raise MediaError(Reason.NO_VIDEO, uri, "no video stream")
    if not container.streams.audio:
        raise MediaError(Reason.NO_AUDIO, uri, "no audio stream")
    video = container.streams.video[0] if container.streams.video else None
    return video, container.streams.audio[0]


def iter_clips(container: av.container.InputContainer, uri: str, options: ClipOptions) -> Iterator[Clip]:
    """Clips of an open container, streaming. Raises MediaError for missing streams, decode
    failures and files without one full clip."""
    video_stream, audio_stream = _chosen_streams(container, uri, options.require_video)
    if video_stream is not None:  # one worker is one core: parallelism comes from workers
        video_stream.codec_context.thread_count = 1
    origin = (container.start_time or 0) / av.time_base + options.start_seconds
    cutter = ClipCutter(options, with_video=video_stream is not None)
    grid = VideoGrid(_grid_converter(options))
    track = AudioTrack()
    if options.start_seconds > 1.0:  # decode from a key frame shortly before the start
        container.seek(int((origin - 1.0) * av.time_base), backward=True)
    last_video_end: float | None = None
    try:
        for packet in container.demux(*(s for s in (video_stream, audio_stream) if s is not None)):
            for frame in packet.decode():
                if frame.time is None:
                    continue
                time = frame.time - origin
                if packet.stream is audio_stream:
                    cutter.add_samples(track.push(frame, time))
                else:
                    cutter.add_frames(grid.push(frame, time))
                    last_video_end = _frame_end(frame, video_stream, time)
            yield from cutter.ready_clips()
            if cutter.done:
                return
        cutter.add_samples(track.push(None))
        if last_video_end is not None:
            cutter.add_frames(grid.finish(last_video_end))
        yield from cutter.ready_clips()
    except av.error.FFmpegError as error:
        raise MediaError(
            Reason.DECODE_ERROR, uri, f"decoding failed after {cutter.clips_made} clips ({error})"
        ) from error
    if cutter.clips_made == 0:
        raise _no_clip_error(cutter, uri, options.start_seconds)


def _no_clip_error(cutter: ClipCutter, uri: str, start_seconds: float) -> MediaError:
    missing = [
        name
        for name, first in (("audio", cutter.first_audio_sample), ("video", cutter.first_video_index))
        if first is None and (name == "audio" or cutter.with_video)
    ]
    if missing and start_seconds == 0:
        return MediaError(Reason.DECODE_ERROR, uri, f"no decodable {' or '.join(missing)} frames")
    return MediaError(
        Reason.TOO_SHORT, uri, f"no {FRAMES / FPS:g} s with both audio and video from {start_seconds:g} s"
    )


def open_source(
    uri: str, options: ClipOptions, policy: RetryPolicy = DEFAULT_RETRY
) -> tuple[SourceInfo, Iterator[Clip]]:
    """Open `uri`, check its streams, and return its info and a lazy stream of its clips.

    Raises MediaError now for unreadable files and missing streams, and while iterating for
    decode failures and files too short for one clip. Raises InfrastructureError, now or
    while iterating, when the storage failed (after the policy's retries), whatever the
    decoder made of the missing bytes."""
    container, reader = open_media(uri, policy)
    try:
        _chosen_streams(container, uri, options.require_video)
        info = source_info(container, uri)
    except Exception as error:
        container.close()
        if reader is not None:
            reader.close()
        if (reader is not None and reader.failure is not None) or _storage_cause(error):
            raise as_infrastructure(_storage_cause(error) or error, reader, uri) from error
        raise

    def clips() -> Iterator[Clip]:
        with container:
            try:
                yield from iter_clips(container, uri, options)
            except Exception as error:
                cause = _storage_cause(error)
                if (reader is not None and reader.failure is not None) or cause is not None:
                    raise as_infrastructure(cause or error, reader, uri) from error
                raise
            finally:
                if reader is not None:
                    reader.close()
        if reader is not None and reader.failure is not None:
            raise reader.failure  # the decoder took the lost bytes for the end of the file

    return info, clips()


def load_clip(
    path: str, start_seconds: float = 0.0, resize: str = "pad", require_video: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The clip of `path` (local or s3://) starting at `start_seconds`, decoded exactly as
    preprocessing decodes.

    Returns video uint8 (FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3) and audio int16 (1, AUDIO_SAMPLES).
    With `require_video=False` an audio-only file (.wav, .m4a, ...) is accepted and its video
    is all zeros. Raises ValueError (a MediaError) naming the file and the problem: unreadable,
    no video, no audio, too short.
    """
    if start_seconds < 0:
        raise ValueError(f"{path}: start_seconds must be >= 0, got {start_seconds}")
    options = ClipOptions(resize=resize, max_clips=1, require_video=require_video, start_seconds=start_seconds)
    _, clips = open_source(path, options)
    clip = next(clips)
    clips.close()
    return clip.video, clip.audio
