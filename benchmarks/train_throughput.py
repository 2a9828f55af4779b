"""Training throughput of the real loop on Ray Train: clips/s for the tiny and paper configs
with 1 and 2 CPU workers (DDP over gloo), from synthetic local shards at the real clip size.

Each run is `training.run.train` itself (loader, DDP, EMA, MLflow logging) with `--warmup`
steps and then `--steps` measured steps: the metric `clips_per_second` logged at the last step
covers exactly the measured steps, summed over workers. Batch 1 per worker, fp32.
MLflow goes to a throwaway SQLite file in --workdir.

    .venv/bin/python -m benchmarks.train_throughput [--configs tiny,paper] [--workers 1,2] [--steps 3]
        [--warmup 1] [--gradient-checkpointing]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from benchmarks.loader_throughput import write_shards
from training.config import TrainConfig
from training.run import train


def measure(
    data: Path, workdir: Path, model: str, workers: int, warmup: int, steps: int, batch_size: int, checkpointing: bool
) -> dict:
    name = f"{model}-{workers}w" + ("-ckpt" if checkpointing else "")
    shutil.rmtree(workdir / "runs" / name, ignore_errors=True)
    config = TrainConfig(
        data=str(data),
        output=str(workdir / "runs"),
        model=model,
        workers=workers,
        steps=warmup + steps,
        batch_size=batch_size,
        model_overrides={"gradient_checkpointing": checkpointing},
        log_every=warmup,
        checkpoint_every=warmup + steps,
        run_name=name,
        experiment="train-throughput",
        tracking_uri=f"sqlite:///{workdir}/mlflow.db",
        max_failures=0,
    )
    result = train(config)
    clips_per_second = result.metrics["clips_per_second"]
    return {
        "config": model,
        "gradient_checkpointing": checkpointing,
        "workers": workers,
        "clips_per_s": round(clips_per_second, 4),
        "seconds_per_step": round(workers * batch_size / clips_per_second, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,paper")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (less memory)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmdiff-train-bench"))
    args = parser.parse_args()
    import ray

    data = args.workdir / "data"
    write_shards(data, clips=128)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    for model in args.configs.split(","):
        for workers in args.workers.split(","):
            try:
                row = measure(
                    data,
                    args.workdir,
                    model,
                    int(workers),
                    args.warmup,
                    args.steps,
                    args.batch_size,
                    args.gradient_checkpointing,
                )
            except Exception as error:  # e.g. workers killed for memory: report it and go on
                row = {"config": model, "workers": int(workers), "error": f"{type(error).__name__}: {str(error)[:300]}"}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
