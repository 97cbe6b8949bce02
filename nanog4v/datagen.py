"""Data construction (paper §3.4): from video captions to GPT4Video-50k-style dialogues.

The paper gave GPT-4 captions from WebVid-10M and asked it to write dialogues in which the assistant,
at the right moment, "shows" a video by writing a text-to-video prompt between tags: `<video> … </video>`
for one video, `<video1> … </video1>`, `<video2> … </video2>` when several videos appear. For the
multi-video dialogues, semantically related captions were found by retrieval: embed every caption, take
the 10 most similar by cosine similarity, and pick one or two of them at random. The pipeline here:

    read_captions(table)                 CSV / JSONL / JSON of {id, caption} (WebVid's videoid/name too)
    embedder(texts) -> (n, d)            pluggable; default TfidfEmbedder (numpy, offline, no download)
    top_k_related(emb, k=10)             (n, k) neighbour indices by cosine, self excluded
    single_video_prompt / multi_video_prompt -> the instruction we give the dialogue writer
    writer.write(prompt) -> str          pluggable: OpenAIChatWriter (API), LocalLlamaWriter (a local chat
                                         LLaMA, nanog4v/llm_writer.py) or TemplateWriter (toy world)
    parse_dialogue(text, n_videos)       turns, with every video tag checked (open/close, numbering)
    build_dialogues(...) -> records      JSON records {"id", "kind", "sources", "conversations": [...]}

The prompt text is ours (the paper does not publish GPT-4's prompt); it asks for exactly what the paper
describes. Run: python -m nanog4v.datagen --captions captions.csv --out dialogues.jsonl
[--writer template | openai --model gpt-4 | local --llm DIR [--chat-template llama2|vicuna|plain]]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import sys
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

# --- 1. the caption table -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Caption:
    id: str
    caption: str


def read_captions(path: str | Path, strict: bool = False) -> list[Caption]:
    """Rows of {id, caption} (or WebVid's {videoid, name}) from .csv, .jsonl or .json.

    A row without an id or a caption is skipped and counted (one line on stderr), or raises with
    `file:line` under `strict`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such caption table")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = [(i + 2, row) for i, row in enumerate(csv.DictReader(f))]  # line 1 is the header
    elif path.suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        try:
            rows = (json.loads(text) if path.suffix == ".json" else
                    [(i, json.loads(line)) for i, line in enumerate(text.splitlines(), 1) if line.strip()])
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if path.suffix == ".json":
            if not isinstance(rows, list):
                raise ValueError(f"{path}: expected a JSON list of {{id, caption}} objects")
            rows = list(enumerate(rows, 1))  # "line" = position in the list
    else:
        raise ValueError(f"{path}: caption table must be .csv, .jsonl or .json")
    captions, skipped = [], Counter()
    for line, row in rows:
        row = row if isinstance(row, dict) else {}
        cid, text = row.get("id", row.get("videoid")), row.get("caption", row.get("name"))
        reason = ("no id" if cid in (None, "") else
                  "no caption" if not isinstance(text, str) or not text.strip() else None)
        if reason:
            if strict:
                raise ValueError(f"{path}:{line}: {reason}")
            skipped[reason] += 1
            continue
        captions.append(Caption(str(cid), " ".join(text.split())))
    if skipped:
        print(f"{path}: skipped {sum(skipped.values())} rows ({dict(skipped)})", file=sys.stderr)
    return captions


# --- 2. embedding and retrieval ---------------------------------------------------------------------

Embedder = Callable[[list[str]], np.ndarray]   # texts -> (n, d); any sentence encoder fits here


def tokenize(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class TfidfEmbedder:
    """TF-IDF vectors, fitted on the texts they embed (the default embedder: numpy only, offline).

    w(t, d) = tf(t, d) · idf(t), tf = raw count of term t in text d, idf(t) = ln((1 + n) / (1 + df(t))) + 1
    (the smoothed idf: a term in every text still counts a little). Rows are L2-normalised, so a dot
    product is the cosine. Memory is n × V floats: use `max_features` (most frequent terms) or a
    sentence encoder for millions of captions.
    """

    def __init__(self, max_features: int | None = None):
        self.max_features = max_features

    def __call__(self, texts: list[str]) -> np.ndarray:
        docs = [Counter(tokenize(t)) for t in texts]
        df = Counter(term for doc in docs for term in doc)
        terms = sorted(df, key=lambda t: (-df[t], t))[:self.max_features]
        column = {t: j for j, t in enumerate(terms)}
        tf = np.zeros((len(texts), len(terms)), dtype=np.float32)                   # (n, V)
        for i, doc in enumerate(docs):
            for term, count in doc.items():
                if term in column:
                    tf[i, column[term]] = count
        idf = np.array([math.log((1 + len(texts)) / (1 + df[t])) + 1 for t in terms], dtype=np.float32)
        return normalize(tf * idf)                                                  # (n, V)


def normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1)


def top_k_related(emb: np.ndarray, k: int = 10, groups: np.ndarray | None = None,
                  chunk: int = 1024) -> np.ndarray:
    """(n, d) embeddings -> (n, k) indices of the k most cosine-similar rows, best first.

    A row never retrieves itself, nor any row with the same `groups` id (e.g. the same caption text).
    Equal similarities are ordered by index; a row with fewer than k candidates is padded with -1.
    """
    e = normalize(np.asarray(emb, dtype=np.float32))                               # (n, d)
    n = len(e)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    kk = min(k, n)
    out = np.full((n, k), -1, dtype=np.int64)
    if kk == 0:
        return out
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        sims = e[rows] @ e.T                                                        # (c, n) cosines
        sims[groups[rows, None] == groups[None, :]] = -np.inf                       # self, same text
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]                        # (c, kk) unordered
        val = np.take_along_axis(sims, top, axis=1)
        order = np.lexsort((top, -val), axis=1)                                     # by -cos, then index
        top, val = np.take_along_axis(top, order, 1), np.take_along_axis(val, order, 1)
        out[rows, :kk] = np.where(np.isfinite(val), top, -1)
    return out


