"""`mmdiff train-sr`: train the 64->256 super-resolution U-Net on Ray Train."""

from __future__ import annotations

import sys

from training.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("mmdiff train-sr", "Train the 64->256 super-resolution U-Net on Ray Train.", "sr", argv)


if __name__ == "__main__":
    sys.exit(main())
