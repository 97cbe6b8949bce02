"""Stage 0's binding drills (nanog4v/toy/stage0_objects.py, stage0.pretrain_llama): the video slot as one
token per object, the plain-text drills and their slots, and the plain epochs before them."""
import hashlib
import json
import random
from dataclasses import replace

import pytest
import torch

from nanog4v.config import preset
from nanog4v.data import IGNORE
from nanog4v.readers import read_videochat
from nanog4v.llama import LLaMA
from nanog4v.toy.stage0 import (TEMPLATE_SYMBOLS, Stage0Error, Stage0Settings, encode_document, lm_batch, lm_forward,
                                pretrain_llama, pretraining_documents, tokenizer_symbols, train_tokenizer)
from nanog4v.toy.stage0_objects import (LIST_ASKS, MOTION_SYMBOLS, ObjectsPart, bag_embeddings, list_turns,
                                        drill_request, object_slot, raw_drill, thing_pieces,
                                        world_scene)
from nanog4v.toy.stage0_reading import frame, reading_caption, with_caption
from nanog4v.toy.phrases import PHRASINGS
from nanog4v.toy.world import Scene, Thing, caption

CFG = preset("test")


@pytest.fixture(scope="module")
def objects_tok(world, tmp_path_factory):
    """The tokenizer stage 0 trains for the "objects" slot: the template's pieces and one per motion."""
    path = tmp_path_factory.mktemp("objects_tok") / "tokenizer.model"
    return train_tokenizer(world / "corpus.txt", path, CFG.llama.vocab_size, TEMPLATE_SYMBOLS + list(MOTION_SYMBOLS))


def test_the_objects_slot_holds_one_token_per_object_each_the_sum_of_its_words(world, objects_tok, tmp_path):
    tok = objects_tok
    assert all(len(tok.encode(m)) == 1 for m in ("moves left", "moves up", "stays still"))   # one piece a motion
    default = train_tokenizer(world / "corpus.txt", tmp_path / "t.model", CFG.llama.vocab_size,
                              tokenizer_symbols(Stage0Settings()))   # the caption recipe's tokenizer is unchanged
    assert len(default.encode("moves left")) == 2
    a, b = Thing("circle", "red", "large", "left", "moves right"), Thing("heart", "blue", "small", "top", "grows")
    scene = Scene((a, b), "navy")
    record = {"videos": ["clip.mp4"], "turns": [{"from": "human", "video": 0}, {"from": "human", "value": "Hi?"},
                                                {"from": "ai", "value": "red"}]}
    parts = with_caption(record, object_slot(scene))
    assert [type(p) for p in parts].count(ObjectsPart) == 1
    orders = set()
    for seed in range(6):
        ids, labels = encode_document(tok, parts, 16, random.Random(seed))
        slot = [i for i, t in enumerate(ids) if isinstance(t, tuple)]
        assert slot == list(range(slot[0], slot[0] + 16)) and all(labels[i] == IGNORE for i in slot)
        tokens = [ids[i] for i in slot]
        words = sorted(tok.decode(list(t)).split() for t in tokens if tok.decode(list(t)).strip() != "nothing")
        assert words == [["large", "red", "circle", "left", "moves", "right"], ["navy", "background"],
                         ["small", "blue", "heart", "top", "grows"]]
        assert tokens.count(thing_pieces(tok, a)) == 1 and tokens.count(thing_pieces(tok, b)) == 1
        orders.add(tuple(tokens))
        assert tok.decode([i for i, label in zip(ids, labels) if label != IGNORE and i != tok.eos_id]).strip() == "red"
    assert len(orders) > 1                                      # shuffled: no slot position means an object
    # lm_batch: a slot token's embedding is the sum of its pieces' embeddings, a plain token its own
    model = LLaMA(CFG.llama).eval()
    (x, w), y = lm_batch([(ids, labels), ([1, 5, 6], [IGNORE, 5, 6])], tok.pad_id)
    assert x.shape[:2] == w.shape[:2] == y.shape and x.shape[0] == 2
    e = model.embed_tokens.weight
    with torch.no_grad():
        emb = bag_embeddings(model, x, w)
        i = slot[0]
        torch.testing.assert_close(emb[0, i], e[list(ids[i])].sum(0))
        torch.testing.assert_close(emb[1, 1], e[5])
        torch.testing.assert_close(emb[1, 5], e[tok.pad_id])         # padding: the pad token
        logits = lm_forward(model, (x, w))
        assert logits.shape == (2, x.shape[1], CFG.llama.vocab_size)
        torch.testing.assert_close(logits[1, :2], model(torch.tensor([[1, 5]]))[0], rtol=1e-5, atol=1e-5)