def pick_related(neighbours: np.ndarray, rng: np.random.Generator, max_pick: int = 2) -> list[int]:
    """The paper's pairing: one or two captions drawn at random from a caption's top-k."""
    candidates = neighbours[neighbours >= 0]
    m = min(int(rng.integers(1, max_pick + 1)), len(candidates))
    return [int(j) for j in rng.choice(candidates, size=m, replace=False)]


# --- 3. the prompts for the dialogue writer -----------------------------------------------------------

_RULES = """Write each turn on its own line, starting with "Human:" or "AI:"; the human speaks first, \
and there are 2 to 4 exchanges. Never mention captions, tags or prompts to the human. The text between \
the tags is a prompt for a text-to-video model: one concrete sentence saying what should be seen, based on \
the caption. Only the AI writes tags, and every opening tag is closed."""


def single_video_prompt(caption: str) -> str:
    """§3.4, single video: the assistant shows one video, as `<video> prompt </video>`."""
    return ("You are writing training dialogues for GPT4Video, an AI assistant that can show videos. "
            "Below is the caption of one video. Write a natural conversation between a curious human and "
            "the AI in which the human asks for a video, or talks about a topic where a video helps, and "
            "the AI, at the most appropriate moment, shows the video exactly once by writing "
            "<video> a description of the video </video> in its reply, then keeps being helpful.\n"
            f"{_RULES}\n\nVideo 1: {caption}\n")


def multi_video_prompt(captions: list[str]) -> str:
    """§3.4, several related videos: the k-th is shown as `<videoK> prompt </videoK>`."""
    listing = "\n".join(f"Video {k}: {c}" for k, c in enumerate(captions, 1))
    tags = ", ".join(f"<video{k}> ... </video{k}>" for k in range(1, len(captions) + 1))
    return ("You are writing training dialogues for GPT4Video, an AI assistant that can show videos. "
            f"Below are the captions of {len(captions)} related videos. Write a natural conversation "
            "between a curious human and the AI in which the AI, each at the most appropriate moment, "
            f"shows every one of these videos by writing {tags} in its replies, for example showing "
            "one video, and a related one when the human asks for more or for a variation.\n"
            f"{_RULES}\n\n{listing}\n")


def captions_in_prompt(prompt: str) -> list[str]:
    return re.findall(r"^Video \d+: (.+)$", prompt, flags=re.M)


# --- 4. dialogue writers -------------------------------------------------------------------------------

class DialogueWriter(Protocol):
    def write(self, prompt: str) -> str: ...


class OpenAIChatWriter:
    """An API model (the paper used GPT-4) through any OpenAI-compatible /chat/completions endpoint."""

    def __init__(self, model: str = "gpt-4", api_key: str | None = None,
                 base_url: str = "https://api.openai.com/v1", temperature: float = 1.0, timeout: float = 120):
        self.model, self.api_key, self.base_url = model, api_key, base_url.rstrip("/")
        self.temperature, self.timeout = temperature, timeout

    def write(self, prompt: str) -> str:
        key = self.api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise RuntimeError("datagen.py: no API key: pass api_key or set OPENAI_API_KEY")
        body = {"model": self.model, "temperature": self.temperature,
                "messages": [{"role": "user", "content": prompt}]}
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]


