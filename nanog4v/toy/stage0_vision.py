"""Stage 0, the ViT: a small CLIP-layout vision tower pretrained on the toy world (see stage0.py).

**ViT: attribute prediction** (`pretrain_vision`). CLIP learned its features contrastively from 400M
image–caption pairs; with ~2k clips and exact ground truth, supervision is the short road to the same
place. Each clip's T frames, sampled and preprocessed exactly as stage 1 samples them
(video.sample_frames + vision.preprocess), go through the ViT one by one; each frame's pooled
feature ln_post([CLS]) (CLIP's image embedding) is concatenated in time order, (T·D), and a linear
head predicts the clip's multi-hot labels (scenes.jsonl: background, object count, each object's
shape, colour, size and motion, both alone and bound to its position, "left:red"), trained with binary
cross-entropy. Reading the frames in order lets the head see motion as change between frames, which
pushes every frame's feature to say where and how big each object is; the position-bound labels make
it bind colour and shape to a place. The head is thrown away: stage 1's abstractor reads all 1+P
tokens of every frame. The hazard sign is one of the labels ("shape:hazard"), so its frames are
recognisable; `stage0.json` reports how well a per-frame "hazard concept" direction (the mean
embedding of hazard frames, as a safety checker would hold it) separates never-seen clips.

**Dense per-patch targets** (`dense_weight`, `patch_targets`). The clip-level labels say *that* a
frame holds a red star but not *where*, and at 64 px the pooled head alone learned shape poorly. A
second linear head (also thrown away) reads every patch token and predicts which colour and which
shape covers that patch (soft targets: the share of the patch each covers, "none" for background),
computed from the renderer's own geometry at the times stage 1 samples. This is the supervision that
the abstractor's spatial queries need: objects are findable patch by patch. What it gained on the
nano world is recorded in weights/nano/README.md ("Experiments behind the recipe"); the patch
accuracy is in stage0.json.

**Motion per patch, and a video ViT** (`dense_motion`; `VisionConfig.temporal`). CLIP sees one frame
at a time, so no patch token can say how its object moves: motion exists only as the difference
between frames, which the abstractor must work out from T sets of tokens (on the nano world the
abstractor writing a clip's caption got an object's motion right on 39 % of val clips). mPLUG-Owl's video
ViT, the one the official code starts from, has a temporal module before every block that lets each
patch see the same patch in the frames before and after (vision.py). With it the dense head can
also name, patch by patch, the motion of the object covering it ("none" elsewhere), and the
motion is in the tokens the abstractor reads. Measured in weights/nano/README.md ("A video ViT").

**Fresh clips in wider colours** (`fresh`, `wider`, `fresh_clips`). The world's clips hold only its
train colour–shape pairs, so a ViT trained on them alone learns shape and colour *together*: a linear
probe of its features names the shape of a clip with a held-out pair (a white circle) far less often
than of a seen one, and the answers follow the seen pairs. Every epoch therefore also renders as many
new train-split scenes again (more clips, never a held-out pair), and paints half of them in colours
the world does not have at all (`WIDER_COLOURS`: teal, pink, gold, …; the words are the reading
practice's). In those the shape, size, place and motion are as labelled and colour says nothing about
shape; their colour labels are left out of the loss (`colour_mask`), since no head output names them.
This is the ViT's version of the LLaMA's wider-world reading practice, and, like it, it shows no
held-out pair: a teal circle is no pair of the world. stage0.json scores the head on the held-out
split too ("heldout"), where this shows.
"""
from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import VisionConfig
from ..trainer import lr_at, make_optimizer
from ..video import sample_frame_indices, sample_frames
from ..vision import VisionTransformer, preprocess
from .worlddir import WorldError, read_world
from .datasets import scene_labels
from .world import HAZARD, MASKS, MOTIONS, Scene, object_coordinates, render, sample_scene


