"""Stage 0, the abstractor: a stand-in for the *pretrained* abstractor the official code starts from.

The official GPT4Video code does not train its abstractor from scratch: it starts from mPLUG-Owl's video
model, whose abstractor was pretrained (with its LLaMA) to turn frame features into tokens the LLaMA
reads as a description of the video. Our stage 0 stands in for downloaded weights, so it may make this
part too (`Stage0Settings.abstractor_steps`; off by default). Here, exact ground truth makes it short:
the stage-0 LLaMA already answers questions about a clip *written as its caption* in the video slot
(stage0.py), so the abstractor is taught to write exactly that caption, as the LLaMA's own input
embeddings, one query per caption piece:

    target_i = E[ caption(scene) piece i ]          (padded with "▁" pieces to N)     # (N, d_llm)
    logit_i,v = −‖F_video,i − E_v‖² / (τ · mean ‖E‖²)                                 # (N, vocab)
    loss = mean_i ‖F_video,i − target_i‖² / mean ‖E‖²  +  Σ_i w_i · CE(logit_i, piece i) / Σ_i w_i

with E the frozen LLaMA's embedding table and F_video the abstractor's N outputs (Eq. 1–4 and the
projection). The squared distance pulls each token onto its piece; the cross-entropy over the whole
vocabulary (nearest piece wins) is what makes it *choose*: with the distance alone the motion pieces
stayed at the mean of the eight motions (their pieces right 1 time in 5 on one-object clips). Motion
is one piece of each object among nine and the last thing learned (it needs the frames' order), so
its pieces weigh `motion_weight` times the others.

**Fresh clips** (`Stage0Settings.abstractor_fresh`, `fresh_features`). The world has ~1,500 train clips
and the abstractor learns them by heart: after 3,000 steps it wrote the objects' motion right on 91 % of
them and on 35 % of val clips (colour 89 / 75 %). As the ViT does (stage0_vision.fresh_clips), it can
also learn from newly rendered train-split scenes, never a held-out pair, through the frozen ViT:
16,000 of them closed that gap (train and val alike; weights/nano/README.md, "A video ViT").

With the tokenizer of the "bare-objects" drills (every motion one piece) the caption has a fixed
layout, eight pieces an object ("a large red circle on the left ▁moves▁right"), "and" between two,
four for the background ("on a black background"): 12, 21 or 30 pieces, so N = 30 holds three objects
and a query can learn which piece of which object it writes. Stage 1 then starts from this abstractor (`train.py --stage 1 --init
DIR/abstractor`; its N wins over the preset's) and trains it with Eq. 5 as the paper does.

Measured (stage-0 LLaMA with the bare-object start; 3,000 steps here and stage 1 over the 6,160 training
clips of the seed's 8,000-clip world; held-out QA 73.5 % against 71.7 % without this step, descriptions
with every object right 27.5 % against 13.5 %): weights/nano/README.md, "The abstractor pretrained to
write the caption, and stage 1 on more clips".
"""
from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..abstractor import build_abstractor
from ..config import G4VConfig
from ..data import feature_file
from ..features import cache_features, unique_videos
from ..llama import LLaMA
from ..model import GPT4Video
from ..readers import read_records, read_videochat
from ..tokenizer import Tokenizer
from ..trainer import lr_at, make_optimizer
from .stage0_vision import encode, fresh_clips
from .worlddir import read_world
from .world import MOTIONS, POSITION_PHRASES, Scene, caption, parse_caption

PAD_PIECE = "\u2581"          # "▁": the space before "</video>"; the LLaMA reads it after a caption unharmed
TAU = 0.1                     # temperature of the nearest-piece cross-entropy, in units of mean ‖E‖²
BATCH, WARMUP = 32, 100


class AbstractorError(ValueError):
    """A caption that does not fit the abstractor's N tokens, or clips without cached features."""


def caption_targets(tokenizer: Tokenizer, scene: Scene, n: int) -> list[int]:
    """The clip's caption as pieces, padded with "▁" to the abstractor's N outputs."""
    ids = tokenizer.encode(caption(scene))
    if len(ids) > n:
        raise AbstractorError(f"the caption of a {len(scene.objects)}-object clip is {len(ids)} pieces, more than the "
                              f"abstractor's {n} tokens (Stage0Settings.abstractor_queries)")
    return ids + [tokenizer.sp.piece_to_id(PAD_PIECE)] * (n - len(ids))


def motion_ids(tokenizer: Tokenizer) -> set[int]:
    """The pieces that say an object's motion (with the bare-object tokenizer one piece each), less any
    piece a place phrase also has ("left" of "moves left" without it)."""
    places = {i for p in POSITION_PHRASES.values() for i in tokenizer.encode(p)}
    return {i for m in MOTIONS for i in tokenizer.encode(m)} - places


