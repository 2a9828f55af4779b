"""The numeric settings a device gets by default: autocast precision, cuDNN autotuning and TF32
matmuls. (Training uses the fused AdamW kernel on every device: its on-device skip of a
non-finite step needs it, `training.loop`.)

One function chooses them from the device (`device_settings`), so training, sampling and
evaluation agree, and the choice is testable without the device: on CUDA, bf16 autocast where
the GPU supports it (Ampere and newer), `cudnn.benchmark` (the clip shapes are fixed, so the
autotuned kernels are reused for the whole run), TF32 for float32 matmuls (what stays float32
under autocast, and every matmul with fp32 chosen); on CPU, float32 and the defaults.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DeviceSettings:
    device: torch.device
    precision: Literal["fp32", "bf16", "fp16"]
    """Autocast precision (`fp32`: none)."""
    cudnn_benchmark: bool
    tf32: bool

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to `precision` on the device, or nothing for fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def apply(self) -> None:
        """Switch on the process-wide backend settings chosen (never switches one off)."""
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if self.tf32:  # cuDNN convolutions use TF32 by default already; matmuls do not
            torch.set_float32_matmul_precision("high")


def device_settings(
    device: torch.device | str, precision: Precision = "auto", *, bf16_supported: bool | None = None
) -> DeviceSettings:
    """The settings for `device`; `precision` `auto` is bf16 on a CUDA device that supports it
    and fp32 elsewhere. `bf16_supported` overrides asking the device (for tests)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cuda = device.type == "cuda"
    if cuda and bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if precision == "auto":
        precision = "bf16" if cuda and bf16_supported else "fp32"
    elif precision == "bf16" and cuda and not bf16_supported:
        raise ValueError(f"precision bf16: {device} does not support bfloat16; use fp16 or fp32")
    return DeviceSettings(device, precision, cudnn_benchmark=cuda, tf32=cuda)


def resolve_device(device: str, flag: str = "--device") -> torch.device:
    """`auto` is CUDA when present, else CPU; anything else a torch device that exists here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"{flag} {device!r} is not a torch device ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag} {device}: CUDA is not available on this machine")
    return resolved
