"""`mmdiff <command> ...`: dispatches to `jobs.<command>.main`.

Commands are imported only when run, so `mmdiff --help` stays fast and a command's heavy
dependencies (Ray, MLflow) load only for the commands that need them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "preprocess": (
        "jobs.preprocess",
        "decode a video corpus into WebDataset shards of 16-frame clips with audio (Ray tasks)",
    ),
    "curate": (
        "jobs.curate",
        "summarise the curation signals of a preprocessed corpus: table, histograms, what filters keep",
    ),
    "train": ("jobs.train", "train the coupled audio-video U-Net with DDP on Ray Train"),
    "train-sr": ("jobs.train_sr", "train the 64->256 super-resolution U-Net on Ray Train"),
    "sample": ("jobs.sample", "generate audio-video clips (joint or zero-shot conditional) as mp4 and PNG"),
    "evaluate": (
        "jobs.evaluate",
        "score a model on the held-out split (loss, FVD, KVD, FAD, sync, memorisation) and log it to MLflow",
    ),
    "promote": ("jobs.promote", "move the MLflow registry alias 'champion' to a better model version"),
    "demo": ("jobs.demo", "run corpus -> shards -> training -> samples -> registry on one machine"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdiff",
        description="MM-Diffusion: joint audio-video generation, trained on Ray, tracked in MLflow.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items())
        + "\n\nRun `mmdiff <command> --help` for a command's options.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command", help="one of the commands below")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        _parser().print_help()
        return 0
    parser = _parser()
    args = parser.parse_args(argv[:1])
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
