"""The video slot as the stage-0 LLaMA reads it: one token per object (`Stage0Settings.llama_slot = "objects"`).

The paper's LLM reads a video as N soft tokens, the abstractor's outputs. Our stage 0 has to teach a
small LLaMA to read *something* in that slot before stage 1 teaches the abstractor to write it. Written
as an English caption ("a red circle on the left moves up and a blue star …"), answering "what colour is
the circle?" needs an induction circuit — find the earlier "circle", read the word next to it — and a
nano LLaMA learns that slowly: on fresh 2- and 3-object scenes it plateaus near 67 / 60 % right (a
random object of the scene gives ≈ 55 / 39 %), whatever the word order.

So here every object is **one slot token**, the sum of the embeddings of its words,

    e(object) = e("small") + e("red") + e("circle") + e("left") + e("▁moves▁left")          # (dim,)

and the slot holds N of them (N = the abstractor's output tokens): the objects, one token for the
background (e("grey") + e("background")) and "nothing" tokens for the rest, in random order. Finding the
circle is now one attention step (the question's "circle" against the slot's tokens), and what the
circle is (its colour, place, motion) sits in the very token found. Each motion is one piece of the
tokenizer (`MOTION_SYMBOLS`), so a token says which way an object *moves* apart from where it *is*
("left" vs "▁moves▁left"); a sum of words could not.

The one step left to learn is carrying the named object from the question to where the answer is
written. `list_turns` teaches the look-up without it: "List each object's colour." is answered
"circle red, square blue", and every value is written right after its object's noun. Measured on fresh
scenes (nano LLaMA, 2 threads, batch 32, 900–1,000 steps, 2.5–3.5 minutes; the probe's tokens, answers
only):
slot tokens alone 82 / 73 % right on 2 / 3 objects; with half of the questions in the listed form
98 / 89 %; an English caption with the same listed questions 68 / 59 %.

In the stage-0 text itself the look-up still formed too slowly: the system text and the chat turns
around the same lists slowed it (a probe's answer loss: 0.68 after 500 steps, against 0.26 after 300
without them), and the full stage 0 with the slot tokens gave 66.8 % on 256 val questions (2 / 3
objects 55–58 / 56–57 %) against 78 % for the caption. The curriculum `Stage0Settings.llama_drill_steps` fixes that: the LLaMA starts on
`raw_drill`s, the lists as plain text, where the look-up forms in a few hundred steps and then carries
over to the template. With 400 such steps first (`stage0.OBJECTS`, 2,404 steps in all), fresh two- and
three-object drills in the template are answered 97 / 96 % right (the lists 96 / 95 %) and the val
questions 82.8 % (1 / 2 / 3 objects: 94.8 / 77.1 / 78.6 %).

This is also what stage 1 asks of the abstractor: N tokens, each what one object is, in any order — a
query that looks at one place of the frame can write it. It does not learn to yet: the whole recipe with
this stage 0 (`stage0.OBJECTS`, then stages 1–2 unchanged) ended stage 1 at loss 0.42 (0.31 with the
caption) and scored 43.0 % held-out QA (1 / 2 / 3 objects 65.6 / 29.3 / 29.4 %; 400 questions) against
58.2 % shipped, and its prompts lost what the request asked for ("a large purple cross shrinks" →
"<video> a large purple circle … </video>": prompt fidelity 2 %; the stage-0 LLaMA alone already
writes 1 of 100 first-turn prompts right, the shipped one 87). So the caption stays the nano
recipe's slot and this one an option (weights/nano/README.md, "What limits it").

**A start for the caption slot** (`bare_slot_tokens`, `Stage0Settings.llama_drill_slots = ("bare-objects",
"caption")`). The look-up learned on slot tokens carries over to the clip as words when the slot holds
the objects *alone* — each the sum of its colour, place, motion and shape, no size, background or
"nothing" tokens. Real drills, nano LLaMA, batch 8 × 256 tokens, lr 1e-3, every list value right in
all its pieces, 2 / 3 objects: 400 steps of these bare tokens (100 / 100 % from step 300), then the
caption: 97 / 94 % 100 steps later, 99 / 99 % after 400; after 400 steps of the full `slot_tokens`
(also 100 / 100 %) the caption stays at 71 / 65 % — what answering the last object by elimination
gives — and from scratch the words never get past that either.

The motion pieces are added to the tokenizer only for these slots (or `phrase_pieces`;
`stage0_tokenizer.tokenizer_symbols`), so the caption recipe's tokenizer, and the shipped checkpoint made
with it, are unchanged.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch

from ..data import Part
from .datasets import leave_unsaid, request_phrase, tag
from .world import BACKGROUNDS, COLOURS, MOTIONS, POSITION_PHRASES, POSITIONS, SHAPES, SIZES, Scene, Thing

MOTION_SYMBOLS = tuple("\u2581" + m.replace(" ", "\u2581") for m in MOTIONS if " " in m)   # "▁moves▁left", …
PLACE_SYMBOLS = tuple("\u2581" + p.replace(" ", "\u2581") for p in POSITION_PHRASES.values())  # "▁on▁the▁left", …
NOTHING = "nothing"

# "List each object's colour." -> "circle red, square blue": the value right after its noun
LIST_ASKS = {"colour": ["List each object's colour.", "Give every object with its colour.",
                        "Say the colour of each object, one by one."],
             "motion": ["List what each object does.", "Give every object with its motion.",
                        "Say how each object moves, one by one."],
             "position": ["List where each object is.", "Give every object with its place.",
                          "Say where each object is, one by one."]}


@dataclass
class ObjectsPart(Part):
    """A video slot that holds a scene, written as slot tokens (`slot_tokens`) when encoded."""
    scene: Scene | None = None


def object_slot(scene: Scene) -> Scene:
    """The "objects" slot writer of stage0.SLOTS: the slot holds the scene itself (`with_caption`)."""
    return scene


def _pieces(tokenizer, *words: str) -> tuple[int, ...]:
    return tuple(i for w in words if w for i in tokenizer.encode(w))


def thing_pieces(tokenizer, thing: Thing) -> tuple[int, ...]:
    """The pieces whose embeddings sum to the object's slot token: size, colour, shape, place, motion."""
    return _pieces(tokenizer, thing.size, thing.colour, thing.shape, thing.position, thing.motion)


