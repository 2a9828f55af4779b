"""Validation and samples while training (`training.validation`): a real in-process run logs the
held-out loss and EMA samples into its MLflow run at the asked-for steps."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from mlflow.tracking import MlflowClient

from mmdiffusion.constants import FRAMES
from pipeline.shard_format import source_position
from tests.fixtures.mlflow_server import MlflowServer
from tests.training.synthetic_shards import synthetic_key, write_shards
from tests.training.test_cli import parse
from training.config import TrainConfig
from training.resolver import resolve_model
from training.run import train
from training.tasks import make_task
from training.tracking import MetricLogger
from training.validation import VALIDATION_TAG, TrainingWatch, sample_folder

CLIPS = 4
SMALL = {"image_size": 16, "audio_length": 2560}
QUARTILE_METRICS = [f"val_{name}_q{q}" for name in ("loss", "video_loss", "audio_loss") for q in range(4)]


def one_source_held_out() -> float:
    """The share that holds out exactly the lowest-placed of the clips' sources (one clip)."""
    positions = sorted(source_position(synthetic_key(index)) for index in range(CLIPS))
    return (positions[0] + positions[1]) / 2


def watched_config(tmp_path: Path, tracking_uri: str, **changes) -> TrainConfig:
    write_shards(tmp_path / "data", clips=CLIPS, clips_per_shard=CLIPS, frames=FRAMES, image_size=16, audio_length=2560)
    values = dict(
        data=str(tmp_path / "data"),
        output=str(tmp_path / "out"),
        model="tiny",
        model_overrides=SMALL,
        batch_size=1,
        steps=4,
        log_every=2,
        checkpoint_every=4,
        held_out_share=one_source_held_out(),
        val_every=1,
        sample_every=2,
        val_clips=4,
        sample_clips=1,
        sample_steps=2,
        run_name="watched",
        tracking_uri=tracking_uri,
        experiment=f"validation-{tmp_path.name}",
        flip=False,
    )
    return TrainConfig(**{**values, **changes})


def test_a_run_logs_held_out_losses_and_decodable_samples_at_the_asked_steps(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    config = watched_config(tmp_path, mlflow_server.tracking_uri)
    result = train(config, in_process=True)
    client = MlflowClient(mlflow_server.tracking_uri)
    run_id = result.mlflow_run_id

    def history(name: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run_id, name)]

    assert [step for step, _ in history("val_loss")] == [1, 2, 3, 4]
    for name in ("val_video_loss", "val_audio_loss", "val_seconds", *QUARTILE_METRICS):
        assert [step for step, _ in history(name)] == [1, 2, 3, 4], name
    last = {name: history(name)[-1][1] for name in ("val_loss", "val_video_loss", "val_audio_loss", *QUARTILE_METRICS)}
    assert last["val_loss"] == pytest.approx(last["val_video_loss"] + last["val_audio_loss"])
    assert last["val_loss"] == pytest.approx(sum(last[f"val_loss_q{q}"] for q in range(4)) / 4)  # one timestep each
    assert len({value for _, value in history("val_loss")}) == 4  # the EMA moved every step

    # The final EMA validated again (twice) gives exactly the logged numbers (fixed timesteps and
    # noise); the raw weights, which the EMA trails, give others.
    task = make_task(config)
    ema = resolve_model(result.checkpoint, "coupled_unet", weights="ema")
    raw = resolve_model(result.checkpoint, "coupled_unet", weights="raw")
    watch = TrainingWatch(config, task, ema.bundle, MetricLogger("unused", run_id, enabled=False))
    again = [watch.validate(4, ema.network) for _ in range(2)]
    for name, value in last.items():
        assert again[0][name] == again[1][name] == value, name
    assert watch.validate(4, raw.network)["val_loss"] != last["val_loss"]
    assert len(watch.held_out_clips()) == 1  # the held-out split's one clip, not the training clips

    folders = [entry.path for entry in client.list_artifacts(run_id, "samples")]
    assert folders == [sample_folder(2), sample_folder(4)] == ["samples/step_000002", "samples/step_000004"]
    local = Path(client.download_artifacts(run_id, sample_folder(4), str(tmp_path / "downloaded")))
    assert sorted(path.name for path in local.iterdir()) == [
        "sample_000.mp4",
        "sample_000_audio.png",
        "sample_000_frames.png",
    ]
    for png in local.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with av.open(str(local / "sample_000.mp4")) as container:
        assert {stream.type for stream in container.streams} == {"video", "audio"}
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == FRAMES and frames[0].shape == (16, 16, 3)
    with av.open(str(local / "sample_000.mp4")) as container:
        assert sum(frame.samples for frame in container.decode(audio=0)) > 0


def test_an_empty_held_out_split_is_said_once_and_training_goes_on(
    tmp_path: Path, mlflow_server: MlflowServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = watched_config(tmp_path, mlflow_server.tracking_uri, held_out_share=0.0, steps=2, sample_every=0)
    with caplog.at_level("WARNING", logger="training.validation"):
        result = train(config, in_process=True)
    assert result.step == 2
    client = MlflowClient(mlflow_server.tracking_uri)
    assert client.get_metric_history(result.mlflow_run_id, "val_loss") == []
    reason = client.get_run(result.mlflow_run_id).data.tags[VALIDATION_TAG]
    assert "no usable clips in the held-out split" in reason and "--held-out-share" in reason
    assert sum("no held-out loss" in record.message for record in caplog.records) == 1


def test_validation_flags_and_yaml_fields(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text("val_every: 50\nsample_every: 200\nval_clips: 3\n")
    config = parse(["--config", str(config_file), "--data", "d", "--output", "o", "--sample-steps", "10"])
    assert (config.val_every, config.sample_every, config.val_clips, config.sample_steps) == (50, 200, 3, 10)
    assert parse(["--data", "d", "--output", "o", "--val-every", "0", "--sample-clips", "4"]).sample_clips == 4
    with pytest.raises(ValueError, match="val_every must be >= 0"):
        parse(["--data", "d", "--output", "o", "--val-every", "-1"])
    with pytest.raises(ValueError, match="sample_steps .2000. exceeds the diffusion's 1000 steps"):
        parse(["--data", "d", "--output", "o", "--sample-steps", "2000"])
