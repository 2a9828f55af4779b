"""Elastic resume on a real local Ray: a run started with 2 workers, stopped, resumed with 1,
stopped, resumed with 2 again. The step count, the MLflow run and the data position continue,
and within an epoch no clip is trained on twice.

The clips each worker consumed are replayed from the data positions the checkpoints hold: a
worker's stream is a pure function of (seed, epoch, rank, world size), and with a shuffle
buffer of one it is simply the samples of its shards in order (`training.shards.assign_shards`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.shard_format import list_shards, read_samples
from tests.fixtures.mlflow_server import MlflowServer
from tests.training.synthetic_shards import write_shards
from training.config import TrainConfig
from training.run import train
from training.session import checkpoint_name
from training.shards import assign_shards
from training.state import position_file, read_state

CLIPS = 4
"""One clip per shard: an epoch of 4 clips, 2 per worker with 2 workers."""
SMALL = {"image_size": 16, "audio_length": 2560}
ATTEMPTS = ((2, 1), (1, 3), (2, 4))
"""(workers, steps up to) of the three attempts: 2 -> 1 -> 2 workers."""


def stream_keys(shards: list[str], rank: int, world_size: int, epoch: int, seed: int) -> list[str]:
    assignment = assign_shards(shards, rank, world_size, epoch, seed)
    assert assignment.sample_stride == 1  # whole shards per worker
    keys = []
    for shard in assignment.shards:
        keys += [sample["__key__"] for sample in read_samples(shard, lambda error: None)]
    return keys


def test_a_run_resumed_with_another_worker_count_continues_without_repeating_a_clip(
    ray_runtime, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    write_shards(tmp_path / "data", clips=CLIPS, clips_per_shard=1, frames=16, image_size=16, audio_length=2560)
    base = TrainConfig(
        data=str(tmp_path / "data"),
        output=str(tmp_path / "runs"),
        model="tiny",
        model_overrides=SMALL,
        batch_size=1,
        shuffle_buffer=1,
        flip=False,
        held_out_share=0.0,
        log_every=1,
        checkpoint_every=1,
        keep_checkpoints=4,
        run_name="elastic",
        experiment="elastic-resume",
        tracking_uri=mlflow_server.tracking_uri,
        max_failures=0,
    )
    results = [train(base.replace(workers=workers, steps=steps)) for workers, steps in ATTEMPTS]

    assert [result.step for result in results] == [steps for _, steps in ATTEMPTS]
    assert len({result.mlflow_run_id for result in results}) == 1
    client = MlflowClient(mlflow_server.tracking_uri)
    run_id = results[0].mlflow_run_id
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "resumed_from_step")] == [(1, 1.0), (3, 3.0)]
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2, 3, 4]

    # Each attempt's final checkpoint: the world size it ran with and every worker's position.
    run_folder = tmp_path / "runs" / "elastic"
    shards = list_shards(base.data)
    seen: dict[int, Counter[str]] = {}
    start = {rank: 0 for rank in range(2)}  # where each worker began in its epoch
    previous_world = None
    for workers, steps in ATTEMPTS:
        folder = run_folder / checkpoint_name(steps)
        assert read_state(folder).world_size == workers
        assert sorted(path.name for path in folder.glob("data-rank*.json")) == [
            position_file(r) for r in range(workers)
        ]
        for rank in range(workers):
            position = json.loads((folder / position_file(rank)).read_text())
            begin = 0 if workers != previous_world else start[rank]
            keys = stream_keys(shards, rank, workers, position["epoch"], base.seed)[begin : position["samples"]]
            seen.setdefault(position["epoch"], Counter()).update(keys)
            start[rank] = position["samples"]
        previous_world = workers
    # 2 -> 1 and 1 -> 2 workers: the old streams do not map onto the new ones, so each
    # resume starts the next epoch (the furthest reached + 1), all clips unseen in it.
    assert sorted(seen) == [0, 1, 2]
    assert [sum(seen[epoch].values()) for epoch in (0, 1, 2)] == [2, 2, 2]  # steps x workers, batch 1
    assert all(count == 1 for counter in seen.values() for count in counter.values()), seen
