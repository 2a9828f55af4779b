"""Written clips open in a real decoder with the clip geometry; previews are real PNGs."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from mmdiffusion import media
from mmdiffusion.constants import AUDIO_SAMPLES, CLIP_SECONDS, FPS, FRAMES, IMAGE_SIZE, SAMPLE_RATE


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, np.ndarray]:
    """A moving gradient and a 440 Hz tone."""
    x = np.linspace(0, 255, IMAGE_SIZE, dtype=np.float32)
    rows = [np.roll(x, 4 * f)[None, :].repeat(IMAGE_SIZE, 0) for f in range(FRAMES)]
    frames = np.stack([np.stack([row] * 3, axis=-1) for row in rows])
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(AUDIO_SAMPLES) / SAMPLE_RATE)
    return frames.astype(np.uint8), (tone * media.AUDIO_SCALE).astype(np.int16)[None]


def test_mp4_opens_with_both_streams_16_frames_and_the_clip_audio_duration(tmp_path, clip):
    frames, audio = clip
    path = media.write_mp4(tmp_path / "clip.mp4", frames, audio)
    with av.open(str(path)) as container:
        video_stream, audio_stream = container.streams.video[0], container.streams.audio[0]
        assert video_stream.codec_context.name == "h264"
        assert video_stream.average_rate == FPS
        assert (video_stream.width, video_stream.height) == (IMAGE_SIZE, IMAGE_SIZE)
        assert audio_stream.sample_rate == SAMPLE_RATE and audio_stream.channels == 1
        assert float(audio_stream.duration * audio_stream.time_base) == pytest.approx(CLIP_SECONDS)
        decoded_frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    with av.open(str(path)) as container:
        decoded_audio = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)])
    assert len(decoded_frames) == FRAMES
    assert np.abs(decoded_frames[5].astype(int) - frames[5]).mean() < 3
    assert len(decoded_audio) == AUDIO_SAMPLES
    tone = audio[0] / media.AUDIO_SCALE
    assert np.corrcoef(decoded_audio, tone)[0, 1] > 0.99


def test_previews_are_pngs_of_the_frames_and_the_sound(tmp_path, clip):
    frames, audio = clip
    sheet = Image.open(media.write_contact_sheet(tmp_path / "frames.png", frames, columns=8))
    plot = Image.open(media.write_audio_plot(tmp_path / "audio.png", audio))
    assert sheet.format == plot.format == "PNG"
    assert sheet.width > sheet.height  # 8 columns, 2 rows
    assert len(np.unique(np.asarray(plot.convert("L")))) > 16  # drawn, not blank


def test_conversions_round_trip_the_model_range():
    video = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    frames = media.video_to_uint8(video)
    assert frames.shape == (2, 4, 4, 3) and frames.dtype == np.uint8
    torch.testing.assert_close(media.video_from_uint8(frames), video, atol=1 / 127.5, rtol=0)
    audio = torch.tensor([[-1.0, -0.5, 0.0, 0.5, 0.99997, 1.5]])
    samples = media.audio_to_int16(audio)
    assert samples.tolist() == [[-32768, -16384, 0, 16384, 32767, 32767]]
    torch.testing.assert_close(media.audio_from_int16(samples)[0, :4], audio[0, :4])


def test_bad_arrays_are_refused_with_their_layout(tmp_path, clip):
    frames, audio = clip
    with pytest.raises(ValueError, match="frames must be uint8"):
        media.write_mp4(tmp_path / "x.mp4", frames.astype(np.float32), audio)
    with pytest.raises(ValueError, match="audio must be int16"):
        media.write_mp4(tmp_path / "x.mp4", frames, audio[0])
