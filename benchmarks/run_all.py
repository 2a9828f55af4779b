"""Run every benchmark of this folder, one after another, each in its own process with its
default settings; `make bench` calls this.

A benchmark is any module here with a `main` function; a benchmark that needs a tool that is
missing (the ffmpeg CLI, a CUDA device) says so and is counted as skipped, not failed. One
failure does not stop the others; the exit status is non-zero when any failed. Results go to
standard output; `docs/benchmarks.md` holds the recorded ones.

    .venv/bin/python -m benchmarks.run_all [--only NAME,NAME] [--skip NAME,NAME] [--list]
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

FOLDER = Path(__file__).resolve().parent
REQUIREMENTS = {
    "preprocess_throughput": ("the ffmpeg CLI (apt-get install -y ffmpeg)", lambda: shutil.which("ffmpeg") is not None),
    "gpu_check": ("a CUDA device", torch.cuda.is_available),
}
"""Benchmarks that need something this machine may lack: what, and how to tell."""


def benchmark_names() -> list[str]:
    """Modules of this folder that define `main`, in name order (this runner excluded)."""
    names = []
    for path in sorted(FOLDER.glob("*.py")):
        if path.stem in ("__init__", "run_all"):
            continue
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            names.append(path.stem)
    return names


def _names(text: str | None) -> set[str]:
    return {name.strip() for name in (text or "").split(",") if name.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated benchmark names to run")
    parser.add_argument("--skip", help="comma-separated benchmark names to leave out")
    parser.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    args = parser.parse_args(argv)
    names = benchmark_names()
    if args.list:
        print("\n".join(names))
        return 0
    unknown = (_names(args.only) | _names(args.skip)) - set(names)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; known: {', '.join(names)}")
    selected = [n for n in names if (not args.only or n in _names(args.only)) and n not in _names(args.skip)]
    outcomes: dict[str, str] = {}
    for name in selected:
        need, available = REQUIREMENTS.get(name, ("", lambda: True))
        if not available():
            outcomes[name] = f"skipped: needs {need}"
            print(f"== {name}: {outcomes[name]}", flush=True)
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"], cwd=FOLDER.parent)
        elapsed = time.perf_counter() - start
        outcomes[name] = f"ok in {elapsed:.0f} s" if code == 0 else f"FAILED (exit {code}) after {elapsed:.0f} s"
    print("\n== summary")
    for name, outcome in outcomes.items():
        print(f"{name:<24} {outcome}")
    return 1 if any(outcome.startswith("FAILED") for outcome in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
