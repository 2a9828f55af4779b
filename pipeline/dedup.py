"""Near-duplicate clips across a corpus, from the fingerprints in manifest.parquet.

Two clips are near-duplicates when their video fingerprints differ in at most
`max_video_bits` bits and their audio fingerprints differ by at most `max_audio_db` (or both
have no audio fingerprint: both silent). A clip without a video fingerprint (all four hashed
frames flat, e.g. a black screen) is never a duplicate: filter those with black_frame_share.
Overlapping clips of one source (a stride shorter than a clip) are not duplicates of each
other. Matches are grouped transitively (connected components), and every clip of a group
but the first gets `duplicate_of` = the key of the group's first clip in (source, clip_index,
key) order, so the result does not depend on the manifest's row order.

Candidates come from bit-sampling LSH, not from all pairs: each of `tables` tables keys every
clip by `bits_per_key` fixed, randomly chosen bits of its video fingerprint; clips that share
a key in any table are candidates, and only candidates are compared. A pair at distance d
(of B = 144 bits) shares a table's key when none of the k = bits_per_key sampled bits is one
of its d differing bits, with probability C(B - d, k) / C(B, k), so it is found with
probability 1 - (1 - C(B - d, k) / C(B, k))^tables: with the defaults 99.998 % at 12 bits,
99.5 % at 16, 93 % at 20, 72 % at 24; unrelated clips (about 72 random bits apart)
meet in a table with probability 2^-20.
A bucket larger than `max_bucket` (many clips with one key, e.g. the same title card) links
each member to the bucket's first member and to its neighbour in order instead of to all,
so the work stays linear in the bucket. Method and measurements: docs/curation.md.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mmdiffusion.constants import CLIP_SECONDS
from pipeline.signals.fingerprint import audio_distance_db, video_distance_bits
from pipeline.signals.record import AUDIO_FINGERPRINT_BYTES, VIDEO_FINGERPRINT_BYTES, ColumnSpec

DUPLICATE_OF = ColumnSpec(
    name="duplicate_of",
    arrow_type=pa.string(),
    unit="key",
    range="a clip key; null",
    meaning="key of the first clip of this clip's near-duplicate group (docs/curation.md); null "
    "for a clip that is no near-duplicate and for the first clip of each group",
    nullable=True,
)
"""The column dedup adds to the manifest."""


@dataclass(frozen=True)
class DedupConfig:
    max_video_bits: int = 24
    """Most differing video fingerprint bits (of 144) of a near-duplicate."""
    max_audio_db: float = 5.0
    """Most mean level difference (dB) of the audio fingerprints of a near-duplicate."""
    bits_per_key: int = 20
    tables: int = 64
    max_bucket: int = 256
    chunk_clips: int = 1 << 18
    """Clips of one table whose buckets are paired and compared at once: bounds the memory of
    a table's candidates (at 10^7 clips a table has about 5·10^7), not what is found."""
    seed: int = 0
    """Chooses the sampled bits; fixed, so that a rerun gives the same groups."""


@dataclass(frozen=True)
class DedupReport:
    clips: int
    with_video_fingerprint: int
    compared_pairs: int
    """Candidate pairs compared; a pair that shares a key in several tables counts once per table."""
    matched_pairs: int
    """Near-duplicate pairs found, counted in the same way."""
    groups: int
    """Groups of two or more clips."""
    duplicates: int
    """Clips that got a duplicate_of key."""
    oversized_buckets: int


