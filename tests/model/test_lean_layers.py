"""The memory-lean chains (concatenation or relayout → norm → SiLU → dropout → conv, recomputed in
the backward pass) give the plain ops' outputs and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdiffusion.layers import (
    AudioConv,
    GroupNorm32,
    Video3dConv,
    VideoConv,
    audio_downsample,
    audio_upsample,
    lean_input_conv,
    norm_act_conv,
    video_downsample,
    video_upsample,
)
from mmdiffusion.unet import CoupledResBlock


def video_or_audio(kind: str) -> tuple[nn.Module, torch.Tensor, tuple[int, ...]]:
    if kind == "video2d+1d":
        return VideoConv(64, 32), torch.randn(2, 64, 4, 5, 6), (2, 64, 1, 1, 1)
    if kind == "video3d":
        return Video3dConv(64, 32, kernel_size=3), torch.randn(2, 64, 4, 5, 6), (2, 64, 1, 1, 1)
    if kind == "audio":
        return AudioConv(64, 32, kernel_size=3, dilation=4), torch.randn(2, 64, 40), (2, 64, 1)
    return nn.Conv1d(64, 96, 1), torch.randn(3, 64, 20), (3, 64, 1)  # an attention's qkv


@pytest.mark.parametrize("kind", ["video2d+1d", "video3d", "audio", "qkv"])
@pytest.mark.parametrize(
    ("modulated", "drop", "bf16"), [(False, 0.0, False), (True, 0.0, False), (True, 0.3, False), (True, 0.3, True)]
)
def test_recomputed_chain_equals_the_plain_one(kind: str, modulated: bool, drop: float, bf16: bool) -> None:
    torch.manual_seed(0)
    conv, x, emb_shape = video_or_audio(kind)
    norm = GroupNorm32(64)
    with torch.no_grad():
        for parameter in (*norm.parameters(), *conv.parameters()):
            parameter.normal_(0.5, 0.3)
    x.requires_grad_()
    scale = torch.randn(emb_shape, requires_grad=True) if modulated else None
    shift = torch.randn(emb_shape, requires_grad=True) if modulated else None
    dropout = nn.Dropout(drop)
    leaves = [x, *norm.parameters(), *conv.parameters(), *([scale, shift] if modulated else [])]

    torch.manual_seed(1)
    act = kind != "qkv"  # attention norms have no SiLU
    lean = norm_act_conv(norm, x, conv, scale, shift, dropout=dropout, act=act)
    upstream = torch.randn_like(lean)
    lean_grads = torch.autograd.grad(lean, leaves, upstream)

    torch.manual_seed(1)  # the same dropout mask, drawn the same way
    h = norm(x)
    h = h * (1 + scale) + shift if modulated else h
    h = F.silu(h) if act else h
    if drop:
        h = h * torch.empty_like(h, dtype=torch.bool).bernoulli_(1 - drop) / (1 - drop)
    plain = conv(h)
    plain_grads = torch.autograd.grad(plain, leaves, upstream)
    assert torch.equal(lean, plain)
    for got, want in zip(lean_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_dropout_chain_keeps_no_mask_and_leaves_the_generator_where_the_plain_chain_does() -> None:
    """The backward pass draws the mask again from the state it was first drawn from, so none
    is kept, and the numbers drawn after the step are those drawn after the plain chain's."""
    torch.manual_seed(0)
    conv, x, _ = video_or_audio("video2d+1d")
    norm = GroupNorm32(64)
    x.requires_grad_()
    saved: list[torch.Tensor] = []
    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = norm_act_conv(norm, x, conv, dropout=nn.Dropout(0.3))
    upstream = torch.randn_like(out)  # the generator moves on between forward and backward
    out.backward(upstream)
    after_lean = torch.rand(8)
    torch.manual_seed(1)
    torch.empty_like(x, dtype=torch.bool).bernoulli_(0.7)  # the plain chain's one draw
    torch.randn_like(out)
    assert torch.equal(after_lean, torch.rand(8))
    assert saved and not any(t.dtype == torch.bool for t in saved)


