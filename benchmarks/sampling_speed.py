"""Seconds per sample and network evaluations (NFE) of each sampler at the paper config.

A full sample on CPU takes from minutes (DPM-Solver++, 20 NFE) to hours (DDPM, 1000 NFE), so
the network is timed on a few evaluations and the rest is counted, not run:

    seconds per sample = NFE × (seconds per network evaluation) + sampler overhead

NFE and the sampler overhead come from running each sampler's full loop on the real clip
shapes with a network that returns zeros (so every scheduler step really runs). The gradient
method costs a forward and a backward pass per step; the SR model one evaluation per frame
per step (16 frames × 25 DDIM steps by default).

    .venv/bin/python -m benchmarks.sampling_speed [--device cpu] [--repeats 2] [--no-sr]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import torch

from mmdiffusion import CoupledUNet, CoupledUNetConfig, SuperResUNet, SuperResUNetConfig
from mmdiffusion.constants import FRAMES
from mmdiffusion.diffusion import GaussianDiffusion
from mmdiffusion.sampling import SR_SAMPLER, SamplerConfig, clip_shapes, sample_joint

SAMPLERS = (SamplerConfig("ddpm"), SamplerConfig("ddim", 50), SamplerConfig("dpm-solver++", 20))


def seconds_per_call(call: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, float]:
    """Mean (wall, process CPU) seconds of `call` after one warm-up call. On a shared machine the
    CPU time is the steadier number: wall time also counts waiting for a core."""
    call()
    wall = cpu = 0.0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
    return wall / repeats, cpu / repeats


def sampler_overhead(sampler: SamplerConfig, config: CoupledUNetConfig, device: torch.device) -> tuple[int, float]:
    """(NFE, seconds) of one full sampling loop whose network costs nothing."""
    calls = 0

    def free_network(video: torch.Tensor, audio: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal calls
        calls += 1
        return torch.zeros_like(video), torch.zeros_like(audio)

    start = time.perf_counter()
    sample_joint(
        free_network,
        GaussianDiffusion(),
        sampler,
        clip_shapes(config, 1),
        device=device,
        generator=torch.Generator().manual_seed(0),
    )
    return calls, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="timed network evaluations after a warm-up")
    parser.add_argument("--no-sr", action="store_true", help="skip the 311M-parameter SR model")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    config = CoupledUNetConfig.paper()
    model = CoupledUNet(config).to(device).eval()
    shapes = clip_shapes(config, 1)
    video, audio = (torch.randn(shapes[m], device=device) for m in ("video", "audio"))
    t = torch.full((1,), 500, device=device)
    with torch.no_grad():
        forward, forward_cpu = seconds_per_call(lambda: model(video, audio, t), args.repeats, device)

    def guided() -> None:
        generated = video.detach().requires_grad_(True)
        _, audio_eps = model(generated, audio, t)
        torch.autograd.grad(audio_eps.square().sum(), generated)

    guided_step, guided_cpu = seconds_per_call(guided, max(1, args.repeats - 1), device)
    report: dict[str, object] = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": 1,
        "load_average_1min": round(os.getloadavg()[0], 1),
        "coupled_unet_seconds_per_nfe": round(forward, 3),
        "coupled_unet_cpu_seconds_per_nfe": round(forward_cpu, 3),
        "gradient_guidance_seconds_per_step": round(guided_step, 3),
        "gradient_guidance_cpu_seconds_per_step": round(guided_cpu, 3),
        "samplers": {},
    }
    for sampler in SAMPLERS:
        nfe, overhead = sampler_overhead(sampler, config, device)
        report["samplers"][sampler.name] = {  # type: ignore[index]
            "nfe": nfe,
            "sampler_overhead_seconds": round(overhead, 3),
            "seconds_per_sample": round(nfe * forward + overhead, 1),
            "seconds_per_sample_gradient_guided": round(nfe * guided_step + overhead, 1),
        }
    model = None  # free the base model before the SR model is built
    if not args.no_sr:
        sr_config = SuperResUNetConfig.paper()
        sr = SuperResUNet(sr_config).to(device).eval()
        frames = 2
        x = torch.randn(frames, 3, sr_config.image_size, sr_config.image_size, device=device)
        low = torch.randn(frames, 3, sr_config.low_res_size, sr_config.low_res_size, device=device)
        with torch.no_grad():
            per_call, per_call_cpu = seconds_per_call(
                lambda: sr(x, t.expand(frames), low_res=low), args.repeats, device
            )
        per_frame = per_call / frames
        report["sr_unet"] = {
            "seconds_per_frame_evaluation": round(per_frame, 3),
            "cpu_seconds_per_frame_evaluation": round(per_call_cpu / frames, 3),
            "nfe_per_sample": FRAMES * SR_SAMPLER.num_steps,
            "seconds_per_sample": round(FRAMES * SR_SAMPLER.num_steps * per_frame, 1),
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
