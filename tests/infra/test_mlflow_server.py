"""The `mlflow_server` fixture runs a real tracking server: runs, proxied artifacts, registry."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from mlflow import MlflowClient

from tests.fixtures.mlflow_server import MlflowServer


def test_server_answers_health(mlflow_server: MlflowServer) -> None:
    with urllib.request.urlopen(f"{mlflow_server.tracking_uri}/health", timeout=5) as response:
        assert response.read().decode().strip() == "OK"


def test_run_artifact_and_alias_round_trip(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    experiment_id = client.create_experiment("infra-fixture-check")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "loss", 0.25, step=3)
    note = tmp_path / "note.txt"
    note.write_text("proxied through the server")
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)

    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = list(mlflow_server.artifacts_dir.rglob("note.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "proxied through the server"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(3, 0.25)]

    client.create_registered_model("infra-fixture-model")
    version = client.create_model_version(
        "infra-fixture-model", f"runs:/{run.info.run_id}/note.txt", run_id=run.info.run_id
    )
    client.set_registered_model_alias("infra-fixture-model", "champion", version.version)
    assert client.get_model_version_by_alias("infra-fixture-model", "champion").version == "1"
