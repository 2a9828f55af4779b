"""Fixtures of the evaluation tests: MLflow in both deployments, tiny models, small shards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import mlflow
import pytest
import torch

from mmdiffusion import CoupledUNet, CoupledUNetConfig


@pytest.fixture(params=["server", "embedded"])
def tracking_uri(request: pytest.FixtureRequest, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """MLflow behind a real `mlflow server` process, and the embedded SQLite default."""
    if request.param == "server":
        uri = request.getfixturevalue("mlflow_server").tracking_uri
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(f"evaluation-{uuid.uuid4().hex[:8]}")
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture
def model_name() -> str:
    return f"mmdiff-{uuid.uuid4().hex[:8]}"


def tiny_model(seed: int) -> CoupledUNet:
    torch.manual_seed(seed)
    return CoupledUNet(CoupledUNetConfig.named("tiny")).eval()


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
