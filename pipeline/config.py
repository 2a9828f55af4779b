"""The typed configuration of a preprocessing run (mirrors `mmdiff preprocess` flags) and its
summary."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmdiffusion.constants import CLIP_SECONDS, FPS
from pipeline.decode import ClipOptions
from pipeline.faults import RetryPolicy
from pipeline.frames import RESIZE_MODES, ResizeMode


@dataclass(frozen=True)
class PreprocessConfig:
    input: str
    """Folder, s3://bucket/prefix, or a .txt/.csv/.parquet list of URIs."""
    output: str
    """Folder or s3://bucket/prefix that receives shards/, manifest.parquet, errors.parquet, stats.json."""
    workers: int | None = None
    """Most decoding workers at once (one CPU each); None: every CPU of the Ray cluster as it
    grows (units are queued beyond its CPUs, so an autoscaler sees the demand)."""
    stride: float = CLIP_SECONDS
    """Seconds between clip starts, a multiple of 1/FPS; the default gives non-overlapping clips."""
    resize: ResizeMode = "pad"
    sr_size: int | None = None
    """Also store each clip's frames at this side (e.g. 256) for super-resolution training."""
    max_clips_per_video: int | None = None
    videos_per_shard: int = 32
    """Sources decoded into one shard (one unit of resumable work)."""
    signals: bool = True
    """Curation signals of every clip in the manifest and its json, and near-duplicates marked
    at the end of the run (`pipeline.signals`, `pipeline.dedup`)."""
    retry_errors: bool = False
    """Also redo the sources that errors.parquet holds (media errors), e.g. after a decoder upgrade."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Backoff for storage failures: of each read or write, and of a unit as a whole."""
    progress_seconds: float = 10.0
    """Seconds between progress lines."""

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        frames = self.stride * FPS
        if self.stride <= 0 or abs(frames - round(frames)) > 1e-6:
            raise ValueError(f"stride must be a positive multiple of {1 / FPS:g} s, got {self.stride}")
        for name in ("workers", "sr_size", "max_clips_per_video"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.videos_per_shard < 1:
            raise ValueError(f"videos_per_shard must be at least 1, got {self.videos_per_shard}")

    def pinned_options(self) -> dict[str, object]:
        """What the clips of an output are made with: fixed by its first run (see
        `pipeline.resume.check_options`), by the flag names a user types."""
        return {
            "resize": self.resize,
            "stride": self.stride,
            "sr_size": self.sr_size,
            "max_clips_per_video": self.max_clips_per_video,
            "signals": self.signals,
        }

    def clip_options(self) -> ClipOptions:
        return ClipOptions(
            resize=self.resize,
            stride_frames=round(self.stride * FPS),
            max_clips=self.max_clips_per_video,
            sr_size=self.sr_size,
            signals=self.signals,
        )


@dataclass(frozen=True)
class UnfinishedUnit:
    number: int
    shard: str
    problem: str
    """The storage failure that outlasted the retries."""


@dataclass(frozen=True)
class PreprocessStats:
    """What one run did (also written to OUTPUT/stats.json)."""

    inputs: int
    """Sources found under the input."""
    inputs_skipped: int
    """Sources of units finished by an earlier run and not touched again."""
    clips: int
    """Clips written by this run."""
    errors: int
    """Sources of this run that gave a media error (see errors.parquet)."""
    shards: int
    """Shards written by this run."""
    bytes: int
    """Bytes of the shards written by this run."""
    seconds: float
    cpu_seconds: float
    """CPU time the workers spent on this run's units."""
    clips_total: int
    """Clips in the whole output (manifest.parquet), earlier runs included."""
    duplicates: int = 0
    """Clips of the whole output marked as near-duplicates of another (`duplicate_of`)."""
    units: int = 0
    """Units this run set out to do."""
    unfinished: tuple[UnfinishedUnit, ...] = ()
    """Units left for a rerun by storage failures (no part, no record of their sources)."""

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_clip(self) -> float:
        return self.bytes / self.clips if self.clips else 0.0

    def unfinished_summary(self) -> str | None:
        """The line a user reads when the run is incomplete, None when it is complete."""
        if not self.unfinished:
            return None
        shown = "; ".join(f"{unit.shard}: {unit.problem}" for unit in self.unfinished[:SUMMARY_UNITS])
        more = f"; and {len(self.unfinished) - SUMMARY_UNITS} more" if len(self.unfinished) > SUMMARY_UNITS else ""
        return (
            f"{len(self.unfinished)} units not finished because of storage errors: {shown}{more}; "
            "rerun the same command to retry them"
        )


SUMMARY_UNITS = 20
"""Unfinished units named one by one in the summary (stats.json lists them all)."""
