"""An MLflow tracking server process: SQLite backend, artifacts proxied to a folder or to S3."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from infra.local.process import LOOPBACK, ServerLaunch, launch_server


@dataclass(frozen=True)
class MlflowServerConfig:
    """Where the server keeps runs (`backend_store_uri`) and artifacts (`artifacts_destination`).

    The server proxies artifacts (`--serve-artifacts`), so clients need only the tracking URI,
    never credentials for the artifact store.
    """

    port: int
    backend_store_uri: str
    artifacts_destination: str
    host: str = LOOPBACK
    workers: int = 1

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        return f"{self.tracking_uri}/health"


def sqlite_uri(database: Path) -> str:
    return f"sqlite:///{database.resolve()}"


def mlflow_server_command(config: MlflowServerConfig) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        config.host,
        "--port",
        str(config.port),
        "--workers",
        str(config.workers),
        "--backend-store-uri",
        config.backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        config.artifacts_destination,
    ]


def launch_mlflow_server(
    config: MlflowServerConfig, log_path: Path, extra_env: Mapping[str, str] | None = None
) -> ServerLaunch:
    # The GenAI job runner (seven huey consumer processes) serves nothing this project uses.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(extra_env or {})}
    return launch_server("MLflow server", mlflow_server_command(config), log_path, config.health_url, env)


def start_mlflow_server(
    config: MlflowServerConfig,
    log_path: Path,
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
) -> int:
    """Start the server, wait until `/health` answers, and return its pid."""
    return launch_mlflow_server(config, log_path, extra_env).wait_healthy(timeout_s)
