"""Per-clip curation signals: audio level, silence and clipping; motion, black and frozen
frames, hard cuts and letterbox bars; an audio-visual sync estimate; perceptual fingerprints.

`compute_signals(video, audio, picture_box(...))` gives a `ClipSignals` record; its columns
(names, types, units, ranges) are defined once in `pipeline.signals.record`.
"""

from pipeline.signals.compute import compute_signals
from pipeline.signals.record import SIGNAL_COLUMNS, SIGNAL_SCHEMA, ClipSignals, ColumnSpec
from pipeline.signals.video import PictureBox, picture_box

__all__ = [
    "SIGNAL_COLUMNS",
    "SIGNAL_SCHEMA",
    "ClipSignals",
    "ColumnSpec",
    "PictureBox",
    "compute_signals",
    "picture_box",
]
