"""Training attention on the CPU recomputes q, k and v in the backward pass instead of keeping
them: outputs and gradients are `scaled_dot_product_attention`'s bit for bit, under autocast
too, and the forward pass keeps none of the projections."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdiffusion.attention import RSMMA, SelfAttention, merge_heads


def randomised(module: nn.Module) -> nn.Module:
    """Every parameter drawn at random: the zero-initialised output projections and the unit
    norms would hide gradients that are wrong."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.3, 0.4)
    return module


def plain_self_attention(block: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The block with its attention left to autograd."""
    ((q, k, v),) = block._project(x)
    return x + block.proj_out(merge_heads(F.scaled_dot_product_attention(q, k, v)))


def plain_rsmma(block: RSMMA, video: torch.Tensor, audio: torch.Tensor, shift: int) -> tuple[torch.Tensor, ...]:
    video_out, audio_out = (F.scaled_dot_product_attention(*qkv) for qkv in block._project(video, audio, shift))
    batch, _, frames, height, width = video.shape
    heads = video_out.shape[0] // batch
    video_out = video_out.reshape(batch, heads, frames, height, width, -1).permute(0, 1, 5, 2, 3, 4)
    audio_out = audio_out.reshape(batch, heads, audio.shape[-1], -1).permute(0, 1, 3, 2)
    return (
        video + block.video_proj_out(video_out.reshape(video.shape)),
        audio + block.audio_proj_out(audio_out.reshape(audio.shape)),
    )


def outputs_and_gradients(outputs: tuple[torch.Tensor, ...], leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    torch.manual_seed(1)
    upstream = [torch.randn_like(out) for out in outputs]
    return [*outputs, *torch.autograd.grad(outputs, leaves, upstream)]


def autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@pytest.mark.parametrize("bf16", [False, True])
def test_self_attention_equals_the_plain_attention_bit_for_bit(bf16: bool) -> None:
    block = randomised(SelfAttention(64, heads=4))
    x = torch.randn(3, 64, 20, requires_grad=True)
    leaves = [x, *block.parameters()]
    with autocast(bf16):
        lean = outputs_and_gradients((block(x),), leaves)
        plain = outputs_and_gradients((plain_self_attention(block, x),), leaves)
    assert lean[0].grad_fn.name() == "AddBackward0"  # the residual over the lean projection
    for got, want in zip(lean, plain, strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(("window", "shift", "bf16"), [(1, 0, False), (3, 2, False), (4, 0, True)])
def test_rsmma_equals_the_plain_attention_bit_for_bit(window: int, shift: int, bf16: bool) -> None:
    block = randomised(RSMMA(64, head_channels=32, frames=4, window=window, random_shift=True))
    video = torch.randn(2, 64, 4, 3, 5, requires_grad=True)
    audio = torch.randn(2, 64, 24, requires_grad=True)
    leaves = [video, audio, *block.parameters()]
    with autocast(bf16):
        lean = outputs_and_gradients(block(video, audio, shift), leaves)
        plain = outputs_and_gradients(plain_rsmma(block, video, audio, shift), leaves)
    for got, want in zip(lean, plain, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def saved_bytes(run) -> int:
    """Bytes of the distinct storages the autograd graph keeps while `run()` records it."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages.setdefault(tensor.untyped_storage()._cdata, tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(storages.values())


def test_the_attention_keeps_its_input_and_output_but_not_q_k_v() -> None:
    block = SelfAttention(64, heads=4)
    x = torch.randn(8, 64, 256, requires_grad=True)
    parameters = sum(p.numel() * p.element_size() for p in block.parameters())
    activation = x.numel() * x.element_size()
    lse = 8 * 4 * 256 * 4  # one float per query and head
    lean = saved_bytes(lambda: block(x))
    plain = saved_bytes(lambda: plain_self_attention(block, x))
    # x (the norm's input) and the attention output (the projection's input), nothing more.
    assert lean <= 2 * activation + lse + parameters
    # Autograd keeps q, k, v (3 activations) besides.
    assert plain >= lean + 3 * activation
