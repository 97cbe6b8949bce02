"""The toy world's renderer as a text-to-video model: the nano preset's generator behind `<video>`.

The prompt is parsed into a scene (`world.parse_caption`), the fields it leaves unsaid are filled in
(at random with a seed, else with defaults: `world.complete`), and the scene is rendered at 64×64,
8 frames, 8 fps — the interface of `nanog4v.t2v`, so chat.py hands it prompts exactly as it hands
them to ZeroScope. `GALLERY` is `nanog4v.t2v.GALLERY` with "toy" added.
"""
from __future__ import annotations

import numpy as np

from .. import t2v
from .world import toy_generate


class ToyGenerator:
    """The toy world's renderer as a text-to-video model (parse the prompt, complete the scene, render)."""
    name = "toy"

    def __init__(self, size: int = 64, fps: float = 8.0, default_frames: int = 8):
        self.size, self.fps, self.default_frames = size, fps, default_frames

    def generate(self, prompt: str, num_frames: int | None = None, seed: int | None = None) -> np.ndarray:
        return toy_generate(prompt, num_frames or self.default_frames, self.size, seed)   # (T, S, S, 3)


def load_toy(path=None, device: str = "cpu", **options) -> ToyGenerator:
    """The gallery's loader: the renderer needs no weights and runs on the CPU."""
    return ToyGenerator(**options)


GALLERY = {**t2v.GALLERY, "toy": load_toy}
