"""The log-mel patches that YAMNet and VGGish read (the AudioSet models' shared front end).

16 kHz mono → magnitude STFT (25 ms periodic Hann window, 10 ms hop, FFT size 512, no
centring) → 64 HTK-mel bands from 125 to 7500 Hz (triangular filters as in TensorFlow's
`linear_to_mel_weight_matrix`) → log(mel + offset) → patches of 96 frames (0.96 s).
The models differ only in the log offset and the patch hop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from mmdiffusion.constants import SAMPLE_RATE

PATCH_FRAMES = 96
MEL_BANDS = 64


@dataclass(frozen=True)
class LogMelConfig:
    log_offset: float
    patch_hop_frames: int
    sample_rate: int = SAMPLE_RATE
    window_seconds: float = 0.025
    hop_seconds: float = 0.010
    mel_min_hz: float = 125.0
    mel_max_hz: float = 7500.0

    @property
    def window(self) -> int:
        return round(self.window_seconds * self.sample_rate)

    @property
    def hop(self) -> int:
        return round(self.hop_seconds * self.sample_rate)

    @property
    def fft_size(self) -> int:
        return 1 << (self.window - 1).bit_length()

    @cached_property
    def mel_matrix(self) -> torch.Tensor:
        """[fft_size // 2 + 1, MEL_BANDS] triangular HTK-mel weights (the DC bin gets none)."""
        bins = self.fft_size // 2 + 1
        bin_mel = _hz_to_mel(np.linspace(0.0, self.sample_rate / 2, bins))[1:, None]
        edges = np.linspace(_hz_to_mel(self.mel_min_hz), _hz_to_mel(self.mel_max_hz), MEL_BANDS + 2)
        lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
        rising = (bin_mel - lower) / (center - lower)
        falling = (upper - bin_mel) / (upper - center)
        weights = np.maximum(0.0, np.minimum(rising, falling))
        return torch.from_numpy(np.concatenate([np.zeros((1, MEL_BANDS)), weights]).astype(np.float32))


YAMNET_LOG_MEL = LogMelConfig(log_offset=0.001, patch_hop_frames=48)
VGGISH_LOG_MEL = LogMelConfig(log_offset=0.01, patch_hop_frames=96)


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def log_mel_patches(waveforms: torch.Tensor, config: LogMelConfig) -> torch.Tensor:
    """`waveforms` [N, L] in [-1, 1] at `config.sample_rate` → patches [N, P, 96, 64].

    Each waveform is padded with silence at the end so that the patches cover all of it.
    """
    if waveforms.ndim != 2:
        raise ValueError(f"waveforms must be [N, samples], got shape {tuple(waveforms.shape)}")
    waveforms = waveforms.to(torch.float32)
    frames_needed = max(waveforms.shape[1] - config.window, 0) / config.hop + 1
    patches = 1 + max(0, int(np.ceil((frames_needed - PATCH_FRAMES) / config.patch_hop_frames)))
    frame_count = PATCH_FRAMES + (patches - 1) * config.patch_hop_frames
    length = config.window + (frame_count - 1) * config.hop
    waveforms = torch.nn.functional.pad(waveforms, (0, max(0, length - waveforms.shape[1])))[:, :length]
    frames = waveforms.unfold(1, config.window, config.hop)  # [N, frames, window]
    window = torch.hann_window(config.window, periodic=True, dtype=torch.float32)
    magnitude = torch.fft.rfft(frames * window, n=config.fft_size).abs()
    log_mel = torch.log(magnitude @ config.mel_matrix + config.log_offset)  # [N, frames, 64]
    return log_mel.unfold(1, PATCH_FRAMES, config.patch_hop_frames).transpose(2, 3)
