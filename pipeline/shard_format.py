"""The shard format, in one place: what `mmdiff preprocess` writes and training and evaluation read.

A dataset is `DATA/shards/shard-NNNNNN.tar` (WebDataset tars) beside `DATA/manifest.parquet`.
Each clip is one sample: `<key>.video.npy` (uint8 frames), `<key>.audio.npy` (int16 audio),
`<key>.json` (metadata) and, for SR training, `<key>.video<S>.<i>.jpg` (SR frame i at S×S, one
JPEG per frame, so a reader decodes only the frames it keeps). docs/data-format.md describes it
for readers without this code.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from pipeline.storage import join, read_bytes, resolve

SHARD_FOLDER = "shards"
MANIFEST_FILE = "manifest.parquet"
"""Beside the shards folder: one row per clip."""
VIDEO_MEMBER = "video.npy"
AUDIO_MEMBER = "audio.npy"
METADATA_MEMBER = "json"
SR_JPEG_QUALITY = 90
"""JPEG quality (4:4:4 chroma) of the SR frames; measured quality and size in docs/data-format.md."""
RGB = 3
READ_BLOCK_BYTES = 8 * 2**20
"""Shards are read in blocks of this size: tar reads 10,240 bytes at a time, and on object
storage each unbuffered read is one ranged GET (docs/data-format.md, "Reading")."""

_SHARD_NAME = re.compile(r"^shard-(\d{6})\.tar$")


class DataError(ValueError):
    """A dataset cannot be used (missing path, no shards)."""


# ---------------------------------------------------------------------- names
def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def shard_number(name: str) -> int | None:
    """The number in a final shard name, None for anything else (temporaries included)."""
    match = _SHARD_NAME.match(name)
    return int(match.group(1)) if match else None


def sr_frame_member_name(size: int, index: int) -> str:
    """The member holding SR frame `index` (from 0) at `size`×`size`: `video256.03.jpg`."""
    return f"video{size}.{index:02d}.jpg"


def sr_strip_member_name(size: int) -> str:
    """The SR member of format 2 and earlier: all frames stacked top to bottom in one JPEG.
    Still read (`decode_sample`), no longer written."""
    return f"video{size}.jpg"


def source_id(uri: str) -> str:
    """A stable 16-hex-digit name for a source (WebDataset keys may not contain dots)."""
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:16]


def sample_key(uri: str, clip_index: int) -> str:
    return f"{source_id(uri)}-{clip_index:05d}"


# ---------------------------------------------------------------------- splits
Split = Literal["train", "held_out", "all"]
SPLITS: tuple[str, ...] = ("train", "held_out", "all")
DEFAULT_HELD_OUT_SHARE = 0.05
"""Share of the sources held out from training when nobody says otherwise (50 of 1,000 videos)."""
_SOURCE_ID = re.compile(r"^[0-9a-f]{16}$")


def source_position(key: str) -> float:
    """Where the source of sample `key` lies in [0, 1): its source id (the key's prefix, a
    SHA-1 of the source URI) read as a fraction. Keys whose prefix is not such an id (written
    by other tools) are placed by the SHA-1 of the prefix."""
    prefix = key.split("-", 1)[0]
    if not _SOURCE_ID.match(prefix):
        prefix = hashlib.sha1(prefix.encode("utf-8")).hexdigest()[:16]
    return int(prefix, 16) / 16**16


@dataclass(frozen=True)
class DataSplit:
    """One part of a dataset split by source video: a source is held out when its position
    (`source_position`) is below `held_out_share`.

    The split is a function of each source's URI alone, never of the other sources: reruns,
    added data and any order of shards leave every source where it was, no source has clips
    on both sides, and a larger share only moves sources from train to held-out. Moving the
    corpus to other URIs gives new keys and so a new split, as it gives a new dataset.
    """

    part: Split = "train"
    held_out_share: float = DEFAULT_HELD_OUT_SHARE

    def __post_init__(self) -> None:
        if self.part not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.part!r}")
        if not 0.0 <= self.held_out_share < 1.0:
            raise ValueError(f"held-out share must lie in [0, 1), got {self.held_out_share}")

    def keeps(self, key: str) -> bool:
        """Whether sample `key` belongs to this part."""
        if self.part == "all":
            return True
        return (source_position(key) < self.held_out_share) == (self.part == "held_out")

    def describe(self) -> str:
        if self.part == "all":
            return "all clips"
        share = f"{self.held_out_share:.3g} of the sources held out"
        return f"the {'held-out' if self.part == 'held_out' else 'training'} split ({share})"


# ---------------------------------------------------------------------- encoding
def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def jpeg_bytes(image: np.ndarray, quality: int = SR_JPEG_QUALITY) -> bytes:
    """A uint8 RGB image (H, W, 3) as a baseline JPEG with 4:4:4 chroma."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def jpeg_image(data: bytes) -> np.ndarray:
    """The inverse of `jpeg_bytes`: uint8 (H, W, 3); OSError (PIL's) for bytes that are no readable image."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def encode_members(
    video: np.ndarray, audio: np.ndarray, metadata: dict, video_sr: np.ndarray | None = None
) -> dict[str, bytes]:
    """The members of one sample, keyed by suffix (`__key__` excluded), in the order written:
    uint8 frames [F, H, W, 3], int16 audio [1, L], the metadata and the SR frames if any."""
    members = {
        VIDEO_MEMBER: npy_bytes(video),
        AUDIO_MEMBER: npy_bytes(audio),
        METADATA_MEMBER: json.dumps(metadata, sort_keys=True).encode("utf-8"),
    }
    return members if video_sr is None else {**members, **sr_members(video_sr)}


def sr_members(video_sr: np.ndarray) -> dict[str, bytes]:
    """The SR frames uint8 [F, S, S, 3] as members, one JPEG per frame, in frame order."""
    return {sr_frame_member_name(video_sr.shape[1], index): jpeg_bytes(frame) for index, frame in enumerate(video_sr)}


# ---------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class SampleSpec:
    """What a sample must hold: frames of `image_size` (and `sr_size`), audio of `audio_length`."""

    frames: int
    image_size: int
    audio_length: int
    sr_size: int | None = None
    """Read the SR frames at this size (SR training) instead of video.npy and audio.npy."""
    frames_kept: int | None = None
    """SR training: the loader keeps this many of the `frames`, picked before decoding (None: all)."""


def decode_sample(
    sample: dict[str, bytes], spec: SampleSpec, frames: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """The sample's uint8 frames `video` [F, H, W, 3] and int16 `audio` [1, L] (or the SR
    frames `video_sr`), checked against `spec`; raises ValueError naming the member.

    `frames` keeps only those SR frames, in that order: [len(frames), S, S, 3]. Only their
    members are decoded (`_sr_frames`), the others only have to be present."""
    key = sample.get("__key__", "?")
    if spec.sr_size is not None:
        return {"video_sr": _sr_frames(key, sample, spec.sr_size, spec.frames, frames)}
    arrays = {}
    for name, member, shape, dtype in (
        ("video", VIDEO_MEMBER, (spec.frames, spec.image_size, spec.image_size, RGB), np.uint8),
        ("audio", AUDIO_MEMBER, (1, spec.audio_length), np.int16),
    ):
        if member not in sample:
            raise ValueError(f"sample {key}: no {member} member")
        arrays[name] = np.load(io.BytesIO(sample[member]), allow_pickle=False)
        _check(key, member, arrays[name], shape, dtype)
    return arrays


def _sr_frames(key: str, sample: dict[str, bytes], size: int, count: int, frames: Sequence[int] | None) -> np.ndarray:
    """The kept SR frames [K, size, size, 3] of the `count`: each from its own member, or, in a
    sample of format 2 and earlier, copied out of the strip decoded whole (a baseline JPEG's
    rows cannot be reached without decoding the rows above them)."""
    kept = list(range(count)) if frames is None else list(frames)
    strip = sr_strip_member_name(size)
    names = [sr_frame_member_name(size, index) for index in range(count)]
    if strip in sample and names[0] not in sample:
        decoded = _decode_jpeg(key, strip, sample[strip], (count * size, size, RGB))
        return decoded.reshape(count, size, size, RGB)[kept]
    missing = [name for name in names if name not in sample]
    if missing:
        raise ValueError(f"sample {key}: no {missing[0]} member (preprocess with --sr-size {size})")
    return np.stack([_decode_jpeg(key, names[index], sample[names[index]], (size, size, RGB)) for index in kept])


def _decode_jpeg(key: str, member: str, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    try:
        image = jpeg_image(data)
    except OSError as error:
        raise ValueError(f"sample {key}: {member} is not a readable JPEG ({error})") from error
    _check(key, member, image, shape, np.uint8)
    return image


def _check(key: str, member: str, array: np.ndarray, shape: tuple[int, ...], dtype: type) -> None:
    if array.shape != shape or array.dtype != dtype:
        raise ValueError(
            f"sample {key}: {member} is {array.dtype}{list(array.shape)}, expected {np.dtype(dtype)}{list(shape)}"
        )


# ---------------------------------------------------------------------- datasets
def exists(uri: str) -> bool:
    filesystem, path = resolve(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def shard_folder(data_uri: str, purpose: str = "training") -> str:
    """The folder holding the shards: `DATA/shards` when it exists, else `DATA` itself.
    `purpose` names the data in errors ("training data ...")."""
    if not exists(data_uri):
        raise DataError(f"{purpose} data {data_uri!r} does not exist")
    nested = join(data_uri, SHARD_FOLDER)
    return nested if exists(nested) else data_uri


def list_shards(data_uri: str, purpose: str = "training") -> list[str]:
    """Every `shard-NNNNNN.tar` of the dataset, in shard order, as URIs; raises when none."""
    folder = shard_folder(data_uri, purpose)
    fs, path = resolve(folder)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(
        info.base_name for info in infos if info.type == pafs.FileType.File and shard_number(info.base_name) is not None
    )
    if not names:
        raise DataError(f"{purpose} data {data_uri!r}: no shard-NNNNNN.tar files in {folder!r}")
    return [join(folder, name) for name in names]


def read_samples(
    shard_uri: str,
    on_error: Callable[[Exception], None],
    block_bytes: int = READ_BLOCK_BYTES,
    filesystem: pafs.FileSystem | None = None,
) -> Iterator[dict[str, bytes]]:
    """The samples of one shard (member suffix -> bytes, plus `__key__` and `__url__`), in
    order, read `block_bytes` at a time (0: as tar asks, one request per 10 KB on S3). A shard
    that cannot be read (missing, truncated, not a tar) is reported to `on_error` and read no
    further: the samples before the break are kept. `filesystem` reads `shard_uri` as a path
    on that pyarrow filesystem (a configured S3FileSystem, an fsspec store wrapped in a
    PyFileSystem) instead of the filesystem the URI names."""

    from webdataset.tariterators import group_by_keys, tar_file_iterator  # imports torch: seconds writers skip

    def stop(error: Exception) -> bool:
        on_error(error)
        return False

    try:
        fs, path = (filesystem, shard_uri) if filesystem is not None else resolve(shard_uri)
        with fs.open_input_stream(path, buffer_size=block_bytes or None) as stream:
            members = ({**member, "__url__": shard_uri} for member in tar_file_iterator(stream, handler=stop))
            yield from group_by_keys(members, handler=stop)
    except (OSError, tarfile.TarError) as error:
        on_error(error)


@dataclass(frozen=True)
class ManifestInfo:
    uri: str
    sha256: str
    """Hex digest of the manifest file, or "missing" when the dataset has none."""


def manifest_uri(data_uri: str) -> str | None:
    """The dataset's manifest: in DATA, or in the parent when DATA is the shards folder itself,
    or DATA when it names a .parquet file; None when there is none."""
    if data_uri.endswith(".parquet"):
        return data_uri if exists(data_uri) else None
    for candidate in (join(data_uri, MANIFEST_FILE), join(data_uri.rstrip("/").rsplit("/", 1)[0], MANIFEST_FILE)):
        if exists(candidate):
            return candidate
    return None


def manifest_info(data_uri: str) -> ManifestInfo:
    """The dataset's manifest and its hash: which exact data a run trained or was evaluated on."""
    uri = manifest_uri(data_uri)
    if uri is None:
        return ManifestInfo(join(data_uri, MANIFEST_FILE), "missing")
    return ManifestInfo(uri, hashlib.sha256(read_bytes(uri)).hexdigest())


def read_manifest(data_uri: str, columns: list[str] | None = None) -> pa.Table:
    """The manifest table of a dataset (folder, shards folder or s3:// prefix) or of a manifest
    file, all columns or those named; FileNotFoundError naming where it was looked for."""
    fs, path = _locate_manifest(data_uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def manifest_schema(data_uri: str) -> pa.Schema:
    """The manifest's columns, read from the file's footer alone."""
    fs, path = _locate_manifest(data_uri)
    return pq.read_schema(path, filesystem=fs)


def _locate_manifest(data_uri: str) -> tuple[pafs.FileSystem, str]:
    uri = manifest_uri(data_uri)
    if uri is None:
        raise FileNotFoundError(f"no {MANIFEST_FILE} in {data_uri} (or beside it)")
    return resolve(uri)
