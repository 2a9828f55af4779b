"""The audio-visual synchrony score on media with known events, and the memorisation score
on "models" that return training clips or held-out clips."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from mmdiffusion import BundledModel
from mmdiffusion.media import write_mp4
from mmdiffusion.metrics import ExtractorConfig, build_video_extractor
from pipeline.shard_format import DataSplit
from tests.evaluation.conftest import micro_model
from tests.fixtures.curation_media import (
    EVENTS,
    OTHER_EVENTS,
    SOURCE_FPS,
    SOURCE_RATE,
    decode_first_clip,
    render_audio,
    render_scene,
)
from training.evaluation import EvaluationConfig, ReferenceClips, evaluate
from training.evaluation.memorisation import memorisation_metrics
from training.evaluation.sync import clip_sync, sync_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Clip = tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def event_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Clip]:
    """Clips decoded as preprocessing decodes them: a block jumps and the sound knocks at the
    same instants (aligned), the sound 100 ms late (shifted), and another scene (other)."""
    folder = tmp_path_factory.mktemp("sync-media")

    def clip(name: str, seed: int, events: tuple[float, ...], delay: float = 0.0) -> Clip:
        frames, audio = render_scene(seed, events), render_audio("events", events, delay)
        video, sound, *_ = decode_first_clip(write_mp4(folder / f"{name}.mp4", frames, audio, SOURCE_FPS, SOURCE_RATE))
        return video, sound

    return {
        "aligned": clip("aligned", 1, EVENTS),
        "shifted": clip("shifted", 1, EVENTS, delay=0.1),
        "late": clip("late", 1, EVENTS, delay=0.3),
        "other": clip("other", 2, OTHER_EVENTS),
    }


def test_sync_orders_aligned_above_shifted_above_mismatched(event_clips: dict[str, Clip]) -> None:
    (video, audio), (other_video, other_audio) = event_clips["aligned"], event_clips["other"]
    aligned, shifted, late = (clip_sync(*event_clips[name]) for name in ("aligned", "shifted", "late"))
    mismatched = (clip_sync(video, other_audio), clip_sync(other_video, audio))
    assert aligned > 0.9 and clip_sync(other_video, other_audio) > 0.9
    assert 0.2 < shifted < 0.7  # one frame late keeps partial credit
    assert max(mismatched) < 0.0 and late < 0.0  # three frames late reads as unrelated
    # No events, no evidence of synchrony: a frozen picture scores 0.
    assert clip_sync(np.repeat(video[:1], len(video), axis=0), audio) == 0.0

    def stack(*clips: Clip) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([c[0] for c in clips]), np.stack([c[1] for c in clips]).astype(np.float32) / 32768

    reference = stack(event_clips["aligned"], event_clips["other"])
    values = sync_metrics(*stack(event_clips["shifted"], event_clips["other"]), *reference)
    assert values["sync_reference"] == pytest.approx((aligned + clip_sync(other_video, other_audio)) / 2, abs=1e-3)
    assert values["sync_mismatched"] == pytest.approx(np.mean(mismatched), abs=1e-3)
    assert values["sync_reference"] > values["sync"] > values["sync_mismatched"]


def _scene(seed: int) -> np.ndarray:
    return render_scene(seed, EVENTS, width=64, height=64)[:16]


def _clips(video: np.ndarray, name: str) -> ReferenceClips:
    keys = [f"{name}{index:04x}-00000" for index in range(len(video))]
    audio = np.zeros((len(video), 1, 25_600), dtype=np.float32)
    return ReferenceClips(video, audio, keys, name, split=DataSplit("train" if name == "train" else "held_out"))


class CachedFeatures:
    """The real I3D, computing each distinct clip once (the "models" repeat clips)."""

    def __init__(self) -> None:
        self.network, self.cache = build_video_extractor(ExtractorConfig(batch_size=4)), {}

    def __call__(self, video: np.ndarray) -> np.ndarray:
        digests = [hashlib.sha256(clip.tobytes()).hexdigest() for clip in video]
        new = {digest: clip for digest, clip in zip(digests, video, strict=True) if digest not in self.cache}
        if new:
            self.cache.update(zip(new, self.network(np.stack(list(new.values()))), strict=True))
        return np.stack([self.cache[digest] for digest in digests])


def test_memorisation_flags_a_model_that_returns_training_clips_and_passes_one_that_returns_new_ones(
    tmp_path: Path,
) -> None:
    training = _clips(np.stack([_scene(s) for s in (10, 11, 12, 13)]), "train")
    reference = _clips(np.stack([_scene(s) for s in (20, 21)]), "held")
    fresh = np.stack([_scene(s) for s in (30, 31)])  # held-out clips the reference does not hold
    copies = training.video[[2, 0]]
    noisy = np.clip(copies + np.random.default_rng(0).integers(-4, 5, copies.shape), 0, 255).astype(np.uint8)
    features = CachedFeatures()

    new, _ = memorisation_metrics(fresh, reference, training, features)
    assert new["memorisation"] == 0.0 and new["memorisation_ratio"] > 0.9
    copied, figures = memorisation_metrics(copies, reference, training, features)
    assert copied["memorisation"] == copied["memorisation_feature"] == copied["memorisation_pixel"] == 1.0
    assert copied["memorisation_ratio"] == pytest.approx(0.0, abs=1e-6)
    near, _ = memorisation_metrics(noisy, reference, training, features)
    assert near["memorisation"] == near["memorisation_pixel"] == 1.0  # pixel space catches noisy copies

    assert len(figures) == 2 and all(name.endswith(".png") for name in figures)
    # Both copies have a ratio of about 0 (rounding decides their rank), so each figure is
    # found by the generated clip it names.
    (name,) = [name for name in figures if "_generated-000_" in name]
    figure = figures[name]
    assert figure.shape == (2 * 64 + 2, 4 * 64 + 3 * 2, 3)
    assert np.array_equal(figure[:64, :64], copies[0, 0]) and np.array_equal(figure[66:, :64], training.video[2, 0])
    assert training.keys[2] in name


def test_evaluate_reports_sync_and_memorisation_beside_their_references(event_clips: dict[str, Clip]) -> None:
    """Through `evaluate` with a "model" that returns silent training clips: the metric wiring."""
    videos = np.stack([event_clips[name][0] for name in ("aligned", "other")])
    sounds = np.stack([event_clips[name][1] for name in ("aligned", "other")]).astype(np.float32) / 32768
    reference = ReferenceClips(videos, sounds, ["a-0", "b-0"], "events")
    training = _clips(np.stack([_scene(s) for s in (10, 11)]), "train")
    config = EvaluationConfig(metrics=("sync", "memorisation"), num_samples=2, batch_size=2)
    model = BundledModel.of(micro_model(seed=0))
    result = evaluate(model, reference, config, generate=lambda n: (training.video, training.audio), training=training)
    assert result.metrics["memorisation"] == 1.0 and result.metrics["sync"] == 0.0  # copies, and silent
    assert result.metrics["sync_reference"] > 0.9 and result.metrics["sync_mismatched"] < 0.0
    assert "2 training clips" in result.provenance["memorisation"].feature_layer
    assert result.provenance["sync"].extractor == "onset-motion" and len(result.figures) == 2
    with pytest.raises(ValueError, match="memorisation needs the training clips"):
        evaluate(model, reference, config, generate=lambda n: (videos, sounds))