def test_the_recomputed_chain_runs_on_the_meta_device() -> None:
    """Counting tools (benchmarks/saved_for_backward.py) trace the model on `meta`, a device
    without autocast; the chain must not ask it for an autocast state."""
    with torch.device("meta"):
        norm, conv = GroupNorm32(64), nn.Conv1d(64, 64, 3, padding=1)
        x = torch.zeros(1, 64, 128, requires_grad=True)
        out = norm_act_conv(norm, x, conv)
    assert out.device.type == "meta" and out.shape == (1, 64, 128) and out.grad_fn is not None


def gradients_of(output: torch.Tensor, leaves: list[torch.Tensor], upstream: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(output, leaves, upstream))


@pytest.mark.parametrize("kind", ["video2d+1d", "audio"])
def test_a_chain_with_a_skip_input_equals_the_chain_on_the_concatenation(kind: str) -> None:
    """A decoder block's first chain takes its input and the skip apart, keeping them instead of
    their concatenation; outputs and both inputs' gradients are the plain ones bit for bit."""
    torch.manual_seed(0)
    conv, both, _ = video_or_audio(kind)
    x, skip = (part.detach().requires_grad_() for part in both.split([40, 24], dim=1))
    norm = GroupNorm32(64)
    leaves = [x, skip, *norm.parameters(), *conv.parameters()]
    lean = norm_act_conv(norm, x, conv, skip=skip)
    upstream = torch.randn_like(lean)
    plain = conv(F.silu(norm(torch.cat([x, skip], dim=1))))
    assert torch.equal(lean, plain)
    for got, want in zip(gradients_of(lean, leaves, upstream), gradients_of(plain, leaves, upstream), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("with_skip", [True, False])
def test_a_lean_input_conv_equals_the_plain_conv(with_skip: bool) -> None:
    """The skip connection's convolution of a concatenation, and an attention projection of a
    relaid-out output, computed from the parts: the plain results and gradients bit for bit."""
    torch.manual_seed(0)
    conv = AudioConv(64, 32)
    if with_skip:
        x, skip = torch.randn(2, 40, 30, requires_grad=True), torch.randn(2, 24, 30, requires_grad=True)
        layout, leaves, assembled = None, [x, skip], lambda: torch.cat([x, skip], dim=1)
    else:
        x, skip = torch.randn(2, 4, 30, 16, requires_grad=True), None  # [N, heads, T, d]
        layout, leaves = (lambda out: out.permute(0, 1, 3, 2).reshape(2, 64, 30)), [x]
        assembled = lambda: layout(x)  # noqa: E731
    leaves += list(conv.parameters())
    lean = lean_input_conv(conv, x, skip, layout)
    upstream = torch.randn_like(lean)
    plain = conv(assembled())
    assert torch.equal(lean, plain)
    for got, want in zip(gradients_of(lean, leaves, upstream), gradients_of(plain, leaves, upstream), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_decoder_block_keeps_the_skip_apart_at_no_cost_in_results() -> None:
    """`CoupledResBlock(video, audio, emb, skip=...)` is the block on the concatenated inputs,
    outputs and gradients bit for bit, without keeping the concatenation for the backward pass."""
    torch.manual_seed(0)
    block = CoupledResBlock(64, 96, 16, dropout=0.0, audio_dilation=2, num_heads=2, video_attention=True)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0, 0.2)
    video, skip_v = torch.randn(1, 40, 4, 6, 6, requires_grad=True), torch.randn(1, 24, 4, 6, 6, requires_grad=True)
    audio, skip_a = torch.randn(1, 40, 24, requires_grad=True), torch.randn(1, 24, 24, requires_grad=True)
    emb = torch.randn(1, 16)
    leaves = [video, skip_v, audio, skip_a, *block.parameters()]
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lean = block(video, audio, emb, skip=(skip_v, skip_a))
    plain = block(torch.cat([video, skip_v], dim=1), torch.cat([audio, skip_a], dim=1), emb)
    upstream = [torch.randn_like(out) for out in lean]
    assert all(torch.equal(a, b) for a, b in zip(lean, plain, strict=True))
    lean_grads = torch.autograd.grad(lean, leaves, upstream)
    for got, want in zip(lean_grads, torch.autograd.grad(plain, leaves, upstream), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not [t for t in saved if tuple(t.shape[:2]) == (1, 64)], "a concatenation of input and skip was kept"


RESAMPLING = {"up": (video_upsample, audio_upsample), "down": (video_downsample, audio_downsample)}


def plain_res_block(block: CoupledResBlock, video: torch.Tensor, audio: torch.Tensor, emb: torch.Tensor) -> tuple:
    """A scale-shift residual block (no attention) in plain modules and ops."""
    emb_out = block.emb_layers(emb)
    hv, ha = block.video_in_layers(video), block.audio_in_layers(audio)
    if block.resample is not None:
        resample_video, resample_audio = RESAMPLING[block.resample]
        hv, ha, video, audio = resample_video(hv), resample_audio(ha), resample_video(video), resample_audio(audio)

    def out(layers: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
        scale, shift = emb_out.reshape(*emb_out.shape, *([1] * (h.ndim - 2))).to(h.dtype).chunk(2, dim=1)
        return layers[3](layers[2](layers[1](layers[0](h) * (1 + scale) + shift)))

    return (
        block.video_skip_connection(video) + out(block.video_out_layers, hv),
        block.audio_skip_connection(audio) + out(block.audio_out_layers, ha),
    )


def assert_lean_equals_plain(
    block: CoupledResBlock, video: torch.Tensor, audio: torch.Tensor, emb: torch.Tensor, bf16: bool
) -> dict[int, torch.Tensor]:
    """The block's outputs and gradients are the plain block's bit for bit (under bf16 autocast
    where asked); returns the tensors the block kept for its backward pass, one per storage."""
    leaves = [video, audio, *block.parameters()]
    kept: dict[int, torch.Tensor] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        kept.setdefault(tensor.untyped_storage()._cdata, tensor)
        return tensor

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            lean = block(video, audio, emb)
        plain = plain_res_block(block, video, audio, emb)
    upstream = [torch.randn_like(out) for out in lean]
    assert all(torch.equal(a, b) for a, b in zip(lean, plain, strict=True))
    for got, want in zip(
        torch.autograd.grad(lean, leaves, upstream), torch.autograd.grad(plain, leaves, upstream), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    return kept


def random_block(in_channels: int, out_channels: int, **kwargs) -> CoupledResBlock:
    torch.manual_seed(0)
    block = CoupledResBlock(in_channels, out_channels, 16, dropout=0.0, audio_dilation=2, num_heads=2, **kwargs)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0, 0.2)
    return block


@pytest.mark.parametrize("bf16", [False, True])
def test_a_block_hands_its_temporal_convolution_to_the_output_layers_at_no_cost_in_results(bf16: bool) -> None:
    """The output layers start with the input layers' temporal convolution, so the block keeps
    that convolution's input (the spatial output) but not its output; outputs and gradients are
    the plain block's bit for bit, under autocast too."""
    block = random_block(64, 96)
    video, audio = torch.randn(1, 64, 4, 6, 6, requires_grad=True), torch.randn(1, 64, 24, requires_grad=True)
    kept = assert_lean_equals_plain(block, video, audio, torch.randn(1, 16), bf16)
    video_activations = [t for t in kept.values() if t.shape == (1, 96, 4, 6, 6)]
    assert len(video_activations) == 1, "both the temporal convolution's input and its output were kept"


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("resample", ["up", "down"])
def test_a_resampling_block_keeps_its_input_layers_output_at_the_smaller_size(resample: str, bf16: bool) -> None:
    """An upsampling block's output layers take the input layers' output before the
    upsampling and redo it in the backward pass; a downsampling block keeps the pooled output
    (the pooling keeps its input anyway). Outputs and gradients are the plain block's bit for
    bit, under autocast too."""
    block = random_block(64, 64, resample=resample)
    video, audio = torch.randn(1, 64, 4, 6, 6, requires_grad=True), torch.randn(1, 64, 32, requires_grad=True)
    kept = assert_lean_equals_plain(block, video, audio, torch.randn(1, 16), bf16)
    larger = [(1, 64, 4, 12, 12), (1, 64, 128)] if resample == "up" else [(1, 64, 4, 6, 6), (1, 64, 32)]
    kept_larger = [tuple(t.shape) for t in kept.values() if tuple(t.shape) in larger]
    assert len(kept_larger) == (0 if resample == "up" else 4), kept_larger
