"""One training step of the coupled U-Net at the paper config on the CPU: time and peak memory.

Batch 1, video 16×3×64×64, audio 1×25,600; forward + backward of the joint loss, then an AdamW
step. Peak memory is the process's peak resident set size. Each variant runs in a fresh
process so that peaks do not mix. The warm-up step also counts the forward + backward FLOPs
(`torch.utils.flop_counter`), so the achieved rate can be set against the CPU's peak; the
1-minute load average is recorded around each variant, and the step's CPU seconds beside its
wall time: on a shared machine the wall time mostly measures the other jobs.

    .venv/bin/python -m benchmarks.train_step [--steps 3] [--variants fp32,fp32-ckpt,bf16,bf16-ckpt]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mmdiffusion import CoupledUNet, CoupledUNetConfig, DiffusionConfig, GaussianDiffusion
from training.host_memory import release_freed_host_memory

VARIANTS = {
    "fp32": {"checkpointing": False, "bf16": False},
    "fp32-ckpt": {"checkpointing": True, "bf16": False},
    "bf16": {"checkpointing": False, "bf16": True},
    "bf16-ckpt": {"checkpointing": True, "bf16": True},
}


def _flash_forward_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _flash_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


CPU_FLASH_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _flash_forward_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _flash_backward_flops,
}
"""The CPU flash kernel, which training's attention calls directly (mmdiffusion.attention) and
which the counter knows no formula for: counted as the SDPA kernels it stands for (arguments
are shapes)."""


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def measure(variant: str, steps: int) -> dict:
    options = VARIANTS[variant]
    torch.manual_seed(0)
    model = CoupledUNet(CoupledUNetConfig.paper(gradient_checkpointing=options["checkpointing"])).train()
    diffusion = GaussianDiffusion(DiffusionConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as training does
    video = torch.rand(1, 16, 3, 64, 64) * 2 - 1
    audio = torch.rand(1, 1, 25_600) * 2 - 1
    forward_backward, totals, cpu = [], [], []
    counter = FlopCounterMode(display=False, custom_mapping=CPU_FLASH_ATTENTION_FLOPS)
    load_before = os.getloadavg()[0]
    for index in range(steps + 1):  # the first step warms up, allocates the optimizer state, counts FLOPs
        start, cpu_start = time.perf_counter(), time.process_time()
        with counter if index == 0 else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=options["bf16"]):
                loss = diffusion.joint_loss(model, video, audio, diffusion.sample_timesteps(1))["loss"].mean()
            release_freed_host_memory(torch.device("cpu"))  # as training's step does
            loss.backward()
        middle = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        forward_backward.append(middle - start)
        totals.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    seconds = statistics.median(forward_backward[1:])
    return {
        "variant": variant,
        "forward_backward_s": seconds,
        "forward_backward_gflop": counter.get_total_flops() / 1e9,
        "achieved_gflops": counter.get_total_flops() / 1e9 / seconds,
        "step_cpu_s": statistics.median(cpu[1:]),
        "load_1min": [load_before, os.getloadavg()[0]],
        "step_with_adamw_s": statistics.median(totals[1:]),
        "peak_rss_gb": peak_rss_gb(),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.steps)))
        return
    print("| variant | forward+backward s | step incl. AdamW s | step CPU s | peak RSS GB | GFLOP | GFLOP/s | load |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in args.variants.split(","):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.train_step", "--child", variant, "--steps", str(args.steps)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        load = "–".join(f"{value:.1f}" for value in r["load_1min"])
        print(
            f"| {variant} | {r['forward_backward_s']:.1f} | {r['step_with_adamw_s']:.1f} | {r['step_cpu_s']:.1f} "
            f"| {r['peak_rss_gb']:.2f} "
            f"| {r['forward_backward_gflop']:.0f} | {r['achieved_gflops']:.1f} | {load} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
