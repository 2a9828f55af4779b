"""`make stack` / `make stack-down`: the production topology on one machine, on loopback.

    python -m infra.local.stack up [--state-dir .stack] [--s3-port 8333] ...
    python -m infra.local.stack status
    python -m infra.local.stack down [--purge]

`up` starts a SeaweedFS S3 store, an MLflow tracking server (SQLite in the state folder,
artifacts proxied into the store's `mlflow` bucket) and a Ray head whose dashboard accepts
`ray job submit`; it writes `<state-dir>/state.json` (pids, ports, addresses), logs under
`<state-dir>/logs/` and `<state-dir>/env`, a file to `source` so that `ray job submit`, MLflow
clients and S3 clients find the stack. Running `up` twice or `down` twice is harmless.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infra.local.mlflow_server import MlflowServerConfig, launch_mlflow_server, sqlite_uri
from infra.local.process import (
    LOOPBACK,
    ServerLaunch,
    ServiceStartError,
    free_port,
    http_ok,
    is_same_process,
    port_is_free,
    started_at,
    stop_trees,
)
from infra.local.ray_head import LOOPBACK_NODE_ENV, RayHeadConfig, RayHeadPorts, launch_ray_head
from infra.local.seaweed import (
    S3_REGION,
    SeaweedConfig,
    SeaweedPorts,
    ensure_buckets,
    launch_seaweed,
)

DEFAULT_STATE_DIR = Path(".stack")
DATA_BUCKET = "mmdiff"
MLFLOW_BUCKET = "mlflow"
# Loopback-only development credentials, used when the caller's environment sets none.
DEFAULT_ACCESS_KEY = "mmdiff-local"
DEFAULT_SECRET_KEY = "mmdiff-local-secret"


@dataclass(frozen=True)
class StackConfig:
    """What `up` starts. A port of 0 means: pick a free one."""

    state_dir: Path = DEFAULT_STATE_DIR
    s3_port: int = 8333
    mlflow_port: int = 5000
    ray_dashboard_port: int = 8265
    ray_num_cpus: int = 2
    ray_object_store_bytes: int | None = None
    access_key: str = DEFAULT_ACCESS_KEY
    secret_key: str = DEFAULT_SECRET_KEY
    startup_timeout_s: float = 120.0


@dataclass(frozen=True)
class Service:
    """One started server: its pid with start time (to recognise it later) and health URL."""

    name: str
    pid: int
    started_at: float
    health_url: str
    log_path: str
    health_headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_launch(cls, name: str, launch: ServerLaunch) -> Service:
        return cls(
            name,
            launch.pid,
            started_at(launch.pid),
            launch.health_url,
            str(launch.log_path),
            dict(launch.health_headers),
        )

    def healthy(self) -> bool:
        return self.alive() and http_ok(self.health_url, self.health_headers)

    def alive(self) -> bool:
        return is_same_process(self.pid, self.started_at)


@dataclass(frozen=True)
class StackState:
    """Everything a client needs to use a running stack (also saved as state.json)."""

    ray_dashboard_url: str
    ray_gcs_address: str
    ray_auth_token: str
    mlflow_tracking_uri: str
    s3_endpoint_url: str
    data_uri: str
    access_key: str
    secret_key: str
    services: list[Service] = field(default_factory=list)

    def client_env(self) -> dict[str, str]:
        """The environment of a client (shell, job driver) of this stack."""
        return {
            "RAY_ADDRESS": self.ray_dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.ray_auth_token,
            **LOOPBACK_NODE_ENV,
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
            "AWS_ENDPOINT_URL": self.s3_endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_REGION": S3_REGION,
            "MMDIFF_DATA_URI": self.data_uri,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        raw = json.loads(text)
        services = [Service(**service) for service in raw.pop("services")]
        return cls(**raw, services=services)


def state_path(state_dir: Path) -> Path:
    return state_dir / "state.json"


def env_path(state_dir: Path) -> Path:
    return state_dir / "env"


def load_stack(state_dir: Path = DEFAULT_STATE_DIR) -> StackState | None:
    """The state of the stack started from `state_dir`, or None when none was started."""
    path = state_path(state_dir)
    if not path.exists():
        return None
    return StackState.from_json(path.read_text())


def running_stack(state_dir: Path = DEFAULT_STATE_DIR) -> StackState | None:
    """The stack started from `state_dir` when all its servers still run, else None."""
    state = load_stack(state_dir)
    if state is None or not all(service.alive() for service in state.services):
        return None
    return state


def ray_temp_dir(state_dir: Path) -> Path:
    """A short temp dir unique to this state folder (Ray's socket paths must stay short)."""
    digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return Path("/tmp") / f"mmdiff-ray-{digest}"


def _choose_port(requested: int, what: str, flag: str) -> int:
    if requested == 0:
        return free_port()
    if not port_is_free(requested):
        raise ServiceStartError(
            f"port {requested} for {what} is in use on {LOOPBACK}; "
            f"pass {flag} with another port, or {flag} 0 for a free one"
        )
    return requested


def _write_env_file(state: StackState, path: Path) -> None:
    lines = ["# Written by `python -m infra.local.stack up`; use with: source " + str(path)]
    lines += [f"export {name}={value}" for name, value in state.client_env().items()]
    _write_private(path, "\n".join(lines) + "\n")


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds the Ray token and the S3 keys)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def up(config: StackConfig) -> StackState:
    """Start the stack, or return the running one; on a failed start, stop what was started.

    The three servers start side by side (none needs another to boot), then each is awaited.
    """
    state_dir = config.state_dir.resolve()
    running = running_stack(state_dir)
    if running is not None:
        return running
    down(state_dir)  # what is left of a stack of which some server died
    s3 = SeaweedConfig(
        data_dir=state_dir / "seaweed",
        ports=SeaweedPorts.pick_free(_choose_port(config.s3_port, "the S3 store", "--s3-port")),
        access_key=config.access_key,
        secret_key=config.secret_key,
    )
    mlflow_config = MlflowServerConfig(
        port=_choose_port(config.mlflow_port, "the MLflow server", "--mlflow-port"),
        backend_store_uri=sqlite_uri(state_dir / "mlflow" / "mlflow.db"),
        artifacts_destination=f"s3://{MLFLOW_BUCKET}/artifacts",
    )
    ray_config = RayHeadConfig(
        ports=RayHeadPorts.pick_free(
            dashboard=_choose_port(config.ray_dashboard_port, "the Ray dashboard", "--ray-dashboard-port")
        ),
        temp_dir=ray_temp_dir(state_dir),
        num_cpus=config.ray_num_cpus,
        object_store_bytes=config.ray_object_store_bytes,
    )
    state = StackState(
        ray_dashboard_url=ray_config.dashboard_url,
        ray_gcs_address=ray_config.gcs_address,
        ray_auth_token=ray_config.auth_token,
        mlflow_tracking_uri=mlflow_config.tracking_uri,
        s3_endpoint_url=s3.endpoint_url,
        data_uri=f"s3://{DATA_BUCKET}",
        access_key=config.access_key,
        secret_key=config.secret_key,
    )
    (state_dir / "mlflow").mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    launches: list[tuple[str, ServerLaunch]] = []
    try:
        launches.append(("seaweedfs", launch_seaweed(s3, logs / "seaweed.log")))
        server_env = {
            name: value for name, value in state.client_env().items() if name.startswith(("AWS_", "MLFLOW_S3_"))
        }
        launches.append(("mlflow", launch_mlflow_server(mlflow_config, logs / "mlflow.log", server_env)))
        launches.append(("ray-head", launch_ray_head(ray_config, logs / "ray-head.log", state.client_env())))
        deadline = time.monotonic() + config.startup_timeout_s
        for _, launch in launches:
            launch.wait_healthy(max(1.0, deadline - time.monotonic()))
        ensure_buckets(s3, [DATA_BUCKET, MLFLOW_BUCKET])
        services = [Service.from_launch(name, launch) for name, launch in launches]
    except BaseException:
        stop_trees([(launch.pid, None) for _, launch in launches])
        raise
    state = StackState(**{**asdict(state), "services": services})
    _write_private(state_path(state_dir), state.to_json())
    _write_env_file(state, env_path(state_dir))
    return state


