"""Writes examples/toy_clip.mp4: 4 s of a red circle moving right and a green square growing, on blue.

A stand-in for the toy world (issue 6), drawn with numpy so the repository ships a clip that the
README's main command can read on a fresh clone:  python -m examples.make_toy_clip
"""
from pathlib import Path

import numpy as np

from nanog4v.video import write_video

H, W, FPS, SECONDS = 96, 128, 12, 4


def frame(t: float) -> np.ndarray:
    """The scene at time t in [0, 1): uint8 (H, W, 3)."""
    img = np.empty((H, W, 3), np.uint8)
    img[:] = (40, 60, 150)                                              # blue background
    yy, xx = np.mgrid[0:H, 0:W]                                         # (H, W) pixel grid
    cx, cy, r = 16 + t * (W - 32), 30, 12                               # circle moves left → right
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2] = (220, 40, 40)
    half = 6 + t * 14                                                   # square grows
    img[(abs(xx - 64) <= half) & (abs(yy - 68) <= half)] = (40, 200, 60)
    return img


if __name__ == "__main__":
    n = FPS * SECONDS
    frames = np.stack([frame(i / n) for i in range(n)])                 # (48, 96, 128, 3)
    out = write_video(Path(__file__).parent / "toy_clip.mp4", frames, FPS)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
