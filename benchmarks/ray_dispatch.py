"""What a task pool costs per task on Ray: N tasks that only sleep, on 2 CPUs, through a Ray
Data `map` and through plain Ray tasks (how `pipeline.run.run_tasks` runs its units). Reports
each run's wall time and the workers' idle seconds against the ideal N * sleep / 2.

    .venv/bin/python -m benchmarks.ray_dispatch [--tasks 24] [--sleep 1.0] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import time

import ray

WORKERS = 2


def sleep_row(row: dict, seconds: float) -> dict:
    started = time.time()
    time.sleep(seconds)
    return {"started": started, "ended": time.time()}


def summary(spans: list[dict], started: float, ended: float) -> dict:
    first = min(span["started"] for span in spans)
    last = max(span["ended"] for span in spans)
    busy = sum(span["ended"] - span["started"] for span in spans)
    return {
        "wall_s": round(ended - started, 2),
        "first_task_after_s": round(first - started, 2),
        "idle_worker_s": round(WORKERS * (last - first) - busy, 2),
    }


def ray_data_map(tasks: int, seconds: float) -> dict:
    started = time.time()
    dataset = ray.data.from_items([{"index": index} for index in range(tasks)], override_num_blocks=tasks)
    spans = list(
        dataset.map(
            sleep_row, fn_kwargs={"seconds": seconds}, compute=ray.data.TaskPoolStrategy(size=WORKERS), num_cpus=1
        ).iter_rows()
    )
    return summary(spans, started, time.time())


def plain_tasks(tasks: int, seconds: float) -> dict:
    remote = ray.remote(num_cpus=1)(sleep_row)
    started = time.time()
    spans = ray.get([remote.remote({}, seconds) for _ in range(tasks)])
    return summary(spans, started, time.time())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--sleep", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    runs = [
        {"ray_data_map": ray_data_map(args.tasks, args.sleep), "plain_tasks": plain_tasks(args.tasks, args.sleep)}
        for _ in range(args.repeats)
    ]
    ray.shutdown()
    ideal = args.tasks * args.sleep / WORKERS
    print(json.dumps({"tasks": args.tasks, "sleep_s": args.sleep, "ideal_wall_s": ideal, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
