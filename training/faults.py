"""Fault injection for recovery drills: kill a worker on purpose to rehearse `FailureConfig`.

Not a training setting: a drill is switched on only by the environment variable
`MMDIFF_CRASH_DRILL` on the driver (forwarded to the workers with the other `MMDIFF_*`
variables), e.g. `MMDIFF_CRASH_DRILL="step=2,rank=1,marker=/tmp/drill-done"`. The worker of rank
`rank` then exits in the middle of step `step` (gradients computed, update not applied), unless
`marker` exists; it creates `marker` first, so the restarted group runs on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CRASH_DRILL_VARIABLE = "MMDIFF_CRASH_DRILL"


@dataclass(frozen=True)
class CrashDrill:
    step: int
    marker: str
    rank: int = 0

    def to_environment(self) -> str:
        """The value of `MMDIFF_CRASH_DRILL` that describes this drill."""
        return f"step={self.step},rank={self.rank},marker={self.marker}"

    @classmethod
    def from_environment(cls) -> CrashDrill | None:
        """The drill `MMDIFF_CRASH_DRILL` describes, None when it is not set."""
        text = os.environ.get(CRASH_DRILL_VARIABLE, "").strip()
        if not text:
            return None
        try:
            fields = dict(item.split("=", 1) for item in text.split(","))
            return cls(step=int(fields["step"]), marker=fields["marker"], rank=int(fields.get("rank", 0)))
        except (KeyError, ValueError):
            raise ValueError(
                f"{CRASH_DRILL_VARIABLE}={text!r}: expected 'step=N,rank=R,marker=PATH' (rank optional)"
            ) from None

    def crash_if_due(self, rank: int, step: int) -> None:
        """Kill this worker process in the middle of `step` (no cleanup, like a lost node) the
        first time the drill says so."""
        if self.rank != rank or self.step != step:
            return
        marker = Path(self.marker)
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"rank {rank} killed in step {step}\n")
        log.warning("crash drill: killing rank %d in step %d", rank, step)
        os._exit(1)