def _in_sentence(caption: str) -> str:
    """'Aerial view of a city' -> 'aerial view of a city' (acronyms such as 'UFO' are left alone)."""
    first = caption.split(" ", 1)[0]
    return caption if len(first) > 1 and first.isupper() else caption[:1].lower() + caption[1:]


class TemplateWriter:
    """The toy world's stand-in for GPT-4: fills dialogue templates with the captions of the prompt.

    Deterministic: the same (seed, prompt) always gives the same dialogue, whatever the call order.
    """
    ASK = ["Can you show me a video of {c}?", "I'd love to see {c}.", "Please show me {c}.",
           "Could you make a short clip of {c}?"]
    SHOW = ["Sure! Here it is: {v}", "Of course. {v}", "Here is a video of that: {v}",
            "Happy to help. Here you go: {v}"]
    MORE = ["Can you show me something related?", "Nice! Do you have a similar one?",
            "Show me a variation, please."]
    SHOW_MORE = ["Here is a related one: {v}", "Sure, how about this: {v}", "Of course: {v}"]
    FOLLOW = [("What happens in it?", "It shows {c}."), ("Thanks, that is what I wanted.",
              "You're welcome! Ask me any time you want to see something else.")]

    def __init__(self, seed: int = 0):
        self.seed = seed

    def write(self, prompt: str) -> str:
        caps = [_in_sentence(c.rstrip(". ")) for c in captions_in_prompt(prompt)]
        if not caps:
            raise ValueError("datagen.py: TemplateWriter found no 'Video k: caption' lines in the prompt")
        rng = random.Random(f"{self.seed}:{prompt}")
        tag = (lambda k, c: f"<video> {c} </video>") if len(caps) == 1 else \
              (lambda k, c: f"<video{k}> {c} </video{k}>")
        lines = [f"Human: {rng.choice(self.ASK).format(c=caps[0])}",
                 f"AI: {rng.choice(self.SHOW).format(v=tag(1, caps[0]))}"]
        for k, c in enumerate(caps[1:], 2):
            lines += [f"Human: {rng.choice(self.MORE)}",
                      f"AI: {rng.choice(self.SHOW_MORE).format(v=tag(k, c))}"]
        if rng.random() < 0.5:
            ask, answer = rng.choice(self.FOLLOW)
            lines += [f"Human: {ask}", f"AI: {answer.format(c=caps[-1])}"]
        return "\n".join(lines)


# --- 5. parsing and checking what a writer wrote -----------------------------------------------------

class DialogueError(ValueError):
    """A written dialogue that cannot be used; the message is the reason (counted by build_dialogues)."""


_TAG = re.compile(r"<(/?)video(\d*)>")


def video_tags(text: str, n_videos: int) -> list[tuple[int, str]]:
    """[(k, prompt)] for every `<video> … </video>` (k = 1) or `<videoK> … </videoK>` in the text.

    One video must use the bare tag, several must use numbered tags 1..n; each tag is closed by its
    own closing tag before the next one opens, and the prompt between them is not empty.
    """
    shown, open_k, open_end = [], None, 0
    for m in _TAG.finditer(text):
        closing, num = m.group(1) == "/", m.group(2)
        if (n_videos == 1) != (num == ""):
            raise DialogueError(f"tag {m.group(0)} in a {n_videos}-video dialogue")
        k = int(num or 1)
        if not 1 <= k <= n_videos:
            raise DialogueError(f"tag {m.group(0)} but only {n_videos} videos")
        if not closing and open_k is None:
            open_k, open_end = k, m.end()
        elif closing and open_k == k:
            if not text[open_end:m.start()].strip():
                raise DialogueError(f"empty prompt in {m.group(0)}")
            shown.append((k, text[open_end:m.start()].strip()))
            open_k = None
        else:
            raise DialogueError(f"unbalanced tag {m.group(0)}")
    if open_k is not None:
        raise DialogueError(f"tag for video {open_k} never closed")
    return shown


