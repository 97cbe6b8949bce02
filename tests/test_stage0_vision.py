"""Stage 0's ViT (nanog4v/toy/stage0_vision.py): its official layout (oracle: transformers.CLIPVisionModel),
the attribute and per-patch targets, the hazard concept, and the fresh clips (some in wider colours)."""
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import transformers
from einops import rearrange
from safetensors import safe_open

from nanog4v.config import preset
from nanog4v.toy.datasets import label_names, scene_labels
from nanog4v.toy.stage0_vision import (WIDER_COLOURS, attribute_accuracy, colour_mask, fresh_clips, hazard_separation,
                                      patch_targets, pretrain_vision)
from nanog4v.toy.worlddir import read_world
from nanog4v.toy.world import COLOURS, MOTIONS, SHAPES, Scene, Thing, render
from nanog4v.vision import VisionTransformer
from nanog4v.weights import load_vision, rename_mplug_owl, save_vision

CFG = preset("test")


def test_save_vision_round_trip_and_transformers_loads_it(tmp_path):
    torch.manual_seed(1)
    ours = VisionTransformer(CFG.vision).eval()
    for p in ours.parameters():                       # no LayerNorm left at its 1/0 init
        p.data.add_(torch.randn_like(p) * 0.05)
    path = save_vision(ours, tmp_path / "vision")
    again = load_vision(path)
    assert again.cfg == ours.cfg
    assert all(torch.equal(t, again.state_dict()[k]) for k, t in ours.state_dict().items())
    hf = transformers.CLIPVisionModel.from_pretrained(path).eval()
    pixels = torch.randn(3, 3, CFG.vision.image_size, CFG.vision.image_size)
    with torch.no_grad():
        out, ref = ours(pixels), hf(pixel_values=pixels)
        err = (out - ref.last_hidden_state).abs().max().item()
        pooled_err = (ours.ln_post(out[:, 0]) - ref.pooler_output).abs().max().item()
    print(f"save_vision -> transformers: max |diff| {err:.2e} (pooled {pooled_err:.2e})")
    assert err <= 1e-5 and pooled_err <= 1e-5
    bf16 = load_vision(save_vision(ours, tmp_path / "bf16", dtype=torch.bfloat16))
    assert bf16.patch_embed.weight.dtype == torch.float32                      # load_vision's default dtype
    assert torch.equal(bf16.patch_embed.weight, ours.patch_embed.weight.bfloat16().float())


def test_save_vision_keeps_a_video_vits_temporal_modules(tmp_path):
    """A video ViT (mPLUG-Owl's temporal modules) saves in the CLIP layout plus its temporal keys, under the
    names mPLUG-Owl's checkpoint gives them, and loads back the same network: equal outputs on clips."""
    torch.manual_seed(2)
    ours = VisionTransformer(replace(CFG.vision, temporal=True)).eval()
    for p in ours.parameters():                       # up_proj starts at zero: make the modules matter
        p.data.add_(torch.randn_like(p) * 0.05)
    path = save_vision(ours, tmp_path / "vision")
    keys = set(safe_open(str(path / "model.safetensors"), "pt").keys())
    temporal = {k for k in keys if ".temporal." in k}
    assert len(temporal) == 8 * CFG.vision.n_layers                        # ln, down, conv, up: weight + bias
    assert {rename_mplug_owl(k) for k in temporal} == {f"vision.{n}" for n in ours.state_dict() if ".temporal." in n}
    again = load_vision(path)
    assert again.cfg == ours.cfg and again.cfg.temporal
    pixels = torch.randn(2 * 4, 3, CFG.vision.image_size, CFG.vision.image_size)     # two clips of 4 frames
    with torch.no_grad():
        out, back, alone = ours(pixels, num_frames=4), again(pixels, num_frames=4), ours(pixels)
    assert torch.equal(out, back) and (out - alone).abs().max() > 1e-3      # the frames are mixed, and kept


