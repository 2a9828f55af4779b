"""The loss-curve figure of a run, drawn from its MLflow metric history."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_loss_curves(histories: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    """One line per metric (step, value), log-scaled losses; written as a PNG to `path`."""
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for name, points in histories.items():
        if points:
            steps, values = zip(*sorted(points), strict=True)
            axes.plot(steps, values, label=name, marker="." if len(points) < 50 else None)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    if all(value > 0 for points in histories.values() for _, value in points):
        axes.set_yscale("log")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
