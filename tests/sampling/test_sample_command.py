"""`mmdiff sample` end to end on small real models and real PyAV-encoded condition files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from jobs.sample import SampleConfig, main, run_sampling, write_sample
from mmdiffusion import (
    CoupledUNet,
    CoupledUNetConfig,
    DiffusionConfig,
    MMDiffusionPipeline,
    ModelBundle,
    SuperResUNet,
    SuperResUNetConfig,
    load_bundled,
    save_model,
)
from mmdiffusion.constants import FRAMES, IMAGE_SIZE
from mmdiffusion.media import audio_from_int16
from mmdiffusion.sampling import SamplerConfig, ZeroShotCondition
from pipeline.decode import load_clip
from training.resolver import resolve_model

MICRO_UNET = CoupledUNetConfig.named(
    "tiny",
    channel_mult=(1, 1, 1, 1),
    video_attention_rates=(8,),
    cross_attention_rates=(4, 8),
    cross_attention_windows=(1, 4),
)
MICRO_SR = SuperResUNetConfig(  # a 2× upsampler keeps the test fast; the paper's is 4×
    image_size=2 * IMAGE_SIZE, model_channels=32, num_res_blocks=1, channel_mult=(1, 1, 1, 1), attention_rates=(8,)
)


def random_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Small non-zero weights everywhere (zero-initialised heads would output nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "base": save_model(folder / "base.safetensors", random_weights(CoupledUNet(MICRO_UNET), 0)),
        "sr": save_model(folder / "sr.safetensors", random_weights(SuperResUNet(MICRO_SR), 1)),
    }


def encode_source(path: Path, with_video: bool, seconds: float = 2.0) -> Path:
    """A 44.1 kHz chirp, with a 96×80 25 fps moving bar when `with_video` (not the clip geometry,
    so the preprocessing decode has to resample and resize)."""
    rate, fps = 44_100, 25
    with av.open(str(path), "w") as container:
        # Every stream is added before the first packet is written.
        audio = container.add_stream("aac" if with_video else "pcm_s16le", rate=rate, layout="mono")
        if with_video:
            video = container.add_stream("mpeg4", rate=fps)
            video.width, video.height, video.pix_fmt = 96, 80, "yuv420p"
            for index in range(int(seconds * fps)):
                image = np.zeros((80, 96, 3), np.uint8)
                image[:, (4 * index) % 96 : (4 * index) % 96 + 12] = (250, 200, 40)
                container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(video.encode(None))
        time = np.arange(int(seconds * rate)) / rate
        chirp = (0.4 * np.sin(2 * np.pi * (200 + 300 * time) * time) * 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(chirp, format="s16p", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path


def decoded(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)])
    return frames, audio


def test_audio_to_video_with_gradient_guidance_writes_the_clip_and_previews(tmp_path, models):
    wav = encode_source(tmp_path / "condition.wav", with_video=False)
    output = tmp_path / "samples"
    code = main(
        [
            "--model",
            str(models["base"]),
            "--num",
            "1",
            "--sampler",
            "ddim",
            "--steps",
            "1",
            "--seed",
            "3",
            "--output",
            str(output),
            "--condition-audio",
            str(wav),
            "--method",
            "gradient",
            "--guidance",
            "0.5",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    names = sorted(p.name for p in output.iterdir())
    assert names == ["sample_000.mp4", "sample_000_audio.png", "sample_000_frames.png"]
    frames, audio = decoded(output / "sample_000.mp4")
    assert len(frames) == FRAMES and frames[0].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    _, condition = load_clip(str(wav), require_video=False)
    assert np.corrcoef(audio[: condition.shape[1]], condition[0] / 32768)[0, 1] > 0.95  # the given sound


def test_video_to_audio_with_super_resolution_writes_both_sizes(tmp_path, models):
    source = encode_source(tmp_path / "condition.mp4", with_video=True)
    paths = run_sampling(
        SampleConfig(
            model=str(models["base"]),
            output=tmp_path / "samples",
            num=1,
            sampler="dpm-solver++",
            steps=1,
            condition_video=str(source),
            sr_model=str(models["sr"]),
            sr_steps=1,
            device="cpu",
            progress=False,
        )
    )
    names = [p.name for p in paths]
    assert names == ["sample_000.mp4", "sample_000_128.mp4", "sample_000_frames.png", "sample_000_audio.png"]
    base_frames, audio = decoded(paths[0])
    sr_frames, sr_audio = decoded(paths[1])
    condition, _ = load_clip(str(source))
    assert len(base_frames) == len(sr_frames) == FRAMES
    assert sr_frames[0].shape == (2 * IMAGE_SIZE, 2 * IMAGE_SIZE, 3)
    assert np.abs(np.stack(base_frames).astype(int) - condition).mean() < 4  # the given frames
    assert len(audio) == len(sr_audio) and np.array_equal(audio, sr_audio)


@pytest.mark.usefixtures("one_torch_thread")
def test_the_library_pipeline_draws_what_mmdiff_sample_writes(tmp_path, models):
    """Several batches, a condition, ancestral noise and SR: every draw comes from the seed."""
    network = random_weights(CoupledUNet(MICRO_UNET), 4)
    cosine = save_model(
        tmp_path / "cosine.safetensors", network, ModelBundle.describe(MICRO_UNET, DiffusionConfig(schedule="cosine"))
    )
    wav = encode_source(tmp_path / "condition.wav", with_video=False)
    command = tmp_path / "command"
    argv = ["--model", str(cosine), "--sr-model", str(models["sr"]), "--condition-audio", str(wav)]
    argv += ["--num", "2", "--batch-size", "1", "--sampler", "ddpm", "--steps", "2", "--sr-steps", "1"]
    argv += ["--seed", "7", "--output", str(command), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0

    pipeline = MMDiffusionPipeline(
        load_bundled(cosine),
        load_bundled(models["sr"]),
        sampler=SamplerConfig("ddpm", 2),
        sr_sampler=SamplerConfig("ddim", 1),
    )
    _, sound = load_clip(str(wav), require_video=False)
    condition = ZeroShotCondition("audio", audio_from_int16(sound).unsqueeze(0))
    drawn = pipeline(2, seed=7, batch_size=1, condition=condition)
    library = tmp_path / "library"
    for index in range(2):
        write_sample(library, index, drawn.video[index], drawn.audio[index], drawn.video_sr[index])
    names = sorted(path.name for path in command.iterdir())
    assert len(names) == 2 * 4 and names == sorted(path.name for path in library.iterdir())
    for name in names:
        assert (command / name).read_bytes() == (library / name).read_bytes(), name
    without_sr = MMDiffusionPipeline(pipeline.base, sampler=pipeline.sampler)
    assert torch.equal(without_sr(1, seed=7, condition=condition).video[0], drawn.video[0])
    assert not torch.equal(without_sr(1, seed=8, condition=condition).video[0], drawn.video[0])


def test_released_checkpoint_loads_with_a_named_config(tmp_path):
    model = random_weights(CoupledUNet(CoupledUNetConfig.named("tiny")), 2)
    path = tmp_path / "released.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = resolve_model(str(path), "coupled_unet", released_config="tiny")
    assert all(torch.equal(loaded.network.state_dict()[k], v) for k, v in model.state_dict().items())
    assert loaded.bundle.provenance.released_from == str(path)
    assert loaded.bundle.provenance.diffusion_origin == "default" and loaded.bundle.diffusion.schedule == "linear"
    with pytest.raises(ValueError, match="does not fit CoupledUNet"):
        resolve_model(str(path), "coupled_unet", released_config="small")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "steps must be >= 1"),
        (["--num", "0"], "--num must be >= 1"),
        (["--guidance", "2"], "--guidance applies to --method gradient only"),
        (["--method", "gradient"], "--method needs --condition-audio or --condition-video"),
        (["--sampler", "ddpm", "--eta", "1"], "eta applies to the ddim sampler only"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    ],
)
def test_bad_arguments_give_a_clear_error(tmp_path, models, capsys, extra, message):
    assert main(["--model", str(models["base"]), "--output", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err


def test_unreadable_condition_file_is_named(tmp_path, models, capsys):
    junk = tmp_path / "notes.mp4"
    junk.write_text("not a video")
    out = tmp_path / "out"
    assert main(["--model", str(models["base"]), "--output", str(out), "--condition-video", str(junk)]) == 2
    error = capsys.readouterr().err
    assert str(junk) in error and "unreadable" in error
    assert not out.exists()


def test_wrong_or_missing_models_are_named(tmp_path, models, capsys):
    assert main(["--model", str(models["sr"]), "--output", str(tmp_path)]) == 2
    assert "is an SR U-Net, expected a coupled U-Net" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "missing.safetensors"), "--output", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_conflicting_conditions_and_unknown_samplers_are_usage_errors(tmp_path, models, capsys):
    for extra in (["--condition-audio", "a.wav", "--condition-video", "b.mp4"], ["--sampler", "euler"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["--model", str(models["base"]), "--output", str(tmp_path), *extra])
        assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
