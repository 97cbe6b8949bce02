"""Binding probe: can the nano LLaMA look up the object a question names, and what start teaches it?

Scenes of 2–3 objects (6 shapes, each with a colour, place and motion), every fact asked, the loss on
the answers only, fresh scenes every step — the associative-recall layout, in a vocabulary of 36 words.
A scene is written in one of two *forms*:

    words  "red left up circle ; blue top grows heart ;"      (attributes before the noun; --order)
    one    one position per object, the sum of its words' embeddings  e(red)+e(left)+e(up)+e(circle)

and asked in one of three ways, the answer predicted at the position marked ^:

    noun   "<q> colour circle red"          ^ at "circle"
    sep    "<q> colour circle ? <a> red"    ^ at "<a>", a separator after the noun
    line   "colour : circle red , heart blue ,"   ^ at each noun

Phases run in order, e.g. (the measurements are in weights/nano/README.md, "Binding learned in the text"):

    python -m examples.binding_probe words:sep:1000                       # from scratch: elimination only
    python -m examples.binding_probe one:noun:300,words:noun:300,words:sep:600     # look-up, then carried over

Printed every 150 steps: the share of answers right on fresh 2- / 3-object scenes for each form and way
of asking (answering the last object of each kind by elimination alone gives ≈ 78 / 65 %).
"""
import argparse
import math
import random
import time

import torch
import torch.nn.functional as F

from nanog4v.config import LlamaConfig
from nanog4v.llama import LLaMA

SHAPES = ["circle", "square", "triangle", "star", "cross", "heart"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white"]
PLACES = ["left", "top", "centre", "bottom", "right"]
MOTIONS = ["go_left", "go_right", "go_up", "go_down", "grows", "shrinks", "spins", "still"]
KINDS = ["colour", "place", "motion"]          # what is asked: a field of each object
WORDS = ["<pad>", "<q>", "<a>", ";", "?", ":", ","] + KINDS + SHAPES + COLOURS + PLACES + MOTIONS
ID = {w: i for i, w in enumerate(WORDS)}
IGNORE = -100


def scene(rng: random.Random, n: int) -> list[dict]:
    return [dict(shape=s, colour=rng.choice(COLOURS), place=p, motion=rng.choice(MOTIONS))
            for s, p in zip(rng.sample(SHAPES, n), rng.sample(PLACES, n))]


def row(objects: list[dict], form: str, ask: str, order: str, rng: random.Random) -> tuple[list[tuple], list[int]]:
    """(positions, labels): each position a tuple of word ids whose embeddings are summed."""
    pos = []
    for o in objects:
        attrs = [ID[o["colour"]], ID[o["place"]], ID[o["motion"]]]
        if form == "one":
            pos += [tuple(attrs + [ID[o["shape"]]]), (ID[";"],)]
        else:
            words = attrs + [ID[o["shape"]]] if order == "attr-first" else [ID[o["shape"]]] + attrs
            pos += [(w,) for w in words] + [(ID[";"],)]
    labels = [IGNORE] * len(pos)
    if ask == "line":
        for kind in rng.sample(KINDS, len(KINDS)):
            pos += [(ID[kind],), (ID[":"],)]; labels += [IGNORE] * 2
            for o in rng.sample(objects, len(objects)):
                value = ID[o[kind]]
                pos += [(ID[o["shape"]],), (value,), (ID[","],)]; labels += [value, IGNORE, IGNORE]
        return pos, labels
    questions = [(kind, o) for o in objects for kind in KINDS]
    rng.shuffle(questions)
    for kind, o in questions:
        value = ID[o[kind]]
        asked = [(ID["<q>"],), (ID[kind],), (ID[o["shape"]],)] + ([(ID["?"],), (ID["<a>"],)] if ask == "sep" else [])
        pos += asked + [(value,)]
        labels += [IGNORE] * (len(asked) - 1) + [value, IGNORE]    # the answer is predicted at the last asked position
    return pos, labels


def batch(rows: list[tuple[list[tuple], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """→ ids (B, L, 4), weights (B, L, 4), labels (B, L)."""
    L = max(len(p) for p, _ in rows)
    ids, weights = torch.zeros(len(rows), L, 4, dtype=torch.long), torch.zeros(len(rows), L, 4)
    weights[:, :, 0] = 1.0                                              # padding: one <pad>
    labels = torch.full((len(rows), L), IGNORE)
    for b, (pos, lab) in enumerate(rows):
        for l, t in enumerate(pos):
            ids[b, l, :len(t)] = torch.tensor(t)
            weights[b, l, :len(t)] = 1.0
        labels[b, :len(lab)] = torch.tensor(lab)
    return ids, weights, labels


def logits_of(model: LLaMA, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return model(embeds=(model.embed_tokens(ids) * weights.unsqueeze(-1)).sum(2))     # (B, L, V)


def accuracy(model: LLaMA, form: str, ask: str, n_objects: int, order: str, rng: random.Random, n: int = 200) -> float:
    model.eval()
    with torch.no_grad():
        ids, weights, labels = batch([row(scene(rng, n_objects), form, ask, order, rng) for _ in range(n)])
        m = labels != IGNORE
        right = (logits_of(model, ids, weights).argmax(-1)[m] == labels[m]).float().mean().item()
    model.train()
    return right


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("phases", help="form:ask:steps,... (form one|words, ask noun|sep|line)")
    ap.add_argument("--order", default="attr-first", choices=["attr-first", "noun-first"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    phases = [(f, a, int(k)) for f, a, k in (p.split(":") for p in args.phases.split(","))]
    torch.manual_seed(args.seed); torch.set_num_threads(args.threads)
    rng, eval_rng = random.Random(args.seed), random.Random(args.seed + 1)
    model = LLaMA(LlamaConfig(dim=192, n_layers=4, n_heads=8, n_kv_heads=8, hidden_dim=512, vocab_size=len(WORDS),
                              max_seq_len=128))                      # the nano LLaMA's shape
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    plan = [(f, a) for f, a, k in phases for _ in range(k)]
    shown = sorted({(f, a) for f, a, _ in phases} | {("words", a) for _, a, _ in phases})
    started = time.time()
    for step, (form, ask) in enumerate(plan):
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / len(plan))))
        for group in opt.param_groups:
            group["lr"] = lr
        ids, weights, labels = batch([row(scene(rng, rng.choice((2, 3))), form, ask, args.order, rng)
                                      for _ in range(args.batch)])
        logits = logits_of(model, ids, weights)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
        if (step + 1) % 150 == 0 or step + 1 == len(plan):
            scores = "  ".join(f"{f}:{a} " + " / ".join(f"{100 * accuracy(model, f, a, n, args.order, eval_rng):.1f}"
                                                         for n in (2, 3)) for f, a in shown)
            print(f"step {step + 1} ({form}:{ask}) {time.time() - started:.0f}s loss {loss.item():.3f}  {scores}", flush=True)


if __name__ == "__main__":
    main()
