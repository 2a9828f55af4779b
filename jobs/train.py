"""`mmdiff train`: train the coupled audio-video U-Net with DDP on Ray Train."""

from __future__ import annotations

import sys

from training.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("mmdiff train", "Train the coupled audio-video U-Net on Ray Train.", "coupled", argv)


if __name__ == "__main__":
    sys.exit(main())
