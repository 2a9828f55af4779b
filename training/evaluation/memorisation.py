"""The memorisation score of generated clips against the training split, with pictures of the
worst cases (`mmdiffusion.metrics.memorisation` has the measure itself).

The nearest training clip is looked for in the feature space of the FVD extractor (I3D logits)
and in pixel space (the clip's frames as one vector, in [0, 1]); the reference clips (held
out) give the typical distance. `memorisation` is the share of generated clips memorised in
either space (a copy in one is a copy), `memorisation_feature` and `memorisation_pixel` the
shares in each, `memorisation_ratio` the median ratio in feature space (about 1 for new
clips, 0 for exact copies). Both spaces are needed: on the test scenes, training clips with
±4 levels of noise added have a pixel ratio of 0.05 but an I3D ratio of 0.7 (I3D logits
react strongly to pixel noise), while a clip that copies a training clip's content at another
position or colour could be close in feature space only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmdiffusion.metrics.memorisation import MEMORISED_RATIO, Memorisation, memorisation
from training.evaluation.reference import ReferenceClips

WORST_CASES = 4
"""Generated clips shown beside their nearest training clip."""
SHOWN_FRAMES = (0, 5, 10, 15)
GAP = 2
"""White pixels between the frames of a figure."""


def _pixels(video: np.ndarray) -> np.ndarray:
    return np.asarray(video, dtype=np.float32).reshape(len(video), -1) / 255.0


def memorisation_metrics(
    generated_video: np.ndarray,
    reference: ReferenceClips,
    training: ReferenceClips,
    video_features: Callable[[np.ndarray], np.ndarray],
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The memorisation values and the worst cases' figures (artifact name -> RGB uint8 image)."""
    if not len(training):
        raise ValueError("memorisation needs training clips to compare against")
    counts = np.cumsum([len(generated_video), len(reference)])
    generated, held_out, trained = np.split(
        video_features(np.concatenate([generated_video, reference.video, training.video])), counts
    )
    features = memorisation(generated, held_out, trained)
    pixels = memorisation(_pixels(generated_video), _pixels(reference.video), _pixels(training.video))
    either = (features.ratios < MEMORISED_RATIO) | (pixels.ratios < MEMORISED_RATIO)
    values = {
        "memorisation": float(either.mean()),
        "memorisation_feature": features.share,
        "memorisation_pixel": pixels.share,
        "memorisation_ratio": float(np.median(features.ratios)),
    }
    return values, worst_cases(generated_video, training, features, pixels)


def worst_cases(
    generated_video: np.ndarray, training: ReferenceClips, features: Memorisation, pixels: Memorisation
) -> dict[str, np.ndarray]:
    """The `WORST_CASES` generated clips of lowest ratio (in the space where it is lower), each
    as one image: its frames (top) over those of its nearest training clip there (bottom),
    named with the rank, the space, the ratio and the training clip's key."""
    use_pixels = pixels.ratios < features.ratios
    ratios = np.where(use_pixels, pixels.ratios, features.ratios)
    neighbours = np.where(use_pixels, pixels.nearest_training, features.nearest_training)
    figures = {}
    for rank, index in enumerate(np.argsort(ratios, kind="stable")[:WORST_CASES]):
        neighbour = int(neighbours[index])
        rows = [generated_video[index], training.video[neighbour]]
        space = "pixel" if use_pixels[index] else "feature"
        name = (
            f"worst-{rank:02d}_generated-{index:03d}_{space}-ratio-{ratios[index]:.3f}_{training.keys[neighbour]}.png"
        )
        figures[name] = _grid([[clip[frame] for frame in SHOWN_FRAMES] for clip in rows])
    return figures


def _grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Frames [H, W, 3] laid out in rows with white gaps."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(row) for row in rows)
    image = np.full((len(rows) * (height + GAP) - GAP, columns * (width + GAP) - GAP, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, frame in enumerate(row):
            image[r * (height + GAP) : r * (height + GAP) + height, c * (width + GAP) : c * (width + GAP) + width] = (
                frame
            )
    return image