def down(state_dir: Path = DEFAULT_STATE_DIR, purge: bool = False) -> list[str]:
    """Stop the stack's servers; return the names of those that were running."""
    state_dir = state_dir.resolve()
    state = load_stack(state_dir)
    stopped: list[str] = []
    if state is not None:
        stopped = [service.name for service in state.services if service.alive()]
        stop_trees([(service.pid, service.started_at) for service in state.services])
        state_path(state_dir).unlink(missing_ok=True)
        env_path(state_dir).unlink(missing_ok=True)
        shutil.rmtree(ray_temp_dir(state_dir), ignore_errors=True)
    if purge:
        shutil.rmtree(state_dir, ignore_errors=True)
    return stopped


def status(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, bool]:
    """Each service's health: its process lives and its health URL answers."""
    state = load_stack(state_dir.resolve())
    if state is None:
        return {}
    return {service.name: service.healthy() for service in state.services}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.stack", description="Start, check or stop the local stack."
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--s3-port", type=int, default=StackConfig.s3_port)
    parser.add_argument("--mlflow-port", type=int, default=StackConfig.mlflow_port)
    parser.add_argument("--ray-dashboard-port", type=int, default=StackConfig.ray_dashboard_port)
    parser.add_argument("--num-cpus", type=int, default=StackConfig.ray_num_cpus)
    parser.add_argument("--timeout", type=float, default=StackConfig.startup_timeout_s)
    parser.add_argument("--purge", action="store_true", help="down: also delete the stored data")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.command == "up":
        config = StackConfig(
            state_dir=args.state_dir,
            s3_port=args.s3_port,
            mlflow_port=args.mlflow_port,
            ray_dashboard_port=args.ray_dashboard_port,
            ray_num_cpus=args.num_cpus,
            access_key=os.environ.get("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY),
            startup_timeout_s=args.timeout,
        )
        if running_stack(args.state_dir.resolve()) is not None:
            print("stack: already running")
        try:
            state = up(config)
        except (ServiceStartError, ValueError, FileNotFoundError) as error:
            print(f"stack: failed to start: {error}", file=sys.stderr)
            return 1
        print(f"Ray dashboard / job API: {state.ray_dashboard_url}")
        print(f"MLflow tracking server:  {state.mlflow_tracking_uri}")
        print(f"S3 endpoint:             {state.s3_endpoint_url}  (data under {state.data_uri})")
        print(f"Logs:                    {args.state_dir.resolve() / 'logs'}")
        print(f"Use it from a shell:     source {env_path(args.state_dir.resolve())}")
        return 0
    if args.command == "down":
        stopped = down(args.state_dir, purge=args.purge)
        print(f"stack: stopped {', '.join(stopped)}" if stopped else "stack: nothing was running")
        return 0
    health = status(args.state_dir)
    if not health:
        print("stack: not started")
        return 1
    for name, healthy in health.items():
        print(f"{name}: {'healthy' if healthy else 'DOWN'}")
    return 0 if all(health.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
