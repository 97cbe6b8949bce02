"""Stage 0 of the nano recipe: the parts GPT4Video takes as given, made from the toy world.

The paper starts from three pretrained artefacts — LLaMA's SentencePiece tokenizer, CLIP's ViT-L/14 and
LLaMA-7B — and trains only the abstractor (stage 1) and LoRA (stage 2). The nano preset makes small
ones from a toy world (`python -m nanog4v.toy`, docs/design.md) and writes them in the *official
layouts*, so stages 1–2 load them through exactly the code the 7B weights take:

    out_dir/tokenizer.model    SentencePiece BPE, LLaMA's settings           (tokenizer.Tokenizer)
    out_dir/vision/            CLIP vision tower, transformers layout         (weights.load_vision)
    out_dir/llama/             LlamaForCausalLM, transformers layout, float16 (weights.load_llama)
    out_dir/stage0.json        settings, losses, metrics and wall times

**Tokenizer** (`stage0_tokenizer.train_tokenizer`): SentencePiece BPE on the world's corpus with LLaMA's
settings, the template's fixed strings one piece each.

**ViT** (`stage0_vision.pretrain_vision`): attribute prediction from the scenes' ground truth, frames
read as stage 1 reads them; the reasons are in that module's docstring. `vit_temporal` makes it a video
ViT (mPLUG-Owl's temporal modules, as in the official code's ViT: out_dir/vision then also holds them,
under mPLUG-Owl's names) and `vit_dense_motion` has each patch also name its object's motion, so that
the tokens say how things move, not only where they are in each frame.

**LLaMA: next-token pretraining on the toy text, rendered through the template** (`pretrain_llama`).
The documents are the train split's dialogues (stage2_train, safety_train) and its stage-1 QA records
with the clip *written as its caption*, `###Human: <video> a red circle … </video>`, laid out by the
template (`data.layout`; `Stage0Settings.llama_slot = "noun-last"` writes it attributes first, noun
last, instead: `stage0_reading.reading_caption`). So the LLM already knows the template, the toy
language and how to answer a question about a clip it reads as words before stage 1 starts; stage 1
(LLM frozen) then teaches the abstractor to put the video where those words were. The documents are tokenised and labelled exactly
as `encode_conversation(loss_on="ai")` does (Eq. 5: only the AI answers are targets) and packed whole
into rows (`stage0_rows.pack`: a question always shares its row with the caption it asks about). Training every
token instead, as plain pretraining would, spends most of the gradient on the captions, which are
random and cannot be predicted (the measurement: weights/nano/README.md, "Experiments behind the recipe").

**Reading practice** (`stage0_reading.py`, `Stage0Settings.llama_reading`). Every epoch also reads
fresh scenes that exist only as words, from a wider vocabulary ("a teal hexagon") and asked in wider
words (a dozen more phrasings per intent, never a held-out one): the toy corpus alone teaches a small
LLaMA its few colour–shape pairs and its three or four sentences per question, not how to read.
What it gained at each step, and what this stage still does not teach (binding a question to the one
of two or three objects it names), is recorded in weights/nano/README.md ("Experiments behind the
recipe", "What limits it").

**Binding drills and rows** (`Stage0Settings.llama_drills`, `llama_rows`; off in the defaults). A drill is a
two- or three-object text scene followed by every object's colour, shape, motion and place asked, loss
on the answers only (`stage0_reading.drill_documents`); `llama_rows = "documents"` gives each document a
row of its own (`stage0_rows.by_length`). `llama_drill_steps` starts the LLaMA on drills alone, as plain text
(`stage0_objects.raw_drill`: the slot, then "colour: circle red, heart blue"), and `llama_drill_slots`
says what their slot holds, in turn: ("bare-objects", "caption") first reads each object as one token,
the sum of its words' embeddings (the look-up is one attention step there and forms in a few hundred
steps), then the clip as words, where that look-up carries over — from words alone it does not form
within the CPU budget. `phrase_pieces` makes every place phrase and motion one tokenizer piece;
`llama_binding_epochs` leaves the clips of one object out of the first epochs ("the colour in the
slot" is always the answer there, a shortcut that delays the look-up: Edelman et al. 2024).
`llama_plain_epochs` runs that many epochs of the plain recipe (its phrasings too) first, on a schedule
of their own, and the drills and `llama_epochs` after them: a LLaMA that starts on drills binds but
copies a requested scene into its `<video>` prompt badly (the other object's colour, an object twice),
and more epochs after the drills do not mend it; one that has first learned to copy keeps it through the
drills. `llama_drill_copy` ends each caption drill by writing the caption again ("again: a red circle
…"); it taught the LLaMA to write a clip's caption without tags, so that a show request after "How many
objects are in the video?" got the clip's caption as a sentence instead of a `<video>` prompt; `BINDING`
leaves it out. With the edit dialogues beside it (`EDIT_BINDING`) that turn is right again, and the copy
line's stronger binding is kept. `llama_drill_shapes` adds a line that names each object by its place and
gives its shape ("shape: on the left circle"), the backward look-up "What shape is the object on the
left?" needs; `llama_drill_requests` adds a line that asks for a scene in a user's words, then its
`<video>` prompt, which must come from the request and not from the slot (`REQUESTS`: QA gained, prompts
and captions lost, so both are off in the nano preset). All were measured against the plain recipe and
are recorded in weights/nano/README.md with what they gained.
`BINDING`: four plain epochs, 400 drill steps of bare objects and 400 of captions, four epochs that also
ask in `MORE_PARAPHRASES`, and a pretrained abstractor (below).

**Options measured and left off** (weights/nano/README.md, "What limits it"): `llama_rephrase` asks the
stage-1 clips afresh each epoch in the wider phrasings (`stage0_reading.asked_in_wider_words`), no better
over three seeds; `llama_slot = "objects"` (stage0_objects.py, `OBJECTS`) holds one token per object in
the slot through every epoch, which binds in the text but not through stage 1.

**Edit dialogues** (`Stage0Settings.llama_edits`, on in `EDITING` and the nano preset's `EDIT_BINDING`).
The world's train split changes a shown video ("Now make the circle blue.") in three phrasings per kind
of change, over its few pairs, and a LLaMA that read only those copied the shown video unchanged, or
showed nothing, when a held-out dialogue asked: edits of the video just shown came out right 32 % of the
time. Each epoch therefore also reads `llama_edits` × (train clips) text dialogues that show a
wider-world scene and then change one thing of it, or ask about it (`stage0_reading.edit_documents`), in
the world's phrasings and nine more per kind of change (`EDIT_PARAPHRASES`, never a held-out one); the
reading practice's show requests are followed by the same, or ask for two videos at once. Measured:
weights/nano/README.md ("Edit dialogues"). `llama_chat` puts chit-chat into a share of them (a
greeting, thanks, what the assistant can do; on in `EDIT_BINDING`): with every second human turn of them a
change, a LLaMA that read them answered an unseen "Cheers, that helps." after another chit-chat turn with
a `<video2>`.

**A pretrained abstractor** (`Stage0Settings.abstractor_steps`, stage0_abstractor.py; on in `VIDEO_VIT`,
`EDITING`, `EDIT_BINDING` and `BINDING`).
The official code starts from mPLUG-Owl's pretrained abstractor; this step stands in for it: after the
LLaMA, the ViT's features of the world's stage-1 clips are cached (out_dir/features) and an abstractor
of `abstractor_queries` queries learns to write each clip's caption as the LLaMA's own embeddings
(out_dir/abstractor, the `--init` of stage 1 in `train.py --stage all`, for `abstractor_stage1_epochs`),
from those clips and `abstractor_fresh` newly rendered ones (the world's alone it learns by heart).

Only the train split is learned from (held-out colour–shape pairs and phrasings stay unseen); the
val split measures. Schedules are `Stage0Settings`; its defaults are the plain recipe (`QUICK`, what
`--quick` runs), and `PRESET_SETTINGS` names each preset's: the nano preset's is `EDIT_BINDING` (the
shipped checkpoint), the plain recipe with a video ViT (`vit_temporal`, `vit_dense_motion`), the
pretrained abstractor (together `VIDEO_VIT`), edit dialogues with chit-chat and `MORE_PARAPHRASES`, read
as `BINDING` reads: four plain epochs, the binding drills (with the copy line), four epochs.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from ..config import G4VConfig
from ..data import IGNORE, SYSTEM, Part, layout, normalize_answer
from ..generate import SamplingConfig, generate
from ..llama import LLaMA
from ..readers import read_dialogues, read_safety, read_videochat
from ..tokenizer import Tokenizer
from ..trainer import lr_at, make_optimizer
from ..weights import save_llama, save_vision
from .worlddir import WorldError, read_world
from .stage0_abstractor import make_abstractor
from .stage0_objects import bag_batch, bag_embeddings, drill_request, object_slot, raw_drill, world_scene
from .stage0_rows import by_length, encode_document, lm_batch, lm_forward, pack
from .stage0_tokenizer import TEMPLATE_SYMBOLS, tokenizer_symbols, train_tokenizer   # noqa: F401 (re-exported)
from .stage0_reading import (WIDER, WIDEST, asked_in_wider_words, drill_documents, edit_documents, reading_caption,
                             reading_documents, with_caption)
from .world import Scene, caption
from .stage0_vision import pretrain_vision


class Stage0Error(ValueError):
    """Stage 0 asked of a preset it cannot serve (7b), or with parts that do not fit each other."""


@dataclass(frozen=True)
class Stage0Settings:
    """How long and how hard stage 0 trains (defaults: the plain recipe, `QUICK`: 17 minutes on 2 CPU cores)."""
    vit_epochs: int = 8
    vit_batch: int = 16                # clips per step (× T frames)
    vit_lr: float = 1e-3
    vit_dense_weight: float = 1.0      # per-patch colour/shape loss beside the clip labels (0: off)
    vit_dense_motion: bool = False     # the per-patch loss also names the motion of the object on the patch
    vit_temporal: bool = False         # mPLUG-Owl's temporal modules in the ViT: a patch sees its neighbour frames
    vit_fresh: float = 1.0             # newly rendered train-split clips per epoch, per train clip
    vit_wider: float = 0.5             # share of those painted in colours outside the world's
    llama_epochs: int = 4
    llama_plain_epochs: int = 0        # epochs without drills before the drill steps, on their own schedule
    llama_reading: float = 0.4         # reading practice: wider-world text scenes per epoch, per train clip
    llama_drills: float = 0.0          # binding drills (stage0_reading.drill_documents) per epoch, per train clip
    llama_drill_steps: int = 0         # steps of binding drills alone, as plain text, before the epochs
    llama_batch: int = 8               # rows of packed documents per step
    llama_block: int = 256             # tokens per row
    llama_lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05          # of each schedule's steps; then cosine to 10 %
    eval_n: int = 64                   # val questions the LLaMA answers from captions (0: skip)
    llama_slot: str = "caption"        # what the video slot holds: SLOTS
    llama_rows: str = "packed"         # "packed": documents packed into rows; "documents": one a row
    llama_rephrase: bool = False       # the world's stage-1 records asked afresh every epoch, in wider words
    phrase_pieces: bool = False        # every place phrase and motion one tokenizer piece ("▁on▁the▁left")
    llama_binding_epochs: int = 0      # first epochs whose clips all have two or three objects
    llama_drill_slots: tuple = ()      # the plain drills' slots in turn (SLOTS, "bare-objects"; (): llama_slot)
    llama_drill_copy: bool = False     # a plain drill of a caption ends by writing it again (raw_drill's copy)
    llama_drill_shapes: bool = False   # a plain drill also lists each object's shape by its place (raw_drill)
    llama_drill_requests: bool = False  # a plain drill also asks for a scene, then its <video> prompt
    llama_more_paraphrases: bool = False   # the reading practice also asks in stage0_reading.MORE_PARAPHRASES
    llama_edits: float = 0.0           # edit dialogues per epoch, per train clip (stage0_reading.edit_documents);
                                       # > 0: the reading practice also changes a shown video, asks about it, shows two
    llama_chat: float = 0.0            # share of edit dialogues that also hold chit-chat (stage0_reading.chit_chat)
    abstractor_steps: int = 0          # steps writing captions as the LLaMA's embeddings (stage0_abstractor; 0: none)
    abstractor_queries: int = 30       # its N: a caption of three objects is 30 pieces with the bare-object tokenizer
    abstractor_motion_weight: float = 10.0   # motion pieces weigh this much more in its cross-entropy
    abstractor_fresh: int = 0          # newly rendered train-split clips it also learns from (0: the world's only)
    abstractor_stage1_epochs: int = 7  # stage 1's epochs from it (N = 30 tokens: a step ≈ 5 % longer than N = 16)


SLOTS = {"caption": caption,             # the world's English caption, "a large red circle on the left moves right …"
         "noun-last": reading_caption,    # "on the left moves right a large red circle ; …" (stage0_reading)
         "objects": object_slot}          # one token per object, the sum of its words' embeddings (stage0_objects)

# the video slot read as objects, with its binding curriculum (stage0_objects.py): measured on the nano
# world (weights/nano/README.md, "What limits it"), not the shipped recipe
OBJECTS = Stage0Settings(llama_slot="objects", llama_rows="documents", llama_drills=0.5, llama_drill_steps=400,
                         llama_lr=2e-3)
# the plain epochs (copying forms), then drills of the clip as objects and as words (binding forms), the
# epochs again, and a pretrained abstractor: by `train.py --stage all`, held-out QA 68.8 % against
# QUICK's 67.5 %, the README's conversation right, but prompts written after a question about a clip
# 69.9 % (QUICK's 86.7 %) and, on the seed-1 world, a video for a held-out greeting in 7 % of chit-chat
# turns (weights/nano/README.md, "What limits it"), so not the nano preset
BINDING = Stage0Settings(llama_plain_epochs=4, llama_drill_steps=800, llama_drill_slots=("bare-objects", "caption"),
                         llama_more_paraphrases=True, abstractor_steps=3000)
# the plain recipe's LLaMA seeing through a video ViT (temporal modules, motion named per patch) and an
# abstractor pretrained on 16,000 fresh clips besides the world's (34 queries hold the plain tokenizer's
# longest train caption): by `train.py --stage all` in 37.8 min, held-out QA 72.0 % against QUICK's 67.5 %,
# motion 62.2 against 38.7 % (weights/nano/README.md); the checkpoint shipped before EDITING
VIDEO_VIT = Stage0Settings(vit_temporal=True, vit_dense_motion=True, abstractor_steps=3000, abstractor_queries=34,
                           abstractor_fresh=16000, abstractor_motion_weight=2.0)
# the checkpoint shipped before EDIT_BINDING: VIDEO_VIT whose LLaMA also reads edit dialogues — a shown video
# changed or asked about, two at once (stage0_reading.edit_documents) — and asks in MORE_PARAPHRASES
EDITING = replace(VIDEO_VIT, llama_edits=1.0, llama_more_paraphrases=True)
# the nano preset's (the shipped checkpoint): EDITING's text read as BINDING reads it — the plain epochs
# (edit dialogues too), the drills with the copy line, the epochs again with MORE_PARAPHRASES — and half
# the edit dialogues holding chit-chat: by `train.py --stage all`, held-out QA 76.1 % (EDITING 76.0 %),
# motion 77.4 % (63.6), prompt fidelity 88.6 % (87.6), but a first request after a question about a clip
# 67.8 % (90.9) (weights/nano/README.md, "Binding drills on the edit dialogues")
EDIT_BINDING = replace(EDITING, llama_plain_epochs=4, llama_drill_steps=800, llama_drill_slots=("bare-objects", "caption"),
                       llama_drill_copy=True, llama_chat=0.5)
# EDIT_BINDING whose plain drills also list each object's shape by its place (the backward look-up of
# "What shape is the object on the left?") and ask for a scene in a user's words, answered with its <video>
# prompt: by `train.py --stage all`, held-out QA 79.1 % (EDIT_BINDING 76.1 %), but prompt fidelity 81.6 %
# (88.6), captions cut short and the README's show request answered in words (weights/nano/README.md,
# "The same, second form"), so not the nano preset
REQUESTS = replace(EDIT_BINDING, llama_drill_shapes=True, llama_drill_requests=True)
# the quick variant (`train.py --stage 0|all --quick`, notebook 05): the plain recipe, a per-frame ViT and no
# pretrained abstractor — minutes on a small world, and a clearly weaker model (held-out QA 67.5 % on the
# 2,000-clip world against VIDEO_VIT's 72.0 %)
QUICK = Stage0Settings()
PRESET_SETTINGS = {"nano": EDIT_BINDING,        # the shipped checkpoint's stage 0; the test preset: a smoke run
                   "test": Stage0Settings(vit_epochs=2, vit_batch=4, vit_fresh=0.0, llama_epochs=1, llama_batch=4,
                                          llama_block=64, eval_n=4)}


# --- the LLaMA -----------------------------------------------------------------------------------

def pretraining_documents(world_dir, split: str = "train", slot=caption, stage1: bool = True,
                          one_object: bool = True) -> list[list[Part]]:
    """The split's toy text as template parts (see the module docstring), one list per record; a clip
    in a video slot is written `slot(its scene)`. `stage1=False` leaves out the stage-1 records,
    `one_object=False` those about a clip of one object."""
    world_dir = Path(world_dir)
    files = {name: world_dir / name for name in (f"stage1_{split}.json", f"stage2_{split}.jsonl", f"safety_{split}.jsonl")}
    for f in files.values():
        if not f.is_file():
            raise WorldError(f"{f}: missing (not a complete toy world)")
    scenes = {r["id"]: Scene.from_dict(r["scene"]) for r in read_world(world_dir)[1]}
    docs = []
    for r in read_videochat(files[f"stage1_{split}.json"], check_videos=False) if stage1 else []:
        scene = scenes[Path(r["videos"][0]).stem]
        if one_object or len(scene.objects) > 1:
            docs.append(with_caption(r, slot(scene)))
    docs += [layout(r) for r in read_dialogues(files[f"stage2_{split}.jsonl"])]
    docs += [layout(r) for r in read_safety(files[f"safety_{split}.jsonl"])]
    return docs


def caption_qa_accuracy(model: LLaMA, tokenizer: Tokenizer, world_dir, n: int, slot=caption, slot_size: int = 0) -> dict:
    """Greedy answers to n val stage-1 questions with the clip written in the slot as `slot(scene)`: the
    reading skill stage 1 relies on (the frozen LLM must answer from what the abstractor puts in the
    slot), overall and by the number of objects in the clip."""
    scenes = {r["id"]: Scene.from_dict(r["scene"]) for r in read_world(world_dir)[1]}
    prompts, answers, objects = [], [], []
    for r in read_videochat(Path(world_dir) / "stage1_val.json", check_videos=False):
        for j in range(2, len(r["turns"]), 2):                      # turns: video, (human, ai) × k
            if len(prompts) < n and len(r["turns"][j]["value"].split()) <= 3:     # short answers only
                head = {"videos": r["videos"], "turns": r["turns"][:j]}
                scene = scenes[Path(r["videos"][0]).stem]
                parts = with_caption(head, slot(scene), for_reply=True)
                prompts.append(encode_document(tokenizer, parts, slot_size, random.Random(len(prompts)))[0])
                answers.append(r["turns"][j]["value"])
                objects.append(len(scene.objects))
    if not prompts:
        return {"accuracy": None, "n": 0}
    model.eval()
    with torch.no_grad():
        if any(isinstance(t, tuple) for ids in prompts for t in ids):       # slot tokens: as embeddings
            embeds = [bag_embeddings(model, *bag_batch([ids], tokenizer.pad_id))[0] for ids in prompts]
            out = generate(model, embeds=embeds, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                           cfg=SamplingConfig(max_new_tokens=8))
        else:
            out = generate(model, prompts, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                           cfg=SamplingConfig(max_new_tokens=8))
    replies = [tokenizer.decode(ids).strip() for ids in out]
    right = [normalize_answer(a) == normalize_answer(b) for a, b in zip(replies, answers)]
    by_objects = {str(k): sum(r for r, o in zip(right, objects) if o == k) / objects.count(k) for k in sorted(set(objects))}
    return {"accuracy": sum(right) / len(right), "n": len(right), "by_objects": by_objects,
            "examples": [{"answer": a, "reply": b} for a, b in zip(answers[:3], replies[:3])]}


def pretrain_llama(cfg, tokenizer: Tokenizer, world_dir, settings: Stage0Settings = Stage0Settings(), *,
                   seed: int = 0, log=print, slot_size: int = 16) -> tuple[LLaMA, dict]:
    """Next-token pretraining on the toy text (see the module docstring); returns (model in eval mode,
    {"losses", "val_loss", "caption_qa", ...}). `slot_size`: the slot tokens of the "objects" slot (the
    abstractor's output tokens)."""
    if tokenizer.vocab_size > cfg.vocab_size:
        raise Stage0Error(f"{tokenizer.path}: {tokenizer.vocab_size} pieces but the LLaMA has {cfg.vocab_size} embeddings")
    started = time.time()
    if settings.llama_slot not in SLOTS:
        raise Stage0Error(f"llama_slot must be one of {', '.join(SLOTS)}, not {settings.llama_slot!r}")
    slot, lists = SLOTS[settings.llama_slot], settings.llama_slot == "objects"
    drill_slots = settings.llama_drill_slots or (settings.llama_slot,)
    if any(s not in (*SLOTS, "bare-objects") for s in drill_slots):
        raise Stage0Error(f"llama_drill_slots must be some of {', '.join(SLOTS)}, bare-objects, not {drill_slots!r}")
    rng = random.Random(seed)
    rephrase = settings.llama_rephrase                  # the train split's stage-1 records: asked afresh each epoch
    docs = {split: [encode_document(tokenizer, d, slot_size, rng) for d in
                    pretraining_documents(world_dir, split, slot, stage1=not (rephrase and split == "train"))]
            for split in ("train", "val")}
    if settings.llama_binding_epochs:                   # the same without the clips of one object
        docs["binding"] = [encode_document(tokenizer, d, slot_size, rng) for d in
                           pretraining_documents(world_dir, "train", slot, stage1=not rephrase, one_object=False)]
    length = min(settings.llama_block, cfg.max_seq_len) + 1                     # inputs + the last target
    meta, scenes = read_world(world_dir)
    held, train_clips = {tuple(p) for p in meta["heldout_pairs"]}, sum(r["split"] == "train" for r in scenes)
    asked = {Path(r["videos"][0]).stem for r in read_videochat(Path(world_dir) / "stage1_train.json", check_videos=False)
             } if rephrase else set()
    train_scenes = [Scene.from_dict(r["scene"]) for r in scenes if r["id"] in asked]     # the clips stage 1 asks about
    reading = round(settings.llama_reading * train_clips)                       # fresh scenes every epoch
    drills, edits = round(settings.llama_drills * train_clips), round(settings.llama_edits * train_clips)
    if settings.llama_rows not in ("packed", "documents"):
        raise Stage0Error(f"llama_rows must be packed or documents, not {settings.llama_rows!r}")
    b, batches = settings.llama_batch, []
    phrasings = WIDEST if settings.llama_more_paraphrases else WIDER
    for k, name in enumerate(drill_slots):                # first, binding drills alone as plain text, one a row,
        steps = settings.llama_drill_steps * (k + 1) // len(drill_slots)       # the steps shared by the slots
        while len(batches) < steps:
            words = None if name in ("objects", "bare-objects") else SLOTS[name]     # slot tokens or a caption writer
            drills_ = []
            for _ in range(256):                                                # (stage0_objects.raw_drill)
                scene = world_scene(rng, held)
                request = drill_request(rng, held, scene) if settings.llama_drill_requests else None
                drills_.append(raw_drill(tokenizer, scene, slot_size, rng, words, bare=name == "bare-objects",
                                         copy=settings.llama_drill_copy, shapes=settings.llama_drill_shapes,
                                         request=request))
            batches += by_length(drills_, length, b * (length - 1), rng)
        batches = batches[:steps]
    for e in range(settings.llama_epochs):
        binding = e < settings.llama_binding_epochs       # no one-object clip: no copy-any-colour shortcut
        text = (reading_documents(reading, held, rng, slot, lists, one_object=not binding, phrasings=phrasings,
                                  edits=settings.llama_edits > 0)
                + drill_documents(drills, held, rng, slot, lists, phrasings)
                + edit_documents(edits, held, rng, phrasings, settings.llama_chat))
        if rephrase:
            text += [d for k, scene in enumerate(train_scenes) if len(scene.objects) > 1 or not binding
                     for d in asked_in_wider_words(scene, f"world{k}", rng, slot, phrasings)]
        epoch = docs["binding" if binding else "train"] + [encode_document(tokenizer, d, slot_size, rng) for d in text]
        if settings.llama_rows == "packed":
            rows = pack(epoch, length, rng)
            batches += [rows[i:i + b] for i in range(0, len(rows), b)]
        else:                                                  # the same tokens a step, in short rows
            batches += by_length(epoch, length, b * (length - 1), rng)
    total, tokens = len(batches), sum(len(ids) for ids, _ in docs["train"])
    log(f"stage 0 LLaMA: {len(docs['train'])} documents, {tokens:,} tokens (tokenised in {time.time() - started:.1f}s) "
        f"+ {reading} reading-practice scenes and {drills} drills{f' and {edits} edits' if edits else ''} an epoch; "
        f"{settings.llama_epochs} epochs, rows ≤ {length} tokens ({settings.llama_rows}) = {total} steps")
    plain = {}
    if settings.llama_plain_epochs:           # the plain recipe first (its phrasings too): copying forms there
        first = replace(settings, llama_epochs=settings.llama_plain_epochs, llama_plain_epochs=0, llama_drill_steps=0,
                        llama_more_paraphrases=False, eval_n=0)
        init, plain = pretrain_llama(cfg, tokenizer, world_dir, first, seed=seed, log=log, slot_size=slot_size)
    torch.manual_seed(seed)
    model = LLaMA(cfg)
    if plain:
        model.load_state_dict(init.state_dict())
    opt = make_optimizer(model.named_parameters(), settings.llama_lr, settings.weight_decay)
    warmup, losses = round(settings.warmup_frac * total), []
    model.train()
    for step, batch in enumerate(batches):
        x, y = lm_batch(batch, tokenizer.pad_id)                                # (B, L−1) each
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings.llama_lr, warmup, total)
        logits = lm_forward(model, x)              # (B, L−1, V); causal: right padding is never attended
        loss = F.cross_entropy(rearrange(logits, "b l v -> (b l) v"), rearrange(y, "b l -> (b l)"), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(round(loss.item(), 5))
        if (step + 1) % max(1, total // 10) == 0:
            log(f"stage 0 LLaMA: step {step + 1}/{total}, loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():                                  # val: its documents packed the same way
        val_rows = pack(docs["val"], length, random.Random(seed))
        nll = n = 0
        for i in range(0, len(val_rows), b):
            x, y = lm_batch(val_rows[i:i + b], tokenizer.pad_id)
            nll += F.cross_entropy(lm_forward(model, x).flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum").item()
            n += (y != IGNORE).sum().item()
    val_loss = nll / max(1, n)
    k = max(1, total // 10)
    metrics = {"steps": plain.get("steps", 0) + total, "train_tokens": tokens, "row_length": length,
               "losses": plain.get("losses", []) + losses, "final_loss": sum(losses[-k:]) / k, "val_loss": val_loss,
               **({"plain_epochs": {"steps": plain["steps"], "val_loss": plain["val_loss"]}} if plain else {})}
    if settings.eval_n:
        metrics["caption_qa"] = caption_qa_accuracy(model, tokenizer, world_dir, settings.eval_n, slot, slot_size)
    return model, metrics


# --- all of stage 0 --------------------------------------------------------------------------------

def run_stage0(world_dir, cfg: G4VConfig, out_dir, *, seed: int = 0, log=print,
               settings: Stage0Settings | None = None) -> dict:
    """Tokenizer, ViT and LLaMA for `cfg` from the toy world in `world_dir`, written to `out_dir` (see
    the module docstring). Returns {"tokenizer", "vision", "llama", "stage0_json": paths, "metrics"}."""
    if cfg.name == "7b":
        raise Stage0Error("stage 0 makes the toy presets' frozen parts; the 7b preset uses the official "
                          "CLIP ViT-L/14 and LLaMA-7B (see weights/README.md)")
    settings = settings or PRESET_SETTINGS.get(cfg.name, Stage0Settings())
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    read_world(world_dir)                                     # fail early on an incomplete world
    out_dir.mkdir(parents=True, exist_ok=True)
    times, started = {}, time.time()
    tokenizer = train_tokenizer(world_dir / "corpus.txt", out_dir / "tokenizer.model", cfg.llama.vocab_size,
                                tokenizer_symbols(settings))
    system_pieces = len(tokenizer.encode(SYSTEM))
    times["tokenizer_s"] = round(time.time() - started, 1)
    log(f"stage 0 tokenizer: {tokenizer.vocab_size} pieces; the system text is {system_pieces} tokens")

    t = time.time()
    vision_cfg = replace(cfg.vision, temporal=cfg.vision.temporal or settings.vit_temporal)
    vit, vit_metrics = pretrain_vision(vision_cfg, world_dir, cfg.num_frames, epochs=settings.vit_epochs,
                                       batch=settings.vit_batch, lr=settings.vit_lr, weight_decay=settings.weight_decay,
                                       dense_weight=settings.vit_dense_weight, dense_motion=settings.vit_dense_motion,
                                       fresh=settings.vit_fresh, wider=settings.vit_wider,
                                       warmup_frac=settings.warmup_frac, seed=seed, log=log)
    save_vision(vit, out_dir / "vision")
    times["vision_s"] = round(time.time() - t, 1)
    if "val" in vit_metrics:
        log(f"stage 0 ViT: val attribute accuracy {vit_metrics['val']['accuracy']['mean']:.3f} "
            f"(all fields of a clip right: {vit_metrics['val']['accuracy']['all_fields_of_clip']:.3f})"
            + (f", held-out {vit_metrics['heldout']['accuracy']['mean']:.3f}" if "heldout" in vit_metrics else ""))

    t = time.time()
    llama_cfg = cfg.llama
    llama, llama_metrics = pretrain_llama(llama_cfg, tokenizer, world_dir, settings, seed=seed, log=log,
                                          slot_size=cfg.abstractor.num_output_tokens)
    save_llama(llama.to(torch.float16), out_dir / "llama")      # float16, as the official LLaMA files
    times["llama_s"] = round(time.time() - t, 1)
    log(f"stage 0 LLaMA: val loss {llama_metrics['val_loss']:.4f}"
        + (f", caption QA accuracy {llama_metrics['caption_qa']['accuracy']:.3f}" if "caption_qa" in llama_metrics else ""))
    if settings.abstractor_steps:
        t = time.time()
        abstractor_metrics = make_abstractor(cfg, vit, llama, tokenizer, world_dir, out_dir, settings, seed=seed, log=log)
        times["abstractor_s"] = round(time.time() - t, 1)
    times["total_s"] = round(time.time() - started, 1)

    report = {"preset": cfg.name, "world": str(world_dir), "seed": seed, "settings": asdict(settings),
              "dtype": {"vision": "float32", "llama": "float16"}, "times": times,
              "tokenizer": {"vocab_size": tokenizer.vocab_size, "system_text_tokens": system_pieces},
              "vision": vit_metrics, "llama": llama_metrics,
              **({"abstractor": abstractor_metrics} if settings.abstractor_steps else {})}
    (out_dir / "stage0.json").write_text(json.dumps(report, indent=1))
    log(f"stage 0: wrote {out_dir} in {times['total_s']:.0f}s")
    return {"tokenizer": out_dir / "tokenizer.model", "vision": out_dir / "vision", "llama": out_dir / "llama",
            "stage0_json": out_dir / "stage0.json", "metrics": report}
