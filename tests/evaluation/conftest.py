"""Fixtures of the evaluation tests: MLflow in both deployments, tiny models, small shards."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pyarrow
import pyarrow.parquet
import pytest
import torch
import webdataset

from mmdiffusion import CoupledUNet, CoupledUNetConfig
from mmdiffusion.constants import AUDIO_SAMPLES, FRAMES, IMAGE_SIZE, SAMPLE_RATE
from pipeline.shard_format import DEFAULT_HELD_OUT_SHARE, DataSplit, sample_key, source_position


def _use_tracking_uri(uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point MLflow at `uri` with a fresh experiment, and put every global MLflow keeps
    (tracking URI, active experiment, their environment variables) back afterwards, so that
    the tests of other areas in the same session see MLflow as they left it."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(f"evaluation-{uuid.uuid4().hex[:8]}")
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def embedded_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite tracking database for the session: creating its tables takes seconds.
    Tests keep apart by their own experiment and model names."""
    return f"sqlite:///{tmp_path_factory.mktemp('embedded-mlflow') / 'mlflow.db'}"


@pytest.fixture(params=["server", "embedded"])
def tracking_uri(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """MLflow behind a real `mlflow server` process, and the embedded SQLite default."""
    if request.param == "server":
        uri = request.getfixturevalue("mlflow_server").tracking_uri
    else:
        uri = request.getfixturevalue("embedded_database")
    yield from _use_tracking_uri(uri, monkeypatch)


@pytest.fixture
def server_tracking_uri(mlflow_server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from _use_tracking_uri(mlflow_server.tracking_uri, monkeypatch)


@pytest.fixture
def embedded_tracking_uri(embedded_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from _use_tracking_uri(embedded_database, monkeypatch)


@pytest.fixture
def model_name() -> str:
    return f"mmdiff-{uuid.uuid4().hex[:8]}"


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


MICRO = {
    "channel_mult": (1, 1, 1),
    "video_attention_rates": (),
    "cross_attention_rates": (4,),
    "cross_attention_windows": (1,),
}
"""The tiny coupled U-Net without video self-attention: a few seconds per clip on a busy CPU."""


def micro_model(seed: int, perturbed: bool = False) -> CoupledUNet:
    """A fresh micro model predicts zero noise (zero-initialised heads), a loss of about 2.
    `perturbed` fills the zero-initialised layers with noise, which makes it worse."""
    torch.manual_seed(seed)
    model = CoupledUNet(CoupledUNetConfig.named("tiny", **MICRO)).eval()
    if perturbed:
        with torch.no_grad():
            for parameter in model.parameters():
                if not parameter.any():
                    parameter.normal_(0.0, 0.05)
    return model


def source_uris(count: int, held_out: bool, share: float = DEFAULT_HELD_OUT_SHARE) -> list[str]:
    """The first `count` URIs `source-N.mp4` whose sources fall in the held-out part of the
    split with `share` (or in the training part)."""
    found = (f"source-{n}.mp4" for n in itertools.count())
    return list(
        itertools.islice((uri for uri in found if (source_position(sample_key(uri, 0)) < share) == held_out), count)
    )


@dataclass(frozen=True)
class ReferenceShards:
    root: Path
    good_keys: tuple[str, ...]
    """Every decodable clip, in shard order: held-out and training sources alternate."""
    held_out_keys: tuple[str, ...]
    train_keys: tuple[str, ...]
    broken_key: str
    """A held-out source's sample whose video has the wrong size."""


@pytest.fixture(scope="session")
def reference_shards(tmp_path_factory: pytest.TempPathFactory) -> ReferenceShards:
    """OUTPUT/shards/ with two shards of synthetic clips (a moving gradient and a tone), each
    clip from its own source, alternately held out and training under the default split; the
    first shard also holds one sample whose video has the wrong size; and OUTPUT/manifest.parquet."""
    root = tmp_path_factory.mktemp("evaluation-data")
    (root / "shards").mkdir()
    rng = np.random.default_rng(0)
    held_out, training = source_uris(5, held_out=True), source_uris(2, held_out=False)
    keys: list[str] = []
    broken = sample_key(held_out.pop(), 0)
    for shard in range(2):
        with webdataset.TarWriter(str(root / "shards" / f"shard-{shard:06d}.tar")) as writer:
            for index in range(3):
                key = sample_key((held_out if index % 2 == 0 else training).pop(0), 0)
                frames = (
                    np.linspace(0, 255, IMAGE_SIZE)[None, None, :, None] + 20 * np.arange(FRAMES)[:, None, None, None]
                )
                video = ((frames + rng.integers(0, 60, size=(FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3))) % 256).astype(
                    np.uint8
                )
                tone = np.sin(2 * np.pi * (200 + 300 * len(keys)) * np.arange(AUDIO_SAMPLES) / SAMPLE_RATE)
                audio = (0.3 * 32767 * tone).astype(np.int16)[None]
                writer.write({"__key__": key, "video.npy": video, "audio.npy": audio, "json": {"source": key}})
                keys.append(key)
            if shard == 0:
                small = np.zeros((FRAMES, 32, 32, 3), dtype=np.uint8)
                writer.write({"__key__": broken, "video.npy": small, "audio.npy": audio, "json": {"source": broken}})
    pyarrow.parquet.write_table(pyarrow.table({"key": keys}), root / "manifest.parquet")
    split = DataSplit("held_out")
    return ReferenceShards(
        root,
        tuple(keys),
        tuple(key for key in keys if split.keeps(key)),
        tuple(key for key in keys if not split.keeps(key)),
        broken,
    )
