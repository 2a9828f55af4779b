"""A Ray head node on loopback whose dashboard accepts `ray job submit`.

Every listener of the head (GCS, raylet, object manager, client server, agents, dashboard)
and of its workers binds 127.0.0.1. Ray binds its servers to the node's IP, but `ray start`
on Linux turns a loopback `--node-ip-address` into the machine's routable address (Ray's
cluster mode); `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` selects the single-machine mode Ray uses
on macOS and Windows, in which the node IP, and so every bind address, stays 127.0.0.1.
Workers and job drivers inherit that setting from the head; a driver started elsewhere on
this machine needs it too (it is in `client_env`), or it would look for a raylet at the
machine's address.

The head runs as `ray start --head --block` under our own process, so stopping that process
tree stops exactly this head (`ray stop` would stop every Ray runtime of the machine). Every
port is given explicitly and the head gets its own `--temp-dir`, so it neither collides with
nor is discovered by another local Ray runtime (a plain `ray.init()` looks for the latest
cluster in the default temp dir).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from infra.local.process import LOOPBACK, ServerLaunch, free_ports, launch_server

# Unix socket paths are limited to 107 bytes; Ray puts its sockets about 60 bytes below the
# temp dir (session_<timestamp>_<pid>/sockets/plasma_store).
MAX_TEMP_DIR_CHARS = 45

LOOPBACK_NODE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Keeps a node's IP, and with it every Ray bind address, on loopback (see the module doc)."""


def new_auth_token() -> str:
    """256 random bits, hex-encoded, the form of the tokens `ray get-auth-token` makes."""
    return secrets.token_hex(32)


@dataclass(frozen=True)
class RayHeadPorts:
    gcs: int
    dashboard: int
    client_server: int
    dashboard_agent_http: int
    dashboard_agent_grpc: int
    runtime_env_agent: int
    metrics_export: int
    node_manager: int
    object_manager: int

    @classmethod
    def pick_free(cls, gcs: int | None = None, dashboard: int | None = None) -> RayHeadPorts:
        """Free ports for every listener; `gcs` and `dashboard` may be fixed by the caller."""
        ports = iter(free_ports(9))
        return cls(
            gcs=gcs or next(ports),
            dashboard=dashboard or next(ports),
            client_server=next(ports),
            dashboard_agent_http=next(ports),
            dashboard_agent_grpc=next(ports),
            runtime_env_agent=next(ports),
            metrics_export=next(ports),
            node_manager=next(ports),
            object_manager=next(ports),
        )


@dataclass(frozen=True)
class RayHeadConfig:
    """`auth_token` is the head's bearer token (Ray token authentication, `RAY_AUTH_MODE=token`):
    Ray 2.59+ turns token auth on for local clusters whenever ~/.ray/auth_token exists, so the
    head gets an explicit token of its own and its clients get it through `client_env`.
    """

    ports: RayHeadPorts
    temp_dir: Path
    auth_token: str = field(default_factory=new_auth_token, repr=False)
    num_cpus: int = 2
    num_gpus: int = 0
    object_store_bytes: int | None = None
    host: str = LOOPBACK

    @property
    def dashboard_url(self) -> str:
        """The address for `ray job submit --address` and `RAY_ADDRESS` of job clients."""
        return f"http://{self.host}:{self.ports.dashboard}"

    @property
    def auth_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.auth_token}"}

    def client_env(self) -> dict[str, str]:
        """What `ray job submit` and the job SDK need in their environment to reach this head."""
        return {
            "RAY_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.auth_token,
            **LOOPBACK_NODE_ENV,
        }

    @property
    def gcs_address(self) -> str:
        """The address drivers on this machine pass to `ray.init(address=...)`."""
        return f"{self.host}:{self.ports.gcs}"


def worker_node_port_flags() -> list[str]:
    """`ray start` flags giving a worker node's own listeners free ports, every one explicit
    (so that none takes a default port another node on this machine holds)."""
    ports = iter(free_ports(6))
    names = (
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    )
    return [f"--{name}={next(ports)}" for name in names]


def check_temp_dir(temp_dir: Path) -> None:
    if not temp_dir.is_absolute() or len(str(temp_dir)) > MAX_TEMP_DIR_CHARS:
        raise ValueError(
            f"Ray temp dir {temp_dir} must be an absolute path of at most "
            f"{MAX_TEMP_DIR_CHARS} characters (Ray's Unix sockets live below it)"
        )


def ray_head_command(config: RayHeadConfig) -> list[str]:
    ports = config.ports
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        f"--node-ip-address={config.host}",
        f"--port={ports.gcs}",
        f"--num-cpus={config.num_cpus}",
        f"--num-gpus={config.num_gpus}",
        "--include-dashboard=true",
        f"--dashboard-host={config.host}",
        f"--dashboard-port={ports.dashboard}",
        f"--ray-client-server-port={ports.client_server}",
        f"--dashboard-agent-listen-port={ports.dashboard_agent_http}",
        f"--dashboard-agent-grpc-port={ports.dashboard_agent_grpc}",
        f"--runtime-env-agent-port={ports.runtime_env_agent}",
        f"--metrics-export-port={ports.metrics_export}",
        f"--node-manager-port={ports.node_manager}",
        f"--object-manager-port={ports.object_manager}",
        f"--temp-dir={config.temp_dir}",
    ]
    if config.object_store_bytes is not None:
        command.append(f"--object-store-memory={config.object_store_bytes}")
    return command


def launch_ray_head(config: RayHeadConfig, log_path: Path, extra_env: Mapping[str, str] | None = None) -> ServerLaunch:
    """Spawn the head; healthy once its job API answers.

    `extra_env` reaches every worker and job driver of this head (they inherit the raylet's
    environment), e.g. the object store endpoint and the MLflow tracking URI.
    """
    check_temp_dir(config.temp_dir)
    config.temp_dir.mkdir(parents=True, exist_ok=True)
    # `python` in a job's entrypoint must be this environment's interpreter.
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        **(extra_env or {}),
        **config.client_env(),
    }
    env.pop("RAY_ADDRESS")
    return launch_server(
        "Ray head (dashboard job API)",
        ray_head_command(config),
        log_path,
        f"{config.dashboard_url}/api/jobs/",
        env,
        health_headers=config.auth_header,
    )


def start_ray_head(
    config: RayHeadConfig,
    log_path: Path,
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
) -> int:
    """Start the head, wait until its job API answers, and return the pid of `ray start`."""
    return launch_ray_head(config, log_path, extra_env).wait_healthy(timeout_s)
