"""An MLflow tracking server process: SQLite backend, artifacts proxied to a folder or to S3."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from infra.local.process import LOOPBACK, spawn, wait_for_http


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


def start_mlflow_server(
    config: MlflowServerConfig,
    log_path: Path,
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
) -> int:
    """Start the server, wait until `/health` answers, and return its pid."""
    env = {**os.environ, **(extra_env or {})}
    process = spawn(mlflow_server_command(config), log_path, env=env)
    wait_for_http("MLflow server", config.health_url, timeout_s, process.pid, log_path)
    return process.pid
