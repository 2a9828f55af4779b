"""WebDataset tar shards that appear under their final name only when complete."""

from __future__ import annotations

import io
import tarfile

from pipeline.shard_format import SHARD_FOLDER, shard_name, shard_number
from pipeline.storage import AtomicWriter, join

__all__ = ["SHARD_FOLDER", "ShardWriter", "shard_name", "shard_number"]


class ShardWriter:
    """Streams samples into a tar; the shard exists only after a clean `close` with samples.

    Each sample's members are written together and in a fixed order, so readers that group
    members by key (webdataset, Ray's read_webdataset) see whole samples. Member times are
    fixed so that rewriting the same clips gives the same bytes.
    """

    def __init__(self, output_uri: str, number: int) -> None:
        self.relative_path = f"{SHARD_FOLDER}/{shard_name(number)}"
        """Where the shard lands, relative to the output (as the manifest names it)."""
        self.uri = join(output_uri, self.relative_path)
        self.samples = 0
        self.bytes = 0
        """Size of the finished shard file."""
        self._target: AtomicWriter | None = None
        self._tar: tarfile.TarFile | None = None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if self._tar is None:
            self._target = AtomicWriter(self.uri)
            self._tar = tarfile.open(fileobj=self._target.open(), mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (closed in __exit__)
        for suffix, data in members.items():
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self.bytes = self._target.stream.tell()
        self._target.finish(succeeded=error_type is None)
