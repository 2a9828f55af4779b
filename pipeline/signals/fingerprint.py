"""Compact perceptual fingerprints of a clip's picture and sound, and their distances.

Video (18 bytes): a 36-bit DCT hash (pHash) of each of 4 frames (1, 6, 11, 16): the picture's
luma inside any letterbox bars, area-averaged to 32×32, its 6×6 lowest DCT coefficients, one
bit each for "above the median of the non-constant ones". Low frequencies survive
re-encoding, rescaling, letterboxing and a few percent of cropping, and the median makes the
hash blind to brightness and contrast. A flat frame (nothing to hash) gets all-zero bits; a
clip whose 4 frames are all flat has no video fingerprint. Distance: differing bits.

Audio (64 bytes): the power per Hz in 8 log-spaced bands between 100 Hz and 8 kHz in each of
the 16 windows of 100 ms, in dB relative to the clip's 90th-percentile cell, quantised to
3 dB steps in 4 bits (code 15: 42 dB or more below it). Spectral and temporal shape survive
lossy coding, resampling and level changes. A silent clip has no audio fingerprint.
Distance: mean absolute level difference (dB) over the cells where either clip is above the
floor. Bit hashes of adjacent bands were tried first: on noise-like sound (flat spectra) their
bits are coin flips that a re-encode redraws (docs/curation.md).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mmdiffusion.constants import FRAMES, SAMPLE_RATE
from pipeline.signals.audio import Spectrogram
from pipeline.signals.record import AUDIO_FINGERPRINT_BYTES, VIDEO_FINGERPRINT_BYTES

HASH_SIDE = 32
"""Side of the area-averaged image whose DCT is hashed."""
HASH_COEFFICIENTS = 6
"""6×6 lowest DCT coefficients: 36 bits per frame."""
HASHED_FRAMES = tuple(range(0, FRAMES, 5))
"""Frames 1, 6, 11, 16 (0-based 0, 5, 10, 15)."""
FRAME_BITS = HASH_COEFFICIENTS**2
FLAT_FRAME_STD = 2.0
"""Luma standard deviation (levels) below which a frame is flat."""
AUDIO_BAND_EDGES_HZ = np.geomspace(100.0, 8000.0, 9)
AUDIO_STEP_DB = 3.0
AUDIO_FLOOR_CODE = 15
"""4-bit codes: 0 is 3 dB or more above the reference cell, 15 is 42 dB or more below it."""
AUDIO_REFERENCE_PERCENTILE = 90

assert len(HASHED_FRAMES) * FRAME_BITS == VIDEO_FINGERPRINT_BYTES * 8
assert FRAMES * (len(AUDIO_BAND_EDGES_HZ) - 1) == AUDIO_FINGERPRINT_BYTES * 2


@lru_cache(maxsize=128)
def _area_matrix(size: int, out: int) -> np.ndarray:
    """[out, size]: row j averages the input over [j, j+1) * size / out (fractional edges)."""
    edges = np.arange(out + 1) * size / out
    starts, ends = edges[:-1, None], edges[1:, None]
    pixels = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(ends, pixels + 1) - np.maximum(starts, pixels), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


@lru_cache(maxsize=128)
def _low_dct(size: int) -> np.ndarray:
    """[HASH_COEFFICIENTS, size]: area-averaging to HASH_SIDE followed by the lowest DCT-II rows."""
    n = np.arange(HASH_SIDE)
    k = np.arange(HASH_COEFFICIENTS)[:, None]
    dct = np.cos(np.pi * (2 * n + 1) * k / (2 * HASH_SIDE))
    return (dct @ _area_matrix(size, HASH_SIDE)).astype(np.float32)


def frame_hash(luma_frame: np.ndarray) -> np.ndarray:
    """FRAME_BITS bits (bool) of one frame's luma [H, W]; all False for a flat frame."""
    if luma_frame.std() < FLAT_FRAME_STD:
        return np.zeros(FRAME_BITS, dtype=bool)
    height, width = luma_frame.shape
    coefficients = (_low_dct(height) @ luma_frame @ _low_dct(width).T).reshape(-1)
    return coefficients > np.median(coefficients[1:])  # the DC term [0] says only the brightness


