"""Fixtures of the curation tests: media with known properties, decoded as preprocessing does,
and their signals."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.signals import SIGNAL_SCHEMA, ClipSignals, compute_signals, picture_box
from tests.fixtures.curation_media import CurationMedia, curation_media  # noqa: F401

MANIFEST_BASE_SCHEMA = pa.schema(
    [("key", pa.string()), ("source", pa.string()), ("clip_index", pa.int32()), ("start_seconds", pa.float64())]
)


def signals_of(media: CurationMedia, name: str, resize: str = "pad") -> ClipSignals:
    clip = media.clip(name, resize)
    box = picture_box(clip.source_width, clip.source_height, clip.video.shape[1], resize)
    return compute_signals(clip.video, clip.audio, box)


@pytest.fixture(scope="session")
def clip_signals(curation_media: CurationMedia) -> dict[str, ClipSignals]:  # noqa: F811
    """Every test clip's signals, decoded with `--resize pad` (the default)."""
    return {name: signals_of(curation_media, name) for name in curation_media.paths}


def manifest_of(media: CurationMedia, signals: dict[str, ClipSignals]) -> pa.Table:
    """A manifest as preprocessing writes it: one row per clip, the signals as columns; the
    key is the clip's name, so that tests read like the media they test."""
    rows = [
        {"key": name, "source": str(media.paths[name]), "clip_index": 0, "start_seconds": 0.0, **record.as_row()}
        for name, record in sorted(signals.items())
    ]
    return pa.Table.from_pylist(rows, schema=pa.schema([*MANIFEST_BASE_SCHEMA, *SIGNAL_SCHEMA]))
