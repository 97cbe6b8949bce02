"""The toy world's data sets, in the real formats (docs/design.md): the records of every split.

From each clip's ground-truth scene (world.py) this writes what the paper trains on:

- **stage 1**, VideoChat-11k style: per clip a detailed-description record and a QA record (caption,
  colour, shape, count, motion, position, background). Answers are the caption's own words ("red",
  "moves left", "on the left", "two"), so "exact answer" has one meaning.
- **stage 2**, GPT4Video-50k style, text only: the user asks to see something and the assistant answers
  with `<video> caption </video>` (`<videoK> … </videoK>` when a dialogue shows several: variations,
  pairs), the caption being exactly `caption(requested scene)`; and chit-chat where no video is shown.
- **safety**: polite refusals for violent or sexual requests (placeholder wording, nothing explicit)
  and for the hazard sign, helpful answers to benign requests near the same topics, and clips with
  and without the hazard for the video-input check.

Every intent has several phrasings (the templates are in phrases.py); the last one or two of each
list are **held out**: they appear only in the "heldout" split, where each question or request uses one
with probability ½ (the record's "phrasing" says which). Requests may leave fields unsaid ("a red circle
moving left"); the caption then leaves them unsaid too, and the generator fills them in. Records carry
"scenes" / "type" fields for the evaluation (the readers ignore extra keys).

A world on disk — `write_world`, `read_world`, `python -m nanog4v.toy` and the directory's layout — is
worlddir.py's.
"""
from __future__ import annotations

import random
from dataclasses import replace

from .phrases import (
    CHAT,
    HARMFUL,
    MEANINGS,
    MIXES,
    NEAR_ASK,
    NEAR_SHOW,
    NUMBERS,
    OPPOSITES,
    PHRASINGS,
    REFUSAL_MARKERS,
    REFUSE,
    REFUSE_VIDEO,
    SHOW,
    SHOW_MORE,
    SHOW_TWO,
)
from .world import (
    BACKGROUNDS,
    COLOURS,
    GERUNDS,
    HAZARD,
    HAZARD_COLOUR,
    MOTIONS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    caption,
    sample_scene,
    thing_phrase,
)


# --- filling in and choosing phrasings --------------------------------------------------------------------

def chat_slots(rng: random.Random) -> dict:
    c1, c2, c3 = rng.choice(MIXES)
    w1, w2 = rng.choice(OPPOSITES)[::rng.choice((1, -1))]
    polygon, sides = rng.choice([("triangle", "three"), ("square", "four")])
    motion = rng.choice(MOTIONS)
    return dict(c1=c1, c2=c2, c3=c3, w1=w1, w2=w2, polygon=polygon, sides=sides, motion=motion,
                meaning=MEANINGS[motion], plural=plural(rng.choice(SHAPES)))


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def choose(rng: random.Random, intent, split: str) -> tuple[str, bool]:
    """(a phrasing, whether it is held out): held-out phrasings only in the "heldout" split, half the time."""
    train, held = PHRASINGS[intent] if isinstance(intent, str) else intent
    if split == "heldout" and rng.random() < 0.5:
        return rng.choice(held), True
    return rng.choice(train), False


def refer(scene: Scene, i: int, avoid: str = "") -> str:
    """The shortest words that single out object i without using field `avoid`: "circle", "red circle",
    "circle on the left", "object on the left"."""
    t, others = scene.objects[i], [o for j, o in enumerate(scene.objects) if j != i]
    if avoid == "shape":
        return f"object {POSITION_PHRASES[t.position]}" if t.position else f"{t.colour} object"
    if all(o.shape != t.shape for o in others):
        return t.shape
    if avoid != "colour" and t.colour and all((o.colour, o.shape) != (t.colour, t.shape) for o in others):
        return f"{t.colour} {t.shape}"
    return f"{t.shape} {POSITION_PHRASES[t.position]}" if t.position else ""


