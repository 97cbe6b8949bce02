"""Conversations → token ids and Eq. 5 labels; batching (the data set readers are in ``readers.py``).

**The prompt template** (paper §3.3; system text from the official code). A conversation
``{"videos": [path, ...], "turns": [...]}`` is rendered as::

    <s>The following is a conversation between ... the user's questions.\n      (SYSTEM)
    ###Human: <video>{N video tokens}</video>\n                                  a {"from": "human", "video": k} turn
    ###Human: What is the circle doing?\n                                         a {"from": "human", "value": ...} turn
    ###AI: It moves to the left.\n</s>                                            a {"from": "ai", "value": ...} turn

With several videos the tags are numbered, ``<video1>…</video1>``, ``<video2>…</video2>`` (K = k + 1).
The N video tokens are placeholder ids (``tokenizer.pad_id``) that ``model.splice_video`` replaces by
the video's N projected abstractor outputs; ``video_slots`` says where they start.

**Labels (Eq. 5).** ``labels`` has the length of ``input_ids`` and is *not* shifted (the model compares
the logits at i with the label at i + 1). With ``loss_on="ai"`` (the paper's Eq. 5, the default) it
is −100 everywhere except on each AI turn's text, its end-of-line "\\n" and the ``</s>`` after it:
the model learns to answer *and to stop* — ``</s>`` is the one stop token ``generate`` needs, even for
replies that span several lines. ``loss_on="all"`` labels every text token (system text, turn markers,
questions, answers), which is what the official code trained on; only ``<s>`` and the video
placeholders stay −100.

**Tokenisation, segment by segment.** The rendered text is encoded in segments — "###Human: …\\n",
"###AI:", " answer\\n" — so that no token can straddle the edge of an AI answer (with whole-string
encoding a learned piece such as ".\\n###" would, and the mask would silently be off by a token: the
classic "tokenization mismatch"). SentencePiece adds a dummy-prefix space at the start of every
``encode`` call; we encode each later segment as the continuation of a "\\n" (``_encode_piece``), which
is exactly how it tokenises inside the whole string: for LLaMA's tokenizer the segments concatenate to
``encode(whole text)`` (tested). The answer segment is " answer\\n": its leading space makes its first
token "▁answer", the token a model writes after "###AI:". Every segment is decoded back and compared
with its text: a tokenizer that cannot round-trip the template (no byte fallback, NFKC normalisation,
collapsed spaces) fails loudly here instead of training on a shifted mask.

**Escaping.** Only a ``video`` turn makes a slot and only the template writes turn markers, so text is
escaped: runs of three or more "#" become "# # #" (no typed "###AI:" can open a turn) and, in human
text, video tags get a space, "<video>" → "< video>", "</video2>" → "</ video2>" (no typed tag looks
like a real video). AI text keeps its ``<video> prompt </video>`` literally: that is the hand-off to
the video generator that stage 2 teaches. SentencePiece's space marker "▁" (U+2581) becomes a plain
space in all text: encoded, it is a space anyway, and the segment would not decode back to itself.
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import G4VConfig
from .video import VideoError, mplug_owl_frame_indices, sample_frames
from .vision import preprocess

IGNORE = -100   # the label of a position that Eq. 5 does not train
SYSTEM = ("The following is a conversation between a curious human and AI assistant GPT4Video. "
          "GPT4Video generates video prompts at the most appropriate time and gives helpful, detailed, "
          "and polite answers to the user's questions.\n")
HUMAN, AI = "###Human:", "###AI:"
STOP_STRINGS = ("###",)   # a reply ends at </s>; "###" (a new turn marker) is a fallback stop string


class DataError(ValueError):
    """A record or conversation that cannot be used; `reason` is the short category skips are counted by."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


# --- the template ---------------------------------------------------------------------------------

_HASHES = re.compile(r"#{3,}")
VIDEO_TAG = re.compile(r"<(/?)(video\d*)>", re.IGNORECASE)


def escape(text: str, *, keep_video_tags: bool = False) -> str:
    """Make text unable to forge a turn marker (or, unless kept, a video tag) and free of SentencePiece's
    space marker; see the module docstring."""
    text = text.replace("\u2581", " ")                              # "a▁b" -> "a b", as it decodes anyway
    text = _HASHES.sub(lambda m: " ".join(m.group()), text)          # "###AI:" -> "# # #AI:"
    return text if keep_video_tags else VIDEO_TAG.sub(r"<\1 \2>", text)  # "<video>" -> "< video>"


