"""`mmdiff demo`: corpus → shards → training → evaluation → registry → samples, on one machine.

Every stage runs the same `mmdiff` command a user would type: in this process on the embedded
defaults (a local Ray, local folders, MLflow in `sqlite:///mlflow.db`), or with `--stack`
through `ray job submit` against the local stack (`make stack`), with `s3://` URIs and the
stack's MLflow server.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL_NAME = "mmdiff-demo"
TRAINING_SAMPLE_STEPS = 10
"""DPM-Solver++ steps of the samples the training run logs (at most the demo's --sampler-steps)."""


@dataclass(frozen=True)
class DemoConfig:
    output: Path = Path("demo_output")
    corpus: str | None = None
    """A folder, s3:// prefix or list file of videos; None: a synthetic bouncing-ball corpus."""
    stack: bool = False
    videos: int = 12
    """Videos in the synthetic corpus."""
    model_config: str = "tiny"
    steps: int = 100
    batch_size: int = 1
    workers: int = 2
    samples: int = 2
    sampler_steps: int = 25
    eval_clips: int = 8
    held_out_videos: int = 2
    """Source videos held out from training: validation and evaluation read their clips."""
    val_every: int = 50
    """Steps between the training run's held-out losses (2 clips) in MLflow; 0: none."""
    sample_every: int = 50
    """Steps between the training run's samples (1 clip, DPM-Solver++ 10) in MLflow; 0: none."""
    model_name: str = DEFAULT_MODEL_NAME
    run_name: str = field(default_factory=lambda: time.strftime("demo-%Y%m%d-%H%M%S"))

    def __post_init__(self) -> None:
        for name in (*_COUNTS, *_INTERVALS):
            least = 1 if name in _COUNTS else 0
            if getattr(self, name) < least:
                raise ValueError(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(self, name)}")


_COUNTS = ("videos", "steps", "batch_size", "workers", "samples", "sampler_steps", "eval_clips", "held_out_videos")
_INTERVALS = ("val_every", "sample_every")
"""0 turns them off."""


Runner = Callable[[str, list[str]], int]


def run_in_process(command: str, argv: list[str]) -> int:
    module = importlib.import_module(f"jobs.{command.replace('-', '_')}")
    return int(module.main(argv) or 0)


def stack_runner() -> tuple[Runner, dict[str, str]]:
    """A runner that submits each command to the local stack's Ray head, and the stack's
    client environment (S3 endpoint, keys, MLflow URI, Ray address and token)."""
    from infra.local.stack import running_stack
    from infra.local.submit import ray_job_submit

    state = running_stack(Path(".stack"))
    if state is None:
        raise SystemExit("mmdiff demo --stack: no local stack is running; start it with `make stack`")

    def submit(command: str, argv: list[str]) -> int:
        module = f"jobs.{command.replace('-', '_')}"
        return ray_job_submit(state, ["python", "-m", module, *argv], working_dir=Path.cwd()).returncode

    return submit, state.client_env()


class Stages:
    """Runs the stages in order, showing which one runs and how long each took."""

    def __init__(self, runner: Runner, total: int) -> None:
        self.runner, self.total, self.done = runner, total, 0
        self.started = time.monotonic()

    def run(self, title: str, command: str, argv: list[str], allowed_codes: tuple[int, ...] = (0,)) -> int:
        self.done += 1
        print(f"\n=== [{self.done}/{self.total}] {title}\n    mmdiff {command} {shlex.join(argv)}", flush=True)
        start = time.monotonic()
        code = self.runner(command, argv)
        print(f"    ({time.monotonic() - start:.0f} s, {time.monotonic() - self.started:.0f} s in all)", flush=True)
        if code not in allowed_codes:
            raise SystemExit(f"mmdiff demo: stage '{title}' failed with exit code {code}")
        return code


def newest_version(model_name: str) -> str:
    from mlflow import MlflowClient

    versions = MlflowClient().search_model_versions(f"name='{model_name}'")
    if not versions:
        raise SystemExit(f"mmdiff demo: training registered no version of {model_name!r}")
    return str(max(int(v.version) for v in versions))


def held_out_share(data: str, videos: int) -> float:
    """The held-out share that holds out exactly `videos` of the preprocessed source videos
    (those placed lowest by `pipeline.shard_format.source_position`): a fixed share of a
    dozen videos may hold out none of them."""
    import pyarrow.parquet as pq

    from pipeline.shard_format import MANIFEST_FILE, source_position
    from pipeline.storage import join, resolve

    filesystem, path = resolve(join(data, MANIFEST_FILE))
    keys = pq.read_table(path, columns=["key"], filesystem=filesystem)["key"].to_pylist()
    positions = sorted({source_position(key) for key in keys})
    if len(positions) <= videos:
        raise SystemExit(
            f"mmdiff demo: {len(positions)} source videos were preprocessed; holding out {videos} leaves none to train on"
        )
    return (positions[videos - 1] + positions[videos]) / 2


def run_demo(config: DemoConfig) -> dict[str, str]:
    """Run every stage; return where each output is."""
    from pipeline.synthetic import write_demo_corpus

    output = config.output.resolve()
    if config.stack:
        runner, environment = stack_runner()
        os.environ.update(environment)
        remote = f"s3://mmdiff/demo/{config.run_name}"
        data, runs = f"{remote}/data", f"{remote}/runs"
    else:
        runner = run_in_process
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")
        data, runs = str(output / "data"), str(output / "runs")
    corpus = config.corpus
    if corpus is None:
        print(f"Writing a synthetic corpus of {config.videos} bouncing-ball videos to {output / 'corpus'}", flush=True)
        write_demo_corpus(output / "corpus", count=config.videos)
        corpus = str(output / "corpus")
    samples = output / "samples" / config.run_name

    stages = Stages(runner, total=5)
    stages.run(
        "preprocess the corpus into WebDataset shards (Ray tasks)",
        "preprocess",
        ["--input", corpus, "--output", data, "--workers", str(config.workers)],
    )
    share = held_out_share(data, config.held_out_videos)
    stages.run(
        f"train the {config.model_config} coupled U-Net with {config.workers} DDP workers (Ray Train), "
        f"holding out {config.held_out_videos} videos",
        "train",
        [
            "--data",
            data,
            "--output",
            runs,
            "--config",
            config.model_config,
            "--workers",
            str(config.workers),
            "--steps",
            str(config.steps),
            "--batch-size",
            str(config.batch_size),
            "--lr",
            "5e-4",
            "--log-every",
            "10",
            "--checkpoint-every",
            str(max(config.steps // 3, 1)),
            "--held-out-share",
            f"{share:.12f}",
            "--val-every",
            str(config.val_every),
            "--val-clips",
            "2",
            "--sample-every",
            str(config.sample_every),
            "--sample-clips",
            "1",
            "--sample-steps",
            str(min(TRAINING_SAMPLE_STEPS, config.sampler_steps)),
            "--run-name",
            config.run_name,
            "--register-as",
            config.model_name,
        ],
    )
    version = newest_version(config.model_name)
    evaluation = ["--data", data, "--num", str(config.eval_clips)]
    stages.run(
        f"evaluate version {version} (held-out loss)",
        "evaluate",
        ["--model", f"models:/{config.model_name}/{version}", "--metrics", "val_loss", *evaluation],
    )
    promoted = stages.run(
        f"promote version {version} if it beats the champion",
        "promote",
        ["--name", config.model_name, "--version", version, "--metric", "val_loss", *evaluation],
        allowed_codes=(0, 1),
    )
    if promoted == 1:
        print("    the champion stays: this run's model is kept as 'challenger'", flush=True)
    stages.run(
        "sample clips from the champion (DPM-Solver++)",
        "sample",
        [
            "--model",
            f"models:/{config.model_name}@champion",
            "--num",
            str(config.samples),
            "--sampler",
            "dpm-solver++",
            "--steps",
            str(config.sampler_steps),
            "--seed",
            "0",
            "--output",
            str(samples),
        ],
    )

    outputs = {
        "corpus": corpus,
        "shards": f"{data}/shards",
        "checkpoints and loss curve": f"{runs}/{config.run_name}",
        "training run in MLflow": f"{config.run_name}: val_loss every {config.val_every} steps, samples/step_*",
        "samples (mp4 + PNG)": str(samples),
        "registered model": f"models:/{config.model_name}/{version} (champion: models:/{config.model_name}@champion)",
        "MLflow": os.environ["MLFLOW_TRACKING_URI"],
    }
    print("\nDone. Outputs:")
    for name, where in outputs.items():
        print(f"  {name:<28} {where}")
    tracking = os.environ["MLFLOW_TRACKING_URI"]
    if tracking.startswith("sqlite:"):
        print(f"\nOpen the MLflow UI with:\n  .venv/bin/mlflow ui --backend-store-uri {tracking} --port 5000")
    else:
        print(f"\nThe MLflow UI is at {tracking}")
    return outputs


def _parser() -> argparse.ArgumentParser:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="mmdiff demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", type=Path, default=defaults.output, help="folder for every output (default %(default)s)"
    )
    parser.add_argument(
        "--corpus", help="your videos: a folder, s3:// prefix or list file (default: a synthetic corpus)"
    )
    parser.add_argument(
        "--stack", action="store_true", help="run through `ray job submit` on the local stack (make stack)"
    )
    for name in (*_COUNTS, *_INTERVALS):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name), help="default %(default)s"
        )
    parser.add_argument("--model-config", default=defaults.model_config, help="model preset (default %(default)s)")
    parser.add_argument("--model-name", default=defaults.model_name, help="registered model name (default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = DemoConfig(**{key: value for key, value in vars(args).items()})
    except ValueError as error:
        print(f"mmdiff demo: error: {error}", file=sys.stderr)
        return 2
    run_demo(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
