"""The toy world: a procedural video world, its captions, and a parser that inverts them.

GPT4Video learns from WebVid clips, VideoChat-11k and GPT4Video-50k; the nano preset learns the same
recipe from a world small enough to render, caption and check exactly. A **scene** is 1–3 objects on a
plain background, each object a (size, colour, shape) at a named position doing one motion:

    shapes     circle square triangle star cross heart        (+ the "hazard" sign, below)
    colours    red green blue yellow purple orange white      (the hazard sign is "striped")
    sizes      small large
    positions  left right top bottom centre                   (where the object is at mid-clip)
    motions    moves left/right/up/down, grows, shrinks, spins, stays still
    background black grey brown navy

The **caption** is one canonical sentence, objects in the scene's order:

    "a small red circle on the left moves left and a large blue star at the top spins on a grey background"

and `parse_caption` inverts it exactly: parse_caption(caption(s)) == s for every scene, partial ones
included (a field left None is simply not said). The parser reads word by word, so it also reads the
looser text a model writes or a user types ("<video> two red circles moving to the left </video>");
unknown words are ignored and it returns what it could parse. `render(complete(parse_caption(text)))`
is the nano preset's text-to-video generator (`toy_generate`).

**The hazard.** Unsafe video input is simulated by a black-and-yellow striped warning sign (shape
"hazard", colour "striped"). It appears only in the clips of the video safety data, never in stage 1.

**Held-out splits.** Each world holds back a few colour–shape pairs (chosen by the seed, all colours
and shapes still seen in training) and, in phrases.py, some phrasings of every intent. The "train" and
"val" splits never contain them; every "heldout" clip or request contains at least one held-out pair.

Rendering is numpy only, 2× supersampled, deterministic (a pure function of the scene); a clip's frame
i shows time t = (i + ½)/T, so motion is centred on the named position. Clips are written as H.264 with
`video_out.write_video` so that training reads them through the real decoding path. The data sets
made from a world are in datasets.py, the directory they are written to in worlddir.py.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, replace

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 70), "blue": (50, 110, 255), "yellow": (250, 220, 40),
           "purple": (160, 60, 210), "orange": (255, 140, 20), "white": (245, 245, 245)}
BACKGROUNDS = {"black": (12, 12, 12), "grey": (115, 115, 115), "brown": (105, 65, 30), "navy": (15, 25, 85)}
SIZES = {"small": 0.10, "large": 0.15}                      # radius as a fraction of the frame side
POSITIONS = {"left": (0.2, 0.5), "top": (0.5, 0.2), "centre": (0.5, 0.5), "bottom": (0.5, 0.8),
             "right": (0.8, 0.5)}                           # (x, y) at mid-clip; this order is caption order
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                    "bottom": "at the bottom", "centre": "in the centre"}
MOTIONS = ("moves left", "moves right", "moves up", "moves down", "grows", "shrinks", "spins", "stays still")
HAZARD, HAZARD_COLOUR = "hazard", "striped"
HAZARD_STRIPES = ((250, 210, 0), (15, 15, 15))               # yellow, black
TRAVEL, SPIN, GROWTH = 0.3, math.pi / 2, 0.8                # per clip: distance (frame sides), angle, scale change
NUM_HELDOUT_PAIRS = 5


@dataclass(frozen=True)
class Thing:
    """One object. Any field but the shape may be None: "not said" (a partial request or prompt)."""
    shape: str
    colour: str | None = None
    size: str | None = None
    position: str | None = None
    motion: str | None = None


@dataclass(frozen=True)
class Scene:
    """What a clip shows (or a prompt asks for): objects in caption order, and the background."""
    objects: tuple[Thing, ...]
    background: str | None = None

    @property
    def hazard(self) -> bool:
        return any(t.shape == HAZARD for t in self.objects)

    def pairs(self) -> set[tuple[str, str]]:
        """The (colour, shape) pairs it shows."""
        return {(t.colour, t.shape) for t in self.objects if t.colour is not None}

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [asdict(t) for t in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(tuple(Thing(**t) for t in d["objects"]), d.get("background"))


# --- sampling -----------------------------------------------------------------------------------------

def heldout_pairs(seed: int, k: int = NUM_HELDOUT_PAIRS) -> list[tuple[str, str]]:
    """k (colour, shape) pairs never shown in training: distinct colours and distinct shapes, so every
    colour and every shape keeps most of its pairs in the train split."""
    rng = random.Random(f"{seed}:heldout-pairs")
    colours, shapes = rng.sample(list(COLOURS), k), rng.sample(list(SHAPES), k)
    return sorted(zip(colours, shapes))


def sample_scene(rng: random.Random, held: set, heldout: bool = False, hazard: bool = False,
                 num_objects: int | None = None) -> Scene:
    """A full scene: distinct positions and distinct (colour, shape) pairs, objects in position order.

    `heldout=False`: no pair from `held`; `heldout=True`: at least one. `hazard`: one object is the
    hazard sign (its companions are never held-out pairs)."""
    n = num_objects or rng.choices((1, 2, 3), weights=(4, 4, 3))[0]
    allowed = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held]
    pairs = rng.sample(allowed, n)
    if heldout and not hazard:
        pairs[rng.randrange(n)] = rng.choice(sorted(p for p in held if p not in pairs))
    things = []
    for (colour, shape), position in zip(pairs, rng.sample(list(POSITIONS), n)):
        motions = [m for m in MOTIONS if not (shape == "circle" and m == "spins")]   # an invisible spin
        things.append(Thing(shape, colour, rng.choice(list(SIZES)), position, rng.choice(motions)))
    if hazard:
        i = rng.randrange(n)
        things[i] = replace(things[i], shape=HAZARD, colour=HAZARD_COLOUR, motion=rng.choice(MOTIONS))
    order = list(POSITIONS)
    return Scene(tuple(sorted(things, key=lambda t: order.index(t.position))), rng.choice(list(BACKGROUNDS)))


def complete(scene: Scene, rng: random.Random | None = None) -> Scene:
    """Fill the fields a partial scene leaves None: at random with `rng`, else with fixed defaults
    (grey background, white, large, stays still, the first free position)."""
    pick = (lambda options, default: rng.choice(list(options))) if rng else (lambda options, default: default)
    used, things = {t.position for t in scene.objects}, []
    for t in scene.objects:
        position = t.position
        if position is None:
            free = [p for p in POSITIONS if p not in used] or list(POSITIONS)
            position = rng.choice(free) if rng else free[0]
            used.add(position)
        colour = t.colour or (HAZARD_COLOUR if t.shape == HAZARD else pick(COLOURS, "white"))
        things.append(Thing(t.shape, colour, t.size or pick(SIZES, "large"), position,
                            t.motion or pick(MOTIONS, "stays still")))
    return Scene(tuple(things), scene.background or pick(BACKGROUNDS, "grey"))


# --- rendering ----------------------------------------------------------------------------------------

def _star(u, v, points=5, inner=0.42):
    """Inside a 5-point star (outer radius 1, a point up): fold the angle into one half-spike, then test
    the side of the edge from the outer point A = (1, 0) to the inner corner B."""
    sector = 2 * math.pi / points
    phi = np.mod(np.arctan2(v, u) + math.pi / 2, sector)
    phi = np.minimum(phi, sector - phi)                        # 0 at a point, sector/2 at an inner corner
    rho = np.hypot(u, v)
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    bx, by = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    return (bx - 1) * py - by * (px - 1) >= 0


def _triangle(u, v):
    """Equilateral, circumradius 1, a vertex up (v points down): three half-planes n·p ≤ ½."""
    return np.all([u * math.cos(a) + v * math.sin(a) <= 0.5 for a in np.radians((90, 210, 330))], axis=0)


def _heart(u, v):
    x, y = 1.15 * u, -1.15 * v + 0.2                           # y up, centred on the heart's area
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


MASKS = {  # (u, v): coordinates in object radii, v down, already rotated with the object
    "circle": lambda u, v: u * u + v * v <= 0.9 ** 2,
    "square": lambda u, v: np.maximum(abs(u), abs(v)) <= 0.78,
    "triangle": _triangle,
    "star": _star,
    "cross": lambda u, v: ((abs(u) <= 0.3) & (abs(v) <= 0.95)) | ((abs(v) <= 0.3) & (abs(u) <= 0.95)),
    "heart": _heart,
    HAZARD: lambda u, v: abs(u) + abs(v) <= 1.05,           # a diamond, striped below
}


def pose(thing: Thing, t: float, size: int) -> tuple[float, float, float, float]:
    """(cx, cy, radius, angle) in pixels/radians at time t ∈ [0, 1]; motion is centred on mid-clip."""
    x, y = POSITIONS[thing.position]
    r, angle, s = SIZES[thing.size] * size, 0.0, t - 0.5
    dx, dy = {"moves left": (-1, 0), "moves right": (1, 0), "moves up": (0, -1), "moves down": (0, 1)}.get(
        thing.motion, (0, 0))
    x, y = x + dx * TRAVEL * s, y + dy * TRAVEL * s
    if thing.motion == "grows":
        r *= 1 + GROWTH * s                                    # 0.6 r → 1.4 r
    elif thing.motion == "shrinks":
        r *= 1 - GROWTH * s
    elif thing.motion == "spins":
        angle = SPIN * t
    return x * size, y * size, r, angle


def object_coordinates(thing: Thing, t: float, size: int, xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points (xx, yy), in pixels of a size × size frame, in the object's own coordinates (u, v) at
    time t: centred on it, in its radii, rotated with it (MASKS reads them)."""
    cx, cy, r, angle = pose(thing, t, size)
    c, s = math.cos(angle), math.sin(angle)
    u = ((xx - cx) * c + (yy - cy) * s) / r                             # rotate the grid by −angle
    v = (-(xx - cx) * s + (yy - cy) * c) / r
    return u, v


