"""Audio-visual synchrony score: do the sound's events happen when the picture's do?

Built on the curation sync signal (`pipeline.signals`): per 0.1 s frame interval, the audio
onset envelope (largest spectral flux) and the video motion energy (mean absolute luma
change). The curation estimate searches for the best lag within ±0.5 s, which tells *by how
much* a clip is offset but scores an offset clip as strongly as an aligned one, and with only
15 intervals finds peaks of 0.7-0.9 for unrelated sound and picture. Synchrony is about lag
zero, so the score here is the Pearson correlation *at lag zero* of the two envelopes, each
smoothed with the kernel (½, 1, ½): an event one frame off (100 ms, about where people start to
notice) keeps partial credit, two or more frames off reads as unrelated. A clip with no
onsets or no motion (`pipeline.signals.sync` flat thresholds) has no evidence of synchrony and
scores 0.

The score of a set is the mean over its clips: `sync` for the generated clips,
`sync_reference` for the reference clips (what real data reaches), and `sync_mismatched` for
the reference clips with each one's audio paired with the next clip's video (what unrelated
sound and picture reach). Measured on test media with known events: aligned 0.98, sound
100 ms late 0.47, 200 ms late -0.2, another clip's sound -0.25 to -0.3 (docs/evaluation.md).
"""

from __future__ import annotations

import numpy as np

from pipeline.signals.audio import as_float_mono, onset_envelope, spectrogram
from pipeline.signals.sync import FLAT_MOTION, FLAT_ONSET_DB
from pipeline.signals.video import frame_differences, luma

SMOOTHING = np.array([0.5, 1.0, 0.5])
"""±1 frame interval of tolerance."""
SIGNAL = "onset-motion"
"""The provenance name of the score's features."""
FEATURES = "spectral-flux onsets vs luma motion per 0.1 s, smoothed (0.5, 1, 0.5), r at lag 0"


def envelopes(video: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(audio onset envelope, motion energy) of one clip on its frame intervals: video uint8
    [F, H, W, 3], audio int16 or float [1, L]."""
    motion = frame_differences(luma(video))
    return onset_envelope(spectrogram(as_float_mono(audio)), len(motion)), motion


def clip_sync(video: np.ndarray, audio: np.ndarray) -> float:
    """The synchrony score of one clip, in [-1, 1]; 0 when either envelope is flat."""
    onsets, motion = envelopes(video, audio)
    if onsets.max() < FLAT_ONSET_DB or np.ptp(motion) < FLAT_MOTION:
        return 0.0
    a = np.convolve(onsets, SMOOTHING, mode="same")
    b = np.convolve(motion, SMOOTHING, mode="same")
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def sync_scores(video: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """Per clip: video uint8 [N, F, H, W, 3], audio [N, 1, L] → [N]."""
    return np.array([clip_sync(clip_video, clip_audio) for clip_video, clip_audio in zip(video, audio, strict=True)])


def sync_metrics(
    generated_video: np.ndarray, generated_audio: np.ndarray, reference_video: np.ndarray, reference_audio: np.ndarray
) -> dict[str, float]:
    """`sync` of the generated pairs, with `sync_reference` and `sync_mismatched` (reference
    audio of clip i + 1 with the video of clip i) beside it; needs 2 reference clips."""
    if len(reference_video) < 2:
        raise ValueError(f"sync needs at least 2 reference clips (to mismatch them), got {len(reference_video)}")
    return {
        "sync": float(sync_scores(generated_video, generated_audio).mean()),
        "sync_reference": float(sync_scores(reference_video, reference_audio).mean()),
        "sync_mismatched": float(sync_scores(reference_video, np.roll(reference_audio, 1, axis=0)).mean()),
    }
