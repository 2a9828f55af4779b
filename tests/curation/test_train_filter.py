"""`mmdiff train --filter`: training reads exactly the manifest rows the expression keeps; a bad
expression fails before any MLflow run or worker exists."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from jobs.train import main as train_main
from pipeline.shard_format import MANIFEST_FILE, DataError
from tests.fixtures.mlflow_server import MlflowServer
from tests.training.synthetic_shards import synthetic_key, write_shards
from training.config import TrainConfig
from training.run import train
from training.selection import FilterError, KeySet, select_manifest
from training.state import read_position, read_state

CLIPS = 6
QUIET = (1, 3, 5)
"""Clips whose manifest row says they are near-silent; their samples are corrupt too, so any
of them that training read would be counted as a corrupt sample."""
KEEP_AUDIBLE = "audio_rms_db > -50 and scene_cuts == 0"


def write_dataset(folder: Path) -> None:
    write_shards(folder, CLIPS, clips_per_shard=CLIPS, frames=16, image_size=16, audio_length=2560, corrupt_keys=QUIET)
    rows = [
        {
            "key": synthetic_key(index),
            "clip_index": index,
            "audio_rms_db": -90.0 if index in QUIET else -20.0,
            "scene_cuts": 0,
        }
        for index in range(CLIPS)
    ]
    pq.write_table(pa.Table.from_pylist(rows), folder / MANIFEST_FILE)


def config(tmp_path: Path, tracking_uri: str, **changes) -> TrainConfig:
    values = dict(
        data=str(tmp_path / "data"),
        output=str(tmp_path / "out"),
        model="tiny",
        model_overrides={"image_size": 16, "audio_length": 2560},
        batch_size=1,
        steps=4,
        log_every=1,
        checkpoint_every=4,
        shuffle_buffer=1,
        flip=False,
        held_out_share=0.0,
        run_name="filtered",
        experiment=f"filter-{tmp_path.name}",
        tracking_uri=tracking_uri,
    )
    return TrainConfig(**{**values, **changes})


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "data")
    return tmp_path / "data"


def test_training_reads_exactly_the_rows_the_filter_keeps_and_logs_the_count(
    tmp_path: Path, dataset: Path, mlflow_server: MlflowServer
) -> None:
    result = train(config(tmp_path, mlflow_server.tracking_uri, filter=KEEP_AUDIBLE), in_process=True)
    checkpoint = Path(result.checkpoint)
    # No quiet (corrupt) clip was read, and an epoch is the 3 kept clips: step 4 is the first of epoch 1.
    assert result.metrics["corrupt_samples"] == 0
    assert read_position(checkpoint, 0, 1, read_state(checkpoint)).epoch == 1
    params = MlflowClient(mlflow_server.tracking_uri).get_run(result.mlflow_run_id).data.params
    assert params["filter"] == KEEP_AUDIBLE
    assert (params["data.filter_kept_clips"], params["data.filter_manifest_clips"]) == ("3", str(CLIPS))


def test_without_the_filter_the_same_run_reads_the_quiet_clips(
    tmp_path: Path, dataset: Path, mlflow_server: MlflowServer
) -> None:
    """The counter-check of the test above: the quiet clips are there to be read."""
    result = train(config(tmp_path, mlflow_server.tracking_uri), in_process=True)
    assert result.metrics["corrupt_samples"] >= 1


def test_a_typo_in_a_column_fails_before_any_run_naming_the_known_columns(
    tmp_path: Path, dataset: Path, mlflow_server: MlflowServer, capsys: pytest.CaptureFixture
) -> None:
    bad = config(tmp_path, mlflow_server.tracking_uri, filter="audio_rms_bd > -50")
    with pytest.raises(FilterError, match=r"unknown column 'audio_rms_bd'.*audio_rms_db.*known columns: key"):
        train(bad, in_process=True)
    argv = ["--data", bad.data, "--output", bad.output, "--experiment", bad.experiment, "--filter", bad.filter]
    assert train_main(argv) == 2
    assert "audio_rms_bd" in capsys.readouterr().err
    assert MlflowClient(mlflow_server.tracking_uri).get_experiment_by_name(bad.experiment) is None


def test_a_filter_that_keeps_nothing_or_data_without_a_manifest_is_refused(
    tmp_path: Path, dataset: Path, mlflow_server: MlflowServer
) -> None:
    with pytest.raises(DataError, match="keeps none of the 6 clips"):
        train(config(tmp_path, mlflow_server.tracking_uri, filter="audio_rms_db > 0"), in_process=True)
    (dataset / MANIFEST_FILE).unlink()
    with pytest.raises(DataError, match="needs the dataset's manifest"):
        train(config(tmp_path, mlflow_server.tracking_uri, filter=KEEP_AUDIBLE), in_process=True)


def test_the_selection_holds_the_kept_keys_only(dataset: Path) -> None:
    selection = select_manifest(str(dataset), KEEP_AUDIBLE)
    assert selection.kept_clips == 3 and selection.manifest_clips == CLIPS
    assert [synthetic_key(index) in selection.keys for index in range(CLIPS)] == [True, False] * 3
    assert "some-other-key" not in selection.keys and len(KeySet([])) == 0
