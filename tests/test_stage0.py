"""Stage 0 (nanog4v/toy/stage0.py): tokenizer, ViT and LLaMA pretrained on a tiny toy world, written in the
official layouts. The ViT's own tests are in test_stage0_vision.py."""
import hashlib
import json
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nanog4v.config import preset
from nanog4v.data import AI, HUMAN, IGNORE, SYSTEM, encode_conversation, layout
from nanog4v.readers import read_dialogues, read_safety, read_videochat
from nanog4v.toy.stage0 import (Stage0Error, Stage0Settings, by_length, encode_document, pretrain_llama,
                                pretraining_documents, run_stage0, train_tokenizer)
from nanog4v.toy.stage0_objects import LIST_ASKS, ObjectsPart, object_slot
from nanog4v.toy.stage0_reading import (CHAT_PARAPHRASES, EDIT_PARAPHRASES, EXTRA_COLOURS, EXTRA_SHAPES, MORE_PARAPHRASES, PARAPHRASES,
                                        WIDER, WIDEST, asked_in_wider_words, drill_documents, edit_documents, frame,
                                        loosen, reading_caption, reading_documents, shown_then)
from nanog4v.tokenizer import Tokenizer
from nanog4v.toy.worlddir import WorldError, read_world
from nanog4v.toy.datasets import refer
from nanog4v.toy.phrases import CHAT, PHRASINGS
from nanog4v.toy.world import BACKGROUNDS, COLOURS, GERUNDS, POSITION_PHRASES, Scene, Thing, caption, parse_caption, sample_scene
from nanog4v.weights import load_llama, load_vision

CFG = preset("test")
SETTINGS = Stage0Settings(vit_epochs=6, vit_batch=4, vit_lr=3e-3, vit_fresh=0.0, llama_epochs=3, llama_batch=4, llama_block=64,
                          llama_lr=3e-3, eval_n=4)


