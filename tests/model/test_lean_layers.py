"""The memory-lean chains (norm → SiLU → dropout → conv recomputed in the backward pass) give the
plain ops' outputs and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdiffusion.layers import AudioConv, GroupNorm32, Video3dConv, VideoConv, norm_act_conv


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


def test_the_recomputed_chain_runs_on_the_meta_device() -> None:
    """Counting tools (benchmarks/saved_for_backward.py) trace the model on `meta`, a device
    without autocast; the chain must not ask it for an autocast state."""
    with torch.device("meta"):
        norm, conv = GroupNorm32(64), nn.Conv1d(64, 64, 3, padding=1)
        x = torch.zeros(1, 64, 128, requires_grad=True)
        out = norm_act_conv(norm, x, conv)
    assert out.device.type == "meta" and out.shape == (1, 64, 128) and out.grad_fn is not None
