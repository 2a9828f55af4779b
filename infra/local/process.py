"""Starting, probing and stopping the long-running server processes of the local stack.

Every server is started in its own session (process group) with its output in a log file, so
that stopping it reaches its whole process tree and nothing else on the machine: `ray stop`
and `pkill` would also stop other people's Ray runtimes and servers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"


class ServiceStartError(RuntimeError):
    """A server did not come up; the message names it and carries the end of its log."""


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct TCP ports that nothing listens on right now (the kernel picks them).

    Every probe stays bound until all are picked: ports probed one after another can come
    back equal, and a server given the same port for two listeners refuses to start.
    """
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on right now (the kernel picks it)."""
    return free_ports(1, host)[0]


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when a server could listen on `port`: nothing listens there.

    SO_REUSEADDR, as servers set it, so that connections of a server stopped a moment ago
    (TIME_WAIT) do not count as a listener.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def spawn(
    command: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `command` detached in a new session, stdout and stderr appended to `log_path`,
    a file only its owner can read (servers may log addresses, tokens or keys)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        os.fchmod(log.fileno(), 0o600)  # also a log left by an earlier start
        return subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


@dataclass(frozen=True)
class ServerLaunch:
    """A spawned server that may not answer yet: launch several, then wait for each."""

    name: str
    pid: int
    health_url: str
    log_path: Path
    health_headers: Mapping[str, str] = field(default_factory=dict)

    def wait_healthy(self, timeout_s: float) -> int:
        """Wait until the health URL answers and return the pid.

        A server that does not become healthy in time is stopped before the error is raised,
        so a failed start leaves nothing running.
        """
        try:
            wait_for_http(self.name, self.health_url, timeout_s, self.pid, self.log_path, self.health_headers)
        except BaseException:
            stop_tree(self.pid)
            raise
        return self.pid


def launch_server(
    name: str,
    command: Sequence[str],
    log_path: Path,
    health_url: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    health_headers: Mapping[str, str] | None = None,
) -> ServerLaunch:
    process = spawn(command, log_path, env=env, cwd=cwd)
    return ServerLaunch(name, process.pid, health_url, log_path, dict(health_headers or {}))


def log_tail(log_path: Path, lines: int = 30) -> str:
    if not log_path.exists():
        return f"(no log at {log_path})"
    text = log_path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def http_ok(url: str, headers: Mapping[str, str] | None = None, timeout_s: float = 2.0) -> bool:
    """True when `url` answers with a 2xx status."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_for_http(
    name: str,
    url: str,
    timeout_s: float,
    pid: int | None = None,
    log_path: Path | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Poll `url` until it answers 2xx; fail early if the server process `pid` has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http_ok(url, headers):
            return
        if pid is not None and not pid_alive(pid):
            raise ServiceStartError(
                f"{name} exited before {url} answered."
                + (f" Last lines of {log_path}:\n{log_tail(log_path)}" if log_path else "")
            )
        time.sleep(0.5)
    raise ServiceStartError(
        f"{name} did not answer at {url} within {timeout_s:.0f} s."
        + (f" Last lines of {log_path}:\n{log_tail(log_path)}" if log_path else "")
    )


def pid_alive(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def started_at(pid: int) -> float:
    """The start time of process `pid`; with the pid it identifies the process across reuse."""
    return float(psutil.Process(pid).create_time())


def is_same_process(pid: int, expected_start: float) -> bool:
    """True when `pid` is alive and is still the process that started at `expected_start`."""
    try:
        return pid_alive(pid) and abs(started_at(pid) - expected_start) < 0.01
    except psutil.NoSuchProcess:
        return False


def stop_tree(pid: int, grace_s: float = 15.0, expected_start: float | None = None) -> None:
    """Stop process `pid` and all its descendants; see `stop_trees`."""
    stop_trees([(pid, expected_start)], grace_s)


def stop_trees(roots: Sequence[tuple[int, float | None]], grace_s: float = 15.0) -> None:
    """Stop each root process and all its descendants, all at once; gone pids are a no-op.

    A root given with its start time (from `started_at`) is left alone when its pid now
    belongs to another process. First only the roots get SIGTERM: servers such as
    `ray start --block` shut their children down in order when asked (signalling the children
    too would leave them as unreaped zombies of a busy parent). Descendants still there once
    the roots are gone get SIGTERM, and whatever outlives `grace_s` after that gets SIGKILL.
    """
    stopping: list[psutil.Process] = []
    tree: list[psutil.Process] = []
    for pid, expected_start in roots:
        if expected_start is not None and not is_same_process(pid, expected_start):
            continue
        try:
            root = psutil.Process(pid)
            tree += [root, *root.children(recursive=True)]
            root.send_signal(signal.SIGTERM)
            stopping.append(root)
        except psutil.NoSuchProcess:
            continue
    _, roots_alive = psutil.wait_procs(stopping, timeout=grace_s)
    leftovers = [process for process in tree if process not in roots_alive]
    _signal_all(leftovers, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    _signal_all(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=grace_s)
    for pid, _ in roots:
        _reap(pid)


def _signal_all(processes: Sequence[psutil.Process], signum: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signum)


def _reap(pid: int) -> None:
    """Collect the exit status of a child of this process so it does not stay a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
