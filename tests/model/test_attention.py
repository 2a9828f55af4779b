"""Self-attention split into batch chunks (the CUDA grid limit) gives the same output."""

from __future__ import annotations

import torch

from mmdiffusion.attention import SelfAttention


def test_self_attention_in_batch_chunks_equals_one_call() -> None:
    torch.manual_seed(0)
    block = SelfAttention(64, heads=4)
    with torch.no_grad():
        block.proj_out.weight.normal_(0, 0.2)  # zero-initialised: give the attention a say
    x = torch.randn(11, 64, 16, requires_grad=True)  # e.g. temporal attention: B·H·W × C × F
    whole = block(x)
    (whole_grad,) = torch.autograd.grad(whole.square().sum(), x)
    block.max_batch = 12  # 3 rows of 4 heads per call: chunks of 3, 3, 3 and 2
    chunked = block(x)
    (chunked_grad,) = torch.autograd.grad(chunked.square().sum(), x)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked_grad, whole_grad, rtol=0, atol=1e-5)
