"""One filesystem layer for local folders and `s3://` URIs (pyarrow.fs).

S3 endpoint and credentials come from the standard AWS variables (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_REGION), which pyarrow's S3
filesystem reads itself, so AWS S3 and any S3-compatible store work unchanged.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import pyarrow.fs as pafs

TEMPORARY_PREFIX = ".tmp-"
"""Names starting with this are unfinished writes (see AtomicWriter)."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem that holds `uri` and the path of `uri` inside it."""
    if is_remote(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri.removeprefix("file://")).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    """`uri` with `parts` appended, keeping the scheme (no `os.path` rules on URIs)."""
    return "/".join([uri.rstrip("/"), *parts])


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_atomically(uri: str, data: bytes) -> None:
    """Write `data` so that `uri` holds either its old content or all of `data`, never a part."""
    with AtomicWriter(uri) as stream:
        stream.write(data)


class AtomicWriter:
    """A writable stream whose target appears under its final name only when closed cleanly.

    Bytes go to a temporary sibling first; on success it is renamed (local, atomic) or copied
    server-side (S3 CopyObject, atomic) to the final name and removed. On an exception the
    temporary object is deleted, so a crash never leaves a partial file under the final name.
    """

    def __init__(self, uri: str) -> None:
        self.fs, self.path = resolve(uri)
        parent, name = self.path.rsplit("/", 1)
        self.temporary_path = f"{parent}/{TEMPORARY_PREFIX}{uuid.uuid4().hex}-{name}"
        self.stream: pafs.NativeFile | None = None

    def open(self) -> pafs.NativeFile:
        self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        self.stream = self.fs.open_output_stream(self.temporary_path)
        return self.stream

    def finish(self, succeeded: bool) -> None:
        """Publish the bytes under the final name, or drop them."""
        assert self.stream is not None, "finish() before open()"
        if succeeded:
            self.stream.close()
            self.fs.move(self.temporary_path, self.path)
            return
        # best effort: the storage may be what failed; a rerun removes what is left
        with contextlib.suppress(OSError):
            self.stream.close()
            self.fs.delete_file(self.temporary_path)

    def __enter__(self) -> pafs.NativeFile:
        return self.open()

    def __exit__(self, error_type, error, traceback) -> None:
        self.finish(succeeded=error_type is None)
