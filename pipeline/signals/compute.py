"""All signals of one clip from what the decoder holds in memory (no second pass over the media)."""

from __future__ import annotations

import numpy as np

from pipeline.signals import audio as audio_signals
from pipeline.signals import video as video_signals
from pipeline.signals.fingerprint import audio_fingerprint, video_fingerprint
from pipeline.signals.record import ClipSignals
from pipeline.signals.sync import sync_estimate
from pipeline.signals.video import PictureBox


def compute_signals(video: np.ndarray, audio: np.ndarray, box: PictureBox | None = None) -> ClipSignals:
    """The signals of one clip.

    `video`: uint8 [FRAMES, S, S, 3], the clip's frames at output size; `audio`: int16 (or float
    in [-1, 1)) [1, AUDIO_SAMPLES] at 16 kHz; `box`: where the source's picture lies in the
    frames (`picture_box(source_width, source_height, S, resize)`), the whole frame if None.
    """
    box = box or PictureBox(0, 0, video.shape[1], video.shape[2])
    picture = box.of(video)
    luma = video_signals.luma(picture)
    differences = video_signals.frame_differences(luma)
    black = video_signals.black_frames(luma)
    bars = video_signals.find_bars(luma)
    samples = audio_signals.as_float_mono(audio)
    spectrum = audio_signals.spectrogram(samples)
    level = audio_signals.rms_db(samples)
    lag, strength = sync_estimate(audio_signals.onset_envelope(spectrum, len(differences)), differences)
    return ClipSignals(
        audio_rms_db=level,
        audio_silent_share=audio_signals.silent_window_share(samples),
        audio_clipped_share=audio_signals.clipped_share(samples),
        motion_energy=float(differences.mean()),
        black_frame_share=float(black.mean()),
        frozen_frame_share=float(video_signals.frozen_frames(differences, black).mean()),
        scene_cuts=video_signals.scene_cut_count(picture),
        letterbox_share=bars.share,
        av_sync_lag_s=lag,
        av_sync_strength=strength,
        video_fingerprint=video_fingerprint(bars.inside(luma)),
        audio_fingerprint=audio_fingerprint(spectrum, silent=level < audio_signals.SILENT_WINDOW_DB),
    )