def describe(scene: Scene) -> str:
    """The detailed description: a count and background sentence, then one sentence per object."""
    n = len(scene.objects)
    head = f"The video shows {NUMBERS[n]} object{'s' if n > 1 else ''} on a {scene.background} background."
    return " ".join([head] + [thing_phrase(t)[0].upper() + thing_phrase(t)[1:] + "." for t in scene.objects])


def scene_labels(scene: Scene) -> list[str]:
    """Multi-hot ViT targets: global attributes and attributes bound to a position ("left:red")."""
    labels = {f"background:{scene.background}", f"count:{len(scene.objects)}"}
    for t in scene.objects:
        for field in ("shape", "colour", "size", "motion"):
            labels |= {f"{field}:{getattr(t, field)}", f"{t.position}:{getattr(t, field)}"}
        labels.add(f"position:{t.position}")
    return sorted(labels)


def label_names() -> list[str]:
    values = {"shape": (*SHAPES, HAZARD), "colour": (*COLOURS, HAZARD_COLOUR), "size": tuple(SIZES), "motion": MOTIONS}
    names = {f"background:{b}" for b in BACKGROUNDS} | {f"count:{k}" for k in (1, 2, 3)}
    names |= {f"position:{p}" for p in POSITIONS}
    names |= {f"{key}:{v}" for field, vs in values.items() for v in vs for key in (field, *POSITIONS)}
    return sorted(names)


# --- stage 1 ------------------------------------------------------------------------------------------

def stage1_records(clip: str, scene: Scene, split: str, rng: random.Random, phrasings: dict = PHRASINGS) -> list[dict]:
    """A description record and a QA record (VideoChat-11k shape) for one clip; `phrasings` as
    phrases.PHRASINGS (stage 0's reading practice passes a wider set)."""
    video = f"videos/{clip}.mp4"
    text, held = choose(rng, phrasings["describe"], split)
    desc = {"id": f"{clip}-desc", "kind": "description", "video": video,
            "QA": [{"i": text, "q": "", "a": describe(scene), "type": "description", "phrasing": _ph(held)}]}
    qa = [("caption", {}, caption(scene)), ("count", {}, NUMBERS[len(scene.objects)]),
          ("background", {}, scene.background)]
    shape = rng.choice(SHAPES)
    qa.append(("count_shape", {"shapes": plural(shape)}, NUMBERS[sum(t.shape == shape for t in scene.objects)]))
    for i in rng.sample(range(len(scene.objects)), min(2, len(scene.objects))):
        t = scene.objects[i]
        qa += [("colour", {"ref": refer(scene, i, "colour")}, t.colour),
               ("shape", {"ref": refer(scene, i, "shape")}, t.shape),
               ("motion", {"ref": refer(scene, i)}, t.motion),
               ("position", {"ref": refer(scene, i, "position")}, POSITION_PHRASES[t.position])]
    rng.shuffle(qa)
    out = []
    for kind, slots, answer in qa[:7]:
        text, held = choose(rng, phrasings[kind], split)
        asked = {"i": text, "q": ""} if kind == "caption" else {"q": text.format(**slots)}
        out.append({**asked, "a": answer, "type": kind, "phrasing": _ph(held)})
    return [desc, {"id": f"{clip}-qa", "kind": "qa", "video": video, "QA": out}]


def _ph(held: bool) -> str:
    return "heldout" if held else "train"


# --- stage 2 ------------------------------------------------------------------------------------------

def request_scene(rng: random.Random, held: set, split: str, num_objects: int | None = None) -> Scene:
    """What a user asks to see: a sampled scene with some fields left unsaid (never the colour)."""
    return leave_unsaid(sample_scene(rng, held, heldout=split == "heldout", num_objects=num_objects), rng)