def test_list_turns_write_each_value_right_after_its_noun_and_only_when_the_nouns_name_the_objects():
    rng = random.Random(0)
    a, b, c = (Thing("circle", "red", "large", "left", "moves right"), Thing("heart", "blue", "small", "top", "grows"),
               Thing("circle", "green", "small", "right", "spins"))
    turns = list_turns(Scene((a, b), "navy"), rng)
    assert len(turns) == 6 and {t["value"] for t in turns[::2]} <= {q for qs in LIST_ASKS.values() for q in qs}
    answers = sorted(t["value"] for t in turns[1::2])
    assert all(sorted(x.split(", ")) in (["circle red", "heart blue"], ["circle moves right", "heart grows"],
                                          ["circle left", "heart top"]) for x in answers)
    assert list_turns(Scene((a, c), "navy"), rng) == []         # two circles: "circle" would not say which
    held = [h for _, hs in PHRASINGS.values() for h in hs]
    assert not [(q, h) for qs in LIST_ASKS.values() for q in qs for h in held if frame(q) == frame(h)]


def test_a_raw_drill_is_the_slot_then_one_line_per_field_all_of_it_targets(objects_tok):
    tok = objects_tok
    rng, held = random.Random(0), {("red", "circle"), ("blue", "star")}
    for _ in range(50):
        scene = world_scene(rng, held)
        assert len(scene.objects) in (2, 3) and len({t.shape for t in scene.objects}) == len(scene.objects)
        assert not {(t.colour, t.shape) for t in scene.objects} & held
        ids, labels = raw_drill(tok, scene, 16, rng)
        slot = [i for i, t in enumerate(ids) if isinstance(t, tuple)]
        assert len(slot) == 16 and ids[0] == tok.bos_id and labels[:slot[-1] + 2] == [IGNORE] * (slot[-1] + 2)
        assert labels[slot[-1] + 2:] == ids[slot[-1] + 2:]             # everything after </video> is a target
        lines = tok.decode(ids[slot[-1] + 2:-1]).strip().split("\n")
        assert sorted(line.split(":")[0].strip() for line in lines if line) == ["colour", "motion", "position"]
        for line in filter(None, lines):
            field, items = line.split(":")
            said = {item.split(" ", 1)[0]: item.split(" ", 1)[1] for item in items.strip().split(", ")}
            assert said == {t.shape: getattr(t, field.strip()) for t in scene.objects}
        bare_ids, bare_labels = raw_drill(tok, scene, 16, random.Random(1), bare=True)   # the objects alone
        bare = [t for t in bare_ids if isinstance(t, tuple)]
        assert sorted(bare) == sorted(tuple(i for w in (t.colour, t.position, t.motion, t.shape) for i in tok.encode(w))
                                      for t in scene.objects)
        assert len(bare_ids) - len(bare) == len(ids) - 16 and bare_labels.count(IGNORE) == len(bare) + 3


def test_a_raw_drill_can_hold_the_clip_as_words_and_phrases_can_be_one_piece(world, tmp_path):
    """phrase_pieces: the tokenizer keeps every place phrase and motion whole; a raw drill with a caption
    writer holds the clip as those words and says places as the captions do."""
    settings = Stage0Settings(llama_slot="noun-last", phrase_pieces=True)
    tok = train_tokenizer(world / "corpus.txt", tmp_path / "t.model", CFG.llama.vocab_size, tokenizer_symbols(settings))
    plain = train_tokenizer(world / "corpus.txt", tmp_path / "p.model", CFG.llama.vocab_size,
                            tokenizer_symbols(Stage0Settings()))
    for phrase in ("on the left", "in the centre", "moves left", "stays still"):
        assert len(tok.encode(phrase)) == 1 and len(plain.encode(phrase)) > 1
    scene = Scene((Thing("circle", "red", "large", "left", "moves right"), Thing("heart", "blue", "small", "top", "grows")),
                  "navy")
    ids, labels = raw_drill(tok, scene, 16, random.Random(0), reading_caption)
    end = ids.index(tok.encode("</video>")[0]) + 1
    assert tok.decode(ids[1:end]) == f"<video> {reading_caption(scene)} </video>"
    assert labels[:end] == [IGNORE] * end and labels[end:] == ids[end:]
    lines = sorted(line.strip() for line in tok.decode(ids[end:-1]).split("\n") if line.strip())
    assert [sorted(line.split(": ")[1].split(", ")) for line in lines] == [
        ["circle red", "heart blue"], ["circle moves right", "heart grows"], ["circle on the left", "heart at the top"]]
    copied, copied_labels = raw_drill(tok, scene, 16, random.Random(0), reading_caption, copy=True)   # llama_drill_copy
    again = tok.encode(f"again: {reading_caption(scene)}\n")
    assert copied == ids[:-1] + again + ids[-1:] and copied_labels == labels[:-1] + again + labels[-1:]
    assert raw_drill(tok, scene, 16, random.Random(0), copy=True) == raw_drill(tok, scene, 16, random.Random(0))


