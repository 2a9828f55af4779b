"""The driver's NCCL, PyTorch-NCCL and fabric settings, and the prefixes a user adds with
`--forward-env`, reach the Ray Train workers; credentials under those prefixes do not. The
worker runs as many torch threads as the CPUs it reserved (`--cpus-per-worker`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from training.cli import build_parser, config_from_args
from training.config import TrainConfig
from training.run import ray_train_configs

FORWARDED = {
    "NCCL_SOCKET_IFNAME": "lo",
    "NCCL_IB_HCA": "mlx5_0,mlx5_1",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "FI_PROVIDER": "efa",
    "SITE_FABRIC_HOSTS": "10.0.0.1,10.0.0.2",  # the user's own prefix, SITE_FABRIC_
}
KEPT_BACK = {
    "SITE_FABRIC_TOKEN": "canary-fabric-token-0001",  # a secret under the user's prefix
    "NCCL_IB_PASSWORD": "canary-nccl-password-0002",  # a secret under a standard prefix
    "UNRELATED_SETTING": "not asked for",
}


def report_environment(inputs: dict[str, Any]) -> None:
    """A Ray Train worker function: write what this worker sees of `inputs["names"]`."""
    import ray.train
    import torch

    rank = ray.train.get_context().get_world_rank()
    seen = {name: os.environ.get(name) for name in inputs["names"]}
    seen["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
    seen["torch_threads"] = torch.get_num_threads()
    Path(inputs["folder"], f"rank{rank}.json").write_text(json.dumps(seen))


def worker_views(config: TrainConfig, folder: Path, names: list[str]) -> list[dict[str, Any]]:
    """What every worker of a Ray Train run with `config`'s scaling and run settings sees."""
    from ray.train.torch import TorchTrainer

    scaling, run = ray_train_configs(config)
    TorchTrainer(
        report_environment,
        train_loop_config={"names": names, "folder": str(folder)},
        scaling_config=scaling,
        run_config=run,
    ).fit()
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(config.worker_range[0])]


def test_a_worker_sees_the_fabric_settings_and_the_added_prefixes_but_no_credentials(
    ray_runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**FORWARDED, **KEPT_BACK}.items():
        monkeypatch.setenv(name, value)
    argv = ["--data", "unused", "--output", str(tmp_path / "runs"), "--forward-env", "SITE_FABRIC_"]
    argv += ["--cpus-per-worker", "2"]  # the whole session runtime: Ray would set 1 thread by default
    config = config_from_args(build_parser("mmdiff train", "").parse_args(argv), "coupled")
    assert config.forward_env == ("SITE_FABRIC_",)
    (seen,) = worker_views(config, tmp_path, [*FORWARDED, *KEPT_BACK])
    assert {name: seen[name] for name in FORWARDED} == FORWARDED
    assert {name: seen[name] for name in KEPT_BACK} == dict.fromkeys(KEPT_BACK)
    assert (seen["OMP_NUM_THREADS"], seen["torch_threads"]) == ("2", 2)


@pytest.mark.parametrize(
    ("prefixes", "message"),
    [
        ([""], "--forward-env '' is not the start of an environment variable name"),
        (["NCCL-"], "--forward-env 'NCCL-' is not the start"),
        (["A"], "--forward-env 'A' is too broad"),
    ],
)
def test_a_prefix_that_is_no_variable_name_or_too_broad_is_refused(prefixes: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="d", output="o", forward_env=tuple(prefixes))


def test_the_yaml_file_and_the_flags_add_up(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("data: d\noutput: o\nforward_env: [HF_]\n")
    argv = ["--config", str(tmp_path / "run.yaml"), "--forward-env", "UCX_"]
    config = config_from_args(build_parser("mmdiff train", "").parse_args(argv), "coupled")
    assert config.forward_env == ("HF_", "UCX_")
