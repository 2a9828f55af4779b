"""Memorisation: are generated clips closer to the training clips than fresh clips are?

For every generated clip, the distance to its nearest training clip; for every held-out
reference clip (never trained on), the same. A held-out clip's nearest-training distance is
what "a new clip from the data's distribution" looks like from the training set, so the
*ratio* of a generated clip's distance to the held-out clips' median says how unusually close
it is: about 1 for a model that generates new clips like the data, 0 for an exact copy. A
generated clip counts as memorised when its ratio is below `MEMORISED_RATIO`; the score is the
share of such clips (lower is better).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MEMORISED_RATIO = 0.5
"""A generated clip at less than half the distance from the training set that held-out clips
typically (the median) are counts as memorised."""


def nearest(queries: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query row [Q, D] to its nearest bank row [B, D], and its index."""
    queries, bank = np.asarray(queries, dtype=np.float64), np.asarray(bank, dtype=np.float64)
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1] or not len(bank):
        raise ValueError(f"queries and bank must be [Q, D] and [B>=1, D], got {queries.shape} and {bank.shape}")
    squared = (queries**2).sum(1)[:, None] + (bank**2).sum(1)[None, :] - 2.0 * queries @ bank.T
    index = squared.argmin(axis=1)
    return np.sqrt(np.maximum(squared[np.arange(len(queries)), index], 0.0)), index


@dataclass(frozen=True)
class Memorisation:
    share: float
    """Share of generated clips with a ratio below `MEMORISED_RATIO`."""
    ratios: np.ndarray
    """Per generated clip: nearest-training distance / the held-out clips' median one."""
    nearest_training: np.ndarray
    """Per generated clip: index of its nearest training clip."""
    typical_distance: float
    """Median nearest-training distance of the held-out clips."""


def memorisation(generated: np.ndarray, held_out: np.ndarray, training: np.ndarray) -> Memorisation:
    """From features (or flattened pixels) of generated [G, D], held-out [H, D] and training [T, D] clips."""
    distances, index = nearest(generated, training)
    typical = float(np.median(nearest(held_out, training)[0]))
    if typical <= 0:
        raise ValueError("the held-out clips have exact copies in the training clips: no typical distance")
    ratios = distances / typical
    return Memorisation(float(np.mean(ratios < MEMORISED_RATIO)), ratios, index, typical)