def test_attribute_accuracy_counts_each_field():
    vocab = {"shapes": ["circle", "square"], "colours": ["red", "blue"], "sizes": ["small", "large"],
             "motions": ["grows", "spins"], "backgrounds": ["grey", "navy"],
             "hazard": {"shape": "hazard", "colour": "striped"}}
    names = [f"background:{b}" for b in ("grey", "navy")] + [f"count:{k}" for k in (1, 2, 3)] + [
        f"{p}:{v}" for p in ("left", "right") for v in ("circle", "square", "hazard", "red", "blue", "striped",
                                                       "small", "large", "grows", "spins")]
    obj = lambda p, s, c: {"position": p, "shape": s, "colour": c, "size": "small", "motion": "grows"}
    rows = [{"scene": {"background": "grey", "objects": [obj("left", "circle", "red")]}},
            {"scene": {"background": "navy", "objects": [obj("left", "square", "blue"), obj("right", "hazard", "striped")]}}]
    truth = [["background:grey", "count:1", "left:circle", "left:red", "left:small", "left:grows"],
             ["background:navy", "count:2", "left:square", "left:blue", "left:small", "left:grows",
              "right:hazard", "right:striped", "right:small", "right:grows"]]
    logits = torch.tensor([[float(n in t) for n in names] for t in truth])
    acc = attribute_accuracy(logits, rows, names, vocab)
    assert acc["mean"] == 1.0 and acc["all_fields_of_clip"] == 1.0
    logits[1, names.index("background:grey")] = 2.0                          # clip 2: wrong background
    logits[1, names.index("right:circle")] = 2.0                              # and its right object's shape
    acc = attribute_accuracy(logits, rows, names, vocab)
    assert acc["background"] == 0.5 and acc["shape"] == pytest.approx(2 / 3) and acc["colour"] == 1.0
    assert acc["all_fields_of_clip"] == 0.5


def test_hazard_separation_scores_frames():
    d = torch.eye(4)
    train = torch.stack([d[0] + 0.1 * d[1], d[2], d[3], d[0]])[:, None].repeat(1, 2, 1)    # (4 clips, 2 frames, 4)
    train_h = torch.tensor([True, False, False, True])
    test = torch.stack([d[0], d[1], d[2]])[:, None].repeat(1, 2, 1)
    test_h = torch.tensor([True, True, False])                                 # clip 2 is a missed hazard
    out = hazard_separation(train, train_h, test, test_h)
    assert out["recall"] == 0.5 and out["false_positive_rate"] == 0.0
    assert out["frame_accuracy"] == pytest.approx(4 / 6) and out["test_frames"] == 6


