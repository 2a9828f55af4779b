"""The one definition of the curation columns: names, types, units, ranges and meanings.

`ClipSignals` is the record of one clip; each field's metadata is its column spec, from which
the manifest's Arrow schema (`SIGNAL_SCHEMA`), the sample json (`ClipSignals.as_json`) and the
documentation table are all derived, so a column is described in exactly one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

VIDEO_FINGERPRINT_BYTES = 18
"""4 sampled frames × 36-bit DCT hash."""
AUDIO_FINGERPRINT_BYTES = 64
"""16 windows of 100 ms × 8 bands × a 4-bit level."""


@dataclass(frozen=True)
class ColumnSpec:
    """How one column is stored and what it means."""

    name: str
    arrow_type: pa.DataType
    unit: str
    range: str
    meaning: str
    nullable: bool = False
    decimals: int | None = None
    """Floats are rounded to this many decimals (compact json, stable across platforms)."""


def _column(arrow_type: pa.DataType, unit: str, range_: str, meaning: str, **options: Any) -> Any:
    """A dataclass field whose metadata is its column spec (the name is filled in below)."""
    return dataclasses.field(
        metadata={"spec": {"arrow_type": arrow_type, "unit": unit, "range": range_, "meaning": meaning, **options}}
    )


@dataclass(frozen=True)
class ClipSignals:
    """Quality and sync signals of one clip, computed from its decoded frames and samples."""

    audio_rms_db: float = _column(
        pa.float32(),
        "dBFS",
        "[-120, 0]",
        "RMS level of the clip's audio relative to full scale (a full-scale square wave is 0, "
        "a full-scale sine -3.01); digital silence is -120",
        decimals=2,
    )
    audio_silent_share: float = _column(
        pa.float32(),
        "share",
        "[0, 1], steps of 1/16",
        "share of the clip's 16 windows of 100 ms whose RMS is below -60 dBFS",
        decimals=4,
    )
    audio_clipped_share: float = _column(
        pa.float32(),
        "share",
        "[0, 1]",
        "share of samples at or beyond 0.9 of full scale (-0.9 dBFS), where the plateaus of "
        "hard-clipped sound pile up after lossy coding and resampling",
        decimals=5,
    )
    motion_energy: float = _column(
        pa.float32(),
        "luma levels (0-255)",
        "[0, 255]",
        "mean absolute luma difference between consecutive frames of the picture (the pipeline's "
        "own padding excluded); 0 for a still picture",
        decimals=3,
    )
    black_frame_share: float = _column(
        pa.float32(),
        "share",
        "[0, 1], steps of 1/16",
        "share of frames in which fewer than 2 % of the picture's pixels have luma above 32",
        decimals=4,
    )
    frozen_frame_share: float = _column(
        pa.float32(),
        "share",
        "[0, 1], steps of 1/15",
        "share of frames 2..16 that repeat the frame before (mean absolute luma difference below "
        "0.5) and are not black",
        decimals=4,
    )
    scene_cuts: int = _column(
        pa.int16(),
        "count",
        "0..15",
        "hard cuts between consecutive frames: the 512-bin colour histogram jumps and the picture "
        "does not come back in the next frame (a one-frame flash is not a cut)",
    )
    letterbox_share: float = _column(
        pa.float32(),
        "share",
        "[0, 1)",
        "share of the picture covered by dark bars (mean luma below 24 in every frame) along its "
        "edges: letterbox or pillarbox burnt into the source, not the padding `--resize pad` adds; "
        "0 for an all-dark clip",
        decimals=4,
    )
    av_sync_lag_s: float | None = _column(
        pa.float32(),
        "seconds",
        "[-0.5, 0.5], steps of 0.1; null",
        "lag of the peak cross-correlation between the audio onset envelope and the motion "
        "energy, positive when the sound comes after the picture; null when either is flat",
        nullable=True,
        decimals=2,
    )
    av_sync_strength: float | None = _column(
        pa.float32(),
        "Pearson r",
        "[-1, 1]; null",
        "correlation at that lag (see docs/curation.md for what it can and cannot tell); null "
        "when either envelope is flat",
        nullable=True,
        decimals=4,
    )
    video_fingerprint: bytes | None = _column(
        pa.binary(VIDEO_FINGERPRINT_BYTES),
        "bits",
        f"{VIDEO_FINGERPRINT_BYTES} bytes; null",
        "36-bit DCT hash of each of frames 1, 6, 11 and 16, inside any letterbox bars (json: hex); "
        "null when all four are flat",
        nullable=True,
    )
    audio_fingerprint: bytes | None = _column(
        pa.binary(AUDIO_FINGERPRINT_BYTES),
        "3 dB codes",
        f"{AUDIO_FINGERPRINT_BYTES} bytes; null",
        "band levels of the 16 windows of 100 ms in 8 bands, 4-bit codes of 3 dB (json: hex); null "
        "for a silent clip (RMS below -60 dBFS)",
        nullable=True,
    )

    def as_row(self) -> dict[str, Any]:
        """The clip's manifest columns (fingerprints as bytes)."""
        return {spec.name: _rounded(getattr(self, spec.name), spec) for spec in SIGNAL_COLUMNS}

    def as_json(self) -> dict[str, Any]:
        """The clip's fields of the sample json (fingerprints as hex strings)."""
        return {name: value.hex() if isinstance(value, bytes) else value for name, value in self.as_row().items()}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ClipSignals:
        """The record from a manifest row or a sample json (hex fingerprints are accepted)."""
        values = {}
        for spec in SIGNAL_COLUMNS:
            value = row[spec.name]
            values[spec.name] = bytes.fromhex(value) if isinstance(value, str) else value
        return cls(**values)


def _rounded(value: Any, spec: ColumnSpec) -> Any:
    if value is None or spec.decimals is None:
        return value
    return round(float(value), spec.decimals)


SIGNAL_COLUMNS: tuple[ColumnSpec, ...] = tuple(
    ColumnSpec(name=field.name, **field.metadata["spec"]) for field in dataclasses.fields(ClipSignals)
)
SIGNAL_SCHEMA = pa.schema([pa.field(spec.name, spec.arrow_type, nullable=spec.nullable) for spec in SIGNAL_COLUMNS])
