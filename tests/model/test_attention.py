"""Self-attention split into batch chunks (the CUDA grid limit) gives the same output; the SR
U-Net's SDPA attention equals the released einsums."""

from __future__ import annotations

import math

import torch

from mmdiffusion.attention import SelfAttention, chunked_attention
from mmdiffusion.sr_unet import AttentionBlock


def test_self_attention_in_batch_chunks_equals_one_call() -> None:
    """Off the CPU (where training attention is recomputed, `test_lean_attention.py`) and in
    inference, attention runs in chunks of at most `max_batch` × heads."""
    torch.manual_seed(0)
    block = SelfAttention(64, heads=4)
    with torch.no_grad():
        block.proj_out.weight.normal_(0, 0.2)  # zero-initialised: give the attention a say
    x = torch.randn(11, 64, 16)  # e.g. temporal attention: B·H·W × C × F
    with torch.no_grad():
        whole = block(x)
        block.max_batch = 12  # 3 rows of 4 heads per call: chunks of 3, 3, 3 and 2
        chunked = block(x)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    # Its gradients, as training takes them off the CPU: the chunked calls' against one call's.
    q, k, v = (torch.randn(11, 4, 16, 16, requires_grad=True) for _ in range(3))
    whole = chunked_attention(q, k, v, max_batch=64)
    whole_grads = torch.autograd.grad(whole.square().sum(), (q, k, v))
    chunked = chunked_attention(q, k, v, max_batch=12)  # 3 rows of 4 heads per call
    chunked_grads = torch.autograd.grad(chunked.square().sum(), (q, k, v))
    for got, want in zip(chunked_grads, whole_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def released_sr_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The released upsampler's attention (guided-diffusion's `QKVAttentionLegacy`): einsums."""
    batch, channels, height, width = x.shape
    tokens = x.reshape(batch, channels, height * width)
    qkv = block.qkv(block.norm(tokens))
    q, k, v = qkv.reshape(batch * block.heads, 3 * channels // block.heads, height * width).chunk(3, dim=1)
    scale = 1 / math.sqrt(math.sqrt(q.shape[1]))
    weights = torch.einsum("nct,ncs->nts", q * scale, k * scale).float().softmax(dim=-1).to(q.dtype)
    out = torch.einsum("nts,ncs->nct", weights, v).reshape(batch, channels, height * width)
    return (tokens + block.proj_out(out)).reshape(batch, channels, height, width)


def test_sr_attention_with_sdpa_equals_the_released_einsums_bit_for_bit_on_cpu() -> None:
    torch.manual_seed(0)
    block = AttentionBlock(128, heads=4)
    with torch.no_grad():
        block.proj_out.weight.normal_(0, 0.2)
    x = torch.randn(2, 128, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), released_sr_attention(block, x))
