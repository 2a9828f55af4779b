"""What the backward pass of the paper-config coupled U-Net keeps, counted without computing.

One forward on the `meta` device under a saved-tensor hook, counting each storage once; the
attention keeps what it keeps on the CPU (`mmdiffusion.attention.LEAN_ATTENTION_DEVICES`).
Prints the total and the largest producers.

    .venv/bin/python -m benchmarks.saved_for_backward
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from mmdiffusion import CoupledUNet, CoupledUNetConfig


@dataclass(frozen=True)
class SavedForBackward:
    """What one training forward at batch 1 keeps: bytes in all (each storage once), of which
    the parameters, and bytes by the op that produced the kept tensor."""

    total_bytes: int
    parameter_bytes: int
    producers: collections.Counter


def count_saved_for_backward(config: CoupledUNetConfig) -> SavedForBackward:
    with torch.device("meta"):
        model = CoupledUNet(config).train()
        video = torch.zeros(1, config.frames, config.video_channels, config.image_size, config.image_size)
        audio = torch.zeros(1, config.audio_channels, config.audio_length)
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
    return SavedForBackward(sum(seen.values()), parameters, producers)


def main() -> None:
    saved = count_saved_for_backward(CoupledUNetConfig.paper())
    print(
        f"saved for backward: {saved.total_bytes / 1e9:.2f} GB "
        f"(of which parameters {saved.parameter_bytes / 1e9:.2f} GB)"
    )
    for name, size in saved.producers.most_common(10):
        print(f"  {name:48s} {size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
