"""Reading sources from object storage: cut connections are resumed byte for byte, and an
outage is a storage failure, never a media error, wherever in the file it strikes."""

from __future__ import annotations

import pytest

from pipeline.decode import ClipOptions, open_source
from pipeline.errors import MediaError
from pipeline.faults import InfrastructureError, RetryPolicy, SourceReader
from pipeline.storage import resolve
from tests.fixtures.media import MediaSet
from tests.fixtures.s3_server import S3Server
from tests.fixtures.tcp_proxy import FaultyProxy
from tests.pipeline.test_storage_faults import upstream

SMALL_BLOCK = 8192
"""Blocks this small make one file many ranged reads, so faults land in the middle of it."""


@pytest.fixture
def stored_video(s3_server: S3Server, media_set: MediaSet, monkeypatch: pytest.MonkeyPatch) -> tuple[str, bytes]:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    s3_server.make_bucket("reader")
    path = media_set.good["fast_60fps_48k_stereo"]
    s3_server.client().upload_file(str(path), "reader", path.name)
    monkeypatch.setattr(SourceReader, "BLOCK_BYTES", SMALL_BLOCK)
    return f"s3://reader/{path.name}", path.read_bytes()


def test_cut_connections_are_resumed_and_give_the_exact_bytes(
    s3_server: S3Server, stored_video: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, data = stored_video
    assert len(data) > 4 * SMALL_BLOCK
    with FaultyProxy(upstream(s3_server), cut_share=0.5, cut_after_bytes=(100, SMALL_BLOCK), seed=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        fs, path = resolve(uri)
        reader = SourceReader(uri, fs, path, RetryPolicy(attempts=4, first_delay_s=0.05))
        chunks = []
        while chunk := reader.read(32768 - 1):
            chunks.append(chunk)
        assert reader.seek(-10, 2) == len(data) - 10 and reader.read(100) == data[-10:]
        cut = proxy.counters().cut
    assert b"".join(chunks) == data and reader.failure is None and cut > 0


def test_an_outage_mid_file_is_a_storage_failure_not_a_media_error(
    s3_server: S3Server, stored_video: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, _ = stored_video
    key = "/reader/" + uri.rsplit("/", 1)[1]
    reads = []

    def black_out_after_a_few_reads(method: str, target: str) -> None:
        if method == "GET" and target.startswith(key):
            reads.append(target)
            if len(reads) == 4:
                proxy.blackout(120.0)

    with FaultyProxy(upstream(s3_server), on_request=black_out_after_a_few_reads) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        info, clips = open_source(uri, ClipOptions(), RetryPolicy(attempts=1))
        with pytest.raises(InfrastructureError, match="read at byte") as raised:
            list(clips)
        assert not isinstance(raised.value, MediaError) and info.uri == uri
        with pytest.raises(InfrastructureError, match=f"{uri}: open"):
            open_source(uri, ClipOptions(), RetryPolicy(attempts=1))
