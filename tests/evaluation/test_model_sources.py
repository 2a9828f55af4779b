"""Models trained with a non-default diffusion keep it wherever they go: every model URI form
samples and evaluates them with the diffusion they were trained with, the bundle read back is
the one written, and every command takes the same forms with the same errors."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from jobs import evaluate as evaluate_job
from jobs import sample as sample_job
from jobs import train as train_job
from jobs import train_sr as train_sr_job
from jobs.sample import write_sample
from mmdiffusion import (
    BundledModel,
    CoupledUNet,
    CoupledUNetConfig,
    DiffusionConfig,
    GaussianDiffusion,
    ModelBundle,
    Provenance,
    SuperResUNet,
    SuperResUNetConfig,
    load_bundled,
    save_model,
)
from mmdiffusion.bundle import default_diffusion
from mmdiffusion.checkpoint import load_released
from mmdiffusion.sampling import SamplerConfig, clip_shapes, sample_joint
from tests.evaluation.conftest import MICRO, ReferenceShards, same_weights
from training.config import TrainConfig
from training.evaluation import EvaluationConfig, held_out_loss, read_reference_clips
from training.resolver import resolve_model
from training.run import TrainResult, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 2
SEED = 5
SAMPLE = ["--num", "1", "--seed", str(SEED), "--device", "cpu", "--no-progress"]
FAST = ["--num", "1", "--loss-timesteps", "300", "--batch-size", "1"]
"""One clip, one network call (see test_evaluation.FAST)."""
FAST_CONFIG = EvaluationConfig(num_samples=1, loss_timesteps=(300,), batch_size=1)
FORMS = ("file", "checkpoint folder", "run folder", "runs:/", "models:/NAME/VERSION", "models:/NAME@ALIAS")

RUNS = {
    # name: (diffusion_overrides, extra model_overrides, sampler)
    "cosine-v": ({"schedule": "cosine", "prediction": "v"}, {}, SamplerConfig("ddim", 2)),
    "learned-variance": (
        {"learn_sigma": True, "steps": 500},
        {"video_out_channels": 6, "audio_out_channels": 2},
        SamplerConfig("ddpm", 2),  # ancestral DDPM draws with the learned variance
    ),
}


@dataclass
class TrainedModel:
    config: TrainConfig
    result: TrainResult
    bundle: ModelBundle
    """What the EMA weights' bundle must be, built from the training config."""
    uris: dict[str, str]
    sampler: SamplerConfig
    samples: tuple[torch.Tensor, torch.Tensor]
    """(video, audio) drawn from the checkpoint's network with `SEED` and the trained diffusion."""
    sample_files: Path
    loss: dict[str, float]
    """`held_out_loss` of the checkpoint on the first reference clip."""

    @property
    def sampler_args(self) -> list[str]:
        return ["--sampler", self.sampler.name, "--steps", str(self.sampler.steps)]


