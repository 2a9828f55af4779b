"""Freed heap blocks between kept ones are handed back to the system."""

from __future__ import annotations

import os

import pytest
import torch

from training.host_memory import _malloc_trim, release_freed_host_memory


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(_malloc_trim() is None, reason="the C library has no malloc_trim")
def test_freed_blocks_between_kept_ones_leave_the_resident_set() -> None:
    # 64 KiB blocks lie below glibc's mmap threshold, so they come from the heap; keeping every
    # tenth leaves nine-tenths of 256 MiB as holes the heap cannot trim from its top.
    blocks = [torch.ones(16 * 1024) for _ in range(4096)]
    kept = blocks[::10]
    del blocks
    holes = resident_bytes()
    release_freed_host_memory(torch.device("meta"))  # not a CPU step: nothing happens
    assert resident_bytes() > holes - 32 * 2**20
    release_freed_host_memory(torch.device("cpu"))
    assert resident_bytes() < holes - 150 * 2**20
    assert all(float(block[0]) == 1.0 for block in kept)
