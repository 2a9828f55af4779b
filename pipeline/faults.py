"""Infrastructure failures, kept apart from media failures, and retrying them.

A *media* failure (`pipeline.errors.MediaError`) is a property of a file: it is recorded and
the job goes on. An *infrastructure* failure (storage or network errors, timeouts, an
`OSError` of the filesystem) says nothing about the file: it is retried with bounded
exponential backoff, and if it persists the unit is left unfinished so that a rerun redoes it.
The two are told apart where the bytes are read (`SourceReader`), never from the decoder's
error message: a decoder that loses its input mid-file may report a plain end of file.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pyarrow.fs as pafs

T = TypeVar("T")

TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.EAGAIN,
        errno.EINTR,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.ENETRESET,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ESTALE,
        errno.ENOLINK,
    }
)
"""errno values of failures of the storage, not of the file (FFmpeg reports them for local
and network paths it opens itself)."""


class InfrastructureError(Exception):
    """Storage or network failed (after retries): the unit is left for a rerun. Not a
    ValueError, so that nothing takes it for bad input."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: `attempts` tries, waiting `first_delay_s`, then twice as
    long each time, at most `max_delay_s`. The defaults ride out about 15 s of outage."""

    attempts: int = 6
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"storage attempts must be at least 1, got {self.attempts}")

    def delays(self) -> list[float]:
        """The waits between the attempts."""
        return [min(self.first_delay_s * 2**index, self.max_delay_s) for index in range(self.attempts - 1)]


def is_infrastructure(error: BaseException) -> bool:
    """Whether `error` is a failure of the storage rather than of the file's content. A
    missing file or a refused permission is the input's own (recorded as unreadable)."""
    if isinstance(error, InfrastructureError | TimeoutError | ConnectionError):
        return True
    if isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    import av

    if isinstance(error, av.error.FFmpegError):
        return error.errno in TRANSIENT_ERRNOS
    return isinstance(error, OSError)


def retrying(operation: Callable[[], T], what: str, policy: RetryPolicy) -> T:
    """`operation()`, retried on infrastructure failures with the policy's backoff; raises
    InfrastructureError naming `what` when every attempt failed. Other errors pass at once."""
    delays = policy.delays()
    for attempt in range(policy.attempts):
        try:
            return operation()
        except Exception as error:
            if not is_infrastructure(error):
                raise
            if attempt == len(delays):
                raise InfrastructureError(f"{what}: {_describe(error)} (after {policy.attempts} attempts)") from error
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")


def _describe(error: BaseException) -> str:
    return str(error) if isinstance(error, InfrastructureError) else f"{type(error).__name__}: {error}"


class SourceReader:
    """A read-only, seekable file over a pyarrow filesystem (S3 and the like) for PyAV.

    Reads whole blocks (one ranged GET each, instead of one per 32 KiB the demuxer asks for)
    and retries each block with the policy, reopening the file, so a connection cut
    mid-response is resumed where it broke. The first failure that outlasts the retries is
    kept in `failure`: PyAV may swallow an exception raised inside its read callback and
    report a plain end of file, so the caller checks `failure` after decoding, whatever the
    decoder said."""

    BLOCK_BYTES = 4 << 20

    def __init__(self, uri: str, fs: pafs.FileSystem, path: str, policy: RetryPolicy) -> None:
        self.uri, self._fs, self._path, self._policy = uri, fs, path, policy
        self.failure: InfrastructureError | None = None
        self._file: pafs.NativeFile | None = retrying(lambda: fs.open_input_file(path), f"{uri}: open", policy)
        self.size = retrying(self._file.size, f"{uri}: size", policy)
        self._position = 0
        self._block_start, self._block = 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int = -1) -> bytes:
        if self.failure is not None:
            raise self.failure
        if size < 0:
            size = self.size - self._position
        if self._position >= self.size or size == 0:
            return b""
        inside = self._position - self._block_start
        if not 0 <= inside < len(self._block):
            self._fetch_block(self._position)
            inside = 0
        data = self._block[inside : inside + size]
        self._position += len(data)
        return data

    def _fetch_block(self, start: int) -> None:
        length = min(self.BLOCK_BYTES, self.size - start)

        def read_once() -> bytes:
            if self._file is None:
                self._file = self._fs.open_input_file(self._path)
            try:
                data = self._file.read_at(length, start)
            except OSError:
                self.close()
                raise
            if len(data) != length:
                self.close()
                raise ConnectionError(f"short read: {len(data)} of {length} bytes at {start}")
            return data

        try:
            self._block = retrying(read_once, f"{self.uri}: read at byte {start}", self._policy)
        except InfrastructureError as error:
            self.failure = error
            raise
        self._block_start = start

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