@pytest.fixture(scope="module")
def stage0(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage0")
    return run_stage0(world, CFG, out, seed=0, log=lambda *a: None, settings=SETTINGS)


def test_outputs_load_through_the_official_paths(stage0):
    vit = load_vision(stage0["vision"])
    assert vit.cfg == CFG.vision
    llm = load_llama(stage0["llama"])
    assert llm.cfg.dim == CFG.llama.dim and llm.cfg.vocab_size == CFG.llama.vocab_size
    tok = Tokenizer(stage0["tokenizer"])
    assert 300 <= tok.vocab_size <= CFG.llama.vocab_size and (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)
    report = json.loads(stage0["stage0_json"].read_text())
    assert report["preset"] == "test" and set(report["times"]) == {"tokenizer_s", "vision_s", "llama_s", "total_s"}
    assert report["tokenizer"]["system_text_tokens"] == 2
    assert 0.0 <= report["vision"]["val"]["accuracy"]["mean"] <= 1.0
    assert set(report["vision"]["val"]["patch_accuracy"]) == {"colour", "shape"}
    assert report["llama"]["caption_qa"]["n"] == SETTINGS.eval_n


def test_losses_go_down(stage0, world):
    vit, llm = stage0["metrics"]["vision"]["losses"], stage0["metrics"]["llama"]["losses"]
    train = [r for r in map(json.loads, (world / "scenes.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert len(vit) == SETTINGS.vit_epochs * (len(train) // SETTINGS.vit_batch) and len(llm) == stage0["metrics"]["llama"]["steps"] >= SETTINGS.llama_epochs
    assert sum(vit[-2:]) / 2 < 0.8 * sum(vit[:2]) / 2
    assert sum(llm[-3:]) / 3 < 0.7 * sum(llm[:3]) / 3
    assert llm[0] == pytest.approx(torch.log(torch.tensor(512.0)).item(), abs=0.3)   # starts at ln V


def test_tokenizer_keeps_the_template_compact_and_exact(stage0, world):
    tok = Tokenizer(stage0["tokenizer"])
    assert [tok.id_to_piece(i) for i in tok.encode(SYSTEM)][1:] == ["<0x0A>"]      # the system text: 1 piece + "\n"
    assert tok.encode(AI)[-1] == tok.sp.piece_to_id(AI) != tok.unk_id                  # "###AI:": one piece
    records = [*read_videochat(world / "stage1_train.json"), *read_dialogues(world / "stage2_train.jsonl"),
               *read_safety(world / "safety_train.jsonl")]
    assert len(records) > 30
    for r in records:       # encode_conversation decodes every segment back and raises on any mismatch
        ai = encode_conversation(tok, r, loss_on="ai", num_video_tokens=4)
        if not r["videos"]:   # the pretraining text is tokenised and labelled exactly as in stages 1–2
            assert encode_document(tok, layout(r)) == (ai["input_ids"], ai["labels"])
    # what a user types cannot become a template piece: "###AI:" and "<video>" are escaped first
    typed = {"videos": [], "turns": [{"from": "human", "value": "###AI: <video> hi </video>"},
                                     {"from": "ai", "value": "ok"}]}
    ids = encode_conversation(tok, typed)["input_ids"]
    special = {tok.sp.piece_to_id(p) for p in (AI, "<video>", "\u2581<video>", "</video>", "\u2581</video>")}
    assert [i for i in ids if i in special] == [tok.sp.piece_to_id(AI)]           # only the template's own ###AI:


def test_stage1_records_become_text_with_the_clip_in_the_slot_and_only_answers_are_targets(world, stage0):
    docs = pretraining_documents(world, "train")
    scenes = [json.loads(line) for line in (world / "scenes.jsonl").read_text().splitlines()]
    first = next(r for r in read_videochat(world / "stage1_train.json"))
    row = next(s for s in scenes if first["videos"][0].endswith(f"{s['id']}.mp4"))
    text = "".join("</s>" if p.kind == "eos" else p.text for p in docs[0])
    assert text.startswith(SYSTEM + f"###Human: <video> {row['caption']} </video>\n###Human: ")
    noun_last = pretraining_documents(world, "train", slot=reading_caption)[0]         # on request
    slot = reading_caption(Scene.from_dict(row["scene"]))
    assert "".join(p.text for p in noun_last).startswith(SYSTEM + f"###Human: <video> {slot} </video>")
    assert all(p.kind != "slot" for d in docs for p in d) and text.endswith("\n</s>")
    tok = Tokenizer(stage0["tokenizer"])
    ids, labels = encode_document(tok, docs[0])
    targets = [i for i, label in zip(ids, labels) if label != IGNORE]
    answers = [t["value"] for t in first["turns"] if t.get("from") == "ai"]
    assert targets.count(tok.eos_id) == len(answers) and targets[-1] == tok.eos_id
    assert tok.decode([i for i in targets if i != tok.eos_id]).split() == " ".join(answers).split()


def test_bad_inputs_are_named(tmp_path, world):
    with pytest.raises(WorldError, match=f"{tmp_path / 'world.json'}: missing"):
        run_stage0(tmp_path, CFG, tmp_path / "out", log=lambda *a: None)
    with pytest.raises(Stage0Error, match="7b"):
        run_stage0(world, preset("7b"), tmp_path / "out", log=lambda *a: None)
    with pytest.raises(WorldError, match="nothing.txt: no such corpus file"):
        from nanog4v.toy.stage0 import train_tokenizer
        train_tokenizer(tmp_path / "nothing.txt", tmp_path / "t.model", 300)


def test_train_all_runs_every_stage_into_one_checkpoint_and_skips_what_is_done(tmp_path):
    """`train.py --stage all` (test preset, 2 steps a stage): world, stage 0, features, stages 1 and 2,
    in the layout chat.py loads; run again, it finds every stage done and trains nothing."""
    import importlib.util

    from nanog4v.assistant import load_chat_model
    from nanog4v.lora import LoRALinear
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("train_script", root / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    out = tmp_path / "all"
    argv = ["--stage", "all", "--preset", "test", "--world-n", "12", "--max-steps", "2", "--eval-n", "2",
            "--out", str(out), "--quiet"]
    assert train.main(argv) == 0
    for name in ["toyworld/world.json", "tokenizer.model", "vision/model.safetensors", "llama/model.safetensors",
                 "stage0.json", "stage1/gpt4video.safetensors", "stage2/adapter/adapter_model.safetensors",
                 "losses.png"]:
        assert (out / name).is_file(), name
    clips = json.loads((out / "toyworld" / "world.json").read_text())["clips"]
    assert len(list((out / "features").glob("*.safetensors"))) == clips["train"] + clips["val"]   # stage 1's clips
    summaries = [json.loads((out / f"stage{k}" / "summary.json").read_text()) for k in (1, 2)]
    assert [s["step"] for s in summaries] == [2, 2] and summaries[1]["eval"]["n"] == 2
    model, tok = load_chat_model(out)
    assert isinstance(model.llm.layers[0].self_attn.q_proj, LoRALinear) and tok.vocab_size <= CFG.llama.vocab_size
    stamp = (out / "stage2" / "gpt4video.safetensors").stat().st_mtime_ns
    assert train.main(argv) == 0 and (out / "stage2" / "gpt4video.safetensors").stat().st_mtime_ns == stamp


def test_the_slot_text_puts_every_attribute_before_its_noun():
    a, b = Thing("circle", "red", "large", "left", "moves right"), Thing("heart", "blue", "small", "top", "grows")
    assert reading_caption(Scene((a, b), "navy")) == ("two objects on a navy background: on the left moves right a "
                                                     "large red circle ; at the top grows a small blue heart")
    assert reading_caption(Scene((Thing("star", "orange", "small", "centre", "spins"),), "grey")) == (
        "one object on a grey background: in the centre spins a small orange star")
    rng = random.Random(0)
    for _ in range(200):                      # each object's words, then its noun; the noun ends its part
        scene = sample_scene(rng, set())
        parts = reading_caption(scene).split(": ", 1)[1].split(" ; ")
        assert [p.split()[-1] for p in parts] == [t.shape for t in scene.objects]
        assert all(parse_caption(p).objects[0].shape == t.shape and p.endswith(f"{t.size} {t.colour} {t.shape}")
                   and p.startswith(f"{POSITION_PHRASES[t.position]} {t.motion} a ") for p, t in zip(parts, scene.objects))


def test_no_stage0_document_holds_a_held_out_pair_or_phrasing(world):
    meta = json.loads((world / "world.json").read_text())
    pairs = [f"{c} {s}" for c, s in meta["heldout_pairs"]]
    held_pairs = {tuple(p) for p in meta["heldout_pairs"]}
    objects = (pretraining_documents(world, "train", object_slot)
               + reading_documents(200, held_pairs, random.Random(2), object_slot, lists=True)
               + drill_documents(200, held_pairs, random.Random(3), object_slot, lists=True))
    rng, train = random.Random(4), [r for r in read_world(world)[1] if r["split"] == "train"]
    asked_afresh = [d for _ in range(20) for r in train
                    for d in asked_in_wider_words(Scene.from_dict(r["scene"]), r["id"], rng)]     # llama_rephrase
    docs = (pretraining_documents(world, "train") + reading_documents(200, held_pairs, random.Random(0))
            + reading_documents(200, held_pairs, random.Random(5), edits=True)                  # llama_edits
            + drill_documents(200, held_pairs, random.Random(1), reading_caption) + objects + asked_afresh)
    text = "\n".join("".join(p.text for p in d) for d in docs)
    assert pairs and not [p for p in pairs if p in text]
    in_slots = {(t.colour, t.shape) for d in objects for p in d if isinstance(p, ObjectsPart) for t in p.scene.objects}
    assert len(in_slots) > 30 and not in_slots & held_pairs        # nor in a slot that holds a scene
    assert any(LIST_ASKS["colour"][0] in p.text for d in objects for p in d)
    held = [as_pattern(h) for _, hs in PHRASINGS.values() for h in hs]
    questions = [p.text for d in docs for p in d if p.kind == "text" and p.text.startswith(HUMAN) and "<video" not in p.text]
    assert questions and not [q for q in questions for pattern in held if pattern.search(q)]


def test_reading_practice_reads_a_wider_world_without_the_held_out_pairs():
    held = {("white", "circle"), ("green", "square")}
    docs = reading_documents(300, held, random.Random(0))
    assert len(docs) >= 3 * 300                     # description, QA, show request (+ a drill)
    text = "\n".join("".join(p.text for p in d) for d in docs)
    assert "white circle" not in text and "green square" not in text
    assert all(word in text for word in (*EXTRA_COLOURS, *EXTRA_SHAPES))
    assert text.count("<video>") >= 300 * 2          # every scene is read in a slot and written in a tag
    after_a_clip = [d for d in docs if any(p.kind == "answer" and "<video>" in p.text for p in d)
                    and any(p.kind == "text" and p.text == f"{HUMAN} <video>" for p in d)]
    assert 0.35 < len(after_a_clip) / 300 < 0.65     # half the show requests follow questions about a clip
    rng, q = random.Random(0), "Where is the circle?"
    loosened = [loosen(q, rng) for _ in range(400)]
    assert all("here is the circle?" in x for x in loosened) and 0.4 < sum(x != q for x in loosened) / 400 < 0.6


def test_reading_practice_asks_in_wider_words_but_never_a_held_out_phrasing():
    held = [h for _, hs in PHRASINGS.values() for h in hs]
    assert frame("Name the colour of the {ref}.") == frame("Name the shape of the {ref}.")
    assert frame("Name the colour of the {ref}.") != frame("Say the colour of the {ref}.")
    clashes = [(p, h) for ps in PARAPHRASES.values() for p in ps for h in held if frame(p) == frame(h)]
    assert not clashes                               # not even with the nouns swapped
    docs = reading_documents(300, set(), random.Random(0))
    questions = [p.text for d in docs for p in d if p.kind == "text" and p.text.startswith(HUMAN) and "<video" not in p.text]
    assert not [q for q in questions for pattern in map(as_pattern, held) if pattern.search(q)]
    paraphrases = [as_pattern(p) for intent, ps in PARAPHRASES.items() for p in ps if p not in PHRASINGS[intent][0]]
    share = sum(any(p.search(q) for p in paraphrases) for q in questions) / len(questions)
    assert share > 0.5                               # the paraphrases are read, not only listed


def test_more_paraphrases_are_read_only_when_asked_for_and_never_a_held_out_phrasing():
    """llama_more_paraphrases: the reading practice draws from WIDEST (WIDER + MORE_PARAPHRASES); the
    default never asks in them, so the default recipe's draws stay as they were."""
    held = [h for _, hs in PHRASINGS.values() for h in hs]
    assert not [(p, h) for ps in MORE_PARAPHRASES.values() for p in ps for h in held if frame(p) == frame(h)]
    assert sum(map(len, MORE_PARAPHRASES.values())) == 15
    more = [as_pattern(p) for ps in MORE_PARAPHRASES.values() for p in ps]
    ask = lambda docs: [p.text for d in docs for p in d if p.kind == "text" and p.text.startswith(HUMAN)]
    default, widest = (ask(reading_documents(300, set(), random.Random(0), **kw)) for kw in ({}, {"phrasings": WIDEST}))
    assert not [q for q in default if any(p.search(q) for p in more)]
    assert sum(any(p.search(q) for p in more) for q in widest) > 30
    assert not [q for q in widest for pattern in map(as_pattern, held) if pattern.search(q)]


def test_edits_change_one_field_of_the_shown_video_and_questions_about_it_get_its_answer():
    """llama_edits: after a shown video, a change of it (<video2> = <video1> with the named object's colour
    or motion, or the background, changed), or a question about it answered with the named object's field;
    none in a held-out phrasing (nor its frame); a fifth of the requests ask for two videos; off: none."""
    held = [h for _, hs in PHRASINGS.values() for h in hs]
    assert not [(p, h) for ps in EDIT_PARAPHRASES.values() for p in ps for h in held if frame(p) == frame(h)]
    shown = Scene((Thing("circle", "red", None, "left", "moves up"), Thing("circle", "blue", "small", "right", None),
                   Thing("star", "teal", None, None, "spins")), "gold")
    names = [{refer(shown, i, avoid) for avoid in ("", "colour", "position")} for i in range(3)]   # "red circle", …
    swaps = {caption(Scene(shown.objects, b)): (b,) for b in (*EXTRA_COLOURS, *BACKGROUNDS)}
    for i in range(3):
        for field, values in (("colour", (*EXTRA_COLOURS, *COLOURS)), ("motion", GERUNDS)):
            swaps |= {caption(Scene(tuple(replace(o, **{field: v}) if j == i else o for j, o in enumerate(shown.objects)),
                                    shown.background)): (i, v.split()[-1][:4]) for v in values}      # "move up"
    changes = questions = 0
    for k in range(300):
        turns = shown_then(shown, random.Random(k), {("pink", "star")}, WIDER)
        for question, reply in zip([t["value"] for t in turns[0::2]], [t["value"] for t in turns[1::2]]):
            assert not [pattern for pattern in map(as_pattern, held) if pattern.search(question)]
            named = [i for i in range(3) if any(re.search(rf"\b{n}\b", question) for n in names[i])]
            if "<video2>" not in reply:                      # a question: the named object's field
                questions += 1
                (i,) = named
                assert reply in (shown.objects[i].colour, shown.objects[i].motion, POSITION_PHRASES.get(shown.objects[i].position))
                continue
            changes += 1
            new = re.search(r"<video2> (.*) </video2>", reply)[1]
            assert new in swaps and new != caption(shown) and "pink star" not in new     # one field, never a held pair
            *i, word = swaps[new]
            assert word in question and named == i                                     # the one it names
    assert changes > 120 and questions > 80
    edited, plain = (reading_documents(300, set(), random.Random(0), edits=e) for e in (True, False))
    text = lambda docs: "\n".join("".join(p.text for p in d) for d in docs)
    assert 30 < text(edited).count("</video1> ") < 90 and text(edited).count("<video2>") > 200      # two at once
    assert "<video1>" not in text(plain) and "<video2>" not in text(plain)
    dialogues = edit_documents(200, {("pink", "star")}, random.Random(1))     # text only: no video slot
    assert len(dialogues) == 200 and not [p for d in dialogues for p in d if p.kind == "slot"]
    assert 120 < sum("<video2>" in text([d]) for d in dialogues) < 180 and "pink star" not in text(dialogues)


def test_chit_chat_in_edit_dialogues_is_answered_in_words_and_never_in_a_held_out_phrasing():
    """llama_chat: a share of the edit dialogues also hold one or two chit-chat exchanges (phrases.CHAT's
    train phrasings and CHAT_PARAPHRASES, never a held-out one nor its frame), each answered with one of
    CHAT's answers and no video; the dialogue's videos stay; chat=0 draws exactly the dialogues as before."""
    held = [h for _, hs, _ in CHAT for h in hs]
    assert len(CHAT_PARAPHRASES) == len(CHAT)
    assert not [(p, h) for ps in CHAT_PARAPHRASES for p in ps for h in held if frame(p) == frame(h)]
    asks = [(as_pattern(a), [as_pattern(r) for r in answers])
            for k, (train, _, answers) in enumerate(CHAT) for a in train + CHAT_PARAPHRASES[k]]
    pairs = lambda d: list(zip([p.text[len(HUMAN):].strip() for p in d if p.kind == "text" and p.text.startswith(HUMAN)],
                               [p.text.strip() for p in d if p.kind == "answer"]))
    chatted, counts = edit_documents(400, set(), random.Random(0), chat=0.5), []
    for d in chatted:
        turns = pairs(d)
        chats = [(q, r, answers) for q, r in turns for ask, answers in asks if ask.fullmatch(q)]
        counts.append(len(chats))
        assert "<video1>" in "".join(r for _, r in turns)                       # the shown video stays
        for q, r, answers in chats:
            assert any(a.fullmatch(r) for a in answers) and "<video" not in r
            assert not [h for h in held if as_pattern(h).fullmatch(q)]
    assert max(counts) == 2 and 150 < sum(c > 0 for c in counts) < 250          # one or two, in about half
    assert 30 < sum(c == 2 for c in counts) < 130
    plain = edit_documents(400, set(), random.Random(0))
    text = lambda docs: "\n".join("".join(p.text for p in d) for d in docs)
    # the very dialogues edit_documents drew before it had `chat` (the EDITING checkpoint read them)
    assert hashlib.sha256(text(plain).encode()).hexdigest() == \
        "c6e9b967d93eb7ee73883dd246855786800c5e33ff04015995ea1451942d81d7"
    assert not [q for d in plain for q, _ in pairs(d) for ask, _ in asks if ask.fullmatch(q)]


def as_pattern(template: str) -> re.Pattern:
    """A phrasing template as a regular expression, each {slot} any words."""
    return re.compile(re.sub(r"\\{\w+\\}", ".+", re.escape(template)))


def test_a_binding_drill_asks_every_attribute_of_every_object_and_learns_only_the_answers(stage0):
    tok = Tokenizer(stage0["tokenizer"])
    held = {("white", "circle"), ("green", "square")}
    docs = drill_documents(100, held, random.Random(0), reading_caption)
    assert len(docs) == 100
    for d in docs:
        slot = d[2].text                                        # after the system text and "###Human: <video>"
        assert d[1].text.endswith("<video>") and d[3].text.startswith("</video>")
        answers = [p.text for p in d if p.kind == "answer"]
        n = slot.split(":", 1)[1].count(";") + 1               # objects in the slot text
        assert n in (2, 3)                                      # never one object: no copy-any-colour shortcut
        assert len(answers) == 4 * n                            # colour, motion, place and shape of each
        assert "white circle" not in slot and "green square" not in slot
        ids, labels = encode_document(tok, d)
        targets = tok.decode([t for t in labels if t != IGNORE])
        assert targets.replace("</s>", "").split() == " ".join(answers).split()   # the answers, nothing else


def test_rephrase_asks_the_world_clips_afresh_each_epoch_instead_of_its_stage1_records(world, stage0):
    """llama_rephrase: the stage-1 records leave the fixed documents; every epoch asks the same clips again
    (a description and a QA record each, as datasets.stage1_records draws them) in the wider phrasings."""
    fixed, every = pretraining_documents(world, "train", stage1=False), pretraining_documents(world, "train")
    assert len(every) - len(fixed) == len(list(read_videochat(world / "stage1_train.json")))
    scene = Scene.from_dict(next(r for r in read_world(world)[1] if r["split"] == "train")["scene"])
    first, second = (asked_in_wider_words(scene, "c", random.Random(k)) for k in (0, 1))
    assert len(first) == 2 and [p.text for p in first[0] if p.kind == "answer"][0].strip().startswith("The video shows")
    assert all(f" {caption(scene)} " in [p.text for p in d] for d in first)                 # the clip, as words
    ask = lambda docs: [p.text for d in docs for p in d if p.kind == "text" and p.text.startswith(HUMAN) and "<video" not in p.text]
    assert ask(first) != ask(second)                                                        # asked afresh
    tok = Tokenizer(stage0["tokenizer"])
    settings = Stage0Settings(llama_epochs=2, llama_reading=0.0, llama_batch=4, llama_block=96, eval_n=0)
    plain = pretrain_llama(CFG.llama, tok, world, settings, log=lambda *a: None)[1]
    afresh = pretrain_llama(CFG.llama, tok, world, replace(settings, llama_rephrase=True), log=lambda *a: None)[1]
    assert afresh["losses"] != plain["losses"] and afresh["val_loss"] < afresh["losses"][0]


def test_binding_epochs_read_only_clips_of_two_or_three_objects(world, stage0):
    """llama_binding_epochs: the first epochs leave out every clip of one object (the world's stage-1
    records about one and the reading practice's one-object scenes), so no answer there can be the one
    colour, place or motion in the slot whatever the question names."""
    objects = {r["id"]: len(r["scene"]["objects"]) for r in read_world(world)[1]}
    records = list(read_videochat(world / "stage1_train.json", check_videos=False))
    ones = sum(objects[Path(r["videos"][0]).stem] == 1 for r in records)
    assert 0 < ones < len(records)
    every, multi = (pretraining_documents(world, "train", one_object=k) for k in (True, False))
    assert len(every) - len(multi) == ones
    one = {f" {caption(Scene.from_dict(r['scene']))} " for r in read_world(world)[1] if len(r["scene"]["objects"]) == 1}
    said = lambda docs: {p.text for d in docs for p in d}
    assert said(every) & one and not said(multi) & one     # a one-object clip is never in the slot
    docs = reading_documents(200, set(), random.Random(0), reading_caption, one_object=False)
    heads = [p.text.split(":")[0] for d in docs for p in d if p.kind == "text" and " background:" in p.text]
    assert heads and all(" one object " not in h for h in heads) and any(" three objects " in h for h in heads)
    tok = Tokenizer(stage0["tokenizer"])
    settings = Stage0Settings(llama_epochs=2, llama_reading=0.5, llama_batch=4, llama_block=96, eval_n=0)
    plain = pretrain_llama(CFG.llama, tok, world, settings, log=lambda *a: None)[1]
    first = pretrain_llama(CFG.llama, tok, world, replace(settings, llama_binding_epochs=1), log=lambda *a: None)[1]
    assert first["losses"] != plain["losses"] and first["steps"] <= plain["steps"] and first["val_loss"] < first["losses"][0]


def test_edit_dialogues_are_read_when_asked_for(world, stage0):
    """llama_edits: edit_documents (llama_edits per train clip) join every epoch, so there are more steps
    and the log counts them; trained, the loss falls."""
    tok, logged = Tokenizer(stage0["tokenizer"]), []
    settings = Stage0Settings(llama_epochs=1, llama_reading=0.0, llama_batch=4, llama_block=96, eval_n=0)
    plain = pretrain_llama(CFG.llama, tok, world, settings, log=lambda *a: None)[1]
    edits = pretrain_llama(CFG.llama, tok, world, replace(settings, llama_edits=0.5), log=logged.append)[1]
    clips = sum(r["split"] == "train" for r in read_world(world)[1])
    assert edits["steps"] > plain["steps"] and f" and {round(0.5 * clips)} edits an epoch" in logged[0]
    assert edits["val_loss"] < edits["losses"][0]


def test_by_length_puts_one_document_in_a_row_within_the_token_budget():
    rng = random.Random(0)
    docs = [(list(range(k)), list(range(k))) for k in rng.choices(range(5, 60), k=200)]
    batches = by_length(docs, 50, 200, random.Random(1))
    rows = [row for b in batches for row in b]
    assert sorted(len(ids) for ids, _ in rows) == sorted(min(len(ids), 50) for ids, _ in docs)   # each once, cut
    assert all(len(b) * max(len(ids) for ids, _ in b) <= 200 for b in batches if len(b) > 1)
    assert all(ids == list(range(len(ids))) for ids, _ in rows)                                # never joined
