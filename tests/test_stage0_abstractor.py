"""Stage 0's pretrained abstractor (nanog4v/toy/stage0_abstractor.py): its targets are the clip's caption
pieces padded with "▁", it learns to write them as the LLaMA's embeddings, and stage 1 starts from it."""
import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

from nanog4v.config import preset
from nanog4v.model import GPT4Video
from nanog4v.tokenizer import Tokenizer
from nanog4v.toy.stage0 import Stage0Settings, run_stage0
from nanog4v.toy.recipe import pretrained_abstractor
from nanog4v.toy.stage0_abstractor import (FIELDS, PAD_PIECE, AbstractorError, caption_clips, caption_targets,
                                           fields_right, fresh_features, motion_ids, nearest_pieces,
                                           pretrain_abstractor)
from nanog4v.toy.stage0_vision import encode, fresh_clips
from nanog4v.toy.world import MOTIONS, Scene, Thing, caption
from nanog4v.toy.worlddir import read_world, write_world
from nanog4v.weights import load_llama, load_vision

CFG = preset("test")
N = 64                                         # the test tokenizer (512 pieces) splits some words: room to spare
FRESH = 2                                      # newly rendered clips beside the world's
SETTINGS = Stage0Settings(vit_epochs=1, vit_batch=4, vit_fresh=0.0, llama_epochs=1, llama_batch=4, llama_block=64,
                          eval_n=0, llama_drill_slots=("bare-objects", "caption"), llama_drill_steps=2,
                          abstractor_steps=150, abstractor_queries=N, abstractor_fresh=FRESH,
                          vit_temporal=True, vit_dense_motion=True)      # the video ViT's path, end to end


@pytest.fixture(scope="module")
def stage0(tmp_path_factory):
    world = tmp_path_factory.mktemp("world")
    write_world(world, n=14, seed=3, frames=4, size=32)
    out = tmp_path_factory.mktemp("stage0")
    run_stage0(world, CFG, out, seed=0, log=lambda *a: None, settings=SETTINGS)
    return world, out


def test_the_targets_are_the_caption_pieces_then_spaces(stage0):
    world, out = stage0
    tok = Tokenizer(out / "tokenizer.model")
    scenes = [Scene.from_dict(r["scene"]) for r in read_world(world)[1]]
    for scene in scenes:
        pieces = tok.encode(caption(scene))
        ids = caption_targets(tok, scene, N)
        assert len(ids) == N and ids[:len(pieces)] == pieces
        assert set(ids[len(pieces):]) <= {tok.sp.piece_to_id(PAD_PIECE)}
    longest = max(scenes, key=lambda s: len(tok.encode(caption(s))))
    with pytest.raises(AbstractorError, match=f"more than the abstractor's {len(tok.encode(caption(longest))) - 1} tokens"):
        caption_targets(tok, longest, len(tok.encode(caption(longest))) - 1)
    assert all(len(tok.encode(m)) == 1 for m in MOTIONS if " " in m)   # the bare-object tokenizer: "▁moves▁left"
    assert {i for m in MOTIONS for i in tok.encode(m)} == motion_ids(tok)


def test_fields_right_reads_each_written_object_against_the_caption(stage0):
    """A caption written back exactly is right in every field; one object's colour and another's motion
    changed cost exactly those fields; an object left out is wrong in all of them."""
    _, out = stage0
    tok = Tokenizer(out / "tokenizer.model")
    want = Scene((Thing("circle", "red", "large", "left", "moves right"), Thing("square", "blue", "small", "top",
                                                                                 "stays still")), "black")
    changed = Scene((Thing("circle", "green", "large", "left", "moves right"), Thing("square", "blue", "small", "top",
                                                                                      "moves down")), "black")
    one = Scene(want.objects[:1], "black")
    rows = lambda *scenes: torch.tensor([caption_targets(tok, sc, N) for sc in scenes])
    assert fields_right(tok, rows(want), rows(want)) == dict.fromkeys(FIELDS, 1.0)
    assert fields_right(tok, rows(changed, want), rows(want, want)) == {"colour": 0.75, "shape": 1.0, "size": 1.0,
                                                                        "position": 1.0, "motion": 0.75}
    assert fields_right(tok, rows(one), rows(want)) == dict.fromkeys(FIELDS, 0.5)
    report = json.loads((out / "stage0.json").read_text())["abstractor"]["val"]["fields_right"]
    assert set(report) == set(FIELDS) and all(0 <= v <= 1 for v in report.values())


def test_nearest_pieces_reads_tokens_back_as_pieces():
    table = torch.randn(50, 16)
    ids = torch.randint(50, (3, 7))
    assert torch.equal(nearest_pieces(table[ids] + 0.01 * torch.randn(3, 7, 16), table), ids)