def load_clips(world_dir, rows: list[dict], label_names: list[str], num_frames: int):
    """Frames (N, T, H, W, 3) uint8, sampled as stage 1 samples them, and multi-hot labels (N, K)."""
    index = {name: k for k, name in enumerate(label_names)}
    frames = torch.stack([torch.from_numpy(sample_frames(Path(world_dir) / "videos" / f"{r['id']}.mp4", num_frames))
                          for r in rows])                                       # (N, T, H, W, 3)
    labels = torch.zeros(len(rows), len(label_names))                           # (N, K)
    for i, r in enumerate(rows):
        labels[i, [index[name] for name in r["labels"]]] = 1.0
    return frames, labels


def patch_targets(scene: Scene, times: list[float], grid: int, colours: list[str], shapes: list[str],
                  sub: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft targets of the dense loss: for each frame (at clip time t ∈ [0, 1]) and each of its
    grid × grid patches, the fraction of the patch that each colour, each shape and each motion
    (world.MOTIONS: what the object covering it does) covers, the last class being "none"
    (background). Read from the renderer's own geometry (world.object_coordinates and MASKS, objects
    painted in order, later ones on top) on sub × sub points per patch. Returns colour (T, P,
    len(colours)+1), shape (T, P, len(shapes)+1) and motion (T, P, len(MOTIONS)+1), rows summing to 1."""
    side = grid * sub
    centres = np.arange(side, dtype=np.float32) + 0.5                           # sample points, in grid·sub units
    yy, xx = np.meshgrid(centres, centres, indexing="ij")                       # (side, side)
    colour_id = [colours.index(t.colour) for t in scene.objects] + [len(colours)]
    shape_id = [shapes.index(t.shape) for t in scene.objects] + [len(shapes)]
    motion_id = [MOTIONS.index(t.motion) for t in scene.objects] + [len(MOTIONS)]
    colour, shape, motion = (torch.zeros(len(times), grid * grid, k + 1) for k in (len(colours), len(shapes), len(MOTIONS)))
    for i, t in enumerate(times):
        owner = np.full((side, side), -1)                                       # −1 = background
        for j, thing in enumerate(scene.objects):
            owner[MASKS[thing.shape](*object_coordinates(thing, t, side, xx, yy))] = j
        owner = torch.from_numpy(rearrange(owner, "(gh a) (gw b) -> (gh gw) (a b)", a=sub, b=sub))  # (P, sub²)
        share = F.one_hot(owner % (len(scene.objects) + 1), len(scene.objects) + 1).float().mean(1)  # (P, K+1)
        colour[i].index_add_(1, torch.tensor(colour_id), share)                 # background (−1) is the last K+1
        shape[i].index_add_(1, torch.tensor(shape_id), share)
        motion[i].index_add_(1, torch.tensor(motion_id), share)
    return colour, shape, motion


# colours no clip of the world has (the names are the reading practice's, stage0_reading.EXTRA_COLOURS)
WIDER_COLOURS = {"pink": (255, 120, 190), "teal": (0, 140, 140), "gold": (200, 160, 50), "silver": (175, 175, 190),
                 "cyan": (60, 230, 230), "lime": (170, 240, 60), "maroon": (120, 20, 40), "beige": (220, 200, 160)}


def fresh_clips(n: int, meta: dict, num_frames: int, hazard_share: float, rng: random.Random,
                wider: float = 0.0) -> list[dict]:
    """n new train-split scenes, rendered as the world renders its clips (never a held-out pair; the
    hazard sign in `hazard_share` of them), as scenes.jsonl rows plus "frames" (T, H, W, 3) uint8 at
    the frames stage 1 samples. Rendered straight, not through the mp4 codec. In a `wider` share of
    them every object is painted in a colour outside the world's (`WIDER_COLOURS`, "wider": True):
    such a clip holds no colour–shape pair at all, held-out or not. Its "scene" and "labels" are those of
    the scene as drawn, in the world's colours: the colour labels are then untrue, and the ViT's loss
    leaves them out (`colour_mask`)."""
    held, n_src = {tuple(p) for p in meta["heldout_pairs"]}, meta["frames"]
    rows = []
    for _ in range(n):
        scene = sample_scene(rng, held, hazard=rng.random() < hazard_share)
        painted, recolour = scene, rng.random() < wider
        if recolour:                                                            # the hazard sign keeps its stripes
            paint = lambda t: t if t.shape == HAZARD else replace(t, colour=rng.choice(list(WIDER_COLOURS)))
            painted = replace(scene, objects=tuple(paint(t) for t in scene.objects))
        frames = render(painted, n_src, meta["size"], palette=WIDER_COLOURS, only=sample_frame_indices(n_src, num_frames))
        rows.append({"scene": scene.to_dict(), "labels": scene_labels(scene), "frames": torch.from_numpy(frames),
                     "wider": recolour})
    return rows


def colour_mask(rows: list[dict], names: list[str], colours) -> torch.Tensor:
    """(N, K) weights of the clip labels: 0 for every colour label ("colour:red", "left:red") of a
    wider-colour clip, whose colours are none of the world's (the other labels are as true as ever), else 1."""
    is_colour = torch.tensor([name.split(":")[1] in colours for name in names])  # (K,)
    wider = torch.tensor([bool(r.get("wider")) for r in rows])                    # (N,)
    return 1.0 - (wider[:, None] & is_colour[None, :]).float()


