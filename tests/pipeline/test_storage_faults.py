"""Storage faults are never taken for bad media: the real job on a real Ray against the real
SeaweedFS, through a loopback proxy that cuts connections mid-response and blacks out."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from jobs.preprocess import main as preprocess_main
from pipeline.shard_format import sample_key
from tests.fixtures.media import MediaSet
from tests.fixtures.s3_server import S3Server
from tests.fixtures.tcp_proxy import FaultyProxy

CLIPS_PER_GOOD_FILE = 2
CLIPS_BEFORE_DECODE_ERROR = 1
COPIES = 2
"""Each good file is stored this many times (other keys), so that the run has units enough
before, during and after the blackout."""
BLACKOUT_SECONDS = 12.0
"""Longer than a unit's retries with --storage-attempts 1 (one try of each read, inside which
pyarrow's S3 client retries for about 6 s), so the units in it fail for good."""


def upstream(s3_server: S3Server) -> tuple[str, int]:
    parsed = urlparse(s3_server.endpoint_url)
    return parsed.hostname, parsed.port


def test_the_proxy_counts_connections_requests_and_bytes_exactly(s3_server: S3Server) -> None:
    import boto3
    from botocore.config import Config

    s3_server.make_bucket("proxy-counts")
    with FaultyProxy(upstream(s3_server)) as proxy:
        client = boto3.client(
            "s3",
            endpoint_url=proxy.url,
            aws_access_key_id=s3_server.access_key_id,
            aws_secret_access_key=s3_server.secret_access_key,
            region_name=s3_server.region,
            config=Config(retries={"max_attempts": 1}),
        )
        body = b"GET /not-a-request HTTP/1.1\r\n\r\n" * 1000  # request-like bytes inside a body
        client.put_object(Bucket="proxy-counts", Key="a", Body=body)
        for _ in range(3):
            assert client.get_object(Bucket="proxy-counts", Key="a")["Body"].read() == body
        client.list_objects_v2(Bucket="proxy-counts")
        time.sleep(0.2)
        counts = proxy.counters()
    assert counts.requests_by_method == {"PUT": 1, "GET": 4} and counts.requests == 5
    assert counts.connections >= 1 and counts.cut == counts.reset_by_blackout == 0
    assert counts.bytes_to_server > len(body) and counts.bytes_to_client > 3 * len(body)


def _upload_corpus(s3_server: S3Server, media_set: MediaSet, bucket: str) -> tuple[list[str], dict[str, str]]:
    """Good files (COPIES times) and every bad file under s3://bucket/corpus; returns the good
    URIs and the bad URIs by expected reason."""
    client = s3_server.client()
    good = []
    for copy in range(COPIES):
        for path in media_set.good.values():
            key = f"corpus/copy{copy}/{path.name}"
            client.upload_file(str(path), bucket, key)
            good.append(f"s3://{bucket}/{key}")
    bad = {}
    for reason, path in media_set.bad.items():
        key = f"corpus/bad/{reason}{path.suffix}"
        client.upload_file(str(path), bucket, key)
        bad[reason] = f"s3://{bucket}/{key}"
    return good, bad


def _shard_keys(s3_server: S3Server, bucket: str, prefix: str, folder: Path) -> list[str]:
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/shards/").get("Contents", [])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in listed:
        name = item["Key"].rsplit("/", 1)[1]
        if not name.endswith(".tar"):
            continue
        client.download_file(bucket, item["Key"], str(folder / name))
        paths.append(str(folder / name))
    return [sample["__key__"] for sample in wds.WebDataset(sorted(paths), shardshuffle=False)]


def _table(s3_server: S3Server, bucket: str, key: str) -> list[dict]:
    body = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body)).to_pylist()


def test_a_faulty_network_leaves_units_unfinished_and_one_healthy_rerun_finishes_every_clip_once(
    ray_runtime,
    s3_server: S3Server,
    media_set: MediaSet,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
) -> None:
    bucket = "faults"
    s3_server.make_bucket(bucket)
    good, bad = _upload_corpus(s3_server, media_set, bucket)
    command = [
        "--input",
        f"s3://{bucket}/corpus",
        "--output",
        f"s3://{bucket}/out",
        "--workers",
        "2",
        "--videos-per-shard",
        "1",
        "--storage-attempts",
        "1",
    ]
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    blackouts = []

    def black_out_at_the_first_read_of_a_video(method: str, target: str) -> None:
        # the driver only lists the corpus: the first read of a video is a worker's
        if not blackouts and target.startswith(f"/{bucket}/corpus/"):
            blackouts.append(target)
            proxy.blackout(BLACKOUT_SECONDS)

    with FaultyProxy(
        upstream(s3_server),
        cut_share=0.25,
        cut_after_bytes=(1, 60_000),
        seed=11,
        on_request=black_out_at_the_first_read_of_a_video,
    ) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # the driver hands it to the workers
        code = preprocess_main(command)
        faults = proxy.counters()
    faulty_err = capsys.readouterr().err
    assert faults.cut > 0 and faults.reset_by_blackout > 0, faults
    stats = json.loads(s3_server.client().get_object(Bucket=bucket, Key="out/stats.json")["Body"].read())
    unfinished = stats["unfinished"]
    assert code == 1 and unfinished, faulty_err
    assert f"{len(unfinished)} units not finished because of storage errors" in faulty_err
    assert all(unit["shard"] in faulty_err for unit in unfinished[:20])
    assert faulty_err.rstrip().endswith("rerun the same command to retry them")
    errors = _table(s3_server, bucket, "out/errors.parquet")
    assert not {row["uri"] for row in errors} & set(good), "a storage fault was recorded as bad media"

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    assert preprocess_main(command) == 0
    rerun = json.loads(s3_server.client().get_object(Bucket=bucket, Key="out/stats.json")["Body"].read())
    assert rerun["units"] == len(unfinished) and rerun["unfinished"] == []
    keys = _shard_keys(s3_server, bucket, "out", tmp_path / "shards")
    expected = [sample_key(uri, index) for uri in good for index in range(CLIPS_PER_GOOD_FILE)]
    expected += [sample_key(bad["decode_error"], index) for index in range(CLIPS_BEFORE_DECODE_ERROR)]
    assert sorted(keys) == sorted(expected)  # every clip of every good video, each once
    assert sorted(row["key"] for row in _table(s3_server, bucket, "out/manifest.parquet")) == sorted(expected)
    errors = _table(s3_server, bucket, "out/errors.parquet")
    assert sorted(row["uri"] for row in errors) == sorted(bad.values())
