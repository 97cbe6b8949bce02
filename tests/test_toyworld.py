"""The toy world: rendering, captions and their parser, held-out splits, and the written data sets.

One small world (n = 24) is written once per module; every reader must read all of it with zero
skips, and every record must encode with a tokenizer trained on its corpus.
"""
import json
import random
import re

import numpy as np
import pytest

from conftest import train_tiny_tokenizer
from nanog4v.toy import datasets, worlddir, world as toy_world
from nanog4v.config import preset
from nanog4v.data import SkipCounter, encode_conversation
from nanog4v.readers import read_dialogues, read_jsonl, read_safety, read_videochat
from nanog4v.toy.datasets import NUMBERS, describe, is_refusal, request_phrase
from nanog4v.toy.worlddir import write_world
from nanog4v.toy.world import (MOTIONS, Scene, Thing, caption, complete, heldout_pairs,
                              parse_caption, render, sample_scene)
from nanog4v.video import sample_frames

SEED, N = 3, 24
TAG = re.compile(r"<(video\d*)> (.*?) </\1>")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "world"
    write_world(out, n=N, seed=SEED, frames=8, size=64)
    return out


def load(world, name):
    path = world / name
    if name.endswith(".json"):
        return json.loads(path.read_text())
    return [json.loads(line) for line in path.read_text().splitlines()]


def random_scenes(count, seed=0):
    """Full, partial and hazard scenes from every split rule."""
    rng, held = random.Random(seed), set(heldout_pairs(seed))
    for _ in range(count):
        scene = sample_scene(rng, held, heldout=rng.random() < 0.3, hazard=rng.random() < 0.15)
        if rng.random() < 0.5:   # leave fields unsaid, as a request does
            scene = Scene(tuple(Thing(t.shape, *(v if rng.random() < 0.6 else None for v in
                                                 (t.colour, t.size, t.position, t.motion)))
                                for t in scene.objects), scene.background if rng.random() < 0.6 else None)
        yield scene


# --- rendering ------------------------------------------------------------------------------------

def centroid_and_area(frame, background):
    mask = np.any(frame.astype(int) != background, axis=-1)          # (H, W)
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean(), mask.sum()


@pytest.mark.parametrize("motion", MOTIONS)
def test_render_motion_is_what_the_caption_says(motion):
    scene = Scene((Thing("square", "white", "large", "centre", motion),), "black")
    frames = render(scene, num_frames=8, size=64)
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, render(scene, num_frames=8, size=64))          # deterministic
    (x0, y0, a0), (x1, y1, a1) = (centroid_and_area(f, toy_world.BACKGROUNDS["black"]) for f in frames[[0, -1]])
    travel = toy_world.TRAVEL * 64 * 7 / 8                                         # first to last frame centre
    dx, dy = {"moves left": (-travel, 0), "moves right": (travel, 0), "moves up": (0, -travel),
              "moves down": (0, travel)}.get(motion, (0, 0))
    assert x1 - x0 == pytest.approx(dx, abs=0.6) and y1 - y0 == pytest.approx(dy, abs=0.6)
    if motion == "grows":
        assert a1 > 3 * a0
    elif motion == "shrinks":
        assert a0 > 3 * a1
    else:
        assert a1 == pytest.approx(a0, rel=0.1)
    changed = not np.array_equal(frames[0], frames[-1])
    assert changed == (motion != "stays still")


def test_render_partial_scene_uses_defaults_and_hazard_is_striped():
    frames = render(Scene((Thing("hazard"),)), num_frames=2, size=32)
    assert np.array_equal(frames, render(complete(Scene((Thing("hazard"),))), num_frames=2, size=32))
    colours = {tuple(c) for c in frames[0].reshape(-1, 3)}
    assert toy_world.HAZARD_STRIPES[0] in colours and toy_world.HAZARD_STRIPES[1] in colours
    assert tuple(frames[0, 0, 0]) == toy_world.BACKGROUNDS["grey"]


def test_decoded_clip_matches_rendered_frames(world):
    row = load(world, "scenes.jsonl")[0]
    decoded = sample_frames(world / "videos" / f"{row['id']}.mp4", 8)             # all 8 frames, in order
    rendered = render(Scene.from_dict(row["scene"]), 8, 64)
    err = np.abs(decoded.astype(float) - rendered)
    assert decoded.shape == rendered.shape
    assert err.mean() < 5.0, err.mean()              # H.264 + yuv420p are lossy (measured: 3.3 here, edges)
    assert np.abs(decoded.astype(float) - rendered[::-1]).mean() > err.mean()    # and the order is right


def test_toy_generate_is_the_renderer_behind_the_parser():
    prompt = "<video> a small red star moving right on a navy background </video>"
    frames = toy_world.toy_generate(prompt, num_frames=4, size=32)
    assert np.array_equal(frames, render(complete(parse_caption(prompt)), 4, 32))
    a, b = (toy_world.toy_generate("a circle", 4, 32, seed=s) for s in (5, 5))
    assert np.array_equal(a, b)
    assert len({toy_world.toy_generate("a circle", 1, 32, seed=s).tobytes() for s in range(6)}) > 1   # seed fills