def test_a_raw_drill_can_name_shapes_by_place_and_hold_a_request_copied_from_its_words(world, tmp_path):
    """llama_drill_shapes: a "shape" line keyed by the place (the backward look-up); llama_drill_requests:
    a line among the fields asks for a scene in a user's words and its <video> prompt follows, the loss on
    the prompt only; drill_request draws half of those scenes from the slot's own objects, one changed.
    Both off: the drill is the one drawn before they existed (same rng draws)."""
    tok = train_tokenizer(world / "corpus.txt", tmp_path / "t.model", CFG.llama.vocab_size,
                          tokenizer_symbols(Stage0Settings()))
    scene = Scene((Thing("circle", "red", "large", "left", "moves right"), Thing("heart", "blue", "small", "top", "grows"),
                   Thing("star", "green", "small", "bottom", "spins")), "navy")
    ids, labels = raw_drill(tok, scene, 16, random.Random(3), caption, copy=True, shapes=True)
    end = ids.index(tok.encode("</video>")[0]) + 1
    lines = dict(line.strip().split(": ", 1) for line in tok.decode(ids[end:-1]).split("\n") if line.strip())
    assert sorted(lines) == ["again", "colour", "motion", "position", "shape"]
    assert sorted(lines["shape"].split(", ")) == ["at the bottom star", "at the top heart", "on the left circle"]
    assert sorted(lines["colour"].split(", ")) == ["circle red", "heart blue", "star green"]
    assert labels[end:] == ids[end:]
    bare, _ = raw_drill(tok, scene, 16, random.Random(3), bare=True, shapes=True)    # slot tokens: places as words
    assert "shape: " in tok.decode([t for t in bare if not isinstance(t, tuple)])
    assert sorted(tok.decode([t for t in bare if not isinstance(t, tuple)]).split("shape: ")[1].split("\n")[0]
                  .strip().split(", ")) == ["bottom star", "left circle", "top heart"]

    request = Scene((Thing("square", "red", None, None, "moves up"),), None)
    asked, asked_labels = raw_drill(tok, scene, 16, random.Random(3), caption, copy=True, shapes=True, request=request)
    text = tok.decode(asked[:-1])
    lines = [line.strip() for line in text.split("</video>", 1)[1].split("\n") if line.strip()]
    k = next(i for i, line in enumerate(lines) if line.startswith("show:"))
    assert lines[k] == "show: a red square moving up" or lines[k] == "show: a red square that moves up"
    assert lines[k + 1] == "<video> a red square moves up </video>" and lines[-1].startswith("again: ")
    assert sorted(line.split(":")[0] for line in lines[:k] + lines[k + 2:-1]) == ["colour", "motion", "position", "shape"]
    targets = tok.decode([i for i, l in zip(asked, asked_labels) if l != IGNORE][:-1])
    assert "show:" not in targets and "<video> a red square moves up </video>" in targets
    at = set()                                     # the request's line goes anywhere among the field lines
    for seed in range(40):
        ids_ = raw_drill(tok, scene, 16, random.Random(seed), caption, copy=True, shapes=True, request=request)[0]
        lines_ = [line.strip() for line in tok.decode(ids_[:-1]).split("</video>", 1)[1].split("\n") if line.strip()]
        at.add(next(i for i, line in enumerate(lines_) if line.startswith("show:")))
        assert lines_[-1].startswith("again: ")
    assert at == {0, 1, 2, 3, 4}
    rng, drawn = random.Random(0), []           # both off: the drills of the code before them (7827db6), pinned
    for bare, words in ((True, None), (False, caption)) * 10:
        ids_ = raw_drill(tok, world_scene(rng, {("white", "circle")}), 16, rng, words, bare=bare, copy=True)[0]
        drawn.append(tok.decode([i for i in ids_ if not isinstance(i, tuple)]))
    assert hashlib.sha256("\n".join(drawn).encode()).hexdigest() == \
        "299bc1050c7ec2be97cc124bcc2fea6a6332f5063bdaa60d7510a74d1a4c81ac"

    held, rng, near = {("red", "circle")}, random.Random(0), 0
    for _ in range(400):                       # drill_request: half the time the slot's objects, one changed
        slot_scene = world_scene(rng, held)
        r = drill_request(rng, held, slot_scene)
        assert 1 <= len(r.objects) <= 3 and not {(t.colour, t.shape) for t in r.objects} & held
        assert all(t.colour and t.shape for t in r.objects)
        shapes = {t.shape: t for t in slot_scene.objects}
        if len({t.shape for t in r.objects}) == len(r.objects) and all(t.shape in shapes for t in r.objects):
            changed = [f for t in r.objects for f in ("colour", "motion", "position")
                       if getattr(t, f) is not None and getattr(t, f) != getattr(shapes[t.shape], f)]
            near += len(changed) <= 1
    assert 160 <= near <= 260                  # half by construction (scenes of their own: 19 of 400 by chance)


