"""The vectorised RS-MMA against a per-frame loop oracle, and its random-shift behaviour."""

from __future__ import annotations

import pytest
import torch

from mmdiffusion import CoupledUNet, CoupledUNetConfig
from mmdiffusion.attention import RSMMA, window_index
from tests.model.rsmma_oracle import loop_rsmma


def randomised_block(channels: int, frames: int, window: int, seed: int = 0) -> RSMMA:
    torch.manual_seed(seed)
    block = RSMMA(channels, head_channels=32, frames=frames, window=window, random_shift=True)
    with torch.no_grad():
        for parameter in block.parameters():  # the output projections start at zero
            parameter.normal_(0, 0.2)
    return block


@pytest.mark.parametrize(
    ("frames", "window", "shift", "project_per_frame"),
    [
        (16, 1, 0, False),
        (16, 1, 15, True),
        (16, 4, 7, False),
        (16, 4, 12, True),
        (8, 8, 0, False),
        (6, 3, 3, True),
        (5, 2, 1, False),
    ],
)
def test_vectorised_rsmma_equals_loop_oracle(frames: int, window: int, shift: int, project_per_frame: bool) -> None:
    block = randomised_block(64, frames, window)
    video = torch.randn(2, 64, frames, 4, 3)
    audio = torch.randn(2, 64, frames * 5)
    fast_video, fast_audio = block(video, audio, shift)
    slow_video, slow_audio = loop_rsmma(block, video, audio, shift, project_per_frame)
    torch.testing.assert_close(fast_video, slow_video, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_audio, slow_audio, rtol=1e-4, atol=1e-5)


def test_shift_changes_the_output_and_wraps_around() -> None:
    block = randomised_block(64, 8, 2)
    video, audio = torch.randn(1, 64, 8, 2, 2), torch.randn(1, 64, 16)
    outputs = [block(video, audio, shift)[0] for shift in (0, 6)]
    assert not torch.allclose(outputs[0], outputs[1])
    # Frame 7 with shift 6 sees segments 13 mod 8 = 5 and 14 mod 8 = 6.
    assert window_index(8, 2, 6)[7].tolist() == [5, 6]


@pytest.mark.parametrize(("frames", "window", "shift"), [(8, 3, 6), (6, 6, 0), (5, 1, 4)])
def test_vectorised_rsmma_gradients_equal_the_loop_oracle(frames: int, window: int, shift: int) -> None:
    # The windows are overlapping views of the keys and values: their gradients must add up.
    block = randomised_block(64, frames, window)
    video = torch.randn(2, 64, frames, 3, 2, requires_grad=True)
    audio = torch.randn(2, 64, frames * 3, requires_grad=True)
    grads = []
    for run in (block, lambda v, a, r: loop_rsmma(block, v, a, r, False)):
        out_video, out_audio = run(video, audio, shift)
        leaves = [video, audio, *block.parameters()]
        grads.append(torch.autograd.grad(out_video.square().sum() + out_audio.sin().sum(), leaves))
    for fast, slow in zip(*grads, strict=True):
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_gradients_reach_both_modalities() -> None:
    block = randomised_block(64, 4, 2)
    video = torch.randn(1, 64, 4, 3, 3, requires_grad=True)
    audio = torch.randn(1, 64, 12, requires_grad=True)
    out_video, out_audio = block(video, audio, 1)
    # The attention branch of each modality's output depends on the other modality.
    (out_video - video).pow(2).sum().backward(retain_graph=True)
    assert audio.grad is not None and audio.grad.abs().sum() > 0
    video.grad = None
    (out_audio - audio).pow(2).sum().backward()
    assert video.grad is not None and video.grad.abs().sum() > 0


def test_model_draws_shifts_only_when_shift_is_on() -> None:
    small = dict(image_size=16, audio_length=1024, frames=16)
    model = CoupledUNet(CoupledUNetConfig.named("tiny", **small)).eval()
    video, audio, t = torch.zeros(1, 16, 3, 16, 16), torch.zeros(1, 1, 1024), torch.tensor([3])
    seen = []
    with torch.no_grad():
        for _ in range(3):
            model(video, audio, t)
            seen.append(tuple(model.last_shifts.values()))
    seen += [tuple(model.draw_shifts().values()) for _ in range(10)]
    assert len(set(seen)) > 1, "random shift on: R must vary between calls"
    for shifts in seen:
        for name, value in zip(model.last_shifts, shifts, strict=True):
            assert 0 <= value <= model.cross_blocks[name].max_shift
    assert all(value == 0 for name, value in model.last_shifts.items() if name.startswith("middle"))

    frozen = CoupledUNet(CoupledUNetConfig.named("tiny", cross_attention_shift=False, **small)).eval()
    with torch.no_grad():
        frozen(video, audio, t)
    assert set(frozen.last_shifts.values()) == {0}


def test_shift_generator_makes_shifts_reproducible() -> None:
    model = CoupledUNet(CoupledUNetConfig.named("tiny", image_size=16, audio_length=1024)).eval()
    draws = []
    for _ in range(2):
        model.shift_generator = torch.Generator().manual_seed(7)
        draws.append([model.draw_shifts() for _ in range(3)])
    assert draws[0] == draws[1]


def test_pinned_shift_out_of_range_is_rejected() -> None:
    model = CoupledUNet(CoupledUNetConfig.named("tiny", image_size=16, audio_length=1024))
    name = next(n for n, b in model.cross_blocks.items() if b.window == 4)
    with pytest.raises(ValueError, match=f"shift 13 for {name} outside 0..12"):
        model.pin_shifts({name: 13})
    with pytest.raises(KeyError, match="no RS-MMA block named"):
        model.pin_shifts({"input_blocks.0.0": 1})
