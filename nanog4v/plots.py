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


def evenly(n: int, k: int) -> list[int]:
    """k indices (or all n, if fewer) spread evenly over 0..n-1, first and last included."""
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()))


def contact_sheet(frames: np.ndarray, png: Path, *, title: str = "", columns: int = 8) -> Path:
    """A strip of up to `columns` frames of a clip (T, H, W, 3) uint8, chosen evenly over its length, with
    the frame index under each and `title` above: how the README shows a video on a page."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"{png}: a contact sheet needs frames (T, H, W, 3), got shape {frames.shape}")
    picks = evenly(len(frames), columns)
    from matplotlib.figure import Figure
    fig = Figure(figsize=(1.25 * len(picks), 1.5 + 0.3 * bool(title)), dpi=100)
    axes = fig.subplots(1, len(picks), squeeze=False)[0]
    for ax, i in zip(axes, picks):
        ax.imshow(frames[i], interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel(f"frame {i}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    fig.savefig(png)
    return png
