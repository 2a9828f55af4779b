"""Audio signals of one clip: level, silence, clipping, and the short-time spectrum that the
onset envelope (sync) and the audio fingerprint share.

Input: the clip's audio as the decoder holds it, mono 16 kHz, int16 [1, AUDIO_SAMPLES] (or
float in [-1, 1)). All measures are relative to full scale, so they mean the same for every
source whatever its original level, rate or layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmdiffusion.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

SILENCE_FLOOR_DB = -120.0
"""What digital silence reads as (log of zero)."""
SILENT_WINDOW_DB = -60.0
"""A 100 ms window quieter than this is silent (about 8 units of int16)."""
CLIPPED_LEVEL = 0.9
"""A sample at or beyond this share of full scale (-0.9 dBFS) counts as clipped. Not 1.0: after
lossy coding and the resampling to 16 kHz, the plateaus of a hard-clipped waveform sit near
0.95 with ringing around them (measured in docs/curation.md), so a test for exactly full scale
misses most clipping, while clean audio rarely reaches 0.9."""
STFT_WINDOW = 512
"""32 ms Hann windows."""
STFT_HOP = SAMPLE_RATE // 100
"""10 ms hops: 10 spectra per 0.1 s video frame interval."""
SPECTRUM_FLOOR_DB = -80.0
"""Power below this (relative to a full-scale sine) is floored, so the noise of lossy codecs in
near-empty bins does not make onsets."""


def as_float_mono(audio: np.ndarray) -> np.ndarray:
    """float64 [L] in [-1, 1) from int16 or float audio of shape [1, L] or [L]."""
    samples = np.asarray(audio).reshape(-1)
    if samples.dtype == np.int16:
        return samples.astype(np.float64) / 32768.0
    return samples.astype(np.float64)


def _db(power: np.ndarray | float, floor_db: float) -> np.ndarray:
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-30)), floor_db)


def rms_db(samples: np.ndarray) -> float:
    return float(_db(np.mean(samples**2), SILENCE_FLOOR_DB))


def silent_window_share(samples: np.ndarray) -> float:
    """Share of the 100 ms (one video frame) windows whose RMS is below SILENT_WINDOW_DB."""
    windows = samples[: samples.size // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME].reshape(-1, SAMPLES_PER_FRAME)
    return float(np.mean(_db(np.mean(windows**2, axis=1), SILENCE_FLOOR_DB) < SILENT_WINDOW_DB))


def clipped_share(samples: np.ndarray) -> float:
    return float(np.mean(np.abs(samples) >= CLIPPED_LEVEL))


@dataclass(frozen=True)
class Spectrogram:
    """Power spectra every STFT_HOP samples, relative to a full-scale sine (1.0 = 0 dB)."""

    power: np.ndarray
    """[spectra, STFT_WINDOW // 2 + 1]"""
    frequencies: np.ndarray
    """Hz of each bin."""
    frame_interval: np.ndarray
    """Which 0.1 s video frame interval each spectrum's centre falls in (0 .. FRAMES-1)."""


_HANN = np.hanning(STFT_WINDOW)
_SINE_POWER = (_HANN.sum() / 2) ** 2
"""|X|² of a full-scale sine in its bin."""


def spectrogram(samples: np.ndarray) -> Spectrogram:
    windows = np.lib.stride_tricks.sliding_window_view(samples, STFT_WINDOW)[::STFT_HOP]
    power = np.abs(np.fft.rfft(windows * _HANN, axis=1)) ** 2 / _SINE_POWER
    centres = (np.arange(len(windows)) * STFT_HOP + STFT_WINDOW / 2) / SAMPLE_RATE
    return Spectrogram(
        power=power,
        frequencies=np.fft.rfftfreq(STFT_WINDOW, 1.0 / SAMPLE_RATE),
        frame_interval=np.floor(centres * FPS).astype(int),
    )


def onset_envelope(spectrum: Spectrogram, intervals: int) -> np.ndarray:
    """Audio onset strength per 0.1 s frame interval ([intervals]): the largest spectral flux
    (mean rise of the log power over the bins, dB) among the spectra centred in it."""
    level = _db(spectrum.power, SPECTRUM_FLOOR_DB)
    flux = np.maximum(np.diff(level, axis=0), 0.0).mean(axis=1)
    envelope = np.zeros(intervals)
    np.maximum.at(envelope, np.clip(spectrum.frame_interval[1:], 0, intervals - 1), flux)
    return envelope
