"""The toy world's data sets, in the real formats (docs/design.md), and the directory that holds them.

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

`write_world` (or `python -m nanog4v.toy`) writes a whole world, and `read_world` reads it back:

    python -m nanog4v.toy --out DIR --n N --seed S [--frames T] [--size PX] [--fps F] [--force]

    DIR/world.json                 seed, n, vocabularies, held-out pairs and phrasings, label names,
                                   record counts; written LAST, so a DIR without it is incomplete
    DIR/videos/<id>.mp4            N clips (T frames, PX×PX, H.264)
    DIR/scenes.jsonl               {"id", "split", "hazard", "scene", "caption", "labels"} per clip;
                                   "labels" are the stage-0 ViT's multi-hot targets (world.json "label_names")
    DIR/stage1_{train,val,heldout}.json      VideoChat-11k (read_videochat): [{"id", "kind", "video",
                                   "QA": [{"i"?, "q", "a", "type", "phrasing"}]}], video paths relative to DIR
    DIR/stage2_{train,val,heldout}.jsonl     GPT4Video-50k (read_dialogues): {"id", "kind", "phrasing",
                                   "scenes": [what each <video> shows], "conversations": [...]}
    DIR/safety_{train,val,heldout}.jsonl     (read_safety): {"id", "label": "refuse"|"benign", "category",
                                   "task": "generate"|"ask", "phrasing", "conversations"}
    DIR/safety_video_{train,heldout}.jsonl   (read_jsonl): {"id", "video", "label", "conversations"};
                                   label "refuse" exactly when the clip shows the hazard sign
    DIR/corpus.txt                 the train split's text, one utterance a line (tokenizer, LLaMA stage 0)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from dataclasses import replace
from pathlib import Path

from ..data import SYSTEM
from ..video import write_video
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
    heldout_pairs,
    render,
    sample_scene,
    thing_phrase,
)


class WorldError(ValueError):
    """A toy world that cannot be written or read; the message names the directory or file."""


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


def vary(scene: Scene, rng: random.Random, held: set, ask) -> tuple[Scene, str]:
    """A variation request on a shown scene: another colour, motion or background."""
    i = rng.randrange(len(scene.objects))
    t, ref = scene.objects[i], refer(scene, i)
    used = scene.pairs()
    colours = [c for c in COLOURS if c != t.colour and (c, t.shape) not in held | used]
    what = rng.choice(["colour", "motion", "background"] if ref and colours else ["background"])
    if what == "colour":
        colour = rng.choice(colours)
        return _swap(scene, i, colour=colour), ask("vary_colour", ref=ref, colour=colour)
    if what == "motion":
        motion = rng.choice([m for m in MOTIONS if m != t.motion and not (t.shape == "circle" and m == "spins")])
        verb = motion.replace("moves", "move").replace("grows", "grow").replace("shrinks", "shrink") \
                     .replace("spins", "spin").replace("stays", "stay")
        return _swap(scene, i, motion=motion), ask("vary_motion", ref=ref, verb=verb, gerund=GERUNDS[motion])
    background = rng.choice([b for b in BACKGROUNDS if b != scene.background])
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


# --- writing a world ----------------------------------------------------------------------------------

LAYOUT = ("world.json", "scenes.jsonl", "corpus.txt",
          *(f"{p}_{s}.{e}" for p, e in (("stage1", "json"), ("stage2", "jsonl"), ("safety", "jsonl"))
            for s in ("train", "val", "heldout")), "safety_video_train.jsonl", "safety_video_heldout.jsonl")


def plan(n: int) -> dict[str, int]:
    """How many clips each split gets (hazard clips only feed the video safety files)."""
    hazard, heldout, val = max(2, round(0.08 * n)), max(2, round(0.1 * n)), max(2, round(0.05 * n))
    hazard_heldout = max(1, hazard // 3)
    return {"train": n - hazard - heldout - val, "val": val, "heldout": heldout,
            "hazard_train": hazard - hazard_heldout, "hazard_heldout": hazard_heldout}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _jsonl(records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_world(out, n: int, seed: int, frames: int = 8, size: int = 64, fps: float = 8.0,
                force: bool = False, progress: bool = False) -> dict[str, int]:
    """Render n clips and write every data set of the layout (the module docstring); world.json last."""
    out = Path(out)
    if n < 10 or frames < 1 or size < 16:
        raise WorldError(f"{out}: need --n >= 10, --frames >= 1 and --size >= 16 (got {n}, {frames}, {size})")
    if not 0 < fps <= 1000:                          # (NaN too) write_video would fail after --force emptied out
        raise WorldError(f"{out}: need 0 < --fps <= 1000 (got {fps})")
    if out.exists() and not out.is_dir():
        raise WorldError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise WorldError(f"{out}: directory exists and is not empty (use --force to overwrite it)")
        for name in LAYOUT:                          # world.json first: never a stale "complete" marker
            (out / name).unlink(missing_ok=True)
        for clip in (out / "videos").glob("*.mp4"):  # only our clips: --force must not eat a user's files
            if re.fullmatch(r"\d{5,}\.mp4", clip.name):
                clip.unlink()
    (out / "videos").mkdir(parents=True, exist_ok=True)
    held, counts = set(heldout_pairs(seed)), plan(n)
    rng = random.Random(f"{seed}:scenes")
    clips = []                                       # (id, split, scene)
    for split, k in counts.items():
        for _ in range(k):
            scene = sample_scene(rng, held, heldout=split == "heldout", hazard=split.startswith("hazard"))
            clips.append((f"{len(clips):05d}", split.replace("hazard_", ""), scene))
    for j, (clip, _, scene) in enumerate(clips):
        write_video(out / "videos" / f"{clip}.mp4", render(scene, frames, size), fps)
        if progress and (j + 1) % max(1, n // 10) == 0:
            print(f"rendered {j + 1}/{n} clips", file=sys.stderr)
    _write(out / "scenes.jsonl", _jsonl({"id": c, "split": s, "hazard": sc.hazard, "scene": sc.to_dict(),
                                         "caption": caption(sc), "labels": scene_labels(sc)} for c, s, sc in clips))
    written, corpus = {}, [SYSTEM.strip()] + [caption(sc) for _, s, sc in clips if s == "train"]
    sizes = {"train": (n, max(20, n // 2)), "val": (max(10, n // 20),) * 2, "heldout": (max(20, n // 10),) * 2}
    for split in ("train", "val", "heldout"):
        r = random.Random(f"{seed}:{split}")
        stage1 = [rec for c, s, sc in clips if s == split and not sc.hazard for rec in stage1_records(c, sc, split, r)]
        stage2 = [stage2_record(r, held, split, i) for i in range(sizes[split][0])]
        safety = [safety_record(r, held, split, i) for i in range(sizes[split][1])]
        _write(out / f"stage1_{split}.json", "[\n" + ",\n".join(json.dumps(x) for x in stage1) + "\n]\n")
        _write(out / f"stage2_{split}.jsonl", _jsonl(stage2))
        _write(out / f"safety_{split}.jsonl", _jsonl(safety))
        written.update({f"stage1_{split}": len(stage1), f"stage2_{split}": len(stage2), f"safety_{split}": len(safety)})
        if split == "train":
            corpus += [x for rec in stage1 for qa in rec["QA"] for x in (qa.get("i", ""), qa["q"], qa["a"]) if x]
            corpus += [t["value"] for rec in stage2 + safety for t in rec["conversations"]]
        if split != "val":
            benign = [x for x in clips if x[1] == split and not x[2].hazard]
            hazard = [x for x in clips if x[1] == split and x[2].hazard]
            picked = hazard + r.sample(benign, min(len(benign), len(hazard)))       # refuse / benign, half each
            videos = [video_safety_record(c, sc, split, r) for c, _, sc in picked]
            _write(out / f"safety_video_{split}.jsonl", _jsonl(videos))
            written[f"safety_video_{split}"] = len(videos)
    _write(out / "corpus.txt", "\n".join(corpus) + "\n")
    world = {"seed": seed, "n": n, "frames": frames, "size": size, "fps": fps,
             "vocab": {"shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(SIZES),
                       "positions": list(POSITIONS), "motions": list(MOTIONS), "backgrounds": list(BACKGROUNDS),
                       "hazard": {"shape": HAZARD, "colour": HAZARD_COLOUR}},
             "heldout_pairs": [list(p) for p in sorted(held)],
             "heldout_phrasings": {k: v[1] for k, v in PHRASINGS.items()} | {"chat": [q for c in CHAT for q in c[1]]},
             "refusal_markers": list(REFUSAL_MARKERS), "label_names": label_names(),
             "clips": counts, "records": written | {"corpus_lines": len(corpus)}}
    _write(out / "world.json", json.dumps(world, indent=1) + "\n")
    return {"clips": n, **written}


SCENE_KEYS = ("id", "split", "hazard", "scene", "caption", "labels")     # of every scenes.jsonl row


def read_world(world_dir) -> tuple[dict, list[dict]]:
    """world.json (written last: its absence means an incomplete world) and the scenes.jsonl rows, each an
    object with every key of SCENE_KEYS; anything else is one WorldError naming the file (and the line)."""
    world_dir = Path(world_dir)
    meta, scenes = world_dir / "world.json", world_dir / "scenes.jsonl"
    if not meta.is_file():
        raise WorldError(f"{meta}: missing (not a complete toy world; python -m nanog4v.toy --out DIR)")
    try:
        world = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WorldError(f"{meta}: unreadable ({e})") from None
    if not isinstance(world, dict):
        raise WorldError(f"{meta}: unreadable (not a JSON object)")
    try:
        lines = scenes.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise WorldError(f"{scenes}: unreadable ({e})") from None
    return world, [_scene_row(scenes, n, line) for n, line in enumerate(lines, 1) if line.strip()]


def _scene_row(scenes: Path, n: int, line: str) -> dict:
    """Line n of scenes.jsonl: an object with every key of SCENE_KEYS, or a WorldError naming the file and line."""
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as e:
        raise WorldError(f"{scenes}: unreadable (line {n}: not valid JSON: {getattr(e, 'msg', e)})") from None
    if not isinstance(row, dict):
        raise WorldError(f"{scenes}: unreadable (line {n}: not a JSON object)")
    absent = [k for k in SCENE_KEYS if k not in row]
    if absent:
        raise WorldError(f"{scenes}: unreadable (line {n}: no {', '.join(map(repr, absent))})")
    if not isinstance(row["id"], str) or not isinstance(row["scene"], dict) or not isinstance(row["scene"].get("objects"), list):
        raise WorldError(f"{scenes}: unreadable (line {n}: 'id' is not a string or 'scene' has no 'objects' list)")
    return row


# --- the command line: python -m nanog4v.toy -----------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanog4v.toy", description="Write a toy world: clips, scenes and every data set of the nano recipe.")
    parser.add_argument("--out", required=True, help="the directory to write (empty, or use --force)")
    parser.add_argument("--n", type=int, default=2000, help="number of clips (at least 10; default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        counts = write_world(args.out, n=args.n, seed=args.seed, frames=args.frames, size=args.size,
                             fps=args.fps, force=args.force, progress=not args.quiet)
    except WorldError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