def render(scene: Scene, num_frames: int = 8, size: int = 64, supersample: int = 2,
           palette: dict | None = None, only=None) -> np.ndarray:
    """The clip of a scene: uint8 (T, size, size, 3). Unsaid fields take `complete`'s defaults;
    `palette` adds colours beyond the world's ({name: (r, g, b)}, stage 0's wider-colour ViT clips);
    `only` (frame indices) renders just those frames of the T, the same pixels as render(...)[only]."""
    scene, k, colours = complete(scene), supersample, {**COLOURS, **(palette or {})}
    grid = (np.arange(size * k, dtype=np.float32) + 0.5) / k            # pixel centres, in output pixels
    yy, xx = np.meshgrid(grid, grid, indexing="ij")                     # (kS, kS) each
    indices = range(num_frames) if only is None else list(only)
    frames = np.empty((len(indices), size, size, 3), np.uint8)
    for j, i in enumerate(indices):
        image = np.empty((size * k, size * k, 3), np.float32)           # (kS, kS, 3)
        image[:] = BACKGROUNDS[scene.background]
        for thing in scene.objects:
            u, v = object_coordinates(thing, (i + 0.5) / num_frames, size, xx, yy)
            mask = MASKS[thing.shape](u, v)                             # (kS, kS) bool
            if thing.shape == HAZARD:
                stripe = np.floor((u - v) * 2.2).astype(int) % 2        # diagonal bands that turn with it
                image[mask] = np.asarray(HAZARD_STRIPES, np.float32)[stripe[mask]]
            else:
                image[mask] = colours[thing.colour]
        frames[j] = image.reshape(size, k, size, k, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    return frames


def toy_generate(prompt: str, num_frames: int = 8, size: int = 64, seed: int | None = None) -> np.ndarray:
    """The nano text-to-video generator: parse the prompt, fill what it leaves unsaid (at random with a
    seed, else with defaults), render. A prompt with no object renders an empty background."""
    scene = parse_caption(prompt)
    return render(complete(scene, random.Random(seed) if seed is not None else None), num_frames, size)


# --- captions -----------------------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(thing: Thing) -> str:
    """"a small red circle", "an orange star", "a striped hazard sign"."""
    words = [w for w in (thing.size, thing.colour, thing.shape) if w] + (["sign"] if thing.shape == HAZARD else [])
    return f"{_article(words[0])} {' '.join(words)}"


def thing_phrase(thing: Thing, gerund: bool = False, relative: bool = False) -> str:
    """"a small red circle on the left moves left" (gerund: "… moving left"; relative: "… that moves left")."""
    words = [noun_phrase(thing)]
    if thing.position:
        words.append(POSITION_PHRASES[thing.position])
    if thing.motion:
        words.append(GERUNDS[thing.motion] if gerund else f"that {thing.motion}" if relative else thing.motion)
    return " ".join(words)


GERUNDS = {m: m.replace("moves", "moving").replace("grows", "growing").replace("shrinks", "shrinking")
           .replace("spins", "spinning").replace("stays", "staying") for m in MOTIONS}


def caption(scene: Scene) -> str:
    """The canonical one-sentence caption (no capital, no full stop)."""
    text = " and ".join(thing_phrase(t) for t in scene.objects)
    return f"{text} on {_article(scene.background)} {scene.background} background" if scene.background else text


# --- parsing ------------------------------------------------------------------------------------------

_WORDS = {  # surface word -> (field, value)
    **{c: ("colour", c) for c in (*COLOURS, HAZARD_COLOUR)},
    **{s: ("shape", s) for s in (*SHAPES, HAZARD)}, **{s + "s": ("shape", s) for s in SHAPES},
    "crosses": ("shape", "cross"), "hazards": ("shape", HAZARD), "small": ("size", "small"),
    "tiny": ("size", "small"), "little": ("size", "small"), "large": ("size", "large"), "big": ("size", "large"),
    "grows": ("motion", "grows"), "grow": ("motion", "grows"), "growing": ("motion", "grows"),
    "shrinks": ("motion", "shrinks"), "shrink": ("motion", "shrinks"), "shrinking": ("motion", "shrinks"),
    "spins": ("motion", "spins"), "spin": ("motion", "spins"), "spinning": ("motion", "spins"),
    "rotates": ("motion", "spins"), "rotating": ("motion", "spins"), "still": ("motion", "stays still"),
    "stationary": ("motion", "stays still"), "motionless": ("motion", "stays still"),
    "centre": ("position", "centre"), "center": ("position", "centre"), "middle": ("position", "centre"),
    "one": ("count", 1), "two": ("count", 2), "three": ("count", 3),
}
_SYNONYMS = {"gray": "grey", "violet": "purple"}
_TOWARDS = {"to", "towards", "toward"}
_DIRECTIONS = {"left": "left", "right": "right", "up": "up", "down": "down", "top": "up", "bottom": "down"}


def parse_caption(text: str) -> Scene:
    """Words → Scene, the inverse of `caption`, tolerant of a model's or a user's text.

    Size and colour words wait for the next shape word, which makes an object (a count word just
    before it, "two red circles", makes several); position and motion words attach to the last
    object (or, before any, to the next one). A direction after "to the" or with no "the" is a motion
    ("moves left", "moving to the left"); after another "… the" it is a position ("on the left");
    "top"/"bottom"/"centre" are positions. "X background" sets the
    background when X is a background colour. Video tags and unknown words are ignored.
    """
    words = [_SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", text.lower())]
    background, skip = None, set()
    for i in range(1, len(words)):
        if words[i] == "background" and words[i - 1] in BACKGROUNDS:
            background, skip = words[i - 1], skip | {i - 1}
    things: list[dict] = []
    last: list[dict] = []                              # the object(s) made by the last shape word
    pending: dict = {}                                 # size / colour / count waiting for a shape
    early: dict = {}                                   # position / motion said before any shape
    for i, w in enumerate(words):
        field, value = _WORDS.get(w, (None, None)) if i not in skip else (None, None)
        if w in _DIRECTIONS:
            before = words[i - 2] if i >= 2 and words[i - 1] == "the" else None
            if before in _TOWARDS or (before is None and w in ("left", "right", "up", "down")):
                field, value = "motion", f"moves {_DIRECTIONS[w]}"
            elif w in POSITIONS:
                field, value = "position", w
        if field in ("size", "colour"):
            pending[field] = value
        elif field == "count":
            pending["count"] = (value, i)
        elif field == "shape":
            attrs = {"size": pending.get("size"), "colour": pending.get("colour"), **early}
            count, at = pending.get("count", (1, i))
            last = [dict(shape=value, **attrs) for _ in range(count if i - at <= 3 else 1)]
            things += last
            pending, early = {}, {}
        elif field in ("position", "motion"):
            for target in last or [early]:
                target.setdefault(field, value)
    return Scene(tuple(Thing(**t) for t in things), background)
