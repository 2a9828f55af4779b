"""VGGish (Hershey et al. 2017) in PyTorch, for FAD with a user-supplied weights file.

No VGGish weights ship in a package here; `load_vggish(path)` reads a state dict in the
layout of the common PyTorch port (`features.*` convolutions, `embeddings.*` linear
layers, e.g. `vggish-10086976.pth`) with `weights_only=True`. The embedding is the 128-d
output before the PCA/quantisation post-processing; a clip's embedding is the mean over
its non-overlapping 0.96 s patches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import nn

from mmdiffusion.metrics.log_mel import MEL_BANDS, PATCH_FRAMES, VGGISH_LOG_MEL, log_mel_patches

EMBEDDING_DIM = 128
_CONV_CHANNELS = (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool")


class VGGish(nn.Module):
    feature_dim = EMBEDDING_DIM

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for spec in _CONV_CHANNELS:
            if spec == "pool":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(spec), 3, padding=1), nn.ReLU()]
                channels = int(spec)
        self.features = nn.Sequential(*layers)
        flat = channels * (PATCH_FRAMES // 16) * (MEL_BANDS // 16)
        self.embeddings = nn.Sequential(
            nn.Linear(flat, 4096),
            nn.ReLU(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, EMBEDDING_DIM),
            nn.ReLU(),
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """`patches` [B, 1, 96, 64] → [B, 128]."""
        x = self.features(patches)
        # The TensorFlow original flattens channels-last; the weights expect that order.
        return self.embeddings(rearrange(x, "b c h w -> b (h w c)"))


class VGGishEmbedder:
    """Callable: audio [N, 1, L] (or [N, L]) in [-1, 1] at 16 kHz → embeddings [N, 128]."""

    feature_dim = EMBEDDING_DIM

    def __init__(self, network: VGGish) -> None:
        self.network = network.eval()

    @torch.no_grad()
    def __call__(self, audio: np.ndarray | torch.Tensor) -> np.ndarray:
        waveforms = torch.as_tensor(np.asarray(audio), dtype=torch.float32)
        patches = log_mel_patches(waveforms.reshape(waveforms.shape[0], -1), VGGISH_LOG_MEL)
        count, per_clip = patches.shape[:2]
        device = next(self.network.parameters()).device
        embeddings = self.network(rearrange(patches, "n p t f -> (n p) 1 t f").to(device))
        return rearrange(embeddings, "(n p) d -> n p d", n=count, p=per_clip).mean(dim=1).cpu().numpy()


def load_vggish(path: str | Path) -> VGGish:
    """VGGish with the state dict at `path` (read with `weights_only=True`), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGGish weights file {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {key: value for key, value in state.items() if key.startswith(("features.", "embeddings."))}
    network = VGGish()
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path}: not a VGGish state dict ({error})") from error
    return network.eval()