def nearest_pieces(tokens: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The piece whose embedding is nearest each token: (B, N, d), (V, d) -> (B, N)."""
    d2 = tokens.pow(2).sum(-1, keepdim=True) - 2 * tokens @ table.T + table.pow(2).sum(-1)   # (B, N, V)
    return d2.argmin(-1)


def caption_clips(world_dir, split: str, features_dir, tokenizer: Tokenizer, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every clip of the split's stage-1 records: its cached ViT features (C, T, 1+P, D) and targets (C, N)."""
    world_dir = Path(world_dir)
    scenes = {r["id"]: Scene.from_dict(r["scene"]) for r in read_world(world_dir)[1]}
    videos = sorted({r["videos"][0] for r in read_videochat(world_dir / f"stage1_{split}.json", check_videos=False)})
    missing = [v for v in videos if not feature_file(features_dir, v).is_file()]
    if missing:
        raise AbstractorError(f"{feature_file(features_dir, missing[0])}: missing ({len(missing)} of {len(videos)} "
                              "clips have no cached features; python -m nanog4v.features)")
    if not videos:
        return torch.zeros(0), torch.zeros(0, n, dtype=torch.long)
    features = torch.stack([load_file(str(feature_file(features_dir, v)))["features"].float() for v in videos])
    targets = torch.tensor([caption_targets(tokenizer, scenes[Path(v).stem], n) for v in videos])
    return features, targets                                                  # (C, T, 1+P, D), (C, N)


def pretrain_abstractor(cfg: G4VConfig, llama: LLaMA, tokenizer: Tokenizer, world_dir, features_dir, *,
                        steps: int, queries: int, motion_weight: float = 10.0, lr: float = 1e-3,
                        fresh: tuple[torch.Tensor, torch.Tensor] | None = None, seed: int = 0, log=print):
    """Train a fresh abstractor (cfg's, with `queries` queries) to write each train clip's caption as
    `llama`'s embeddings (the module docstring), on the world's train clips and the `fresh` ones
    (`fresh_features`: features (F, T, 1+P, D) and targets (F, N)). Returns (abstractor, metrics):
    the val clips' pieces right, captions right in every piece, and each object's fields right when the
    written caption is read back as words (`fields_right`)."""
    acfg = replace(cfg.abstractor, num_queries=queries)
    if acfg.variant != "paper":
        raise AbstractorError("the pretrained abstractor is the paper's form (Eq. 2–4); "
                              f"this preset's is {acfg.variant!r}")
    torch.manual_seed(seed)
    abstractor = build_abstractor(acfg, cfg.vision.dim, llama.cfg.dim, cfg.num_frames)
    table = llama.embed_tokens.weight.detach().float()                     # (V, d_llm), frozen
    scale = table.pow(2).sum(-1).mean()
    x, y = caption_clips(world_dir, "train", features_dir, tokenizer, queries)
    if not len(x):
        raise AbstractorError(f"{Path(world_dir) / 'stage1_train.json'}: no clips to pretrain the abstractor on")
    if fresh is not None and len(fresh[0]):
        x, y = torch.cat([x.to(fresh[0].dtype), fresh[0]]), torch.cat([y, fresh[1]])
    xv, yv = caption_clips(world_dir, "val", features_dir, tokenizer, queries)
    weight = torch.ones(y.shape)
    weight[torch.isin(y, torch.tensor(sorted(motion_ids(tokenizer))))] = motion_weight   # (C, N)
    opt = make_optimizer(abstractor.named_parameters(), lr, 0.0)
    rng, losses, started = random.Random(seed), [], time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, min(WARMUP, steps // 10), steps)
        idx = torch.tensor([rng.randrange(len(x)) for _ in range(BATCH)])
        target, w = y[idx], weight[idx]                                    # (B, N), (B, N)
        tokens = abstractor(x[idx].float())                                # (B, N, d_llm)
        distance = (tokens - table[target]).pow(2).sum(-1).mean() / scale
        logits = (2 * tokens @ table.T - table.pow(2).sum(-1)) / (TAU * scale)   # −‖t − E_v‖² + ‖t‖², (B, N, V)
        ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(w)
        loss = distance + (ce * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(abstractor.parameters(), 1.0)
        opt.step()
        losses.append(round(loss.item(), 5))
        if step % 500 == 0 or step == steps - 1:
            log(f"stage 0 abstractor: step {step}/{steps}, loss {loss.item():.4f} ({time.time() - started:.0f}s)")
    abstractor.eval()
    with torch.no_grad():
        written = torch.cat([nearest_pieces(abstractor(xv[i:i + 128]), table)
                             for i in range(0, len(xv), 128)]) if len(xv) else torch.zeros(0, queries, dtype=torch.long)
    right = written == yv                                                  # (C, N)
    metrics = {"steps": steps, "queries": queries, "train_clips": len(x), "losses": losses[:: max(1, steps // 400)],
               "final_loss": sum(losses[-50:]) / len(losses[-50:]),
               "val": {"clips": len(xv), "pieces_right": right.float().mean().item() if len(xv) else None,
                       "captions_right": right.all(1).float().mean().item() if len(xv) else None,
                       "fields_right": fields_right(tokenizer, written, yv)}}
    return abstractor, metrics


FIELDS = ("colour", "shape", "size", "position", "motion")


def fields_right(tokenizer: Tokenizer, written: torch.Tensor, targets: torch.Tensor) -> dict[str, float | None]:
    """Each written caption (nearest pieces, (C, N)) read back as words (toy.world.parse_caption) against
    its target caption's: per field, the share of the targets' objects whose k-th written object has it
    right (an object it did not write is wrong). What the LLaMA will read about each object."""
    hits, total = dict.fromkeys(FIELDS, 0), 0
    for w, t in zip(written.tolist(), targets.tolist()):
        got, want = (parse_caption(tokenizer.decode(ids)).objects for ids in (w, t))
        total += len(want)
        for k, thing in enumerate(want):
            for f in FIELDS:
                hits[f] += k < len(got) and getattr(got[k], f) == getattr(thing, f)
    return {f: hits[f] / total if total else None for f in FIELDS}


def fresh_features(vit, tokenizer: Tokenizer, world_dir, n: int, num_frames: int, queries: int, *, seed: int = 0,
                   chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """n newly rendered train-split clips (stage0_vision.fresh_clips: never a held-out pair, no hazard
    sign, the world's colours) through the frozen ViT: features (n, T, 1+P, D) in float16 (half the
    memory; the abstractor reads them in float32) and caption targets (n, N). A scene whose caption is
    longer than N pieces is passed over (the world's own clips are checked by `caption_clips`)."""
    meta, _ = read_world(world_dir)
    rng, features, targets, have, drawn = random.Random(f"{seed}:abstractor-clips"), [], [], 0, 0

    def target(row: dict) -> list[int] | None:
        try:
            return caption_targets(tokenizer, Scene.from_dict(row["scene"]), queries)
        except AbstractorError:                                             # longer than N pieces: passed over
            return None

    while have < n:
        if drawn >= 4 * n + 256:
            raise AbstractorError(f"only {have} of {drawn} fresh scenes have a caption of at most {queries} pieces "
                                  "(Stage0Settings.abstractor_queries)")
        rows = fresh_clips(min(chunk, n - have), meta, num_frames, 0.0, rng)
        drawn, kept = drawn + len(rows), [(r, ids) for r in rows if (ids := target(r)) is not None]
        if kept:
            with torch.no_grad():
                features.append(encode(vit, torch.stack([r["frames"] for r, _ in kept])).half())   # (c, T, 1+P, D)
            targets.append(torch.tensor([ids for _, ids in kept]))
            have += len(kept)
    return torch.cat(features), torch.cat(targets)


def save_abstractor(abstractor, cfg: G4VConfig, out_dir) -> Path:
    """`out_dir` as a GPT4Video checkpoint of this abstractor alone (what `train.py --stage 1 --init` reads;
    its N wins over the preset's there)."""
    cfg = replace(cfg, abstractor=replace(cfg.abstractor, num_queries=abstractor.num_output_tokens))
    with torch.device("meta"):
        model = GPT4Video(cfg)                          # the frozen parts are not written: no memory needed
    model.abstractor = abstractor
    return model.save_pretrained(out_dir)


def make_abstractor(cfg: G4VConfig, vit, llama: LLaMA, tokenizer: Tokenizer, world_dir, out_dir, settings, *,
                    seed: int = 0, log=print) -> dict:
    """Stage 0's last step (`run_stage0`, when `settings.abstractor_steps`): cache the frozen ViT's features
    of the world's stage-1 clips in out_dir/features (as `train.py --stage all` would next), pretrain the
    abstractor on them and write it to out_dir/abstractor. Returns its metrics."""
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    records = read_records([world_dir / "stage1_train.json", world_dir / "stage1_val.json"], None, True,
                           log=lambda *a, **k: None)
    cache_features(vit, unique_videos(records), out_dir / "features", cfg.num_frames, progress=False)
    fresh, started = None, time.time()
    if settings.abstractor_fresh:
        fresh = fresh_features(vit, tokenizer, world_dir, settings.abstractor_fresh, cfg.num_frames,
                               settings.abstractor_queries, seed=seed)
        log(f"stage 0 abstractor: {settings.abstractor_fresh} fresh clips rendered and encoded "
            f"in {time.time() - started:.0f}s")
    abstractor, metrics = pretrain_abstractor(cfg, llama, tokenizer, world_dir, out_dir / "features",
                                              steps=settings.abstractor_steps, queries=settings.abstractor_queries,
                                              motion_weight=settings.abstractor_motion_weight, fresh=fresh,
                                              seed=seed, log=log)
    save_abstractor(abstractor, replace(cfg, vision=vit.cfg, llama=llama.cfg), out_dir / "abstractor")
    log(f"stage 0 abstractor: val pieces right {metrics['val']['pieces_right']}, "
        f"captions right {metrics['val']['captions_right']}, fields right {metrics['val']['fields_right']}")
    return metrics