def test_patch_targets_are_the_rendered_pixels():
    """The dense ViT targets equal, patch by patch, the share of each colour (and so each shape and
    each motion) among the pixels the renderer paints, objects overlapping and moving included (supersample 1: one
    sample point per pixel on both sides)."""
    scene = Scene((Thing("star", "red", "large", "left", "spins"), Thing("circle", "blue", "large", "centre", "moves left"),
                   Thing("heart", "yellow", "small", "top", "grows")), "navy")
    T, size, grid = 4, 32, 4
    frames = render(scene, num_frames=T, size=size, supersample=1)                     # (T, 32, 32, 3)
    colours, shapes = list(COLOURS), list(SHAPES)
    colour, shape, motion = patch_targets(scene, [(i + 0.5) / T for i in range(T)], grid, colours, shapes, sub=size // grid)
    index = {tuple(rgb): k for k, rgb in enumerate(COLOURS.values())}
    ids = torch.tensor([[[index.get(tuple(px), len(colours)) for px in row] for row in f] for f in frames])
    want = rearrange(F.one_hot(ids, len(colours) + 1).float(), "t (gh a) (gw b) c -> t (gh gw) (a b) c", gh=grid, gw=grid).mean(2)
    assert torch.equal(colour, want)
    assert 0.02 < want[..., :-1].sum().item() / (T * grid * grid) < 0.5          # objects do cover patches
    shape_of = {colours.index(t.colour): shapes.index(t.shape) for t in scene.objects} | {len(colours): len(shapes)}
    motion_of = {colours.index(t.colour): MOTIONS.index(t.motion) for t in scene.objects} | {len(colours): len(MOTIONS)}
    for c, s in shape_of.items():
        assert torch.equal(shape[..., s], colour[..., c]) and torch.equal(motion[..., motion_of[c]], colour[..., c])
    assert torch.allclose(shape.sum(-1), torch.ones(T, grid * grid))
    assert torch.allclose(motion.sum(-1), torch.ones(T, grid * grid)) and motion.shape[-1] == len(MOTIONS) + 1


def test_fresh_vit_clips_are_train_split_scenes_rendered_at_the_sampled_frames(world):
    """Fresh ViT clips: never a held-out pair, labelled by their own scene, frames exactly the
    renderer's at the indices stage 1 samples; hazards at the requested share."""
    meta, _ = read_world(world)
    held = {tuple(p) for p in meta["heldout_pairs"]}
    rows = fresh_clips(400, meta, 2, 0.25, random.Random(0))
    hazards = 0
    for r in rows:
        scene = Scene.from_dict(r["scene"])
        assert not {(t.colour, t.shape) for t in scene.objects} & held and r["labels"] == scene_labels(scene)
        hazards += scene.hazard
    assert 0.15 < hazards / len(rows) < 0.35
    full = render(Scene.from_dict(rows[0]["scene"]), meta["frames"], meta["size"])   # 4 frames; 2 sampled
    assert rows[0]["frames"].shape == (2, meta["size"], meta["size"], 3) and torch.equal(
        rows[0]["frames"], torch.from_numpy(full[[1, 3]]))


def test_wider_colour_clips_paint_every_object_outside_the_palette_and_mask_only_colour_labels(world):
    """A wider-colour clip: the same scene (shapes, places, motions) painted in colours no world clip has,
    so it holds no colour–shape pair; only its colour labels are left out of the loss."""
    meta, _ = read_world(world)
    rows = fresh_clips(60, meta, 2, 0.0, random.Random(0), wider=0.5)
    assert 10 < sum(r["wider"] for r in rows) < 50
    r = next(r for r in rows if r["wider"])
    scene = Scene.from_dict(r["scene"])
    plain = render(scene, meta["frames"], meta["size"])[[1, 3]]
    painted = r["frames"].numpy()
    pixels = {tuple(p) for p in painted.reshape(-1, 3)}
    assert not {tuple(rgb) for rgb in COLOURS.values()} & pixels                  # no world colour anywhere
    assert {tuple(rgb) for rgb in WIDER_COLOURS.values()} & pixels
    assert ((plain != plain[0, 0, 0]).any(-1) == (painted != painted[0, 0, 0]).any(-1)).all()   # same silhouettes
    names = label_names()
    w = colour_mask(rows, names, {*COLOURS, "striped"})
    for row, weights in zip(rows, w):
        left_out = {n for n, x in zip(names, weights) if x == 0}
        assert left_out == ({n for n in names if n.split(":")[1] in {*COLOURS, "striped"}} if row["wider"] else set())


def test_fresh_clips_add_steps_to_the_vit_epochs(world):
    train = sum(r["split"] == "train" for r in read_world(world)[1])
    _, m = pretrain_vision(CFG.vision, world, 2, epochs=2, batch=4, fresh=1.0, log=lambda *a: None)
    assert m["steps"] == 2 * ((2 * train) // 4) and len(m["losses"]) == m["steps"]
    _, w = pretrain_vision(CFG.vision, world, 2, epochs=2, batch=4, fresh=1.0, wider=0.5, log=lambda *a: None)
    assert w["steps"] == m["steps"] and w["losses"] != m["losses"] and set(w["heldout"]["accuracy"]) >= {"shape", "colour"}
