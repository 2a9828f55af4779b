"""What the backward pass of the paper-config coupled U-Net keeps, counted without computing.

One forward on the `meta` device under a saved-tensor hook, counting each storage once; the
attention is routed to the CPU flash kernel (what the CPU runs; on `meta` SDPA would take the
math path and keep the attention matrices). Prints the total and the largest producers.

    .venv/bin/python -m benchmarks.saved_for_backward
"""

from __future__ import annotations

import collections

import torch
import torch.nn.functional as F

from mmdiffusion import CoupledUNet, CoupledUNetConfig


def cpu_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=kwargs.get("scale"))[0]


def main() -> None:
    with torch.device("meta"):
        model = CoupledUNet(CoupledUNetConfig.paper()).train()
        video, audio = torch.zeros(1, 16, 3, 64, 64), torch.zeros(1, 1, 25_600)
        timesteps = torch.zeros(1, dtype=torch.long)
    seen: dict[int, int] = {}
    producers: collections.Counter = collections.Counter()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in seen:
            seen[storage._cdata] = storage.nbytes()
            producers[tensor.grad_fn.name() if tensor.grad_fn is not None else "leaf"] += storage.nbytes()
        return tensor

    sdpa, F.scaled_dot_product_attention = F.scaled_dot_product_attention, cpu_flash
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(video, audio, timesteps)
    finally:
        F.scaled_dot_product_attention = sdpa
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"saved for backward: {sum(seen.values()) / 1e9:.2f} GB (of which parameters {parameters / 1e9:.2f} GB)")
    for name, size in producers.most_common(10):
        print(f"  {name:48s} {size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
