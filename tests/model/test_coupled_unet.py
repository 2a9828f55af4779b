"""The coupled U-Net against the released architecture and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmdiffusion import CoupledUNet, CoupledUNetConfig, load_model, load_reference_checkpoint, save_model
from mmdiffusion.checkpoint import read_metadata
from tests import golden_data
from tests.golden_data import relative_error

GOLDEN_TOLERANCE = 1e-5
"""The compact golden outputs are reproduced to about 1e-6 relative error in float32."""


@pytest.fixture(scope="module")
def golden() -> dict:
    return golden_data.compact_golden("coupled_unet_compact_golden.pt")


def run(model: CoupledUNet, inputs: dict, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model(inputs["video"], inputs["audio"], inputs["timesteps"], **kwargs)


def test_golden_outputs_reproduced_from_a_released_checkpoint_file(golden: dict, tmp_path: Path) -> None:
    path = tmp_path / "released.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in golden["state_dict"].items()}}, path)
    model = load_reference_checkpoint(path, golden["config"])
    assert not model.training
    video, audio = run(model, golden["inputs"])
    assert relative_error(video, golden["outputs"]["video"]) < GOLDEN_TOLERANCE
    assert relative_error(audio, golden["outputs"]["audio"]) < GOLDEN_TOLERANCE


@pytest.mark.skipif(golden_data.full_reference_dir() is None, reason="MMDIFF_REFERENCE_DIR not set (optional check)")
def test_golden_outputs_with_pinned_random_shifts() -> None:
    folder = golden_data.full_reference_dir()
    golden = torch.load(folder / "coupled_unet_small_golden.pt", weights_only=True)
    shifted = torch.load(folder / "coupled_unet_small_golden_shift.pt", weights_only=True)
    model = load_reference_checkpoint(golden["state_dict"], shifted["config"])
    model.pin_shifts(shifted["shifts"])
    video, audio = run(model, golden["inputs"])
    assert model.last_shifts == shifted["shifts"]
    assert relative_error(video, shifted["outputs"]["video"]) < 1e-4
    assert relative_error(audio, shifted["outputs"]["audio"]) < 1e-4
    # Pinning matters: other shifts give other outputs.
    other = {name: (r + 1) % (model.cross_blocks[name].max_shift + 1) for name, r in shifted["shifts"].items()}
    video_other, _ = run(model, golden["inputs"], shifts=other)
    assert relative_error(video_other, shifted["outputs"]["video"]) > 1e-2


def test_paper_config_has_the_released_keys_shapes_and_parameter_count() -> None:
    reference = golden_data.load("coupled_unet_paper.json")
    with torch.device("meta"):
        model = CoupledUNet(CoupledUNetConfig.paper())
    shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    assert shapes == reference["state_dict_shapes"]
    assert sum(p.numel() for p in model.parameters()) == reference["parameter_count"] == 133_675_524
    for name, facts in reference["modules"].items():
        block = model.get_submodule(name)
        if facts["type"] == "RS-MMA":
            assert (block.window, block.random_shift, block.heads) == (
                facts["window"],
                facts["random_shift"],
                facts["heads"],
            )
        elif facts["type"] == "ResBlock":
            assert block.audio_in_layers[2].audio_conv.dilation == (facts["audio_dilation"],), name
            assert block.resample == facts["resample"], name


def test_reference_checkpoint_with_missing_or_misshaped_tensors_names_them(golden: dict) -> None:
    state = dict(golden["state_dict"])
    del state["time_embed.0.weight"]
    state["video_out.2.video_conv.bias"] = torch.zeros(5)
    with pytest.raises(ValueError) as error:
        load_reference_checkpoint(state, golden["config"])
    message = str(error.value)
    assert "time_embed.0.weight" in message
    assert "video_out.2.video_conv.bias: checkpoint (5,) vs model (3,)" in message


def test_our_checkpoint_round_trips_without_pickle(golden: dict, tmp_path: Path) -> None:
    model = load_reference_checkpoint(golden["state_dict"], golden["config"])
    path = save_model(tmp_path / "model.safetensors", model)
    assert read_metadata(path)["mmdiffusion_kind"] == "coupled_unet"
    restored = load_model(path)
    assert restored.config == model.config
    video, _ = run(restored, golden["inputs"])
    assert relative_error(video, golden["outputs"]["video"]) < GOLDEN_TOLERANCE


def test_wrong_input_shapes_name_the_sizes() -> None:
    model = CoupledUNet(CoupledUNetConfig.named("tiny", image_size=16, audio_length=1024))
    with pytest.raises(ValueError, match=r"video must be \[B, 16, 3, 16, 16\], got \[1, 16, 3, 32, 32\]"):
        model(torch.zeros(1, 16, 3, 32, 32), torch.zeros(1, 1, 1024), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"audio must be \[B, 1, 1024\], got \[1, 1, 1000\]"):
        model(torch.zeros(1, 16, 3, 16, 16), torch.zeros(1, 1, 1000), torch.tensor([1]))


def test_config_whose_audio_does_not_split_into_frame_segments_is_rejected() -> None:
    with pytest.raises(ValueError, match="audio length 100 at level 2 does not divide into frames=16 segments"):
        CoupledUNetConfig.named("tiny", audio_length=1600)
    with pytest.raises(ValueError, match="unknown CoupledUNetConfig preset 'huge'"):
        CoupledUNetConfig.named("huge")


def test_config_round_trips_through_a_dict() -> None:
    config = CoupledUNetConfig.named("small")
    assert CoupledUNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def _tiny_inputs(seed: int = 0) -> tuple[CoupledUNet, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = CoupledUNet(CoupledUNetConfig.named("tiny", image_size=16, audio_length=1024))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "proj_out" in name or "out_layers.3" in name or name.startswith(("video_out", "audio_out")):
                parameter.normal_(0, 0.05)  # give the zero-initialised branches a say
    return model, torch.randn(2, 16, 3, 16, 16), torch.randn(2, 1, 1024), torch.tensor([10, 500])


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    model, video, audio, t = _tiny_inputs()
    shifts = model.draw_shifts()
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        video_eps, audio_eps = model(video, audio, t, shifts=shifts)
        (video_eps.square().mean() + audio_eps.square().mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_bfloat16_autocast_runs_and_stays_close_to_float32() -> None:
    model, video, audio, t = _tiny_inputs()
    model.eval()
    shifts = model.draw_shifts()
    with torch.no_grad():
        reference = model(video, audio, t, shifts=shifts)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(video, audio, t, shifts=shifts)
    for full, half in zip(reference, low, strict=True):
        assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
        assert relative_error(half.float(), full) < 0.05
