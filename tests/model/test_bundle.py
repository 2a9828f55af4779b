"""The model bundle in the safetensors metadata: round trips, files written before bundles, checks."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from mmdiffusion import CoupledUNet, CoupledUNetConfig, DiffusionConfig, SuperResUNet, SuperResUNetConfig
from mmdiffusion.bundle import ModelBundle, Provenance
from mmdiffusion.checkpoint import load_bundled, read_bundle, save_model

SMALL = CoupledUNetConfig.named("tiny", image_size=16, audio_length=2560)


def _legacy_file(path, model) -> None:
    """What `save_model` wrote before bundles: the kind and the network config only."""
    kind = {"CoupledUNet": "coupled_unet", "SuperResUNet": "sr_unet"}[type(model).__name__]
    metadata = {"mmdiffusion_kind": kind, "config": json.dumps(model.config.to_dict())}
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path), metadata=metadata)


def test_a_bundle_reads_back_as_written(tmp_path) -> None:
    model = CoupledUNet(SMALL)
    bundle = ModelBundle(
        "coupled_unet",
        SMALL,
        DiffusionConfig(schedule="cosine", steps=400, fixed_variance="fixed_small"),
        Provenance(run_id="abc", data_manifest_sha256="f" * 64, step=12, weights="raw", initialised_from="x.pt"),
    )
    path = save_model(tmp_path / "model.safetensors", model, bundle)
    assert read_bundle(path) == bundle
    loaded = load_bundled(path)
    assert loaded.bundle == bundle and loaded.diffusion.config == bundle.diffusion
    assert loaded.diffusion.num_steps == 400 and not loaded.network.training


def test_without_a_bundle_the_default_diffusion_is_written_and_marked(tmp_path) -> None:
    path = save_model(tmp_path / "model.safetensors", CoupledUNet(SMALL))
    bundle = read_bundle(path)
    assert bundle.diffusion == DiffusionConfig() and bundle.provenance.diffusion_origin == "default"


@pytest.mark.parametrize(
    ("model", "learn_sigma"),
    [(CoupledUNet(SMALL), False), (SuperResUNet(SuperResUNetConfig.named("tiny")), True)],
    ids=["coupled", "sr"],
)
def test_files_written_before_bundles_load_with_the_default_diffusion_and_say_so(
    tmp_path, caplog: pytest.LogCaptureFixture, model, learn_sigma: bool
) -> None:
    path = tmp_path / "old.safetensors"
    _legacy_file(path, model)
    with caplog.at_level(logging.WARNING, logger="mmdiffusion.bundle"):
        loaded = load_bundled(path)
    assert loaded.bundle.diffusion == DiffusionConfig(learn_sigma=learn_sigma)
    assert loaded.bundle.provenance == Provenance(diffusion_origin="default")
    assert str(path) in caplog.text and "records no diffusion" in caplog.text
    assert all(torch.equal(loaded.network.state_dict()[key], value) for key, value in model.state_dict().items())


def test_a_diffusion_that_does_not_fit_the_network_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="learn_sigma=True does not fit a coupled U-Net.*video_out_channels"):
        ModelBundle.describe(SMALL, DiffusionConfig(learn_sigma=True))
    with pytest.raises(ValueError, match="learn_sigma=False does not fit an SR U-Net"):
        ModelBundle.describe(SuperResUNetConfig.named("tiny"), DiffusionConfig())
    with pytest.raises(ValueError, match="the network's config is not the one its bundle describes"):
        save_model(tmp_path / "model.safetensors", CoupledUNet(SMALL), ModelBundle.describe(CoupledUNetConfig()))
    with pytest.raises(ValueError, match="both be the input channels"):
        CoupledUNetConfig.named("tiny", video_out_channels=6)
    learned = CoupledUNetConfig.named("tiny", video_out_channels=6, audio_out_channels=2)
    assert ModelBundle.describe(learned).diffusion.learn_sigma