def video_fingerprint(luma_frames: np.ndarray) -> bytes | None:
    """From the clip's luma [FRAMES, H, W] (the picture only: no padding, no bars)."""
    frames = [luma_frames[index] for index in HASHED_FRAMES]
    if all(frame.std() < FLAT_FRAME_STD for frame in frames):
        return None
    return np.packbits(np.concatenate([frame_hash(frame) for frame in frames])).tobytes()


@lru_cache(maxsize=4)
def _band_starts(bins: int) -> tuple[np.ndarray, np.ndarray]:
    """First spectrum bin of each band (the bands are contiguous) and the bins per band."""
    frequencies = np.fft.rfftfreq(2 * (bins - 1), 1.0 / SAMPLE_RATE)
    band = np.digitize(frequencies, AUDIO_BAND_EDGES_HZ) - 1
    bands = np.arange(len(AUDIO_BAND_EDGES_HZ))  # one past the last band: where the sum stops
    starts = np.searchsorted(band, bands)
    return starts, np.diff(starts)


def band_levels(spectrum: Spectrogram) -> np.ndarray:
    """dB [FRAMES windows of 100 ms, bands]: mean power per Hz of each band in each window.
    Sums over contiguous runs (reduceat), no matrix products: small products would start
    BLAS threads, which cost more than the work here."""
    starts, widths = _band_starts(spectrum.power.shape[1])
    per_band = np.add.reduceat(spectrum.power[:, : starts[-1]], starts[:-1], axis=1) / widths
    window = np.clip(spectrum.frame_interval, 0, FRAMES - 1)
    window_starts = np.searchsorted(window, np.arange(FRAMES))
    per_window = np.add.reduceat(per_band, window_starts, axis=0) / np.diff(np.r_[window_starts, len(window)])[:, None]
    return 10 * np.log10(np.maximum(per_window, 1e-30))


def audio_fingerprint(spectrum: Spectrogram, silent: bool) -> bytes | None:
    if silent:
        return None
    levels = band_levels(spectrum).reshape(-1)
    below = np.percentile(levels, AUDIO_REFERENCE_PERCENTILE) - levels
    codes = np.clip(np.rint(below / AUDIO_STEP_DB) + 1, 0, AUDIO_FLOOR_CODE).astype(np.uint8)
    return (codes[0::2] << 4 | codes[1::2]).tobytes()


def audio_codes(fingerprints: np.ndarray) -> np.ndarray:
    """uint8 [..., AUDIO_FINGERPRINT_BYTES] -> the 4-bit level codes [..., 2 * bytes]."""
    shape = (*fingerprints.shape[:-1], 2 * fingerprints.shape[-1])  # explicit: no pair to compare is fine too
    return np.stack([fingerprints >> 4, fingerprints & 0x0F], axis=-1).reshape(shape)


def audio_distance_db(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute level difference (dB) of audio fingerprints (uint8 [..., bytes]) over the
    cells where either is above the floor; 0 where both are floor everywhere."""
    codes_a, codes_b = audio_codes(a).astype(np.int16), audio_codes(b).astype(np.int16)
    counted = (codes_a < AUDIO_FLOOR_CODE) | (codes_b < AUDIO_FLOOR_CODE)
    total = (np.abs(codes_a - codes_b) * counted).sum(axis=-1)
    return AUDIO_STEP_DB * total / np.maximum(counted.sum(axis=-1), 1)


def video_distance_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing bits of video fingerprints (uint8 [..., bytes])."""
    return np.bitwise_count(a ^ b).sum(axis=-1).astype(np.int64)


def as_array(fingerprint: bytes) -> np.ndarray:
    return np.frombuffer(fingerprint, dtype=np.uint8)
