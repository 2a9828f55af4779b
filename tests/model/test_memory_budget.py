"""What the paper-config U-Net keeps for its backward pass, counted on `meta` in seconds.

The fp32 CPU training step meets issue 15's memory aim (at most 4.8 GiB, 0.5× the released
implementation) at 4.63-4.67 GiB (docs/benchmarks.md, *The lean step, second pass*) only while
a training forward keeps about 2.70 GB; the budget leaves 16 MB, less than any one activation
of the two finest levels (a 64×64 video activation is 34 MB), so a change that keeps one more
fails here rather than in a benchmark nobody reruns.
"""

from __future__ import annotations

from benchmarks.saved_for_backward import count_saved_for_backward
from mmdiffusion import CoupledUNetConfig

BUDGET_BYTES = 2_720_000_000


def test_a_paper_config_training_forward_keeps_no_more_than_its_budget() -> None:
    saved = count_saved_for_backward(CoupledUNetConfig.paper())
    largest = ", ".join(f"{name} {size / 1e6:.0f} MB" for name, size in saved.producers.most_common(5))
    assert saved.total_bytes <= BUDGET_BYTES, f"kept {saved.total_bytes / 1e9:.3f} GB; largest producers: {largest}"