# --- captions and the parser -------------------------------------------------------------------------

def test_caption_round_trip_on_random_scenes():
    for scene in random_scenes(3000):
        text = caption(scene)
        assert parse_caption(text) == scene, text
        assert caption(parse_caption(text)) == text


def test_request_phrasings_and_descriptions_parse_back():
    rng = random.Random(1)
    for scene in random_scenes(1000, seed=1):
        text = request_phrase(scene, rng)
        assert parse_caption(text) == scene, text
    for scene in random_scenes(300, seed=2):
        scene = complete(scene, rng)
        assert parse_caption(describe(scene)) == scene


def test_parse_noisy_prompt():
    text = ("###AI: Sure!! <video1> Two BIG red circles moving to the left, and a tiny blue star spinning "
            "at the top against a gray background (lovely) </video1>")
    red = Thing("circle", "red", "large", None, "moves left")
    assert parse_caption(text) == Scene((red, red, Thing("star", "blue", "small", "top", "spins")), "grey")
    assert parse_caption("a purple triangle on the left moves right") == \
        Scene((Thing("triangle", "purple", None, "left", "moves right"),))
    assert parse_caption("On the right, an orange heart!").objects == (Thing("heart", "orange", position="right"),)
    assert parse_caption("hello there, nothing to draw") == Scene(())


# --- the written world ------------------------------------------------------------------------------

def test_world_json_and_clip_counts(world):
    info = json.loads((world / "world.json").read_text())
    scenes = load(world, "scenes.jsonl")
    assert info["seed"] == SEED and info["n"] == N and len(scenes) == N
    assert sorted(p.name for p in (world / "videos").iterdir()) == sorted(f"{s['id']}.mp4" for s in scenes)
    assert info["heldout_pairs"] == [list(p) for p in heldout_pairs(SEED)]
    held = heldout_pairs(SEED)
    assert len({c for c, _ in held}) == len({s for _, s in held}) == len(held) == 5
    for s in scenes:
        assert set(s["labels"]) <= set(info["label_names"])
        assert s["caption"] == caption(Scene.from_dict(s["scene"]))


def heldout_pair_in(text, pairs):
    return any(re.search(rf"\b{c} {s}(e?s)?\b", text) for c, s in pairs)


def train_texts(world):
    texts = [world.joinpath("corpus.txt").read_text()]
    texts += [world.joinpath(f).read_text() for f in ("stage1_train.json", "stage2_train.jsonl",
                                                      "safety_train.jsonl", "safety_video_train.jsonl")]
    return texts


def test_heldout_pairs_never_in_train_and_in_every_heldout_clip(world):
    held = set(heldout_pairs(SEED))
    for s in load(world, "scenes.jsonl"):
        pairs = Scene.from_dict(s["scene"]).pairs()
        assert bool(pairs & held) == (s["split"] == "heldout" and not s["hazard"]), s
    for text in train_texts(world):
        assert not heldout_pair_in(text, held)
    for r in load(world, "stage2_train.jsonl") + load(world, "stage2_val.jsonl"):
        assert not any(Scene.from_dict(d).pairs() & held for d in r["scenes"])
    shown = [r for r in load(world, "stage2_heldout.jsonl") if r["scenes"]]
    assert shown and all(Scene.from_dict(r["scenes"][0]).pairs() & held for r in shown)


def literal_fragments(template):
    return [f for f in re.split(r"\{\w+\}", template) if len(f.strip()) >= 8]


def test_heldout_phrasings_never_in_train(world):
    held = [f for train, heldout in datasets.PHRASINGS.values() for t in heldout for f in literal_fragments(t)]
    held += [f for c in datasets.CHAT for t in c[1] for f in literal_fragments(t)]
    assert len(held) > 20
    for text in train_texts(world):
        for fragment in held:
            assert fragment not in text, fragment
    for name in ("stage1_heldout.json", "stage2_heldout.jsonl", "safety_heldout.jsonl"):
        text = world.joinpath(name).read_text()
        assert '"phrasing": "heldout"' in text and any(f in text for f in held)


def test_every_reader_reads_everything_and_every_record_encodes(world, tmp_path):
    cfg = preset("nano")
    tok = train_tiny_tokenizer(tmp_path / "toy.model", world.joinpath("corpus.txt").read_text().splitlines(),
                               vocab_size=600)
    readers = {"stage1": read_videochat, "stage2": read_dialogues, "safety": read_safety}
    total = 0
    for name in sorted(worlddir.LAYOUT):
        stem = name.rsplit(".", 1)[0]
        reader = read_jsonl if stem.startswith("safety_video") else readers.get(stem.split("_")[0])
        if reader is None:
            continue
        skips = SkipCounter()
        records = list(reader(world / name, skips=skips, strict=True))
        raw = load(world, name)
        assert skips.total == 0 and len(records) == len(raw) > 0, name
        for record, row in zip(records, raw):
            if "label" in row:
                assert record["label"] == row["label"]
            enc = encode_conversation(tok, record, num_video_tokens=cfg.abstractor.num_output_tokens)
            assert len(enc["input_ids"]) <= cfg.stage2.max_seq_len, (name, len(enc["input_ids"]))
            assert len(enc["video_slots"]) == len(record["videos"])
        total += len(records)
    assert total > 100