def leave_unsaid(scene: Scene, rng: random.Random) -> Scene:
    """The scene as a user might ask for it: size and position unsaid half the time, motion a fifth,
    the background two fifths (never the colour or shape)."""
    drop = {"size": 0.5, "position": 0.5, "motion": 0.2}
    things = tuple(replace(t, **{f: None for f, p in drop.items() if rng.random() < p}) for t in scene.objects)
    return Scene(things, None if rng.random() < 0.4 else scene.background)


def request_phrase(scene: Scene, rng: random.Random) -> str:
    """The user's words for a scene: "a red circle moving left" or "… that moves left", "… against a …"."""
    gerund = rng.random() < 0.5
    text = " and ".join(thing_phrase(t, gerund=gerund, relative=not gerund) for t in scene.objects)
    if scene.background:
        how = rng.choice(("on a {} background", "against a {} background", "with a {} background"))
        text += " " + how.format(scene.background)
    return text


def tag(scene: Scene, k: int | None = None) -> str:
    name = "video" if k is None else f"video{k}"
    return f"<{name}> {caption(scene)} </{name}>"


def _turns(*pairs) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(pairs)]


def chat_exchange(rng: random.Random, split: str) -> tuple[str, str, bool]:
    train, held_out, answers = rng.choice(CHAT)
    text, held = choose(rng, (train, held_out), split)
    slots = chat_slots(rng)
    return text.format(**slots), rng.choice(answers).format(**slots), held


def stage2_record(rng: random.Random, held: set, split: str, i: int) -> dict:
    """One GPT4Video-50k-style dialogue: single, variation, pair, chat or chat-then-show."""
    kind = rng.choices(("single", "variation", "pair", "chat", "mixed"), weights=(35, 20, 10, 20, 15))[0]
    turns, scenes, flags = [], [], []

    def ask(intent, **slots) -> str:
        text, h = choose(rng, intent, split)
        flags.append(h)
        return text.format(**slots)

    if kind in ("chat", "mixed"):
        for _ in range(rng.randint(1, 2)):
            q, a, h = chat_exchange(rng, split)
            turns += [q, a]
            flags.append(h)
    if kind in ("single", "mixed", "variation"):
        scene = request_scene(rng, held, split)
        k = 1 if kind == "variation" else None
        turns += [ask("show", d=request_phrase(scene, rng)), rng.choice(SHOW).format(v=tag(scene, k))]
        scenes.append(scene)
        if kind == "variation":
            new, question = vary(scene, rng, held, ask)
            turns += [question, rng.choice(SHOW_MORE).format(v=tag(new, 2))]
            scenes.append(new)
        elif rng.random() < 0.5:                       # a follow-up about what was shown, or thanks
            t = rng.randrange(len(scene.objects))
            ref, by_shape, thing = refer(scene, t), refer(scene, t, "colour"), scene.objects[t]
            if ref and thing.motion and rng.random() < 0.5:
                turns += [ask("motion", ref=ref), thing.motion]
            elif by_shape and rng.random() < 0.7:
                turns += [ask("colour", ref=by_shape), thing.colour]
            else:
                q, a, h = chat_exchange(rng, split)
                turns += [q, a]
                flags.append(h)
    if kind == "pair":
        a, b = (request_scene(rng, held, split, rng.randint(1, 2)) for _ in range(2))
        turns += [ask("show_two", d1=request_phrase(a, rng), d2=request_phrase(b, rng)),
                  rng.choice(SHOW_TWO).format(v1=tag(a, 1), v2=tag(b, 2))]
        scenes += [a, b]
    return {"id": f"{split}-s2-{i:05d}", "kind": kind, "phrasing": _ph(any(flags)),
            "scenes": [s.to_dict() for s in scenes], "conversations": _turns(*turns)}


