"""Handing freed heap memory back to the system between a CPU step's forward and backward pass.

glibc serves allocations below its mmap threshold (128 KiB at first, raised up to 32 MiB as
large blocks are freed) from heaps, and a freed block's pages stay resident until the heap
top is trimmed. A training step's forward pass frees its transients between the activations it
keeps, so the backward pass, which allocates the gradients and its own transients, peaked with
those holes on top: at the paper config 0.4 GiB of the CPU step's peak (docs/benchmarks.md).
A fixed low mmap threshold would avoid the holes but costs a fresh zeroed page for every
large tensor (+30 % step time here); one `malloc_trim` per step costs tens of milliseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

import torch


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def release_freed_host_memory(device: torch.device) -> None:
    """Return the pages of freed heap blocks to the system where the step runs on the CPU
    (on an accelerator the step's memory is not the host's); a no-op without glibc."""
    trim = _malloc_trim()
    if device.type == "cpu" and trim is not None:
        trim(0)
