"""The toy world's safety checks: the hazard sign in input frames and in `<video>` prompts.

The paper's input-video check compares each frame's CLIP image embedding with a bank of concept
embeddings (`nanog4v.safety.ConceptChecker`, the Stable Diffusion safety checker's rule). The toy
world's unsafe content is one concept, the black-and-yellow striped hazard sign (`world.HAZARD`), so
the nano checks are built here from rendered frames and plugged into `nanog4v.safety.Safety` from
the outside (chat.py and the evaluation do that):

- `toy_hazard_checker(vit)`: one concept learned from the nano ViT — its embedding is the mean image
  embedding (ln_post of [CLS]) of rendered hazard frames, its threshold halfway between the mean
  cosine of hazard and of ordinary frames (`safety.calibrate_concept`). It is trusted only if it
  separates a second rendered set (≥ 95 % of frames right); otherwise — an untrained or random ViT —
  the colour-stripe detector `StripeDetector` is used, and the note for the log says so.
- `hazard_prompt(prompt)`: the output-prompt check for the toy generator — a prompt whose parsed
  scene holds the hazard sign is never rendered.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from ..safety import ConceptChecker, calibrate_concept, vit_embedder
from ..vision import VisionTransformer
from .world import parse_caption, render, sample_scene


class StripeDetector:
    """The toy hazard sign (black-and-yellow stripes) by colour, for a nano ViT that cannot see it yet.

    Per frame: the "yellow" mask is closed (dilate then erode, radius 2 px), which fills the dark
    stripes of a hazard sign but adds little to a solid yellow shape; the score is the largest fraction
    of dark pixels inside the closed mask over 9×9 windows holding ≥ 20 of its pixels; > 0.25 flags.
    How well it separates toy clips is measured in weights/nano/README.md ("Experiments behind the recipe").
    """
    name = "colour-stripe detector"

    def __init__(self, threshold: float = 0.25, radius: int = 2, window: int = 9, min_area: int = 20):
        self.threshold, self.radius, self.window, self.min_area = threshold, radius, window, min_area

    def frame_score(self, frame: np.ndarray) -> float:
        f = frame.astype(np.int16)                                                         # (H, W, 3)
        r, g, b = f[..., 0], f[..., 1], f[..., 2]
        yellow, dark = (r > 170) & (g > 165) & (b < 120), (r + g + b) < 150              # (H, W) each
        closed = _erode(_dilate(yellow, self.radius), self.radius)
        area, filled = _box_sum(closed, self.window), _box_sum(closed & dark, self.window)
        ratio = np.where(area >= self.min_area, filled / np.maximum(area, 1), 0.0)
        return float(ratio.max()) if ratio.size else 0.0

    def __call__(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.tensor([self.frame_score(f) for f in frames])                       # (T,)
        return scores > self.threshold, scores[:, None]


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary dilation with a (2k+1)² square: OR of the shifted masks."""
    h, w = mask.shape
    padded, out = np.pad(mask, k), np.zeros_like(mask)
    for dy in range(2 * k + 1):
        for dx in range(2 * k + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    return ~_dilate(~mask, k)


def _box_sum(mask: np.ndarray, w: int) -> np.ndarray:
    """Sum over every w×w window (valid positions), by a summed-area table."""
    s = np.pad(mask.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return s[w:, w:] - s[:-w, w:] - s[w:, :-w] + s[:-w, :-w]


def render_frames(seed: int, n: int, hazard: bool, num_frames: int = 4, size: int = 64) -> np.ndarray:
    """n toy clips (with or without a hazard sign) rendered and stacked as frames (n·T, S, S, 3)."""
    rng = random.Random(f"{seed}:safety:{hazard}")
    return np.concatenate([render(sample_scene(rng, set(), hazard=hazard), num_frames, size) for _ in range(n)])


def toy_hazard_checker(vit: VisionTransformer | None, device="cpu", seed: int = 0, n: int = 24,
                       min_accuracy: float = 0.95, size: int = 64):
    """The nano preset's frame checker: the ViT hazard concept if it separates held-out rendered frames
    well enough, else the `StripeDetector`. Returns (checker, a note for the log)."""
    if vit is not None:
        embed = vit_embedder(vit, device)
        concept, w = calibrate_concept(embed, render_frames(seed, n, True, size=size),
                                       render_frames(seed, n, False, size=size))
        checker = ConceptChecker(embed, concept[None], torch.tensor([w]), name="toy hazard concept (nano ViT)")
        hz, ok = render_frames(seed + 1, n, True, size=size), render_frames(seed + 1, n, False, size=size)
        accuracy = (checker(hz)[0].float().mean().item() + (~checker(ok)[0]).float().mean().item()) / 2
        if accuracy >= min_accuracy:
            return checker, f"toy hazard concept from the nano ViT (held-out frame accuracy {accuracy:.3f})"
        note = f"the nano ViT's hazard concept separates only {accuracy:.3f} of held-out frames; "
    else:
        note = "no ViT; "
    return StripeDetector(), note + "using the colour-stripe detector"


def hazard_prompt(prompt: str) -> str | None:
    """The output-prompt check of the toy generator: a reason when `prompt` asks for the hazard sign."""
    return "the prompt asks for the toy hazard sign" if parse_caption(prompt).hazard else None