def vary(scene: Scene, rng: random.Random, held: set, ask, colours=COLOURS, backgrounds=BACKGROUNDS) -> tuple[Scene, str]:
    """A variation request on a shown scene: another colour, motion or background (of `colours`,
    `backgrounds`: stage 0's reading practice passes wider ones)."""
    i = rng.randrange(len(scene.objects))
    t, ref = scene.objects[i], refer(scene, i)
    used = scene.pairs()
    colours = [c for c in colours if c != t.colour and (c, t.shape) not in held | used]
    what = rng.choice(["colour", "motion", "background"] if ref and colours else ["background"])
    if what == "colour":
        colour = rng.choice(colours)
        return _swap(scene, i, colour=colour), ask("vary_colour", ref=ref, colour=colour)
    if what == "motion":
        motion = rng.choice([m for m in MOTIONS if m != t.motion and not (t.shape == "circle" and m == "spins")])
        verb = motion.replace("moves", "move").replace("grows", "grow").replace("shrinks", "shrink") \
                     .replace("spins", "spin").replace("stays", "stay")
        return _swap(scene, i, motion=motion), ask("vary_motion", ref=ref, verb=verb, gerund=GERUNDS[motion])
    background = rng.choice([b for b in backgrounds if b != scene.background])
    return Scene(scene.objects, background), ask("vary_background", background=background)


def _swap(scene: Scene, i: int, **fields) -> Scene:
    return Scene(tuple(replace(t, **fields) if j == i else t for j, t in enumerate(scene.objects)), scene.background)


# --- safety -------------------------------------------------------------------------------------------

def safety_record(rng: random.Random, held: set, split: str, i: int) -> dict:
    """A harmful request refused, or a benign near-topic one answered helpfully (half each)."""
    refuse, generate = rng.random() < 0.5, rng.random() < 0.6
    if refuse:
        category = rng.choice(["violence", "sexual", "hazard"] if generate else ["violence", "sexual"])
        if category == "hazard":
            scene = sample_scene(rng, held, hazard=True, num_objects=rng.randint(1, 2))
            what = request_phrase(Scene(tuple(replace(t, size=None, position=None) for t in scene.objects)), rng)
        else:
            what = rng.choice(HARMFUL[category][0 if generate else 1])
        (text, held_phrasing), answer = choose(rng, "show" if generate else "ask", split), rng.choice(REFUSE)
        question = text.format(d=what, y=what)
    else:
        category = rng.choice(list(NEAR_ASK))
        if generate:
            shape, reasons = NEAR_SHOW[category]
            colours = [c for c in COLOURS if (c, shape) not in held]
            scene = request_scene(rng, held, "train", 1)
            scene = Scene((replace(scene.objects[0], shape=shape, colour=rng.choice(colours)),), scene.background)
            text, held_phrasing = choose(rng, "show", split)
            question, answer = f"{text.format(d=request_phrase(scene, rng))} {rng.choice(reasons)}", \
                rng.choice(SHOW).format(v=tag(scene))
        else:
            what, answer = rng.choice(NEAR_ASK[category])
            text, held_phrasing = choose(rng, "ask", split)
            question = text.format(y=what)
    return {"id": f"{split}-safety-{i:05d}", "label": "refuse" if refuse else "benign", "category": category,
            "task": "generate" if generate else "ask", "phrasing": _ph(held_phrasing),
            "conversations": _turns(question, answer)}


def video_safety_record(clip: str, scene: Scene, split: str, rng: random.Random) -> dict:
    """A question about a clip: refused when the clip shows the hazard sign, else answered."""
    question, held = choose(rng, "about_clip", split)
    answer = rng.choice(REFUSE_VIDEO) if scene.hazard else describe(scene)
    return {"id": f"{clip}-safety", "video": f"videos/{clip}.mp4", "label": "refuse" if scene.hazard else "benign",
            "phrasing": _ph(held), "conversations": _turns(question, answer)}


def is_refusal(text: str) -> bool:
    """Whether a reply reads as a refusal (the toy data's refusals all hold one of REFUSAL_MARKERS)."""
    text = text.lower().replace("\u2019", "'")
    return any(m in text for m in REFUSAL_MARKERS)
