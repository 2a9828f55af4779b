"""Where a metric value comes from, recorded with the value.

A `MetricProvenance` says which features the number was computed on (extractor, weights
digest, layer, sample rate, resize), on how many generated and reference clips, which
reference clips (the split, the dataset's manifest digest and the digest of the clips' keys),
and how the clips were generated (sampler and steps, zero-shot condition) or, for the held-out
loss, on which fixed work. Two values are comparable only when every one of these agrees;
`differences` names the ones that do not. `stable` says whether N reached what the metric
needs (`MIN_STABLE_N`): a flag for readers, not a reason to refuse a comparison.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

MIN_STABLE_N: dict[str, int] = {
    "val_loss": 1,
    "fvd": 401,
    "kvd": 100,
    "fad": 1025,
    "sync": 16,
    "memorisation": 20,
}
"""Fewest clips at which a metric is stable enough to read on its own. The Fréchet distances
need more clips than feature dimensions, or the covariance is singular and the value is
mostly bias (I3D logits: 400; YAMNet: 1024, VGGish would need 129); KVD is unbiased but its
spread is large below about 100 clips; the held-out loss is a paired comparison on identical
work and compares at any N; a sync mean over 16 clips has a standard error of about 0.07; a
memorisation share needs 20 clips to resolve 5 %. Measurements: docs/evaluation.md."""


@dataclass(frozen=True)
class MetricProvenance:
    metric: str
    extractor: str
    """Feature network (`i3d-kinetics-400`, `yamnet`, `vggish`), or what else the value is
    computed from (`diffusion-loss`, `onset-motion`)."""
    extractor_weights_sha256: str
    """SHA-256 of the network's weights file; `none` without a network."""
    feature_layer: str
    sample_rate: str
    resize: str
    num_generated: int
    num_reference: int
    reference_split: str
    """`held_out 0.05`, `train 0.05` or `all`."""
    reference_manifest_sha256: str
    reference_digest: str
    """Digest of the reference clips' keys, in order."""
    sampler: str
    """`dpm-solver++ 20 steps`, or `none` (the held-out loss generates nothing)."""
    condition: str = "none"
    """`none` (joint samples), `audio` (a→v) or `video` (v→a)."""
    settings: str = ""
    """The rest of what fixes the work: seeds, timesteps, batch size."""
    stable: bool = True

    def compared(self) -> dict[str, object]:
        """The fields that must agree for two values to be compared (all but `stable`)."""
        return {key: value for key, value in asdict(self).items() if key != "stable"}

    def differences(self, other: MetricProvenance) -> list[str]:
        """`field: mine vs other's` for every compared field that differs."""
        mine, theirs = self.compared(), other.compared()
        return [f"{key}: {mine[key]} vs {theirs[key]}" for key in mine if mine[key] != theirs[key]]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MetricProvenance:
        values = json.loads(text)
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def stability_warning(provenance: MetricProvenance) -> str | None:
    """A sentence for a value computed on fewer clips than its metric needs, else None."""
    if provenance.stable:
        return None
    needed = MIN_STABLE_N[provenance.metric]
    count = provenance.num_reference
    return (
        f"{provenance.metric} on {count} clips is below the {needed} it needs to be stable: "
        "compare it only with values of the same provenance (docs/evaluation.md)"
    )
