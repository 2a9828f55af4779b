"""The defaults a device gets (mmdiffusion.device), chosen without the device: bf16 autocast,
cuDNN autotuning and TF32 matmuls on a CUDA device that supports bf16, float32
and the library defaults on CPU; the CPUs a worker reserves; `evaluate`'s default device and
precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs.evaluate import _parser as evaluate_parser
from jobs.evaluate import evaluation_config
from jobs.sample import SampleConfig
from mmdiffusion import CoupledUNet, CoupledUNetConfig
from mmdiffusion.bundle import BundledModel, ModelBundle
from mmdiffusion.device import device_settings, resolve_device
from training.config import GPU_WORKER_CPUS, TrainConfig
from training.evaluation.reference import ReferenceClips
from training.evaluation.scoring import EvaluationConfig, evaluate
from training.run import ray_train_configs


def test_cpu_keeps_float32_and_the_library_defaults() -> None:
    settings = device_settings("cpu", TrainConfig(data="d", output="o").precision)
    assert settings.precision == "fp32" and settings.autocast_dtype is None
    assert not (settings.cudnn_benchmark or settings.tf32)
    with settings.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert device_settings("cpu", "bf16").precision == "bf16"  # still selectable


def test_a_cuda_device_with_bf16_gets_bf16_tf32_and_autotuning() -> None:
    settings = device_settings("cuda:1", "auto", bf16_supported=True)
    assert (settings.precision, settings.autocast_dtype) == ("bf16", torch.bfloat16)
    assert settings.cudnn_benchmark and settings.tf32
    assert device_settings("cuda", "fp32", bf16_supported=True).precision == "fp32"  # selectable
    assert device_settings("cuda", "auto", bf16_supported=False).precision == "fp32"  # e.g. a V100
    assert device_settings("cuda", "fp16", bf16_supported=False).precision == "fp16"
    with pytest.raises(ValueError, match="cuda does not support bfloat16; use fp16 or fp32"):
        device_settings("cuda", "bf16", bf16_supported=False)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16, got 'fp8'"):
        device_settings("cpu", "fp8")  # type: ignore[arg-type]


def test_applying_the_cuda_settings_switches_the_backends_on() -> None:
    before = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    try:
        device_settings("cuda", bf16_supported=True).apply()
        assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cudnn.benchmark = before[0]
        torch.set_float32_matmul_precision(before[1])
    device_settings("cpu").apply()  # nothing to switch on
    assert (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()) == before


@pytest.mark.parametrize(
    ("changes", "resources"),
    [
        ({}, {"CPU": 1}),
        ({"gpus": True}, {"CPU": GPU_WORKER_CPUS, "GPU": 1}),
        ({"gpus": True, "cpus_per_worker": 11.0}, {"CPU": 11.0, "GPU": 1}),
    ],
)
def test_workers_reserve_cpus_for_their_input(changes: dict, resources: dict, tmp_path) -> None:
    scaling, _ = ray_train_configs(TrainConfig(data="d", output=str(tmp_path), **changes))
    assert scaling.resources_per_worker == resources and scaling.use_gpu == changes.get("gpus", False)


def test_bad_cpu_counts_and_precisions_are_named() -> None:
    with pytest.raises(ValueError, match="cpus_per_worker must be positive, got 0"):
        TrainConfig(data="d", output="o", cpus_per_worker=0)
    with pytest.raises(ValueError, match="--precision must be auto, fp32 or bf16, got 'fp16'"):
        SampleConfig(model="m", output="o", precision="fp16")  # type: ignore[arg-type]


def test_evaluate_defaults_to_cuda_when_present() -> None:
    args = evaluate_parser().parse_args(["--model", "m", "--data", "d"])
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert args.device == "auto" and evaluation_config(args).extractors.device == expected
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: CUDA is not available on this machine"):
            resolve_device("cuda")


def test_evaluation_runs_the_network_at_the_chosen_precision_and_says_so_in_its_digest() -> None:
    config = CoupledUNetConfig.named("tiny", image_size=16, audio_length=2560)
    torch.manual_seed(0)
    network = CoupledUNet(config).eval()
    with torch.no_grad():
        for parameter in network.parameters():  # the output layers start at zero: predict something
            parameter.normal_(0.0, 0.05)
    model = BundledModel(network, ModelBundle.describe(config))
    rng = np.random.default_rng(0)
    clips = ReferenceClips(
        video=rng.integers(0, 256, (2, 16, 16, 16, 3), dtype=np.uint8),
        audio=rng.uniform(-1, 1, (2, 1, 2560)).astype(np.float32),
        keys=["a", "b"],
        data_uri="memory://two-clips",
    )
    fp32, bf16 = (EvaluationConfig(num_samples=2, precision=precision) for precision in ("auto", "bf16"))
    assert fp32.device_settings().precision == "fp32"  # auto on CPU
    assert fp32.settings_digest() == EvaluationConfig(num_samples=2, precision="fp32").settings_digest()
    assert bf16.settings_digest() != fp32.settings_digest()  # numbers at another precision are not comparable
    exact, low = (evaluate(model, clips, c).metrics["val_loss"] for c in (fp32, bf16))
    assert exact != low and abs(low - exact) < 0.05 * exact, (exact, low)  # bf16 ran, and stays close