@dataclass
class Part:
    """One piece of the rendered conversation: text, a video slot, or </s>."""
    kind: str            # "text" (never trained under loss_on="ai"), "answer" (AI text), "eos", "slot"
    text: str = ""
    turn: int = -1       # index of the turn it belongs to (-1: the system text)
    video: int = -1      # k, for a slot


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_conversation(conversation: dict) -> None:
    """Raise DataError(reason) unless `conversation` has the shape in docs/design.md (conversations)."""
    if not isinstance(conversation, dict) or not isinstance(conversation.get("turns"), list):
        raise DataError("a conversation needs a list of turns", "bad conversation")
    videos = conversation.get("videos", [])
    if not isinstance(videos, list):
        raise DataError("'videos' must be a list of paths", "bad conversation")
    if not conversation["turns"]:
        raise DataError("no turns", "no turns")
    for i, turn in enumerate(conversation["turns"]):
        who = turn.get("from") if isinstance(turn, dict) else None
        if who == "human" and "video" in turn:
            k = turn["video"]
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(videos):
                raise DataError(f"turn {i}: video index {k!r} is not one of the {len(videos)} videos",
                                "bad video index")
        elif who in ("human", "ai"):
            if not isinstance(turn.get("value"), str) or not turn["value"].strip():
                raise DataError(f"turn {i}: empty or missing text", "empty turn")
            if not turn["value"].isascii() and _SURROGATE.search(turn["value"]):    # JSON's "\ud800" alone
                raise DataError(f"turn {i}: text that is not valid Unicode (a lone surrogate)", "bad text")
        else:
            raise DataError(f"turn {i}: not a human/ai turn: {str(turn)[:60]}", "bad turn")


def layout(conversation: dict, for_reply: bool = False) -> list[Part]:
    """The conversation as template parts, in order (no tokenizer needed)."""
    check_conversation(conversation)
    several = len(conversation.get("videos", [])) > 1
    parts = [Part("text", SYSTEM)]
    for i, turn in enumerate(conversation["turns"]):
        if "video" in turn:
            tag = f"video{turn['video'] + 1}" if several else "video"
            parts += [Part("text", f"{HUMAN} <{tag}>", i), Part("slot", turn=i, video=turn["video"]),
                      Part("text", f"</{tag}>\n", i)]
        elif turn["from"] == "human":
            parts.append(Part("text", f"{HUMAN} {escape(turn['value'].strip())}\n", i))
        else:
            answer = escape(turn["value"].strip(), keep_video_tags=True)
            parts += [Part("text", AI, i), Part("answer", f" {answer}\n", i), Part("eos", turn=i)]
    if for_reply:
        parts.append(Part("text", AI, len(conversation["turns"])))
    return parts


def render(conversation: dict, num_video_tokens: int = 64, *, for_reply: bool = False) -> str:
    """The text the model reads, video slots shown as "{N video tokens}" and end of turn as "</s>"."""
    show = {"slot": f"{{{num_video_tokens} video tokens}}", "eos": "</s>"}
    return "".join(show.get(p.kind, p.text) for p in layout(conversation, for_reply))


def _encode_piece(tokenizer, text: str, first: bool) -> list[int]:
    """Ids of `text` as SentencePiece tokenises it inside the whole string, then check them.

    The first segment is encoded as is (with the dummy-prefix space, like any text start). A later
    one is encoded as the continuation of a "\\n" and the "\\n"'s ids dropped, so no dummy "▁" is
    added. The ids must decode back to the text (decode drops one leading space, as it always does).
    """
    if first:
        ids = tokenizer.encode(text)
    else:
        head = tokenizer.encode("\n")
        ids = tokenizer.encode("\n" + text)
        if ids[:len(head)] != head or tokenizer.decode(head) != "\n":
            raise DataError(f"tokenizer does not keep '\\n' as its own token (before {text[:30]!r}); the "
                            "template needs SentencePiece with byte_fallback and identity normalisation",
                            "tokenizer mismatch")
        ids = ids[len(head):]
    got = tokenizer.decode(ids)
    if got != text and not (text.startswith(" ") and got == text[1:]):
        i = next((i for i, (a, b) in enumerate(zip(text, got)) if a != b), min(len(text), len(got)))
        raise DataError(f"tokenization mismatch: {text[max(0, i - 20):i + 10]!r} decodes back as "
                        f"{got[max(0, i - 20):i + 10]!r} (the template needs byte_fallback, identity "
                        "normalisation and remove_extra_whitespaces=False)", "tokenization mismatch")
    return ids


