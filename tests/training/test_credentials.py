"""Secrets stay out of MLflow and out of what Ray ships: a real run on the real MLflow server
with canary secrets in the environment and in the config's URIs, the settings a driver hands
its workers, and the S3 filesystem Ray Train pickles into them."""

from __future__ import annotations

import pickle
import urllib.parse
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.credentials import forwarded_settings
from pipeline.run import storage_environment
from tests.fixtures.mlflow_server import MlflowServer
from training.config import TrainConfig
from training.run import FORWARDED_ENVIRONMENT_PREFIXES, _storage
from training.tracking import open_run

ENVIRONMENT_SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "canary-aws-secret-0001",
    "AWS_SESSION_TOKEN": "canary-aws-session-0002",
    "MLFLOW_TRACKING_PASSWORD": "canary-mlflow-password-0003",
    "RAY_AUTH_TOKEN": "canary-ray-token-0004",
}
URI_SECRET = "canary-in-a-uri-0005"


@pytest.fixture
def canary_environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in ENVIRONMENT_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "mmdiff")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACANARYKEYID")
    return {**ENVIRONMENT_SECRETS, "uri": URI_SECRET}


def test_no_secret_reaches_the_params_or_tags_of_a_run(
    canary_environment: dict[str, str], mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """The tracking URI carries a password (sent to the server as basic auth, which it
    ignores), the checkpoint to start from is a presigned URL with the session token in it."""
    server = urllib.parse.urlsplit(mlflow_server.tracking_uri)
    tracking_uri = f"{server.scheme}://mmdiff:{URI_SECRET}@{server.netloc}"
    presigned = (
        f"https://weights.s3.amazonaws.com/base.pt?X-Amz-Security-Token={ENVIRONMENT_SECRETS['AWS_SESSION_TOKEN']}"
    )
    config = TrainConfig(
        data=str(tmp_path / "data"),
        output=f"s3://AKIACANARYKEYID:{ENVIRONMENT_SECRETS['AWS_SECRET_ACCESS_KEY']}@runs/coupled",
        run_name="secret-free",
        experiment="credentials-test",
        tracking_uri=tracking_uri,
        init_from=presigned,
    )
    run = MlflowClient(mlflow_server.tracking_uri).get_run(open_run(config, tracking_uri, shard_count=1))
    recorded = {**run.data.params, **run.data.tags}
    leaks = [
        (key, secret)
        for key, value in recorded.items()
        for secret in canary_environment.values()
        if secret in key + value
    ]
    assert not leaks, leaks
    assert run.data.params["tracking_uri"] == f"{server.scheme}://***@{server.netloc}"
    assert run.data.params["output"] == "s3://***@runs/coupled"
    assert run.data.params["init_from"].endswith("X-Amz-Security-Token=***")
    assert run.data.params["model"] == "tiny" and "diffusion.steps" in run.data.params  # all else as before


def test_workers_are_handed_settings_but_no_credentials(canary_environment: dict[str, str], monkeypatch) -> None:
    for name, value in {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_REGION": "us-east-1",
        "AWS_PROFILE": "ops",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "MLFLOW_TRACKING_TOKEN": "canary-mlflow-token-0006",
        "MMDIFF_CRASH_DRILL": "step=3,rank=1",
    }.items():
        monkeypatch.setenv(name, value)
    training = forwarded_settings(FORWARDED_ENVIRONMENT_PREFIXES)
    assert {"AWS_ENDPOINT_URL", "AWS_REGION", "MLFLOW_TRACKING_URI", "MMDIFF_CRASH_DRILL"} <= set(training)
    preprocessing = storage_environment()
    assert {"AWS_ENDPOINT_URL", "AWS_REGION"} <= set(preprocessing)
    for forwarded in (training, preprocessing):
        assert not {"AWS_ACCESS_KEY_ID", "AWS_PROFILE", "MLFLOW_TRACKING_USERNAME"} & set(forwarded)
        assert not [name for name, value in forwarded.items() if "canary" in value], forwarded


def test_the_checkpoint_filesystem_ray_pickles_holds_no_key(canary_environment: dict[str, str], monkeypatch) -> None:
    """Ray Train pickles `storage_filesystem` into its controller and every worker."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    path, filesystem = _storage("s3://runs/coupled")
    pickled = pickle.dumps(filesystem)
    assert path == "runs/coupled" and b"127.0.0.1:9000" in pickled
    assert b"canary" not in pickled and b"AKIACANARYKEYID" not in pickled
