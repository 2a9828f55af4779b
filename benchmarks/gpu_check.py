"""GPU readiness on one CUDA device: the device defaults, a bf16 training step of the paper
config (time, peak memory), sampling, and a 1-worker Ray Train run on the GPU.

1. The defaults `mmdiffusion.device.device_settings` chooses for the device (precision,
   cudnn.benchmark, TF32, fused AdamW), applied as training applies them.
2. One training step of the coupled U-Net at the paper config, batch `--batch-size`, under the
   chosen autocast with fused AdamW: median seconds over `--steps` after one warm-up step, and
   the peak of `torch.cuda.max_memory_allocated`.
3. Sampling: `--sample-steps` DPM-Solver++ steps of the paper config (random weights: the cost
   does not depend on them) for one batch, under the same autocast.
4. `training.run.train` on a local Ray with `--gpus --workers 1` for a few steps of the tiny
   config at the real clip size, from synthetic shards: the whole path (loader, autocast, fused
   AdamW, EMA, checkpoint, MLflow into a throwaway SQLite file, the registry left alone).

Without a CUDA device it measures nothing and says so (exit status 2); `benchmarks/run_all.py`
skips it there.

    .venv/bin/python -m benchmarks.gpu_check [--steps 5] [--batch-size 1] [--sample-steps 20]
        [--ray-steps 3] [--skip-ray] [--workdir /tmp/mmdiff-gpu-check]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.loader_throughput import write_shards
from benchmarks.sampling_speed import seconds_per_call
from mmdiffusion import CoupledUNet, CoupledUNetConfig, DiffusionConfig, GaussianDiffusion
from mmdiffusion.device import DeviceSettings, device_settings
from mmdiffusion.sampling import SamplerConfig, clip_shapes, sample_joint


def defaults(device: torch.device) -> dict:
    settings = device_settings(device)
    settings.apply()
    return {
        "device": torch.cuda.get_device_name(device),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
        "bf16_supported": torch.cuda.is_bf16_supported(),
        **{key: value for key, value in dataclasses.asdict(settings).items() if key != "device"},
        "cudnn_benchmark_on": torch.backends.cudnn.benchmark,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def training_step(settings: DeviceSettings, batch_size: int, steps: int) -> dict:
    device = settings.device
    torch.manual_seed(0)
    config = CoupledUNetConfig.paper()
    model = CoupledUNet(config).to(device).train()
    diffusion = GaussianDiffusion(DiffusionConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as training
    shapes = clip_shapes(config, batch_size)
    video = torch.rand(shapes["video"], device=device) * 2 - 1
    audio = torch.rand(shapes["audio"], device=device) * 2 - 1
    torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(steps + 1):  # the first step autotunes and allocates the optimizer state
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        with settings.autocast():
            t = diffusion.sample_timesteps(batch_size, device)
            loss = diffusion.joint_loss(model, video, audio, t)["loss"].float().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return {
        "batch_size": batch_size,
        "precision": settings.precision,
        "step_s": round(statistics.median(seconds[1:]), 4),
        "clips_per_s": round(batch_size / statistics.median(seconds[1:]), 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
    }


def sampling(settings: DeviceSettings, batch_size: int, sample_steps: int) -> dict:
    device = settings.device
    config = CoupledUNetConfig.paper()
    model = CoupledUNet(config).to(device).eval()
    diffusion = GaussianDiffusion(DiffusionConfig())
    sampler = SamplerConfig("dpm-solver++", sample_steps)

    def draw() -> None:
        with torch.no_grad(), settings.autocast():
            sample_joint(model, diffusion, sampler, clip_shapes(config, batch_size), device=device)

    wall, _ = seconds_per_call(draw, repeats=1, device=device)
    return {"sampler": f"dpm-solver++ {sample_steps}", "batch_size": batch_size, "seconds_per_batch": round(wall, 3)}


def ray_training(workdir: Path, steps: int) -> dict:
    import ray

    from training.config import TrainConfig
    from training.run import train

    data = workdir / "data"
    write_shards(data, clips=16)
    shutil.rmtree(workdir / "runs", ignore_errors=True)
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        result = train(
            TrainConfig(
                data=str(data),
                output=str(workdir / "runs"),
                model="tiny",
                workers=1,
                gpus=True,
                steps=steps,
                batch_size=1,
                log_every=1,
                checkpoint_every=steps,
                held_out_share=0.0,
                run_name="gpu-check",
                experiment="gpu-check",
                tracking_uri=f"sqlite:///{workdir}/mlflow.db",
                max_failures=0,
            )
        )
    finally:
        ray.shutdown()
    return {
        "steps": result.step,
        "loss": round(result.metrics["loss"], 4),
        "clips_per_s": round(result.metrics["clips_per_second"], 2),
        "checkpoint": result.checkpoint,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="measured training steps (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--ray-steps", type=int, default=3)
    parser.add_argument("--skip-ray", action="store_true", help="leave out the Ray Train run")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmdiff-gpu-check"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}); nothing was measured. Run it on a machine with a GPU and a CUDA build of torch.",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cuda")
    results = {"defaults": defaults(device)}
    settings = device_settings(device)
    results["training_step"] = training_step(settings, args.batch_size, args.steps)
    torch.cuda.empty_cache()
    results["sampling"] = sampling(settings, args.batch_size, args.sample_steps)
    torch.cuda.empty_cache()
    if not args.skip_ray:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results["ray_train"] = ray_training(args.workdir, args.ray_steps)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