def _fingerprints(column: pa.ChunkedArray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, width] fingerprints (zeros where null) and the bool [N] mask of present ones.
    Fixed-size binary columns (the manifest's) are read without a copy per row; bytes or hex
    strings (the sample json's) one by one."""
    present = pc.is_valid(column).to_numpy(zero_copy_only=False)
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_binary(array.type) and array.type.byte_width == width:
        data = np.frombuffer(array.buffers()[1], dtype=np.uint8)
        matrix = data[array.offset * width : (array.offset + len(array)) * width].reshape(-1, width).copy()
        matrix[~present] = 0
        return matrix, present
    matrix = np.zeros((len(array), width), dtype=np.uint8)
    for row, value in enumerate(array.to_pylist()):
        if value is not None:
            matrix[row] = np.frombuffer(bytes.fromhex(value) if isinstance(value, str) else value, dtype=np.uint8)
    return matrix, present


def _stable_key_order(keys: np.ndarray) -> np.ndarray:
    """The order that sorts uint32 `keys`, ties kept in place (so a large bucket keeps its
    clips in manifest order), by sorting key << 32 | position: several times faster than a
    stable argsort."""
    positions = np.arange(len(keys), dtype=np.uint64)
    return (np.sort(keys.astype(np.uint64) << np.uint64(32) | positions) & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _bucket_pairs(
    sorted_keys: np.ndarray, sorted_members: np.ndarray, max_bucket: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Pairs (i, j) of `sorted_members` that share a key (`sorted_keys`, in `_stable_key_order`):
    all pairs in a bucket of up to `max_bucket`, (first, each) and (each, next) in a larger one.
    Returns both index arrays and how many buckets were larger."""
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, len(sorted_keys)])
    group_start = np.repeat(starts, sizes)
    group_size = np.repeat(sizes, sizes)
    position = np.arange(len(sorted_keys)) - group_start
    firsts, seconds = [], []
    large = group_size > max_bucket
    if large.any():
        rows = np.flatnonzero(large & (position > 0))
        firsts += [sorted_members[group_start[rows]], sorted_members[rows - 1]]
        seconds += [sorted_members[rows], sorted_members[rows]]
    rows = np.flatnonzero(~large & (group_size > 1))
    offset = 1
    while rows.size:
        rows = rows[position[rows] + offset < group_size[rows]]
        firsts.append(sorted_members[rows])
        seconds.append(sorted_members[rows + offset])
        offset += 1
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    return np.concatenate(firsts), np.concatenate(seconds), int(np.sum(sizes > max_bucket))


def _table_keys(byte_rows: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """uint32 keys of one table: the sampled `bits` of each fingerprint (rows of `byte_rows`,
    [bytes, clips], are its bytes; bit 0 is the first byte's highest, as in np.unpackbits)."""
    keys = np.zeros(byte_rows.shape[1], dtype=np.uint32)
    for position, bit in enumerate(bits):
        keys |= ((byte_rows[bit >> 3] >> np.uint8(7 - (bit & 7))) & np.uint8(1)).astype(np.uint32) << np.uint32(
            position
        )
    return keys


def _matched_edges(clips: _Clips, config: DedupConfig) -> tuple[np.ndarray, int, int]:
    """Near-duplicate pairs [E, 2] (a pair found by several tables once per table), the
    comparisons made and the oversized buckets.

    Each table's candidates are compared as soon as they are found and only the matches are
    kept, so the memory is one table's candidates, not every table's: at 10^6 clips these
    are about half a million pairs a table, 30 million in all."""
    members = np.flatnonzero(clips.has_video)
    byte_rows = np.ascontiguousarray(clips.video[members].T)  # [bytes, clips]: rows gather fast
    rng = np.random.default_rng(config.seed)
    edges, compared, oversized = [], 0, 0
    for _ in range(config.tables):
        bits = rng.choice(8 * byte_rows.shape[0], size=config.bits_per_key, replace=False)
        keys = _table_keys(byte_rows, bits)
        order = _stable_key_order(keys)
        sorted_keys, sorted_members = keys[order], members[order]
        for begin, end in _whole_bucket_spans(sorted_keys, config.chunk_clips):
            first, second, large = _bucket_pairs(sorted_keys[begin:end], sorted_members[begin:end], config.max_bucket)
            pairs = np.stack([first, second], axis=1)
            edges.append(pairs[_matches(clips, pairs, config)])
            compared += len(pairs)
            oversized += large
    return (np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)), compared, oversized


def _whole_bucket_spans(sorted_keys: np.ndarray, size: int) -> list[tuple[int, int]]:
    """[begin, end) spans of about `size` sorted keys that never split a bucket."""
    starts = np.searchsorted(sorted_keys, sorted_keys[::size], side="left")
    bounds = [*np.unique(starts).tolist(), len(sorted_keys)]
    return list(itertools.pairwise(bounds))


VERIFY_CHUNK = 1 << 20
"""Candidate pairs compared at once (bounds the memory of the comparison)."""


@dataclass(frozen=True)
class _Clips:
    """What the comparison needs of every clip, as arrays."""

    video: np.ndarray
    has_video: np.ndarray
    audio: np.ndarray
    has_audio: np.ndarray
    source: np.ndarray
    start_seconds: np.ndarray


def _matches(clips: _Clips, pairs: np.ndarray, config: DedupConfig) -> np.ndarray:
    """bool [P]: which candidate pairs are near-duplicates (the cheap video test first; the
    audio and source tests only for the pairs that pass it)."""
    matched = np.zeros(len(pairs), dtype=bool)
    for begin in range(0, len(pairs), VERIFY_CHUNK):
        chunk = pairs[begin : begin + VERIFY_CHUNK]
        close = np.flatnonzero(
            video_distance_bits(clips.video[chunk[:, 0]], clips.video[chunk[:, 1]]) <= config.max_video_bits
        )
        first, second = chunk[close, 0], chunk[close, 1]
        audio_a, audio_b = clips.has_audio[first], clips.has_audio[second]
        audio_distance = audio_distance_db(clips.audio[first], clips.audio[second])
        audio_close = np.where(audio_a & audio_b, audio_distance <= config.max_audio_db, audio_a == audio_b)
        same_source = clips.source[first] == clips.source[second]
        overlapping = same_source & (np.abs(clips.start_seconds[first] - clips.start_seconds[second]) < CLIP_SECONDS)
        matched[begin + close] = audio_close & ~overlapping
    return matched


REQUIRED_COLUMNS = ("key", "source", "clip_index", "start_seconds", "video_fingerprint", "audio_fingerprint")


def find_duplicates(manifest: pa.Table, config: DedupConfig = DedupConfig()) -> tuple[pa.Table, DedupReport]:
    """The manifest with its `duplicate_of` column set (added or replaced), and what was found.

    Needs the columns of REQUIRED_COLUMNS; fingerprints as bytes, or hex strings as in the
    sample json."""
    missing = [name for name in REQUIRED_COLUMNS if name not in manifest.column_names]
    if missing:
        raise ValueError(f"manifest lacks the columns {missing} needed to find duplicates")
    video, has_video = _fingerprints(manifest["video_fingerprint"], VIDEO_FINGERPRINT_BYTES)
    audio, has_audio = _fingerprints(manifest["audio_fingerprint"], AUDIO_FINGERPRINT_BYTES)
    clips = _Clips(
        video=video,
        has_video=has_video,
        audio=audio,
        has_audio=has_audio,
        source=pc.dictionary_encode(manifest["source"]).combine_chunks().indices.to_numpy(),
        start_seconds=manifest["start_seconds"].to_numpy(),
    )
    edges, compared, oversized = _matched_edges(clips, config)
    count = manifest.num_rows
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    order = pc.sort_indices(
        manifest, sort_keys=[("source", "ascending"), ("clip_index", "ascending"), ("key", "ascending")]
    ).to_numpy()
    components, first_in_order = np.unique(component[order], return_index=True)
    leader_of = np.empty(components.max() + 1 if count else 0, dtype=np.int64)
    leader_of[components] = order[first_in_order]
    leader = leader_of[component]
    is_duplicate = leader != np.arange(count)
    duplicate_of = pc.if_else(pa.array(is_duplicate), pc.take(manifest["key"], pa.array(leader)), None)
    column = duplicate_of.cast(DUPLICATE_OF.arrow_type)
    if DUPLICATE_OF.name in manifest.column_names:
        table = manifest.set_column(manifest.column_names.index(DUPLICATE_OF.name), DUPLICATE_OF.name, column)
    else:
        table = manifest.append_column(pa.field(DUPLICATE_OF.name, DUPLICATE_OF.arrow_type), column)
    report = DedupReport(
        clips=count,
        with_video_fingerprint=int(has_video.sum()),
        compared_pairs=compared,
        matched_pairs=len(edges),
        groups=int(np.sum(np.bincount(component) > 1)),
        duplicates=int(is_duplicate.sum()),
        oversized_buckets=oversized,
    )
    return table, report