def test_stage0_reads_objects_slots_end_to_end(world, objects_tok):
    tok = objects_tok
    settings = Stage0Settings(llama_epochs=1, llama_reading=0.5, llama_drills=0.5, llama_batch=4, llama_block=96,
                              eval_n=4, llama_slot="objects", llama_drill_steps=3)
    model, metrics = pretrain_llama(CFG.llama, tok, world, settings, slot_size=CFG.abstractor.num_output_tokens)
    assert metrics["caption_qa"]["n"] == 4 and metrics["val_loss"] < metrics["losses"][0]
    docs = pretraining_documents(world, "train", object_slot)
    assert sum(isinstance(p, ObjectsPart) for d in docs for p in d) == len(list(read_videochat(world / "stage1_train.json")))


def test_the_drills_can_hold_objects_while_the_epochs_read_captions(world, objects_tok):
    """llama_drill_slots: the plain drills first read the clip as slot tokens ("objects", or "bare-objects":
    the objects alone), then as words, in that order; the epochs read captions; the tokenizer keeps each
    motion whole for the slot tokens."""
    settings = Stage0Settings(llama_epochs=1, llama_reading=0.0, llama_batch=4, llama_block=96, eval_n=4,
                              llama_drill_slots=("objects",), llama_drill_steps=3)
    assert set(MOTION_SYMBOLS) <= set(tokenizer_symbols(settings)) and not set(MOTION_SYMBOLS) & set(
        tokenizer_symbols(replace(settings, llama_drill_slots=())))
    run = lambda s: pretrain_llama(CFG.llama, objects_tok, world, s, log=lambda *a: None,
                                   slot_size=CFG.abstractor.num_output_tokens)[1]
    objects, words = run(settings), run(replace(settings, llama_drill_slots=("caption",)))
    assert objects["steps"] == words["steps"] and objects["losses"][:3] != words["losses"][:3]
    assert objects["caption_qa"]["n"] == 4 and objects["val_loss"] < objects["losses"][0]
    both = run(replace(settings, llama_drill_slots=("objects", "caption")))       # 1 step of objects, 2 of words
    assert both["losses"][:1] == objects["losses"][:1] and both["losses"][1:3] != objects["losses"][1:3]
    bare = replace(settings, llama_drill_slots=("bare-objects", "caption"))
    assert set(MOTION_SYMBOLS) <= set(tokenizer_symbols(bare)) and run(bare)["losses"][:1] != both["losses"][:1]
    asks = run(replace(settings, llama_drill_slots=("objects", "caption"), llama_drill_shapes=True,
                       llama_drill_requests=True))                             # longer drills, as many steps
    assert asks["steps"] == both["steps"] and asks["losses"][:1] != both["losses"][:1]
    with pytest.raises(Stage0Error, match="llama_drill_slots must be some of"):
        run(replace(settings, llama_drill_slots=("objects", "pixels")))


def test_plain_epochs_come_before_the_drills_on_their_own_schedule(world, objects_tok):
    """llama_plain_epochs: first that many epochs of the recipe without drills (exactly as a run of its own,
    in the plain recipe's phrasings even when the epochs after the drills ask in MORE_PARAPHRASES), then the
    drills and llama_epochs more, starting from the weights the plain epochs left."""
    settings = Stage0Settings(llama_epochs=1, llama_reading=0.3, llama_batch=4, llama_block=96, eval_n=0,
                              llama_drill_slots=("bare-objects", "caption"), llama_drill_steps=2)
    run = lambda s: pretrain_llama(CFG.llama, objects_tok, world, s, log=lambda *a: None,
                                   slot_size=CFG.abstractor.num_output_tokens)[1]
    alone, drills = run(replace(settings, llama_drill_steps=0)), run(settings)
    both = run(replace(settings, llama_plain_epochs=1))
    n = alone["steps"]
    assert both["plain_epochs"]["steps"] == n and both["steps"] == n + drills["steps"]
    assert both["losses"][:n] == alone["losses"]                    # the plain epochs, as a run of their own
    extras = run(replace(settings, llama_plain_epochs=1, llama_more_paraphrases=True))
    assert extras["losses"][:n] == alone["losses"]                  # … in the plain recipe's words, whatever follows
    assert both["losses"][n] != drills["losses"][0]                 # the drills start from their weights
    assert len(both["losses"]) == both["steps"]