def slot_tokens(tokenizer, scene: Scene, n: int, rng: random.Random) -> list[tuple[int, ...]]:
    """The slot's n tokens, each a tuple of piece ids to sum: the objects, the background and "nothing"
    for the rest, shuffled (the abstractor's tokens have no fixed order either)."""
    tokens = [thing_pieces(tokenizer, t) for t in scene.objects]
    tokens += [_pieces(tokenizer, scene.background, "background")] if scene.background else []
    if len(tokens) > n:
        raise ValueError(f"a slot of {n} tokens cannot hold {len(scene.objects)} objects and a background")
    tokens += [_pieces(tokenizer, NOTHING)] * (n - len(tokens))
    return rng.sample(tokens, n)


def list_turns(scene: Scene, rng: random.Random) -> list[dict]:
    """Every object's colour, motion and place asked as one list each ("circle red, square blue"), objects
    in random order. Only for scenes whose shapes all differ (the noun alone must name the object)."""
    if len({t.shape for t in scene.objects}) < len(scene.objects):
        return []
    turns = []
    for field in rng.sample(list(LIST_ASKS), len(LIST_ASKS)):
        things = rng.sample(scene.objects, len(scene.objects))
        answer = ", ".join(f"{t.shape} {getattr(t, field)}" for t in things)
        turns += [{"from": "human", "value": rng.choice(LIST_ASKS[field])}, {"from": "ai", "value": answer}]
    return turns


def world_scene(rng: random.Random, held: set) -> Scene:
    """Two or three objects of different shapes in the world's own words (one piece each), never a
    held-out colour–shape pair."""
    n = rng.choice((2, 3))
    things = [Thing(shape, rng.choice([c for c in COLOURS if (c, shape) not in held]), rng.choice(list(SIZES)),
                    position, rng.choice(MOTIONS))
              for shape, position in zip(rng.sample(SHAPES, n), rng.sample(list(POSITIONS), n))]
    return Scene(tuple(things), rng.choice(list(BACKGROUNDS)))


def bare_slot_tokens(tokenizer, scene: Scene, rng: random.Random) -> list[tuple[int, ...]]:
    """The objects alone, each the sum of its colour, place, motion and shape, in random order: no size,
    background or "nothing" tokens. A look-up learned on these carries over to the clip as words; on
    `slot_tokens` it does not (weights/nano/README.md, "What limits it")."""
    return rng.sample([_pieces(tokenizer, t.colour, t.position, t.motion, t.shape) for t in scene.objects],
                      len(scene.objects))


