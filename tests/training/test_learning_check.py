"""The fast learning check (`benchmarks/learning_check.py` at its smallest): the real training
loop memorises one 16-pixel ball clip, and the samplers started from that clip noised to
t = 300 give back its video and its audio, while a chain that reads the network's ε with the
wrong sign or scale, or an untrained network, does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import learning_check as lc
from mmdiffusion.bundle import BundledModel, build_model
from tests.fixtures.mlflow_server import MlflowServer

START_T = 300
STEPS = 30
VIDEO_PSNR_DB = 15.5
"""Set between what the chains reach on this clip after 30-60 steps (docs/benchmarks.md): correct
DDIM and DPM-Solver++ 17.9-20 dB, ε halved 12.0-12.5 dB, ε sign flipped 5.4-5.9 dB, untrained ~8 dB."""
AUDIO_CORRELATION = 0.45
"""The same for the waveform correlation (docs/benchmarks.md): after 30 / 45 steps correct DDIM
0.58 / 0.66 and DPM-Solver++ 0.68 / 0.74; ε halved 0.28-0.29, ε sign flipped 0.15-0.16,
untrained 0.21 (DDIM)."""


@pytest.fixture(scope="module")
def memorised(tmp_path_factory: pytest.TempPathFactory, mlflow_server: MlflowServer):
    """(EMA model, the clip) after `STEPS` steps on one clip."""
    folder = tmp_path_factory.mktemp("learning-check")
    config = lc.LearningCheckConfig(clips=1, steps=STEPS, image_size=16, audio_length=2560, lr=2e-3)
    video, audio = lc.ball_clips(1, config.image_size, config.audio_length)
    data = lc.write_clip_shards(folder / "data", video, audio)
    ema, _ = lc.train_memoriser(
        config,
        data,
        folder / "runs",
        mlflow_server.tracking_uri,
        experiment=f"learning-check-{folder.name}",
        log_every=10,
    )
    return ema, lc.as_clips(video, audio)


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++"])
def test_a_noised_training_clip_comes_back_through_the_sampler(memorised, sampler: str) -> None:
    ema, clip = memorised
    _, psnr, correlation = lc.reconstruction(ema, clip, lc.SAMPLERS[sampler], START_T)
    assert psnr[0, 0] >= VIDEO_PSNR_DB, (psnr, correlation)
    assert correlation[0, 0] >= AUDIO_CORRELATION, (psnr, correlation)


@pytest.mark.parametrize("chain", ["sign flipped", "x 0.5"])
def test_a_miswired_chain_does_not_give_the_clip_back(memorised, chain: str) -> None:
    ema, clip = memorised
    _, psnr, correlation = lc.reconstruction(ema, clip, lc.SAMPLERS["ddim"], START_T, lc.CHAINS[chain])
    assert psnr[0, 0] < VIDEO_PSNR_DB - 2, psnr
    assert correlation[0, 0] < AUDIO_CORRELATION - 0.1, correlation


def test_the_untrained_network_does_not_give_the_clip_back(memorised) -> None:
    ema, clip = memorised
    torch.manual_seed(0)
    untrained = BundledModel(build_model(ema.bundle.network), ema.bundle, "untrained")
    _, psnr, correlation = lc.reconstruction(untrained, clip, lc.SAMPLERS["ddim"], START_T)
    assert psnr[0, 0] < VIDEO_PSNR_DB - 2, psnr
    assert correlation[0, 0] < AUDIO_CORRELATION - 0.1, correlation


def test_a_noised_start_needs_a_timestep_the_sampler_has(memorised, tmp_path: Path) -> None:
    ema, clip = memorised
    with pytest.raises(ValueError, match="a noised start needs a timestep >= 0"):
        lc.reconstruction(ema, clip, lc.SAMPLERS["ddim"], -1)


@pytest.mark.parametrize("separated_by", lc.SEPARATIONS)
def test_each_clip_set_is_told_apart_most_by_its_modality(separated_by: str) -> None:
    """The zero-shot rows rest on this (docs/benchmarks.md): replacement steers only where the
    condition's clips lie further apart than the generated modality's, by a wide margin."""
    clips = lc.as_clips(*lc.ball_clips(3, 16, 2560, separated_by=separated_by))
    distances = lc.squared_distances(clips)
    other = "audio" if separated_by == "video" else "video"
    assert min(distances[separated_by]) > 3 * max(distances[other]), distances


def test_an_unknown_clip_set_is_refused() -> None:
    with pytest.raises(ValueError, match="separated_by must be one of"):
        lc.ball_clips(1, 16, 2560, separated_by="colour")
