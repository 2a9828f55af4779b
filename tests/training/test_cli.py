"""`mmdiff train` / `train-sr` flags, YAML configs and early errors (no worker ever starts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.train import main as train_main
from jobs.train_sr import main as train_sr_main
from training.cli import build_parser, config_from_args
from training.config import TrainConfig


def parse(argv: list[str], task: str = "coupled") -> TrainConfig:
    return config_from_args(build_parser("mmdiff train", "").parse_args(argv), task)


def test_flags_override_the_yaml_file(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "data: /data/clips\noutput: s3://bucket/runs\nmodel: small\nsteps: 100\nlr: 0.0002\n"
        "model_overrides: {channel_mult: [1, 2, 2], dropout: 0.1}\nprecision: bf16\n"
    )
    config = parse(["--config", str(config_file), "--steps", "7", "--workers", "1:4", "--run-name", "r1", "--gpus"])
    assert (config.data, config.output, config.model, config.steps, config.lr) == (
        "/data/clips",
        "s3://bucket/runs",
        "small",
        7,
        2e-4,
    )
    assert config.workers == (1, 4) and config.gpus and config.run_name == "r1" and config.precision == "bf16"
    assert config.model_config().channel_mult == (1, 2, 2) and config.model_config().dropout == 0.1


def test_a_preset_name_picks_the_architecture_and_train_sr_the_sr_model() -> None:
    config = parse(["--config", "paper", "--data", "d", "--output", "o"], task="sr")
    assert config.task == "sr" and type(config.model_config()).__name__ == "SuperResUNetConfig"
    assert config.model_config().model_channels == 192 and config.diffusion_config().learn_sigma


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--output", "o"], "missing --data"),
        (["--data", "d", "--output", "o", "--workers", "two"], "--workers must be N or MIN:MAX"),
        (["--data", "d", "--output", "o", "--workers", "3:1"], "workers must be N >= 1 or MIN:MAX"),
        (["--data", "d", "--output", "o", "--precision", "fp8"], "precision must be fp32, bf16 or fp16"),
        (["--data", "d", "--output", "o", "--config", "huge"], "config file huge does not exist"),
    ],
)
def test_bad_flags_are_one_clear_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert train_main(argv) == 2
    assert message in capsys.readouterr().err


def test_missing_data_or_no_shards_fail_before_any_worker_starts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_main(["--data", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 2
    assert f"training data '{tmp_path / 'missing'}' does not exist" in capsys.readouterr().err
    (tmp_path / "empty" / "shards").mkdir(parents=True)
    assert train_sr_main(["--data", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    assert "no shard-NNNNNN.tar files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no trainer ever made its run folder


def test_a_learned_variance_needs_a_network_that_predicts_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text("diffusion_overrides: {learn_sigma: true}\n")
    assert train_main(["--config", str(config_file), "--data", "d", "--output", "o"]) == 2
    assert "learn_sigma=True does not fit a coupled U-Net" in capsys.readouterr().err
    config_file.write_text(
        "diffusion_overrides: {learn_sigma: true}\nmodel_overrides: {video_out_channels: 6, audio_out_channels: 2}\n"
    )
    assert parse(["--config", str(config_file), "--data", "d", "--output", "o"]).diffusion_config().learn_sigma
