"""The shared command line of `mmdiff train` and `mmdiff train-sr`.

`--config` takes a preset name (paper, small, tiny) or a YAML file of `TrainConfig` fields;
flags given on the command line override the file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from training.config import MODEL_PRESETS, Task, TrainConfig, parse_workers, read_yaml
from training.resolver import MODEL_FORMS

# flag -> TrainConfig field, for the options that map one to one
_FIELD_FLAGS: dict[str, tuple[str, type, str]] = {
    "--data": ("data", str, "preprocessing output holding shards/ (or the shard folder); local or s3://"),
    "--output": ("output", str, "where checkpoints and run files go; local folder or s3://"),
    "--steps": ("steps", int, "optimizer steps in total (a resumed run continues up to it)"),
    "--batch-size": ("batch_size", int, "clips per worker per micro-batch"),
    "--grad-accum": ("grad_accum", int, "micro-batches per optimizer step"),
    "--lr": ("lr", float, "AdamW learning rate (default 1e-4)"),
    "--precision": (
        "precision",
        str,
        "auto, fp32, bf16 or fp16 (autocast; fp16 with a gradient scaler; auto: bf16 on a CUDA device that has it)",
    ),
    "--cpus-per-worker": (
        "cpus_per_worker",
        float,
        "CPUs each worker reserves for its input and torch threads (default 1, with --gpus 8)",
    ),
    "--ema-rate": ("ema_rate", float, "EMA decay once warmed up (default 0.9999)"),
    "--log-every": ("log_every", int, "steps between logged metrics"),
    "--checkpoint-every": ("checkpoint_every", int, "steps between checkpoints"),
    "--max-failures": ("max_failures", int, "worker-group restarts from the last checkpoint before giving up"),
    "--run-name": ("run_name", str, "run name: rerunning with the same name and output resumes it"),
    "--register-as": ("register_as", str, "register the final EMA model under this MLflow model name"),
    "--init-from": ("init_from", str, "start from a model: " + MODEL_FORMS),
    "--experiment": ("experiment", str, "MLflow experiment name"),
    "--held-out-share": (
        "held_out_share",
        float,
        "share of the source videos held out from training, by a hash of each source's URI (default 0.05)",
    ),
    "--filter": (
        "filter",
        str,
        "train only on the manifest rows this expression keeps, e.g. 'audio_rms_db > -50 and scene_cuts == 0'",
    ),
    "--seed": ("seed", int, "random seed"),
    "--prefetch": ("prefetch", int, "batches decoded ahead of the step in a background thread (default 2; 0: none)"),
    "--decode-threads": ("decode_threads", int, "threads decoding samples for the prefetching thread (default 1)"),
}


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--config", default=None, help=f"model preset ({', '.join(MODEL_PRESETS)}) or a YAML file of TrainConfig fields"
    )
    parser.add_argument("--workers", default=None, help="N workers, or MIN:MAX for elastic training")
    parser.add_argument("--gpus", action="store_true", default=None, help="one GPU per worker (NCCL)")
    parser.add_argument(
        "--shared-filesystem",
        action="store_true",
        default=None,
        help="local --data/--output paths are on a filesystem every Ray node mounts (else refused on a multi-node cluster)",
    )
    parser.add_argument(
        "--forward-env",
        action="append",
        default=None,
        metavar="PREFIX",
        help="also hand the workers the driver's variables starting with PREFIX (repeatable; "
        "AWS_, MLFLOW_, MMDIFF_, NCCL_, TORCH_NCCL_, FI_ always; credentials never)",
    )
    for flag, (_, kind, help_) in _FIELD_FLAGS.items():
        parser.add_argument(flag, type=kind, default=None, help=help_)
    return parser


def config_from_args(args: argparse.Namespace, task: Task) -> TrainConfig:
    values: dict[str, Any] = {}
    if args.config in MODEL_PRESETS:
        values["model"] = args.config
    elif args.config is not None:
        values.update(read_yaml(args.config))
    for flag, (field_name, _, _) in _FIELD_FLAGS.items():
        given = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if given is not None:
            values[field_name] = given
    if args.workers is not None:
        values["workers"] = parse_workers(args.workers)
    if args.gpus:
        values["gpus"] = True
    if args.shared_filesystem:
        values["shared_filesystem"] = True
    if args.forward_env:
        values["forward_env"] = [*values.get("forward_env", ()), *args.forward_env]
    missing = [name for name in ("data", "output") if name not in values]
    if missing:
        raise ValueError(
            f"missing {' and '.join('--' + name for name in missing)} (give the flag or set it in the YAML file)"
        )
    values["task"] = task
    return TrainConfig.from_dict(values)


def run_command(prog: str, description: str, task: Task, argv: list[str] | None) -> int:
    """Parse, train, print the result; a bad input is one clear line on stderr and exit code 2."""
    from pipeline.shard_format import DataError
    from training.run import NonFiniteLossError, train

    parser = build_parser(prog, description)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args, task)
        result = train(config)
    except (DataError, ValueError, FileNotFoundError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    print(f"run {result.run_name}: step {result.step}, loss {result.metrics.get('loss', float('nan')):.4f}")
    print(f"  checkpoint:   {result.checkpoint}")
    print(f"  MLflow run:   {result.mlflow_run_id}")
    print(
        f"  model:        {result.model_uri}"
        + (f" (registered version {result.registered_version})" if result.registered_version else "")
    )
    print(f"  loss curve:   {result.loss_curve}")
    return 0