def test_stage0_writes_an_abstractor_that_learned_and_stage1_starts_from_it(stage0, tmp_path):
    world, out = stage0
    vision = json.loads((out / "stage0.json").read_text())["vision"]
    assert set(vision["val"]["patch_accuracy"]) == {"colour", "shape", "motion"}     # vit_dense_motion
    report = json.loads((out / "stage0.json").read_text())["abstractor"]
    losses = report["losses"]
    n_train = len(caption_clips(world, "train", out / "features", Tokenizer(out / "tokenizer.model"), N)[1])
    assert report["queries"] == N and report["train_clips"] == n_train + FRESH and report["val"]["clips"] > 0
    assert sum(losses[-5:]) / 5 < 0.05 * sum(losses[:5]) / 5
    cfg, lora = GPT4Video.read_config(out / "abstractor")
    assert cfg.abstractor.num_queries == N and not lora
    model = GPT4Video(cfg)
    model.load_trainable(out / "abstractor")
    # what it writes for the train clips, read back as the nearest pieces: the caption's pieces (not the
    # padding) mostly right after 150 steps on 14 clips, where a fresh abstractor gets hardly any
    tok, llama = Tokenizer(out / "tokenizer.model"), load_llama(out / "llama").float()
    x, y = caption_clips(world, "train", out / "features", tok, N)
    words = y != tok.sp.piece_to_id(PAD_PIECE)
    with torch.no_grad():
        right = (nearest_pieces(model.abstractor(x), llama.embed_tokens.weight) == y)[words].float().mean()
        fresh = (nearest_pieces(GPT4Video(cfg).abstractor(x), llama.embed_tokens.weight) == y)[words].float().mean()
    assert right > 0.4 and fresh < 0.2
    # train.py --stage 1 --init DIR/abstractor (as --stage all hands it on, for stage 0's epochs): the
    # abstractor's N wins over the preset's
    assert pretrained_abstractor(out) == ["--init", out / "abstractor", "--epochs", SETTINGS.abstractor_stage1_epochs]
    assert pretrained_abstractor(tmp_path) == []
    spec = importlib.util.spec_from_file_location("train_script", Path(__file__).resolve().parent.parent / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    argv = ["--stage", "1", "--preset", "test", "--vision", str(out / "vision"), "--llama", str(out / "llama"),
            "--tokenizer", str(out / "tokenizer.model"), "--data", str(world / "stage1_train.json"),
            "--features-dir", str(out / "features"), *map(str, pretrained_abstractor(out)), "--max-steps", "1",
            "--eval-n", "0", "--out", str(tmp_path / "stage1"), "--quiet"]
    assert train.main(argv) == 0
    assert GPT4Video.read_config(tmp_path / "stage1")[0].abstractor.num_queries == N


def test_the_fresh_clips_are_new_train_split_scenes_through_the_frozen_vit(stage0):
    """fresh_features: the frozen (here temporal) ViT's features of fresh_clips' scenes, drawn from the
    seed's own stream, in float16, with those scenes' captions as targets; never a held-out pair."""
    world, out = stage0
    tok, vit = Tokenizer(out / "tokenizer.model"), load_vision(out / "vision")
    assert vit.cfg.temporal
    features, targets = fresh_features(vit, tok, world, 5, CFG.num_frames, N, seed=4, chunk=2)
    meta = read_world(world)[0]
    rows = fresh_clips(5, meta, CFG.num_frames, 0.0, random.Random("4:abstractor-clips"))
    assert not {(t.colour, t.shape) for r in rows for t in Scene.from_dict(r["scene"]).objects} & {
        tuple(p) for p in meta["heldout_pairs"]}
    with torch.no_grad():
        want = encode(vit, torch.stack([r["frames"] for r in rows]))
    assert features.dtype == torch.float16 and torch.equal(features, want.half())
    assert targets.tolist() == [caption_targets(tok, Scene.from_dict(r["scene"]), N) for r in rows]
    with pytest.raises(AbstractorError, match="caption of at most 8 pieces"):   # never a caption that fits
        fresh_features(vit, tok, world, 2, CFG.num_frames, 8)


def test_a_bad_setting_is_named(stage0):
    world, out = stage0
    tok, llama = Tokenizer(out / "tokenizer.model"), load_llama(out / "llama")
    with pytest.raises(AbstractorError, match="more than the abstractor's 8 tokens"):
        pretrain_abstractor(CFG, llama, tok, world, out / "features", steps=1, queries=8)
    with pytest.raises(AbstractorError, match="missing"):
        pretrain_abstractor(CFG, llama, tok, world, out / "nowhere", steps=1, queries=N)