def dense_targets(rows: list[dict], meta: dict, num_frames: int, grid: int) -> list[torch.Tensor]:
    """patch_targets of every clip at the times stage 1 samples its frames: (N, T, P, C+1), (N, T, P, S+1),
    (N, T, P, M+1)."""
    n_src = meta["frames"]
    times = [(k + 0.5) / n_src for k in sample_frame_indices(n_src, num_frames)]  # the renderer's frame times
    vocab = meta["vocab"]
    colours, shapes = [*vocab["colours"], vocab["hazard"]["colour"]], [*vocab["shapes"], vocab["hazard"]["shape"]]
    per_clip = [patch_targets(Scene.from_dict(r["scene"]), times, grid, colours, shapes) for r in rows]
    return [torch.stack(field) for field in zip(*per_clip)]


def encode(vit: VisionTransformer, frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (N, T, H, W, 3) → every token after ln_post, (N, T, 1+P, D): [CLS] is CLIP's
    image embedding, the P patch tokens are what the dense head reads."""
    n, t = frames.shape[:2]
    pixels = preprocess(rearrange(frames, "n t h w c -> (n t) h w c"), vit.cfg.image_size)  # (N·T, 3, S, S)
    tokens = vit(pixels, num_frames=t)                                          # (N·T, 1+P, D); a temporal ViT mixes the T
    tokens = tokens if vit.cfg.post_layernorm_all_tokens else vit.ln_post(tokens)
    return rearrange(tokens, "(n t) l d -> n t l d", n=n)                       # (N, T, 1+P, D)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of −Σ_c target_c · log softmax(logits)_c (targets are distributions); `weight`
    (N,) scales each clip's rows (0 leaves a clip out of the mean's numerator)."""
    loss = -(target * logits.log_softmax(-1)).sum(-1)                           # (N, ...)
    if weight is not None:
        loss = loss * weight.view(-1, *[1] * (loss.dim() - 1))
    return loss.mean()


def patch_accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Argmax accuracy on the patches that one object covers at least half of (background excluded)."""
    share, truth = target[..., :-1].max(-1)                                     # (...,) each
    keep = share >= 0.5
    return (logits.argmax(-1)[keep] == truth[keep]).float().mean().item()


def attribute_accuracy(logits: torch.Tensor, rows: list[dict], label_names: list[str], vocab: dict) -> dict:
    """Per field, how often the highest-scoring value is the true one: background and count per clip;
    shape, colour, size and motion per object, read from the labels bound to its position."""
    index = {name: k for k, name in enumerate(label_names)}
    values = {"shape": [*vocab["shapes"], vocab["hazard"]["shape"]], "size": vocab["sizes"],
              "colour": [*vocab["colours"], vocab["hazard"]["colour"]], "motion": vocab["motions"]}
    right: dict[str, list[bool]] = {f: [] for f in ("background", "count", *values)}
    exact = []
    for row, z in zip(rows, logits):
        best = lambda names: max(names, key=lambda name: z[index[name]].item())
        scene, ok = row["scene"], []
        ok.append(best([f"background:{b}" for b in vocab["backgrounds"]]) == f"background:{scene['background']}")
        right["background"].append(ok[-1])
        ok.append(best([f"count:{k}" for k in (1, 2, 3)]) == f"count:{len(scene['objects'])}")
        right["count"].append(ok[-1])
        for obj in scene["objects"]:
            for field, vs in values.items():
                ok.append(best([f"{obj['position']}:{v}" for v in vs]) == f"{obj['position']}:{obj[field]}")
                right[field].append(ok[-1])
        exact.append(all(ok))
    out = {f: sum(r) / len(r) for f, r in right.items() if r}
    return {**out, "mean": sum(out.values()) / len(out), "all_fields_of_clip": sum(exact) / len(exact)}


def hazard_separation(train_emb, train_hazard, test_emb, test_hazard) -> dict:
    """How well one "hazard concept" direction separates frames: the mean train hazard embedding,
    cosine similarity, threshold halfway between the train hazard and non-hazard means; scored per
    frame on the test clips. Embeddings (N, T, D), hazard flags (N,) bool."""
    flat = lambda e: F.normalize(rearrange(e, "n t d -> (n t) d"), dim=-1)
    per_frame = lambda h, e: h.repeat_interleave(e.shape[1])
    tr, tr_h = flat(train_emb), per_frame(train_hazard, train_emb)
    concept = F.normalize(tr[tr_h].mean(0), dim=0)                              # (D,)
    cos = tr @ concept
    threshold = (cos[tr_h].mean() + cos[~tr_h].mean()).item() / 2
    te, te_h = flat(test_emb) @ concept, per_frame(test_hazard, test_emb)
    flagged = te > threshold
    return {"frame_accuracy": (flagged == te_h).float().mean().item(),
            "recall": flagged[te_h].float().mean().item() if te_h.any() else None,
            "false_positive_rate": flagged[~te_h].float().mean().item() if (~te_h).any() else None,
            "threshold": threshold, "test_frames": len(te)}


def pretrain_vision(cfg: VisionConfig, world_dir, num_frames: int, *, epochs: int = 6, batch: int = 32,
                    lr: float = 1e-3, weight_decay: float = 0.05, warmup_frac: float = 0.05, seed: int = 0,
                    dense_weight: float = 1.0, dense_motion: bool = False, fresh: float = 0.0, wider: float = 0.0,
                    log=print) -> tuple[VisionTransformer, dict]:
    """Train a ViT on the world's train clips (attribute prediction, see the module docstring), and
    every epoch on `fresh` × as many newly rendered train-split scenes (`fresh_clips`, a `wider` share
    of them in colours outside the world's); returns it in eval mode and {"losses", "val", "heldout",
    "hazard", ...}."""
    meta, scenes = read_world(world_dir)
    names, vocab = meta["label_names"], meta["vocab"]
    split = {s: [r for r in scenes if r["split"] == s] for s in ("train", "val", "heldout")}
    if not split["train"]:
        raise WorldError(f"{Path(world_dir) / 'scenes.jsonl'}: no train clips")
    started = time.time()
    data = {s: load_clips(world_dir, rows, names, num_frames) for s, rows in split.items() if rows}
    log(f"stage 0 ViT: {len(split['train'])} train clips × {num_frames} frames "
        f"(decoded in {time.time() - started:.1f}s)")
    grid = cfg.image_size // cfg.patch_size
    targets = {s: dense_targets(split[s], meta, num_frames, grid) for s in ("train", "val") if split[s]}
    torch.manual_seed(seed)
    vit = VisionTransformer(cfg)
    head = nn.Linear(num_frames * cfg.dim, len(names))                          # thrown away afterwards,
    fields = 3 if dense_motion else 2                                           # colour, shape (, motion)
    widths = [t.shape[-1] for t in targets["train"][:fields]]
    dense_head = nn.Linear(cfg.dim, sum(widths))                                # like this one
    params = [(f"{prefix}.{n}", p) for prefix, m in (("vit", vit), ("head", head), ("dense_head", dense_head))
              for n, p in m.named_parameters()]
    opt = make_optimizer(params, lr, weight_decay)
    index = {name: k for k, name in enumerate(names)}
    colours = {*vocab["colours"], vocab["hazard"]["colour"]}
    n_fresh, rng = round(fresh * len(split["train"])), random.Random(f"{seed}:fresh-clips")
    hazard_share = sum(r["hazard"] for r in split["train"]) / len(split["train"])
    per_epoch = max(1, (len(split["train"]) + n_fresh) // batch)
    total = per_epoch * epochs
    warmup, g, losses, step = round(warmup_frac * total), torch.Generator().manual_seed(seed), [], 0
    vit.train()
    for epoch in range(epochs):
        frames, labels, dense = *data["train"], targets["train"]
        weights = torch.ones_like(labels)                                       # (N, K) label weights
        if n_fresh:                                                             # this epoch's new scenes
            new = fresh_clips(n_fresh, meta, num_frames, hazard_share, rng, wider)
            new_labels = torch.zeros(n_fresh, len(names))                       # (F, K) multi-hot
            for i, r in enumerate(new):
                new_labels[i, [index[name] for name in r["labels"]]] = 1.0
            frames = torch.cat([frames, torch.stack([r["frames"] for r in new])])
            labels = torch.cat([labels, new_labels])
            weights = torch.cat([weights, colour_mask(new, names, colours)])
            dense = [torch.cat(pair) for pair in zip(dense, dense_targets(new, meta, num_frames, grid))]
        plain = weights.min(1).values                                           # (N,) 0: a wider-colour clip
        order = torch.randperm(len(frames), generator=g)
        for b in range(per_epoch):
            idx = order[b * batch:(b + 1) * batch]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, lr, warmup, total)
            tokens = encode(vit, frames[idx])                                   # (B, T, 1+P, D)
            feats = rearrange(tokens[:, :, 0], "b t d -> b (t d)")              # (B, T·D)
            loss = F.binary_cross_entropy_with_logits(head(feats), labels[idx], weight=weights[idx])  # head: (B, K)
            if dense_weight:
                colour, *rest = dense_head(tokens[:, :, 1:]).split(widths, -1)  # (B, T, P, ·) each
                loss = loss + dense_weight * (soft_cross_entropy(colour, dense[0][idx], plain[idx])
                                              + sum(soft_cross_entropy(z, d[idx]) for z, d in zip(rest, dense[1:])))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
            opt.step()
            losses.append(round(loss.item(), 5))
            step += 1
        log(f"stage 0 ViT: epoch {epoch + 1}/{epochs}, loss {sum(losses[-per_epoch:]) / per_epoch:.4f}")
    vit.eval()
    metrics = {"steps": total, "losses": losses, "final_loss": sum(losses[-per_epoch:]) / per_epoch}
    with torch.no_grad():
        tokens = {s: torch.cat([encode(vit, f[i:i + 64]) for i in range(0, len(f), 64)]) for s, (f, _) in data.items()}
        emb = {s: t[:, :, 0] for s, t in tokens.items()}                       # (N, T, D)
        if "val" in data:
            z = head(rearrange(emb["val"], "n t d -> n (t d)"))
            patch_logits = dense_head(tokens["val"][:, :, 1:]).split(widths, -1)
            metrics["val"] = {"loss": F.binary_cross_entropy_with_logits(z, data["val"][1]).item(),
                              "accuracy": attribute_accuracy(z, split["val"], names, vocab), "clips": len(z),
                              "patch_accuracy": {name: patch_accuracy(z_, t_) for name, z_, t_
                                                 in zip(("colour", "shape", "motion"), patch_logits, targets["val"])}}
        if "heldout" in data:            # scored only: clips with a colour–shape pair no stage trains on
            z = head(rearrange(emb["heldout"], "n t d -> n (t d)"))
            metrics["heldout"] = {"accuracy": attribute_accuracy(z, split["heldout"], names, vocab), "clips": len(z)}
        hazard = {s: torch.tensor([r["hazard"] for r in split[s]]) for s in data}
        if "heldout" in data and hazard["train"].any() and hazard["heldout"].any():
            metrics["hazard_heldout"] = hazard_separation(emb["train"], hazard["train"], emb["heldout"],
                                                          hazard["heldout"])
    return vit, metrics