def test_hazard_only_in_refused_video_records(world):
    hazard = {s["id"] for s in load(world, "scenes.jsonl") if s["hazard"]}
    assert hazard
    for split in ("train", "heldout"):
        rows = load(world, f"safety_video_{split}.jsonl")
        assert {r["label"] for r in rows} == {"refuse", "benign"}
        for r in rows:
            clip = r["video"].split("/")[-1][:-4]
            assert (r["label"] == "refuse") == (clip in hazard)
            assert is_refusal(r["conversations"][-1]["value"]) == (r["label"] == "refuse")
    for split in ("train", "val", "heldout"):
        for r in load(world, f"stage1_{split}.json"):
            assert r["video"].split("/")[-1][:-4] not in hazard
        for r in load(world, f"safety_{split}.jsonl"):
            assert is_refusal(r["conversations"][-1]["value"]) == (r["label"] == "refuse"), r
            assert (r["label"] == "refuse") == (r["category"] in ("violence", "sexual", "hazard"))


def test_stage1_answers_agree_with_the_scene(world):
    scenes = {s["id"]: Scene.from_dict(s["scene"]) for s in load(world, "scenes.jsonl")}
    types = set()
    for r in load(world, "stage1_train.json") + load(world, "stage1_heldout.json"):
        scene = scenes[r["video"].split("/")[-1][:-4]]
        for qa in r["QA"]:
            types.add(qa["type"])
            if qa["type"] == "description":
                assert parse_caption(qa["a"]) == scene
            elif qa["type"] == "caption":
                assert qa["a"] == caption(scene)
            elif qa["type"] == "count":
                assert qa["a"] == NUMBERS[len(scene.objects)]
            elif qa["type"] == "count_shape":
                shape = parse_caption(qa["q"]).objects[0].shape
                assert qa["a"] == NUMBERS[sum(t.shape == shape for t in scene.objects)]
            elif qa["type"] == "background":
                assert qa["a"] == scene.background
            elif qa["type"] in ("colour", "shape", "motion", "position"):
                ref = parse_caption(qa["q"])                                 # the object asked about
                match = [t for t in scene.objects if all(getattr(ref.objects[0], f) in (None, getattr(t, f))
                                                         for f in ("shape", "colour", "position"))] \
                    if ref.objects else [t for t in scene.objects if t.position == ref_position(qa["q"])]
                assert len(match) == 1, qa
                want = {"colour": match[0].colour, "shape": match[0].shape, "motion": match[0].motion,
                        "position": toy_world.POSITION_PHRASES[match[0].position]}[qa["type"]]
                assert qa["a"] == want, qa
    assert types >= {"description", "caption", "count", "colour", "shape", "motion", "position"}


def ref_position(question):
    return next(p for p, phrase in toy_world.POSITION_PHRASES.items() if phrase in question)


def test_stage2_videos_show_the_requested_scene(world):
    kinds = set()
    for split in ("train", "val", "heldout"):
        for r in load(world, f"stage2_{split}.jsonl"):
            kinds.add(r["kind"])
            tags = [m for t in r["conversations"] if t["from"] == "gpt" for m in TAG.findall(t["value"])]
            assert [c for _, c in tags] == [caption(Scene.from_dict(d)) for d in r["scenes"]]
            assert [n for n, _ in tags] == (["video"] if len(tags) == 1 else [f"video{k}" for k in
                                                                              range(1, len(tags) + 1)])
            assert not any(is_refusal(t["value"]) for t in r["conversations"] if t["from"] == "gpt")
            if r["kind"] == "chat":
                assert not tags and "<video" not in json.dumps(r["conversations"])
            first = r["conversations"][0]["value"]
            if r["kind"] == "single":   # the request itself parses to what is shown
                assert parse_caption(first) == Scene.from_dict(r["scenes"][0]), first
    assert kinds == {"single", "variation", "pair", "chat", "mixed"}


def test_world_is_deterministic_and_cli_is_careful(world, tmp_path, capsys, monkeypatch):
    out = tmp_path / "again"
    assert worlddir.main(["--out", str(out), "--n", str(N), "--seed", str(SEED), "--quiet"]) == 0
    for name in worlddir.LAYOUT:
        assert out.joinpath(name).read_bytes() == world.joinpath(name).read_bytes(), name
    assert worlddir.main(["--out", str(out), "--n", "10", "--seed", "0", "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err and json.loads((out / "world.json").read_text())["n"] == N
    assert worlddir.main(["--out", str(tmp_path / "small"), "--n", "5", "--quiet"]) == 2

    def broken(path, frames, fps):                   # dies while rendering, after the old world is gone
        raise KeyboardInterrupt
    monkeypatch.setattr(worlddir, "write_video", broken)
    with pytest.raises(KeyboardInterrupt):
        worlddir.main(["--out", str(out), "--n", "10", "--seed", "0", "--force", "--quiet"])
    assert not (out / "world.json").exists() and not (out / "stage1_train.json").exists()
