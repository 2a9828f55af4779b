"""`ray job submit` against a running local stack, as an operator types it after
`source .stack/env`: the job runs on the stack's head, and the command waits for it, streams
its logs and exits non-zero when the job fails."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from infra.local.stack import StackState

RAY_CLI = str(Path(sys.executable).with_name("ray"))


def ray_job_submit(
    state: StackState,
    entrypoint: Sequence[str],
    working_dir: Path | None = None,
    capture_output: bool = False,
    timeout_s: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Submit `entrypoint` (e.g. `["python", "-m", "jobs.preprocess", ...]`) and wait for it.

    Without `working_dir` the job runs the installed project; with it, Ray uploads that folder
    (minus its .gitignore'd files) and runs the job inside it. The job's environment is the
    head's: the stack's S3 endpoint, keys and MLflow tracking URI.
    """
    command = [RAY_CLI, "job", "submit"]
    if working_dir is not None:
        command += ["--working-dir", str(working_dir)]
    command += ["--", *entrypoint]
    return subprocess.run(
        command,
        env={**os.environ, **state.client_env()},
        capture_output=capture_output,
        text=True,
        timeout=timeout_s,
        check=False,
    )