def parse_dialogue(text: str, n_videos: int) -> list[dict]:
    """"Human: …" / "AI: …" lines -> [{"from": "human"|"ai", "value": str}], tags checked."""
    turns: list[dict] = []
    for line in text.strip().splitlines():
        m = re.match(r"^\s*(?:###\s*)?(Human|AI)\s*:\s*(.*)$", line)
        if m:
            turns.append({"from": m.group(1).lower(), "value": m.group(2).strip()})
        elif turns and line.strip():
            turns[-1]["value"] += "\n" + line.strip()   # a turn that spans several lines
    if len(turns) < 2 or turns[0]["from"] != "human":
        raise DialogueError("not a dialogue starting with the human")
    if any(a["from"] == b["from"] for a, b in zip(turns, turns[1:])):
        raise DialogueError("turns do not alternate")
    shown = set()
    for turn in turns:
        tags = video_tags(turn["value"], n_videos)
        if tags and turn["from"] == "human":
            raise DialogueError("a video tag in a human turn")
        shown |= {k for k, _ in tags}
    if shown != set(range(1, n_videos + 1)):
        raise DialogueError(f"videos never shown: {sorted(set(range(1, n_videos + 1)) - shown)}")
    return turns


# --- 6. the whole construction -----------------------------------------------------------------------

def build_dialogues(captions: list[Caption], writer: DialogueWriter, n_single: int, n_multi: int,
                    embedder: Embedder | None = None, k: int = 10, seed: int = 0):
    """Single-video and multi-video dialogues -> (records, Counter of skip reasons).

    Captions for the single dialogues, and the anchor caption of each multi dialogue, are drawn without
    replacement (seeded); each anchor gets one or two related captions from its top-k neighbours.
    """
    rng = np.random.default_rng(seed)
    records, skipped = [], Counter()
    jobs = [("single", [int(i)]) for i in rng.permutation(len(captions))[:n_single]]
    if n_multi > 0 and len(captions) > 1:
        texts = [c.caption for c in captions]
        same_text = np.unique([t.lower() for t in texts], return_inverse=True)[1]
        neighbours = top_k_related((embedder or TfidfEmbedder())(texts), k, groups=same_text)  # (n, k)
        jobs += [("multi", [int(i)] + pick_related(neighbours[i], rng))
                 for i in rng.permutation(len(captions))[:n_multi] if (neighbours[i] >= 0).any()]
    for kind, idx in jobs:
        caps = [captions[i] for i in idx]
        prompt = (single_video_prompt(caps[0].caption) if kind == "single"
                  else multi_video_prompt([c.caption for c in caps]))
        try:
            turns = parse_dialogue(writer.write(prompt), len(caps))
        except DialogueError as e:
            skipped[str(e)] += 1
            continue
        records.append({"id": f"{kind}-{len(records):06d}", "kind": kind,
                        "sources": [{"id": c.id, "caption": c.caption} for c in caps],
                        "conversations": turns})
    return records, skipped


def make_writer(args) -> DialogueWriter:
    """The --writer that main's arguments ask for."""
    if args.writer == "template":
        return TemplateWriter(args.seed)
    if args.writer == "openai":
        return OpenAIChatWriter(args.model)
    import torch

    from .llm_writer import LocalLlamaWriter
    return LocalLlamaWriter.from_pretrained(
        args.llm, args.tokenizer, dtype=torch.float32 if args.device == "cpu" else torch.bfloat16,
        device=args.device, template=args.chat_template, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="GPT4Video-50k-style dialogues from a caption table (§3.4).")
    ap.add_argument("--captions", required=True, help=".csv / .jsonl / .json of {id, caption}")
    ap.add_argument("--out", required=True, help="output .jsonl, one dialogue per line")
    ap.add_argument("--n-single", type=int, default=100)
    ap.add_argument("--n-multi", type=int, default=100)
    ap.add_argument("--k", type=int, default=10, help="retrieve related captions from the top k")
    ap.add_argument("--writer", choices=["template", "openai", "local"], default="template",
                    help="template: the toy world's; openai: an API model; local: a chat LLaMA (--llm)")
    ap.add_argument("--model", default="gpt-4", help="API model for --writer openai")
    ap.add_argument("--llm", help="--writer local: a Hugging Face LLaMA chat model directory")
    ap.add_argument("--tokenizer", help="--writer local: tokenizer.model (default: the one in --llm)")
    ap.add_argument("--chat-template", default="llama2",
                    help="--writer local: llama2 ([INST] … [/INST]), vicuna, plain, or a string with {prompt}")
    ap.add_argument("--temperature", type=float, default=0.7, help="--writer local: 0 = greedy")
    ap.add_argument("--max-new-tokens", type=int, default=512, help="--writer local")
    ap.add_argument("--device", default="cpu", help="--writer local: e.g. cuda")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.writer == "local" and not args.llm:
        ap.error("--writer local needs --llm DIR")
    try:
        captions = read_captions(args.captions)
        writer = make_writer(args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records, skipped = build_dialogues(captions, writer, args.n_single, args.n_multi, k=args.k,
                                       seed=args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    print(f"{args.out}: {len(records)} dialogues, {sum(skipped.values())} skipped {dict(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