def encode_parts(tokenizer, parts: list[Part], num_video_tokens: int):
    """Yield (part, ids) for every part; <s> is the caller's."""
    for j, part in enumerate(parts):
        if part.kind == "slot":
            yield part, [tokenizer.pad_id] * num_video_tokens
        elif part.kind == "eos":
            yield part, [tokenizer.eos_id]
        else:
            yield part, _encode_piece(tokenizer, part.text, first=j == 0)


def encode_conversation(tokenizer, conversation: dict, loss_on: str = "ai", num_video_tokens: int = 64,
                        max_seq_len: int | None = None) -> dict:
    """Tokenise a conversation and build its Eq. 5 labels.

    Returns {"input_ids": [int], "labels": [int] (same length, −100 = not trained, not shifted),
    "video_slots": [(start, k)]}: video k's N embeddings go to positions start..start+N−1.
    `num_video_tokens` is N (`cfg.abstractor.num_output_tokens`; 64 is the paper's).

    `max_seq_len` counts the video tokens too (it is the spliced length). A longer conversation is
    cut at max_seq_len, except that a cut inside a video turn moves back to that turn's start: a slot
    is kept whole or dropped with everything after it. An AI answer may be cut (its "\\n</s>" is then
    lost). Raises DataError when no video slot survives although there was one ("the first video slot
    does not fit"), or when nothing is left to train on.
    """
    if loss_on not in ("ai", "all"):
        raise ValueError(f"loss_on must be 'ai' or 'all', not {loss_on!r}")
    parts = layout(conversation)                                       # checks the conversation's shape
    ids, labels, slots = [tokenizer.bos_id], [IGNORE], []
    turns, video_turns = conversation["turns"], {}                     # video turn -> [first, end) positions
    for part, part_ids in encode_parts(tokenizer, parts, num_video_tokens):
        if part.kind == "slot":
            slots.append((len(ids), part.video))
        if 0 <= part.turn < len(turns) and "video" in turns[part.turn]:
            video_turns.setdefault(part.turn, [len(ids), 0])[1] = len(ids) + len(part_ids)
        trained = part.kind in ("answer", "eos") if loss_on == "ai" else part.kind != "slot"
        ids += part_ids
        labels += part_ids if trained else [IGNORE] * len(part_ids)
    if max_seq_len is not None and len(ids) > max_seq_len:
        cut = max_seq_len
        for first, end in video_turns.values():
            if first < cut < end:                                       # never inside a video turn
                cut = first
        ids, labels = ids[:cut], labels[:cut]
        kept = [(start, k) for start, k in slots if start + num_video_tokens <= cut]
        if slots and not kept:
            first, end = min(video_turns.values())
            raise DataError(f"the first video slot does not fit: its turn takes positions {first}..{end - 1},"
                            f" max_seq_len={max_seq_len}", "too long")
        slots = kept
    if all(label == IGNORE for label in labels):
        raise DataError("no AI answer to train on" + (f" within max_seq_len={max_seq_len}"
                        if max_seq_len is not None else ""), "nothing to train on")
    return {"input_ids": ids, "labels": labels, "video_slots": slots}


def prompt_for_reply(tokenizer, conversation: dict, num_video_tokens: int = 64) -> dict:
    """The conversation so far followed by "###AI:", ready for `generate`: {"input_ids", "video_slots"}.

    Its ids are exactly the prefix that `encode_conversation` produces for the same conversation with
    one more AI turn, so the model continues where training taught it to: " answer\\n</s>".
    """
    ids, slots = [tokenizer.bos_id], []
    for part, part_ids in encode_parts(tokenizer, layout(conversation, for_reply=True), num_video_tokens):
        if part.kind == "slot":
            slots.append((len(ids), part.video))
        ids += part_ids
    return {"input_ids": ids, "video_slots": slots}


