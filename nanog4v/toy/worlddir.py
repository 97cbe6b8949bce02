"""A toy world on disk: every clip and data set of the nano recipe in one directory.

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
from pathlib import Path

from ..data import SYSTEM
from ..video_out import write_video
from .datasets import label_names, safety_record, scene_labels, stage1_records, stage2_record, video_safety_record
from .phrases import CHAT, PHRASINGS, REFUSAL_MARKERS
from .world import (BACKGROUNDS, COLOURS, HAZARD, HAZARD_COLOUR, MOTIONS, POSITIONS, SHAPES, SIZES, caption,
                    heldout_pairs, render, sample_scene)


class WorldError(ValueError):
    """A toy world that cannot be written or read; the message names the directory or file."""


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
