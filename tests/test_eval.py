"""nanog4v.eval: the four tables on a `test`-preset checkpoint, the plumbing checked with an oracle model
that answers exactly the references, the order of the safety checks, and bad input on the CLI."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nanog4v.eval import tables as ev
from nanog4v.readers import read_jsonl, read_safety, read_videochat
from nanog4v.safety import Lexicon, Safety
from nanog4v.toy.hazard import hazard_prompt

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """`train.py --stage all` on the test preset: a world of 24 clips, 2 steps a stage."""
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    out = tmp_path_factory.mktemp("eval") / "ckpt"
    assert train.main(["--stage", "all", "--preset", "test", "--world-n", "24", "--max-steps", "2", "--eval-n", "2",
                       "--out", str(out), "--quiet"]) == 0
    return out


def references(world: Path) -> dict[str, str]:
    """What a perfect model says: the reference AI turn after every (videos, conversation prefix) of the
    held-out files."""
    answers = {}
    records = [*read_videochat(world / "stage1_heldout.json"), *read_jsonl(world / "stage2_heldout.jsonl"),
               *read_safety(world / "safety_heldout.jsonl"), *read_jsonl(world / "safety_video_heldout.jsonl")]
    for r in records:
        for j, turn in enumerate(r["turns"]):
            if turn["from"] == "ai":
                answers[json.dumps([r["videos"], r["turns"][:j]])] = turn["value"]
    return answers


def test_a_perfect_model_scores_perfectly(ckpt, monkeypatch):
    """Replies = the references: every table must say so (exact 100 %, rubric 5, BLEU-4 = METEOR ≈ 1,
    fidelity 100 %, no spurious video, the model alone refuses exactly the harmful requests)."""
    world = ckpt / "toyworld"
    truth = references(world)
    shows = {r["turns"][j - 1]["value"]: t["value"] for r in read_jsonl(world / "stage2_heldout.jsonl")
             for j, t in enumerate(r["turns"]) if t["from"] == "ai"}        # a request after a clip: its reply
    monkeypatch.setattr(ev, "replies", lambda model, tok, convs, max_new_tokens, batch_size=16:
                        [truth.get(json.dumps([c["videos"], c["turns"]])) or shows[c["turns"][-1]["value"]]
                         for c in convs])
    r, preds = ev.evaluate(ckpt, world, log=lambda m: None)
    assert r["qa_accuracy"] == 1.0 and r["qa_score"] == 5.0 and r["qa_n"] > 0
    assert r["bleu4"] == pytest.approx(1.0) and r["meteor"] > 0.9 and r["caption_n"] > 0
    assert r["prompt_fidelity"] == 1.0 and r["spurious_video_rate"] == 0.0 and r["show_n"] > 0
    kinds = r["prompt_fidelity_by_kind"]
    assert set(kinds) == {"first", "after a video", "two at once"} and all(k["fidelity"] == 1.0 for k in kinds.values())
    assert sum(k["n"] for k in kinds.values()) == r["show_n"]
    assert "Prompt fidelity by request: first 100.0 %" in ev.markdown(r)
    after = r["prompt_fidelity_after_clip"]       # every first request again, after a question about a clip
    assert after == {"n": kinds["first"]["n"], "fidelity": 1.0}
    assert "after a question about a held-out clip (not in the totals): 100.0 %" in ev.markdown(r)
    later = [p for p in preds if p.get("kind") == "after a clip"]
    assert len(later) == after["n"] and all(p["match"] for p in later)
    objects = r["qa_by_objects"]                  # every QA item is counted once, under its clip's object count
    counts = {clip: len(scene.objects) for clip, scene in ev.world_scenes(world).items()}
    assert set(objects) <= {"1", "2", "3"} and sum(v["n"] for v in objects.values()) == r["qa_n"]
    assert all(v["accuracy"] == 1.0 for v in objects.values())
    assert [p["objects"] for p in preds if p["table"] == 1] == [
        counts[Path(obj["video"]).stem] for obj in json.loads((world / "stage1_heldout.json").read_text())
        for item in obj["QA"] if item.get("type") not in ("description", "caption")]
    assert "Exact answers by objects in the clip: " in ev.markdown(r)
    right = r["captions_all_right"]               # the references describe their scenes truly, all of them
    assert "description" in right and set(right) <= {"description", "caption"}
    assert all(v["all_right"] == 1.0 for v in right.values())
    assert sum(v["n"] for v in right.values()) == r["caption_n"]
    assert "Every object right (shape, colour, place and motion, parsed from the reply): " in ev.markdown(r)
    older = {k: v for k, v in r.items() if k not in ("prompt_fidelity_by_kind", "qa_by_objects", "captions_all_right",
                                                     "prompt_fidelity_after_clip")}
    assert ev.markdown(older).count("**Table") == 4 and "by request" not in ev.markdown(older)
    assert "by objects" not in ev.markdown(older) and "Every object right" not in ev.markdown(older)
    assert 0.5 < r["clipsim"] <= 1.0 + 1e-6
    for name in ("vu", "vg"):
        s = r["safety"][name]
        assert s["model"]["f1"] == 1.0 and s["model"]["over_refusal"] == 0.0, name
        assert s["recall"] == 1.0 and s["n"] == s["tp"] + s["fp"] + s["tn"] + s["fn"] > 0
    assert len(preds) == (r["qa_n"] + r["caption_n"] + r["show_n"] + r["chat_n"] + after["n"]
                          + sum(s["n"] for s in r["safety"].values()))


def test_replies_compute_each_clips_tokens_once_and_answer_as_one_by_one(ckpt, monkeypatch):
    """Questions about the same clip reuse its video tokens: one ViT pass per clip, the same greedy replies
    as asking each question alone (which computes the tokens every time)."""
    model, tok = ev.load_chat_model(ckpt)
    items, _ = ev.questions(ev.held_out(ckpt / "toyworld")["stage1"], None)
    convs = [it["conversation"] for it in items][:12]
    clips = {tuple(c["videos"]) for c in convs}
    assert len(convs) > len(clips) >= 2                          # some clip is asked about more than once
    alone = [ev.replies(model, tok, [c], 12, batch_size=1)[0] for c in convs]
    calls = []
    real = ev.video_tokens
    monkeypatch.setattr(ev, "video_tokens", lambda m, videos: calls.append(tuple(videos)) or real(m, videos))
    assert ev.replies(model, tok, convs, 12, batch_size=1) == alone
    assert sorted(calls) == sorted(clips)


def test_described_right_needs_every_object_with_every_fact_and_nothing_else():
    from nanog4v.toy.datasets import describe
    from nanog4v.toy.world import Scene, Thing
    a = Thing("circle", "red", "small", "left", "moves up")
    b = Thing("heart", "blue", "large", "top", "grows")
    scene = Scene((a, b), "grey")
    assert ev.described_right(describe(scene), scene)
    assert ev.described_right("A large blue heart at the top grows. A small red circle on the left moves up.", scene)
    assert ev.described_right("a red circle on the left moving up and a blue heart at the top growing", scene)  # size unasked
    for wrong in ("A small red circle on the left moves up.",                                          # one missing
                  "A red circle on the left moves up. A blue heart at the top shrinks.",               # wrong motion
                  "A blue circle on the left moves up. A red heart at the top grows.",                 # colours swapped
                  "A red circle at the top moves up. A blue heart on the left grows.",                 # places swapped
                  describe(scene) + " A green star on the right spins.",                              # one too many
                  ""):
        assert not ev.described_right(wrong, scene), wrong


def test_request_kind_tells_first_videos_changes_and_pairs_apart():
    ask = {"from": "human", "value": "Show me a red circle."}
    shown = {"from": "ai", "value": "Sure! Here it is: <video1> a red circle </video1>"}
    chat = {"from": "ai", "value": "Hello! How can I help?"}
    assert ev.request_kind([ask], ["a red circle"]) == "first"
    assert ev.request_kind([ask, chat, ask], ["a red circle"]) == "first"
    assert ev.request_kind([ask, shown, {"from": "human", "value": "Now make it blue."}], ["a blue circle"]) == "after a video"
    assert ev.request_kind([ask], ["a red circle", "a blue square"]) == "two at once"


def test_after_clip_asks_each_first_request_after_a_clip_question_and_its_answer():
    ask = lambda text: {"from": "human", "value": text}
    first = ({"videos": [], "turns": [ask("hi"), {"from": "ai", "value": "Hello!"}, ask("Show me a red circle.")]},
             ["a red circle"])
    change = ({"videos": [], "turns": [ask("Show me a star."), {"from": "ai", "value": "<video> a star </video>"},
                                        ask("Make it red.")]}, ["a red star"])
    pair = ({"videos": [], "turns": [ask("Show me a star and a heart.")]}, ["a star", "a heart"])
    clip = {"conversation": {"videos": ["c.mp4"], "turns": [{"from": "human", "video": 0}, ask("What colour is it?")]},
            "answer": "blue"}
    later = {"conversation": {"videos": ["c.mp4"], "turns": [*clip["conversation"]["turns"], {"from": "ai", "value": "blue"},
                                                              ask("How does it move?")]}, "answer": "grows"}
    (conversation, ref), = ev.after_clip([first, change, pair], [later, clip])    # first requests, first questions
    assert ref == ["a red circle"] and conversation["videos"] == ["c.mp4"]
    assert conversation["turns"] == [{"from": "human", "video": 0}, ask("What colour is it?"),
                                     {"from": "ai", "value": "blue"}, ask("Show me a red circle.")]
    assert ev.after_clip([first], []) == []


def test_system_stage_follows_chats_order_of_checks():
    safety = Safety(lexicon=Lexicon(), video=None, prompt_concepts=hazard_prompt)
    assert ev.system_stage(safety, "Show me a man being stabbed.", None, "Sure: <video> a red circle </video>") == "input-text"
    assert ev.system_stage(safety, "Show me a sign.", None, "I'm sorry, but I can't help with that request.") == "model"
    hazard = "Here it is: <video> a large striped hazard sign in the centre stays still on a white background </video>"
    assert ev.system_stage(safety, "Show me a sign.", None, hazard) == "output-prompt"
    assert ev.system_stage(safety, "Show me a red circle.", None, "Here: <video> a red circle moves left </video>") is None


def test_cli_writes_tables_json_and_predictions(ckpt, tmp_path):
    out = tmp_path / "e" / "results.json"
    run = subprocess.run([sys.executable, "-m", "nanog4v.eval", "--ckpt", str(ckpt), "--json", str(out), "--limit", "3"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    for k in (1, 2, 3, 4):
        assert f"**Table {k} (toy analogue)" in run.stdout
    r = json.loads(out.read_text())
    for key in ("qa_accuracy", "qa_score", "bleu4", "meteor", "prompt_fidelity", "clipsim"):
        assert key in r
    world = ckpt / "toyworld"
    for name, file in (("vu", "safety_video_heldout.jsonl"), ("vg", "safety_heldout.jsonl")):
        assert r["safety"][name]["n"] == min(3, len((world / file).read_text().splitlines()))
        for key in ("accuracy", "precision", "recall", "f1", "over_refusal"):
            assert 0.0 <= r["safety"][name][key] <= 1.0
    lines = (out.parent / "predictions.jsonl").read_text().splitlines()
    after = r.get("prompt_fidelity_after_clip", {"n": 0})["n"]
    assert len(lines) == (r["qa_n"] + r["caption_n"] + r["show_n"] + r["chat_n"] + after
                          + sum(s["n"] for s in r["safety"].values()))
    assert r["qa_n"] <= 3 and r["caption_n"] <= 3


def test_cli_names_a_directory_without_a_held_out_split(ckpt, tmp_path):
    run = subprocess.run([sys.executable, "-m", "nanog4v.eval", "--ckpt", str(ckpt), "--data", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == (f"error: {tmp_path / 'stage1_heldout.json'}: missing (not a toy world with a held-out "
                                  "split; write one with python -m nanog4v.toy --out DIR)")


def test_cli_names_an_unreadable_scenes_file(ckpt, tmp_path):
    """A toy world whose scenes.jsonl (read for QA by number of objects) is corrupt: one line, exit 2."""
    world = tmp_path / "world"
    shutil.copytree(ckpt / "toyworld", world)
    (world / "scenes.jsonl").write_text("{not json\n")
    run = subprocess.run([sys.executable, "-m", "nanog4v.eval", "--ckpt", str(ckpt), "--data", str(world), "--limit", "1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: {world / 'scenes.jsonl'}: unreadable")
