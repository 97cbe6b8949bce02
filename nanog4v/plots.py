"""Loss curves of training runs (train.py's loss.png, the nano recipe's losses.png)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_losses(curves: dict[str, list[float]], png: Path, *, log_scale: bool = False) -> Path | None:
    """One panel per curve — the loss at every optimiser step (faint) and its moving average over a
    20th of the steps — written to `png`; None when there is nothing to draw."""
    curves = {title: losses for title, losses in curves.items() if losses}
    if not curves:
        return None
    from matplotlib.figure import Figure  # not pyplot: no GUI backend, and a notebook's stays as it is
    fig = Figure(figsize=(3.5 * len(curves) + 2.5 * (len(curves) == 1), 3.3), dpi=100)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (title, losses) in zip(axes, curves.items()):
        k = max(1, len(losses) // 20)
        ax.plot(range(1, len(losses) + 1), losses, color="tab:blue", alpha=0.3, lw=1)
        ax.plot(range(k, len(losses) + 1), np.convolve(losses, np.ones(k) / k, mode="valid"), color="tab:blue", lw=2)
        ax.set(title=title, xlabel="optimiser step", yscale="log" if log_scale else "linear")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(png)
    return png