def raw_drill(tokenizer, scene: Scene, n: int, rng: random.Random, slot=None,
              bare: bool = False, copy: bool = False, shapes: bool = False,
              request: Scene | None = None) -> tuple[list, list[int]]:
    """A binding drill as plain text, without the chat template: the slot, then one line per field,
    "colour: circle red, square blue", every token after the slot a target. (ids, labels) as
    stage0_rows.encode_document makes them. The slot holds `n` slot tokens (`bare`: `bare_slot_tokens`),
    or, given a caption writer `slot` (stage0.SLOTS), the clip as words; then places are said as the
    captions say them ("circle on the left"), and with `copy` a last line writes the caption again
    ("again: a red circle …"), so that the drills also practise copying what the slot says.

    With `shapes` a fourth line, in turn with the others, names each object by its *place* and gives its
    shape ("shape: on the left circle, at the top heart"): the backward look-up of a question like "What
    shape is the object on the left?", where the caption puts the place after the noun. With `request`
    (a scene as a user asks for it, `drill_request`) one more line, in turn with the fields, asks for it
    in the user's words and writes its `<video>` prompt ("show: a blue circle moving up" then "<video> a
    blue circle moves up </video>"; the loss on the prompt only): the prompt is copied from the request,
    not from the slot before it.

    Why without the template: in a probe (nano LLaMA, fresh 2–3 object scenes, batch 32, lr 3e-3) the
    answers' loss fell to 0.26 in 300 steps in such short rows but was still 0.68 after 500 with the
    system text and the "###Human:" / "###AI:" turns around the same lists; trained 300 steps plain and
    then in the template, it was 0.17 after 200 more. A pretrained LLM, too, learned to read from plain
    text, not from chat transcripts."""
    if slot is None:
        tokens = bare_slot_tokens(tokenizer, scene, rng) if bare else slot_tokens(tokenizer, scene, n, rng)
        ids = [tokenizer.bos_id, *tokenizer.encode("<video>"), *tokens, *tokenizer.encode("</video>")]
    else:
        ids = [tokenizer.bos_id, *tokenizer.encode(f"<video> {slot(scene)} </video>")]

    def place(t: Thing) -> str:                         # as the captions say it when the slot is words
        return POSITION_PHRASES[t.position] if slot is not None else t.position

    def item(t: Thing, field: str) -> str:             # key, then value: "circle red", "on the left circle"
        return f"{place(t)} {t.shape}" if field == "shape" else \
            f"{t.shape} {place(t) if field == 'position' else getattr(t, field)}"

    labels = [-100] * len(ids)
    fields = [*LIST_ASKS, "shape"] if shapes else list(LIST_ASKS)
    for field in rng.sample(fields + ["show"] * (request is not None), len(fields) + (request is not None)):
        if field == "show":                                # the request: its words, then the prompt (targets)
            asked, prompt = tokenizer.encode(f"show: {request_phrase(request, rng)}\n"), tokenizer.encode(f"{tag(request)}\n")
            ids, labels = ids + asked + prompt, labels + [-100] * len(asked) + prompt
            continue
        things = rng.sample(scene.objects, len(scene.objects))
        line = tokenizer.encode(f"{field}: " + ", ".join(item(t, field) for t in things) + "\n")
        ids += line
        labels += line
    if copy and slot is not None:
        line = tokenizer.encode(f"again: {slot(scene)}\n")
        ids, labels = ids + line, labels + line
    return ids + [tokenizer.eos_id], labels + [tokenizer.eos_id]


def drill_request(rng: random.Random, held: set, scene: Scene) -> Scene:
    """A scene as a user asks for it beside a drill of `scene` (`raw_drill`'s `request`), fields left
    unsaid as users leave them. Half the time some of `scene`'s own objects, one of them with another
    colour, motion or place: the prompt that copies the slot is then wrong in just that field, or in the
    objects and fields the request leaves out ("Show me a red circle moving left." beside a clip of a red
    circle on the left that moves right and a yellow square). Otherwise a scene of its own."""
    if rng.random() < 0.5:
        other = world_scene(rng, held)
        return leave_unsaid(Scene(other.objects[:rng.randint(1, len(other.objects))], other.background), rng)
    kept = sorted(rng.sample(range(len(scene.objects)), rng.randint(1, len(scene.objects))))
    things, i = [scene.objects[k] for k in kept], rng.randrange(len(kept))
    t, field = things[i], rng.choice(("colour", "motion", "position"))
    if field == "colour":
        new = rng.choice([c for c in COLOURS if c != t.colour and (c, t.shape) not in held])
    elif field == "motion":
        new = rng.choice([m for m in MOTIONS if m != t.motion])
    else:
        new = rng.choice([p for p in POSITIONS if p not in {o.position for o in scene.objects}] or [t.position])
    things[i] = replace(t, **{field: new})
    return leave_unsaid(Scene(tuple(things), rng.choice(list(BACKGROUNDS))), rng)


def bag_batch(rows: list[list], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids, where a slot token is a tuple of ids, → (ids (B, L, K), weights (B, L, K)): position
    (b, l) is the sum of its K embeddings weighted 1 (a plain token: one id, K − 1 zero weights)."""
    K = max((len(t) for row in rows for t in row if isinstance(t, tuple)), default=1)
    L = max(len(row) for row in rows)
    ids = torch.full((len(rows), L, K), pad_id, dtype=torch.long)            # (B, L, K)
    weights = torch.zeros(len(rows), L, K)                                   # (B, L, K)
    weights[:, :, 0] = 1.0                                                   # padding: one pad token
    for b, row in enumerate(rows):
        for l, t in enumerate(row):
            if isinstance(t, tuple):
                ids[b, l, :len(t)] = torch.tensor(t)
                weights[b, l, :len(t)] = 1.0
            else:
                ids[b, l, 0] = t
    return ids, weights


def bag_embeddings(model, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, L, K) ids and weights → (B, L, dim) input embeddings: each position the weighted sum of its K."""
    return (model.embed_tokens(ids) * weights.unsqueeze(-1).to(model.embed_tokens.weight.dtype)).sum(2)
