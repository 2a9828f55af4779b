"""The training loop without Ray (in-process session): learning, resuming, bad losses, init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from mmdiffusion.checkpoint import load_model, save_model
from pipeline.shard_format import DataError, list_shards, source_position
from tests.fixtures.mlflow_server import MlflowServer
from tests.training.synthetic_shards import synthetic_key, write_shards
from training.config import TrainConfig
from training.loader import ClipLoader
from training.loop import initialise_from
from training.run import NonFiniteLossError, train, train_sr
from training.state import MODEL_FILE, read_state
from training.tasks import make_task

SMALL = {"image_size": 16, "audio_length": 2560}


def small_config(tmp_path: Path, tracking_uri: str, **changes) -> TrainConfig:
    if not (tmp_path / "data").exists():
        write_shards(tmp_path / "data", clips=2, clips_per_shard=2, frames=16, image_size=16, audio_length=2560)
    values = dict(
        data=str(tmp_path / "data"),
        output=str(tmp_path / "out"),
        model="tiny",
        model_overrides=SMALL,
        batch_size=2,
        steps=4,
        log_every=1,
        checkpoint_every=2,
        run_name="loop-test",
        tracking_uri=tracking_uri,
        experiment=f"loop-{tmp_path.name}",
        flip=False,
    )
    return TrainConfig(**{**values, **changes})


def fixed_loss(model: torch.nn.Module, config: TrainConfig) -> float:
    """The loss on the training clips at fixed timesteps and noise (no sampling noise)."""
    task = make_task(config)
    batch = next(iter(ClipLoader(list_shards(config.data), task.sample_spec(), batch_size=2, flip=False)))
    generator = torch.Generator().manual_seed(0)
    total = 0.0
    with torch.no_grad():
        for t in (50, 250, 500, 750):
            noise = (
                torch.randn(batch["video"].shape, generator=generator),
                torch.randn(batch["audio"].shape, generator=generator),
            )
            timesteps = torch.full((2,), t)
            total += (
                task.diffusion.joint_loss(model, batch["video"], batch["audio"], timesteps, noise)["loss"].mean().item()
            )
    return total / 4


def test_loss_falls_while_overfitting_two_clips(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    config = small_config(
        tmp_path, mlflow_server.tracking_uri, steps=30, lr=2e-3, log_every=5, checkpoint_every=30, ema_rate=0.5
    )
    torch.manual_seed(config.seed)
    initial = make_task(config).build_model().eval()
    result = train(config, in_process=True)
    trained = load_model(Path(result.checkpoint) / MODEL_FILE)
    before, after = fixed_loss(initial, config), fixed_loss(trained, config)
    assert after < 0.6 * before, (before, after)
    logged = [m.value for m in MlflowClient(config.tracking_uri).get_metric_history(result.mlflow_run_id, "loss")]
    assert len(logged) == 6 and logged[-1] < logged[0]
    assert Path(result.loss_curve).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_resumes_from_the_latest_checkpoint_in_the_same_mlflow_run(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    first = train(small_config(tmp_path, mlflow_server.tracking_uri, steps=2), in_process=True)
    second = train(small_config(tmp_path, mlflow_server.tracking_uri, steps=4), in_process=True)
    assert second.mlflow_run_id == first.mlflow_run_id and second.step == 4
    client = MlflowClient(mlflow_server.tracking_uri)
    assert [m.step for m in client.get_metric_history(first.mlflow_run_id, "loss")] == [1, 2, 3, 4]
    assert [(m.step, m.value) for m in client.get_metric_history(first.mlflow_run_id, "resumed_from_step")] == [
        (2, 2.0)
    ]
    assert sorted(p.name for p in (tmp_path / "out" / "loop-test").glob("checkpoint-*")) == [
        "checkpoint-00000002",
        "checkpoint-00000004",
    ]


def test_repeated_nonfinite_losses_stop_with_a_clear_error_and_intact_checkpoints(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    # An absurd learning rate blows the weights up after the first update: every later loss is inf/NaN.
    config = small_config(
        tmp_path, mlflow_server.tracking_uri, steps=20, lr=1e30, grad_clip=0, checkpoint_every=1, max_nonfinite=3
    )
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps after step 1 had a NaN or infinite loss"):
        train(config, in_process=True)
    checkpoints = sorted((tmp_path / "out" / "loop-test").glob("checkpoint-*"))
    assert [path.name for path in checkpoints] == ["checkpoint-00000001"]
    assert read_state(checkpoints[0]).step == 1
    assert all(torch.isfinite(tensor).all() for tensor in load_file(str(checkpoints[0] / MODEL_FILE)).values())
    client = MlflowClient(config.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(config.experiment).experiment_id])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "nonfinite_steps")][-1] == 3


def test_init_from_a_released_checkpoint_or_one_of_ours(tmp_path: Path) -> None:
    config = small_config(tmp_path, "unused")
    source = make_task(config).build_model()
    released = tmp_path / "released.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, released)
    ours = save_model(tmp_path / "ours.safetensors", source)
    for path in (released, ours):
        torch.manual_seed(123)
        target = make_task(config).build_model()
        initialise_from(target, str(path))
        assert all(
            torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values(), strict=True)
        )


def test_train_sr_trains_on_the_pipelines_256_frames(
    pipeline_shards: Path, tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    config = TrainConfig(
        data=str(pipeline_shards),
        held_out_share=0.0,  # two videos under temporary paths: hold none out, or a worker may get none
        output=str(tmp_path / "out"),
        task="sr",
        model="tiny",
        steps=1,
        batch_size=1,
        run_name="sr-test",
        register_as="sr-tiny",
        tracking_uri=mlflow_server.tracking_uri,
    )
    result = train_sr(config, in_process=True)
    assert result.step == 1 and result.registered_version == "1"
    assert {"loss", "mse", "vb"} <= set(result.metrics)
    model = load_model(Path(result.checkpoint) / MODEL_FILE)
    assert type(model).__name__ == "SuperResUNet"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_with_accumulation_trains_and_checkpoints_the_scaler(
    precision: str, tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    config = small_config(
        tmp_path, mlflow_server.tracking_uri, precision=precision, grad_accum=2, batch_size=1, steps=2
    )
    result = train(config, in_process=True)
    assert result.step == 2 and torch.isfinite(torch.tensor(result.metrics["loss"]))
    scaler_state = torch.load(Path(result.checkpoint) / "scaler.pt", weights_only=True)
    assert bool(scaler_state) == (precision == "fp16")  # the fp16 scaler keeps its scale across restarts


def test_corrupt_samples_are_skipped_counted_and_kept_in_the_checkpoint(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    write_shards(
        tmp_path / "data", clips=3, clips_per_shard=3, frames=16, image_size=16, audio_length=2560, corrupt_keys=(1,)
    )
    result = train(small_config(tmp_path, mlflow_server.tracking_uri, steps=2), in_process=True)
    assert result.step == 2 and result.metrics["corrupt_samples"] >= 1
    assert read_state(Path(result.checkpoint)).corrupt_samples == result.metrics["corrupt_samples"]


def test_training_reads_the_training_split_only(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    """With both sources of the data held out, training has nothing to read: the loop does use
    the split (and says which one it read when it finds nothing)."""
    share = max(source_position(synthetic_key(index)) for index in range(2)) + 1e-6
    config = small_config(tmp_path, mlflow_server.tracking_uri, held_out_share=share, steps=1)
    with pytest.raises(DataError, match="the training split"):
        train(config, in_process=True)
