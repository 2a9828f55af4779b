"""Why an input gave no clips: a reason category that travels with the input into errors.parquet."""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    UNREADABLE = "unreadable"
    NO_VIDEO = "no_video"
    NO_AUDIO = "no_audio"
    TOO_SHORT = "too_short"
    DECODE_ERROR = "decode_error"
    UNEXPECTED = "unexpected_error"
    """An exception nobody foresaw while reading this source (its type and message are kept)."""


class MediaError(ValueError):
    """A media file that cannot give clips; the message names the file and the problem."""

    def __init__(self, reason: Reason, uri: str, problem: str) -> None:
        super().__init__(f"{uri}: {reason.value}: {problem}")
        self.reason = reason
        self.uri = uri
        self.problem = problem
