"""Reference clips for an evaluation: the first decodable clips of one split of a dataset's shards.

The split (`pipeline.shard_format.DataSplit`) is by source video: by default the held-out part
with the share the evaluated model was trained with (`split_for`), so no evaluated clip comes
from a source the model saw. Clips are read in shard order from WebDataset shards (local or `s3://`) through
`pipeline.shard_format`; a sample that cannot be decoded is skipped and named in the result,
and the dataset's manifest digest says which exact data it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from mmdiffusion.bundle import ModelBundle
from mmdiffusion.constants import AUDIO_SAMPLES, FRAMES, IMAGE_SIZE
from mmdiffusion.media import audio_from_int16
from pipeline.shard_format import (
    DEFAULT_HELD_OUT_SHARE,
    DataError,
    DataSplit,
    SampleSpec,
    Split,
    decode_sample,
    list_shards,
    manifest_info,
    read_samples,
)

HELD_OUT = DataSplit("held_out")
"""The default: the held-out part with the default share."""
CLIP_SPEC = SampleSpec(frames=FRAMES, image_size=IMAGE_SIZE, audio_length=AUDIO_SAMPLES)
"""The metrics' feature networks take clips of the released geometry."""


class EvaluationDataError(DataError):
    """The reference data cannot be used for an evaluation."""


@dataclass
class ReferenceClips:
    """Held-out clips: video uint8 [N, F, H, W, 3], audio float32 [N, 1, L] in [-1, 1]."""

    video: np.ndarray
    audio: np.ndarray
    keys: list[str]
    data_uri: str
    manifest_sha256: str = "missing"
    """Digest of the dataset's manifest.parquet, "missing" when it has none."""
    skipped: list[str] = field(default_factory=list)
    split: DataSplit = HELD_OUT
    """The part of the dataset the clips were read from."""

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def digest(self) -> str:
        """Identifies exactly which clips were used (their keys, in order)."""
        return hashlib.sha256("\n".join(self.keys).encode()).hexdigest()[:16]


def split_for(part: Split, bundle: ModelBundle | None = None, held_out_share: float | None = None) -> DataSplit:
    """The `part` of the data split with the share `held_out_share`, else the one the model
    of `bundle` was trained with, else the default share."""
    if held_out_share is None and bundle is not None:
        held_out_share = bundle.provenance.held_out_share
    return DataSplit(part, DEFAULT_HELD_OUT_SHARE if held_out_share is None else held_out_share)


def read_reference_clips(data_uri: str, limit: int, split: DataSplit = HELD_OUT) -> ReferenceClips:
    """The first `limit` decodable clips of `split` of the dataset, in shard order."""
    try:
        shards = list_shards(data_uri, purpose="evaluation")
    except DataError as error:
        raise EvaluationDataError(str(error)) from None
    problems: list[str] = []
    videos, audios, keys = [], [], []
    for sample in _samples(shards, problems):
        if not split.keeps(str(sample.get("__key__", ""))):
            continue
        try:
            arrays = decode_sample(sample, CLIP_SPEC)
        except ValueError as error:
            problems.append(f"{sample.get('__url__', '?')}: {error}")
            continue
        videos.append(arrays["video"])
        audios.append(audio_from_int16(arrays["audio"]).numpy())
        keys.append(str(sample["__key__"]))
        if len(keys) == limit:
            break
    if not keys:
        raise EvaluationDataError(
            f"evaluation data {data_uri!r}: no usable clips in {split.describe()}"
            + (f"; problems: {'; '.join(problems[:5])}" if problems else "")
            + ("" if split.part == "all" else "; --split all evaluates on every clip")
        )
    manifest = manifest_info(data_uri).sha256
    return ReferenceClips(np.stack(videos), np.stack(audios), keys, data_uri, manifest, problems, split)


def _samples(shards: list[str], problems: list[str]) -> Iterator[dict[str, bytes]]:
    """The samples of every shard in order; an unreadable shard is recorded in `problems`."""
    for uri in shards:
        yield from read_samples(uri, lambda error, uri=uri: problems.append(f"{uri}: {type(error).__name__}: {error}"))