def clean_reply(text: str) -> str:
    """A generated reply as the user should see it: cut at a stop string, surrounding space removed."""
    for stop in STOP_STRINGS:
        text = text.split(stop, 1)[0]
    return text.strip()


@dataclass(frozen=True)
class Template:
    """How a conversation becomes the prompt for a reply, and where a reply ends: GPT4Video's (`GPT4VIDEO`,
    this module's) or mPLUG-Owl's (`mplug_owl.TEMPLATE`, its released video checkpoint's own)."""
    prompt_for_reply: Callable          # (tokenizer, conversation, num_video_tokens) -> {"input_ids", "video_slots"}
    clean_reply: Callable               # generated text -> the reply
    stop: tuple[str, ...]               # stop strings for generation


GPT4VIDEO = Template(prompt_for_reply, clean_reply, STOP_STRINGS)


def normalize_answer(text: str) -> str:
    """Case, surrounding space and a final full stop do not count: "A red circle." == "a red circle"."""
    return " ".join(text.lower().strip().rstrip(".").split())


def video_pixels(path, num_frames: int, size: int, frames: str = "clip") -> torch.Tensor:
    """A video file as the ViT's input (T, 3, S, S), the way `frames` (`G4VConfig.frames`) says: "clip"
    (segment centres, CLIP's resize and centre crop) or "mplug-owl" (its frame indices, squashed to S×S)."""
    owl = frames == "mplug-owl"
    picked = sample_frames(path, num_frames, by_index=mplug_owl_frame_indices if owl else None)
    return preprocess(picked, size, keep_aspect=not owl)                   # (T, 3, S, S)


# --- readers --------------------------------------------------------------------------------------

class SkipCounter:
    """Counts skipped records by reason; prints the first `show` of them as "file:line: problem"."""

    def __init__(self, show: int = 5, stream=None):
        self.counts: Counter[str] = Counter()
        self.show, self.stream = show, stream

    def skip(self, where: str, error: DataError) -> None:
        self.counts[error.reason] += 1
        if self.total <= self.show:
            print(f"skipped {where}: {error}", file=self.stream or sys.stderr)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __str__(self) -> str:
        if not self.total:
            return "skipped 0 records"
        return f"skipped {self.total} records: " + ", ".join(f"{n} {r}" for r, n in self.counts.most_common())


# --- batches --------------------------------------------------------------------------------------

