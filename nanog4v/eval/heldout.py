"""The held-out split of a toy world, as `nanog4v.eval` reads it: its four files checked to be there
(`held_out`), every file read strictly once before any model work (`held_out_clips`), clips that do not
decode left out and counted (`Skips`), and the stage-1 records cut into QA and captioning items with
what each clip shows (`questions`). `default_world` renders a checkpoint's world when it is missing.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..readers import read_jsonl, read_safety, read_videochat
from ..toy.world import Scene
from ..toy.worlddir import read_world, write_world
from ..video import VideoError, sample_frames

FILES = ("stage1_heldout.json", "stage2_heldout.jsonl", "safety_heldout.jsonl", "safety_video_heldout.jsonl")


class EvalError(ValueError):
    """Input the evaluation cannot use; the message is one line naming the file."""


def held_out(data) -> dict[str, Path]:
    """The four held-out files of a toy world directory, checked to be there."""
    data = Path(data)
    for name in FILES:
        if not (data / name).is_file():
            raise EvalError(f"{data / name}: missing (not a toy world with a held-out split; "
                            "write one with python -m nanog4v.toy --out DIR)")
    return {name.split("_heldout")[0]: data / name for name in FILES}


def held_out_clips(files: dict[str, Path]) -> list[str]:
    """Every clip the held-out files ask about. Reading all four files strictly here makes a malformed
    one a single error (`file:line: problem`) before any model work."""
    stage1 = list(read_videochat(files["stage1"], strict=True))
    list(read_jsonl(files["stage2"], check_videos=False, strict=True))
    list(read_safety(files["safety"], strict=True))
    vu = list(read_jsonl(files["safety_video"], strict=True))
    return sorted({v for r in stage1 + vu for v in r["videos"]})


class Skips:
    """Held-out items left out because a clip of theirs cannot be decoded: how many, and the first reason.
    `unreadable` is {clip: why} (`unreadable_clips`)."""

    def __init__(self, unreadable: dict[str, str]):
        self.unreadable, self.n, self.first = unreadable, 0, None

    def keep(self, videos: list[str]) -> bool:
        """True for an item whose clips are all readable; False (and counted) for the others."""
        bad = [v for v in videos if v in self.unreadable]
        if bad:
            self.n += 1
            self.first = self.first or self.unreadable[bad[0]]
        return not bad


def unreadable_clips(clips: list[str], num_frames: int) -> dict[str, str]:
    """{clip: why} for every clip that does not decode into `num_frames` frames (VideoError's one line)."""
    bad = {}
    for clip in clips:
        try:
            sample_frames(clip, num_frames)
        except VideoError as e:
            bad[clip] = str(e)
    return bad


def world_scenes(data: Path) -> dict[str, Scene]:
    """What each clip of a toy world shows ({clip id: Scene}, from its scenes.jsonl; empty for a
    directory that is not a toy world)."""
    if not (Path(data) / "world.json").is_file():
        return {}
    return {r["id"]: Scene.from_dict(r["scene"]) for r in read_world(data)[1]}


def questions(path: Path, limit: int | None, skips: Skips | None = None) -> tuple[list[dict], list[dict]]:
    """(QA items, captioning items: "describe" and "caption" requests) of stage1_heldout, each
    {"conversation", "answer", "type", "phrasing": "train" | "heldout" (a phrasing seen in training or not),
    "scene": what the clip shows and "objects": how many objects (None outside a toy world)}. Items about a clip `skips`
    cannot read are left out (and counted there)."""
    records = list(read_videochat(path, strict=True))
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError:                        # records one per line: read_videochat takes them
        raise EvalError(f"{path}: not one JSON list (the layout python -m nanog4v.toy writes)") from None
    scenes = world_scenes(path.parent)
    qa, captions = [], []
    for obj, record in zip(raw, records):
        for k, item in enumerate(obj["QA"]):
            if not isinstance(item.get("type", ""), str) or not isinstance(item.get("phrasing", ""), (str, type(None))):
                raise EvalError(f"{record['source']}: QA[{k}]: 'type' and 'phrasing' must be strings")
            j = 2 + 2 * k                                             # turns: video, (human, ai) × k
            entry = {"conversation": {"videos": record["videos"], "turns": record["turns"][:j]},
                     "answer": item["a"], "type": item.get("type", "qa"), "phrasing": item.get("phrasing"),
                     "scene": scenes.get(Path(record["videos"][0]).stem)}
            entry["objects"] = len(entry["scene"].objects) if entry["scene"] else None
            bucket = captions if entry["type"] in ("description", "caption") else qa
            if (limit is None or len(bucket) < limit) and (skips is None or skips.keep(record["videos"])):
                bucket.append(entry)
    return qa, captions


def default_world(ckpt: Path, log) -> Path:
    """CKPT/toyworld, rendered from the seed in CKPT/stage0.json (as train.py does) when it is missing."""
    world = ckpt / "toyworld"
    if not (world / "world.json").is_file():
        meta, seed = ckpt / "stage0.json", 0
        if meta.is_file():
            try:
                summary = json.loads(meta.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise EvalError(f"{meta}: not valid JSON ({e})") from None
            seed = summary.get("seed", 0) if isinstance(summary, dict) else None
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise EvalError(f"{meta}: not a stage-0 summary with a seed (an int >= 0)")
        log(f"eval: rendering the toy world of {ckpt} (seed {seed}) into {world}")
        write_world(world, n=2000, seed=seed, force=True)
    return world