def _draw(
    network: CoupledUNet, diffusion: DiffusionConfig, sampler: SamplerConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample with `SEED`, drawn as the pipeline documents it (noise from a generator seeded
    with the seed, RS-MMA shifts from one seeded with seed + 2), with `diffusion` built here."""
    network.shift_generator = torch.Generator().manual_seed(SEED + 2)
    try:
        return sample_joint(
            network,
            GaussianDiffusion(diffusion),
            sampler,
            clip_shapes(network.config, 1),
            generator=torch.Generator().manual_seed(SEED),
        )
    finally:
        network.shift_generator = None


@pytest.fixture(scope="module")
def trained(
    reference_shards: ReferenceShards, embedded_database: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, TrainedModel]:
    """The two runs, trained in-process for two steps (batch 1, a checkpoint at each step) and
    registered, with what the library draws and measures from their final checkpoints."""
    import mlflow

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("model-sources")
    clips = read_reference_clips(str(reference_shards.root), limit=1)
    manifest = hashlib.sha256((reference_shards.root / "manifest.parquet").read_bytes()).hexdigest()
    models = {}
    try:
        for name, (diffusion, model_overrides, sampler) in RUNS.items():
            registered = f"sources-{name}-{uuid.uuid4().hex[:6]}"
            config = TrainConfig(
                data=str(reference_shards.root),
                output=str(root / "runs"),
                model="tiny",
                model_overrides={**MICRO, **model_overrides},
                diffusion_overrides=diffusion,
                steps=STEPS,
                batch_size=1,
                lr=2e-3,
                ema_rate=0.5,  # EMA weights that moved away from the zero-initialised heads
                log_every=1,
                checkpoint_every=1,
                shuffle_buffer=1,
                flip=False,
                run_name=name,
                experiment=f"sources-{uuid.uuid4().hex[:6]}",
                register_as=registered,
                tracking_uri=embedded_database,
            )
            result = train(config, in_process=True)
            MlflowClient(embedded_database).set_registered_model_alias(registered, "champion", "1")
            checkpoint = Path(result.checkpoint)
            uris = {
                "file": str(checkpoint / "ema.safetensors"),
                "checkpoint folder": str(checkpoint),
                "run folder": str(checkpoint.parent),
                "runs:/": f"runs:/{result.mlflow_run_id}/model",
                "models:/NAME/VERSION": f"models:/{registered}/1",
                "models:/NAME@ALIAS": f"models:/{registered}@champion",
                "models:/m-<id>": result.model_uri,
            }
            bundle = ModelBundle(
                "coupled_unet",
                config.model_config(),
                DiffusionConfig(**{"learn_sigma": False, **diffusion}),
                Provenance(
                    result.mlflow_run_id,
                    manifest,
                    step=STEPS,
                    weights="ema",
                    held_out_share=config.held_out_share,
                ),
            )
            network = load_bundled(uris["file"]).network
            samples = _draw(network, bundle.diffusion, sampler)
            files = root / f"{name}-samples"
            write_sample(files, 0, samples[0][0], samples[1][0], None)
            loss = held_out_loss(BundledModel(network, bundle), clips, FAST_CONFIG)
            models[name] = TrainedModel(config, result, bundle, uris, sampler, samples, files, loss)
    finally:
        torch.set_num_threads(threads)
        mlflow.set_tracking_uri(None)
    return models


def test_checkpoints_and_the_logged_model_carry_the_bundle_that_was_written(
    trained, embedded_tracking_uri: str
) -> None:
    for model in trained.values():
        assert model.result.step == STEPS
        for form, uri in model.uris.items():
            assert resolve_model(uri, "coupled_unet").bundle == model.bundle, form
        checkpoint = model.uris["checkpoint folder"]
        raw = model.bundle.with_provenance(weights="raw")
        assert resolve_model(checkpoint, "coupled_unet", weights="raw").bundle == raw
        assert resolve_model(f"{checkpoint}/model.safetensors", "coupled_unet").bundle == raw
        earlier = f"{model.uris['run folder']}/checkpoint-{STEPS - 1:08d}"
        assert resolve_model(earlier, "coupled_unet").bundle == model.bundle.with_provenance(step=STEPS - 1)
        latest = resolve_model(model.uris["run folder"], "coupled_unet").network
        assert same_weights(latest, load_bundled(model.uris["file"]).network)
        assert not same_weights(latest, resolve_model(earlier, "coupled_unet").network)


def test_the_default_diffusion_would_draw_other_samples_and_measure_another_loss(
    trained, reference_shards: ReferenceShards
) -> None:
    """What a silent fallback to the default diffusion would do, so that the next test catches it."""
    clips = read_reference_clips(str(reference_shards.root), limit=1)
    for model in trained.values():
        network = load_bundled(model.uris["file"]).network
        fallback = default_diffusion(network.config)
        assert fallback != model.bundle.diffusion
        video, audio = _draw(network, fallback, model.sampler)
        # Far above a uint8 frame step (1/127.5) and an int16 audio step.
        assert (video - model.samples[0]).abs().max() > 0.05 and (audio - model.samples[1]).abs().max() > 0.05
        loss = held_out_loss(BundledModel.of(network, fallback), clips, FAST_CONFIG)["val_loss"]
        # The tests below compare logged losses exactly: any difference well above float noise is caught.
        assert abs(loss - model.loss["val_loss"]) > 1e-5


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("run", RUNS)
def test_every_model_form_samples_and_evaluates_with_the_trained_diffusion(
    trained,
    run: str,
    form: str,
    embedded_tracking_uri: str,
    reference_shards: ReferenceShards,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    model = trained[run]
    uri = model.uris[form]
    resolved = resolve_model(uri, "coupled_unet")
    assert resolved.bundle == model.bundle
    expected_tables = GaussianDiffusion(model.bundle.diffusion).tables
    assert all(torch.equal(resolved.diffusion.tables[name], table) for name, table in expected_tables.items())
    output = tmp_path / "samples"
    assert sample_job.main(["--model", uri, *model.sampler_args, *SAMPLE, "--output", str(output)]) == 0
    names = sorted(path.name for path in output.iterdir())
    assert names == sorted(path.name for path in model.sample_files.iterdir())
    for name in names:  # what the library pipeline drew with the trained diffusion
        assert (output / name).read_bytes() == (model.sample_files / name).read_bytes(), name

    capsys.readouterr()
    assert evaluate_job.main(["--model", uri, "--data", str(reference_shards.root), *FAST]) == 0
    printed = capsys.readouterr().out
    assert f"{model.bundle.diffusion.steps} {model.bundle.diffusion.schedule} steps" in printed
    assert f"predicts {model.bundle.diffusion.prediction}" in printed
    logged = MlflowClient().get_run(re.search(r"logged to MLflow run (\w+)", printed)[1]).data
    assert logged.metrics["val_loss"] == model.loss["val_loss"]
    assert logged.params["diffusion.schedule"] == model.bundle.diffusion.schedule
    assert logged.params["diffusion.steps"] == str(model.bundle.diffusion.steps)
    assert logged.params["diffusion.learn_sigma"] == str(model.bundle.diffusion.learn_sigma)
    assert logged.params["diffusion.prediction"] == model.bundle.diffusion.prediction
    assert logged.params["diffusion.origin"] == "saved"
    assert logged.tags["mmdiff.model_run_id"] == model.result.mlflow_run_id  # local files too, by provenance


def test_sample_and_evaluate_take_a_released_checkpoint_with_a_named_config(
    embedded_tracking_uri: str, reference_shards: ReferenceShards, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    torch.manual_seed(3)
    network = CoupledUNet(CoupledUNetConfig.named("tiny"))
    released = tmp_path / "released.pt"
    torch.save({"state_dict": {f"module.{key}": value for key, value in network.state_dict().items()}}, released)

    output = tmp_path / "samples"
    argv = ["--model", str(released), "--config", "tiny", "--sampler", "ddim", "--steps", "1", *SAMPLE]
    assert sample_job.main([*argv, "--output", str(output)]) == 0
    assert f"released checkpoint {released}" in capsys.readouterr().err
    assert len(list(output.glob("*.mp4"))) == 1

    data = ["--data", str(reference_shards.root), *FAST]
    assert evaluate_job.main(["--model", str(released), "--config", "tiny", *data]) == 0
    printed = capsys.readouterr().out
    logged = MlflowClient().get_run(re.search(r"logged to MLflow run (\w+)", printed)[1]).data
    clips = read_reference_clips(str(reference_shards.root), limit=1)
    expected = held_out_loss(load_released(released, CoupledUNetConfig.named("tiny")), clips, FAST_CONFIG)
    assert logged.metrics["val_loss"] == expected["val_loss"]
    assert logged.params["diffusion.origin"] == "default" and logged.params["diffusion.schedule"] == "linear"

    assert evaluate_job.main(["--model", str(released), "--config", "small", *data, "--no-log"]) == 2
    assert "does not fit CoupledUNet" in capsys.readouterr().err


@pytest.fixture(scope="module")
def wrong_kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("wrong-kinds")
    torch.manual_seed(0)
    return {
        "sr": str(save_model(folder / "sr.safetensors", SuperResUNet(SuperResUNetConfig.named("tiny")))),
        "coupled": str(save_model(folder / "coupled.safetensors", CoupledUNet(CoupledUNetConfig.named("tiny")))),
    }


COMMANDS = ("sample", "evaluate", "train --init-from", "train-sr --init-from")


def _run(command: str, model: str, data: str, tmp_path: Path) -> int:
    if command == "sample":
        return sample_job.main(["--model", model, "--output", str(tmp_path / "samples"), "--no-progress"])
    if command == "evaluate":
        return evaluate_job.main(["--model", model, "--data", data, *FAST, "--no-log"])
    main = train_job.main if command == "train --init-from" else train_sr_job.main
    return main(["--data", data, "--output", str(tmp_path / "runs"), "--init-from", model])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_gives_the_same_clear_errors(
    command: str,
    wrong_kinds: dict[str, str],
    reference_shards: ReferenceShards,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """A model of the wrong kind, a missing file, an unknown URI form: exit code 2, one line
    naming the model, and nothing started."""
    expects_sr = command == "train-sr --init-from"
    wrong = wrong_kinds["coupled" if expects_sr else "sr"]
    message = "is a coupled U-Net, expected an SR U-Net" if expects_sr else "is an SR U-Net, expected a coupled U-Net"
    data = str(reference_shards.root)
    for model, expected in (
        (wrong, message),
        (str(tmp_path / "missing.safetensors"), "no such file or folder"),
        ("models:/no-version-or-alias", "unknown URI form"),
        ("ftp:/models/base.safetensors", "unknown URI form"),
    ):
        assert _run(command, model, data, tmp_path) == 2, model
        error = capsys.readouterr().err
        assert expected in error and model.rsplit("/", 1)[-1] in error, (model, error)
    assert not (tmp_path / "samples").exists() and not (tmp_path / "runs").exists()


def test_evaluate_scores_the_ema_or_the_raw_weights_on_the_held_out_split_and_logs_which(
    trained, embedded_tracking_uri: str, reference_shards: ReferenceShards, capsys: pytest.CaptureFixture
) -> None:
    model = trained["cosine-v"]
    data = ["--data", str(reference_shards.root), *FAST]
    logged = {}
    for weights in ("ema", "raw"):
        assert evaluate_job.main(["--model", model.uris["checkpoint folder"], "--weights", weights, *data]) == 0
        printed = capsys.readouterr().out
        assert f"{weights} weights" in printed and "the held-out split (0.05 of the sources held out)" in printed
        logged[weights] = MlflowClient().get_run(re.search(r"logged to MLflow run (\w+)", printed)[1]).data
        assert logged[weights].params["weights"] == weights and logged[weights].params["split"] == "held_out"
        assert logged[weights].params["held_out_share"] == str(model.config.held_out_share)
    assert logged["ema"].metrics["val_loss"] == model.loss["val_loss"]  # the first held-out clip, as the fixture
    assert abs(logged["raw"].metrics["val_loss"] - logged["ema"].metrics["val_loss"]) > 1e-5
    # A registered model holds one set of weights: asking for the other is an error, not a silent swap.
    assert evaluate_job.main(["--model", model.uris["models:/NAME/VERSION"], "--weights", "raw", *data]) == 2
    assert "holds ema weights, not raw" in capsys.readouterr().err
    # The training split is there to be chosen, and its clips are other clips.
    assert evaluate_job.main(["--model", model.uris["file"], "--split", "train", *data]) == 0
    printed = capsys.readouterr().out
    assert "the training split" in printed
    train_loss = MlflowClient().get_run(re.search(r"logged to MLflow run (\w+)", printed)[1]).data.metrics["val_loss"]
    assert train_loss != logged["ema"].metrics["val_loss"]