def collate(batch: list[dict | None], pad_id: int) -> dict | None:
    """Right-pad a list of examples into a batch (None entries, skipped examples, are dropped).

    Returns input_ids (B, L) long (padded with pad_id), labels (B, L) long (padded with −100),
    attention_mask (B, L) long (1 = real token), videos (V_total, T, 3, S, S) float or None,
    features (V_total, T, 1+P, D) float or None, and video_slots [(row, start, k_global)], k_global
    indexing the stacked videos / features. None when every example was skipped.
    """
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    L = max(len(b["input_ids"]) for b in batch)
    input_ids = torch.full((len(batch), L), pad_id, dtype=torch.long)          # (B, L)
    labels = torch.full((len(batch), L), IGNORE, dtype=torch.long)            # (B, L)
    attention_mask = torch.zeros((len(batch), L), dtype=torch.long)           # (B, L)
    pixels, features, slots = [], [], []
    for row, b in enumerate(batch):
        n = len(b["input_ids"])
        input_ids[row, :n] = torch.as_tensor(b["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.as_tensor(b["labels"], dtype=torch.long)
        attention_mask[row, :n] = 1
        mine = b.get("videos") if b.get("videos") is not None else b.get("features")
        offset = len(pixels) + len(features)
        for start, k in b["video_slots"]:
            if mine is None or not 0 <= k < len(mine):
                raise ValueError(f"example {row}: video slot at {start} refers to video {k} it does not hold")
            slots.append((row, start, offset + k))
        if b.get("videos") is not None:
            pixels.extend(b["videos"])                                       # V_i × (T, 3, S, S)
        elif b.get("features") is not None:
            features.extend(b["features"])                                   # V_i × (T, 1+P, D)
    if pixels and features:
        raise ValueError("a batch mixes pixel videos and cached features")
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
            "videos": torch.stack(pixels) if pixels else None,               # (V_total, T, 3, S, S)
            "features": torch.stack(features) if features else None,         # (V_total, T, 1+P, D)
            "video_slots": slots}


def feature_file(features_dir, video: str) -> Path:
    """Where a video's cached ViT features live: one safetensors file per video, named by its stem."""
    return Path(features_dir) / f"{Path(video).stem}.safetensors"


def save_features(features_dir, video: str, features: torch.Tensor) -> Path:
    """Cache one video's frozen-ViT output (T, 1+P, D); the file also records the video's name."""
    path = feature_file(features_dir, video)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": features.detach().contiguous().cpu()}, str(path), metadata={"video": Path(video).name})
    return path


class ConversationDataset(torch.utils.data.Dataset):
    """Tokenised conversations (encoded once, here) with their videos (loaded lazily, per item).

    An item is {"input_ids", "labels" (long tensors), "video_slots" [(start, k)], "videos" (V, T, 3, S, S)
    or "features" (V, T, 1+P, D) or neither, "source"}; only the videos that have a slot are loaded,
    numbered in slot order. Pixels come from `video.sample_frames` + `vision.preprocess`; with
    `features_dir` the frozen ViT's cached outputs are read instead (see `save_features`). Records that
    do not encode (too long, tokenization mismatch) are dropped here, and a video that fails to decode
    makes the item None (collate drops it); both are counted in `skips`. In DataLoader workers the
    counts stay in the worker's copy, but the first few skips are still printed.
    """

    def __init__(self, records: Iterable[dict], tokenizer, cfg: G4VConfig, root=None, features_dir=None,
                 loss_on: str = "ai", max_seq_len: int | None = None, skips: SkipCounter | None = None):
        self.cfg, self.root = cfg, Path(root) if root is not None else None
        self.features_dir = Path(features_dir) if features_dir is not None else None
        self.skips = skips if skips is not None else SkipCounter()
        self.items = []
        for record in records:
            try:
                enc = encode_conversation(tokenizer, record, loss_on, cfg.abstractor.num_output_tokens,
                                          max_seq_len or cfg.llama.max_seq_len)
            except DataError as e:
                self.skips.skip(record.get("source", "record"), e)
                continue
            order = list(dict.fromkeys(k for _, k in enc["video_slots"]))     # videos with a slot
            enc["video_slots"] = [(start, order.index(k)) for start, k in enc["video_slots"]]
            enc["videos"] = [record["videos"][k] for k in order]
            enc["source"] = record.get("source", "record")
            self.items.append(enc)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict | None:
        enc = self.items[i]
        item = {"input_ids": torch.tensor(enc["input_ids"]), "labels": torch.tensor(enc["labels"]),
                "video_slots": enc["video_slots"], "source": enc["source"], "videos": None, "features": None}
        if enc["videos"]:
            try:
                key = "features" if self.features_dir is not None else "videos"
                item[key] = torch.stack([self._load(v) for v in enc["videos"]])  # (V, T, ...)
            except DataError as e:
                self.skips.skip(enc["source"], e)
                return None
        return item

    def _load(self, video: str) -> torch.Tensor:
        path = self.root / video if self.root is not None else Path(video)
        cfg = self.cfg
        if self.features_dir is None:
            try:
                return video_pixels(path, cfg.num_frames, cfg.vision.image_size, cfg.frames)  # (T, 3, S, S)
            except VideoError as e:
                raise DataError(str(e), "video does not decode") from None
        file = feature_file(self.features_dir, video)
        if not file.is_file():
            raise DataError(f"{file}: no cached features for {video}", "features missing")
        try:
            with safe_open(str(file), framework="pt") as f:
                if (f.metadata() or {}).get("video", Path(video).name) != Path(video).name:
                    raise DataError(f"{file}: holds the features of {f.metadata()['video']}, not {video}",
                                    "features of another video")
                features = f.get_tensor("features")                           # (T, 1+P, D)
        except (SafetensorError, OSError, KeyError) as e:
            raise DataError(f"{file}: unreadable features ({e})", "features unreadable") from None
        want = (cfg.num_frames, cfg.vision.num_tokens, cfg.vision.dim)
        if tuple(features.shape) != want:
            raise DataError(f"{file}: features of shape {tuple(features.shape)}, expected {want}",
                            "features of the wrong shape")
        return features
