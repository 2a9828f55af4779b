"""An audio-visual synchrony estimate: where and how strongly the audio onset envelope and the
video motion energy of one clip line up.

Both series live on the clip's 0.1 s frame intervals: motion[i] is the change from frame i to
frame i+1 (what happened in the interval between the two instants those frames show),
onsets[i] the strongest audio onset in the same interval. Their Pearson correlation is taken
at every lag of whole frames within ±MAX_LAG_SECONDS over the overlapping part; the peak gives
the lag (positive: the sound comes after the picture) and its correlation the strength.

What it can tell: whether sudden sounds (impacts, steps, cuts with a sound change, drum hits)
coincide with sudden visual change, and, for clips whose events are few and irregular, by how
many frames the sound is offset. What it cannot: anything finer than 0.1 s; offsets beyond
±0.5 s (they alias to some other lag); whether a steady sound (music bed, hum, wind) belongs
to the picture (there are no onsets to match; the strength is low or null); which of several
regular events match (periodic beats give several equal peaks); and semantics (a cut that
happens to coincide with a beat of an unrelated music track scores as synchronous). With 15
intervals a chance correlation of unrelated series is often 0.3-0.5: use the strength to rank
and to drop the clearly unsynchronised, not as a proof. Details and measurements:
docs/curation.md.
"""

from __future__ import annotations

import numpy as np

from mmdiffusion.constants import FPS

MAX_LAG_SECONDS = 0.5
FLAT_ONSET_DB = 0.5
"""An onset envelope whose peak is below this (dB of mean spectral rise) has no onsets."""
FLAT_MOTION = 0.05
"""A motion series whose range is below this (luma levels) has no motion changes."""


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def sync_estimate(onsets: np.ndarray, motion: np.ndarray) -> tuple[float | None, float | None]:
    """(lag in seconds, correlation) of the peak; (None, None) when either series is flat."""
    if onsets.max() < FLAT_ONSET_DB or np.ptp(motion) < FLAT_MOTION:
        return None, None
    count = min(onsets.size, motion.size)
    onsets, motion = onsets[:count], motion[:count]
    max_lag = round(MAX_LAG_SECONDS * FPS)
    lags = sorted(range(-max_lag, max_lag + 1), key=abs)  # ties go to the smaller offset
    scores = {
        lag: _pearson(onsets[lag:], motion[: count - lag]) if lag >= 0 else _pearson(onsets[:lag], motion[-lag:])
        for lag in lags
    }
    best = max(lags, key=lambda lag: scores[lag])
    return best / FPS, scores[best]
