"""What the backward pass of the paper-config coupled U-Net keeps, counted without computing.

One forward on the `meta` device under a saved-tensor hook, counting each storage once; the
attention keeps what it keeps on the CPU (`mmdiffusion.attention.LEAN_ATTENTION_DEVICES`).
Prints the total and the largest producers.

    .venv/bin/python -m benchmarks.saved_for_backward
"""

from __future__ import annotations

import collections

import torch

from mmdiffusion import CoupledUNet, CoupledUNetConfig


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

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(video, audio, timesteps)
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"saved for backward: {sum(seen.values()) / 1e9:.2f} GB (of which parameters {parameters / 1e9:.2f} GB)")
    for name, size in producers.most_common(10):
        print(f"  {name:48s} {size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
