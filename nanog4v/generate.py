"""Sampling from the language model: greedy, temperature, top-k, top-p, repetition penalty, stop strings,
streaming, and batched generation with left padding and per-row stopping.

One decoding step turns the last position's logits z ∈ R^V into the next token id. The transforms run
in the order transformers uses, each a pure function so that tests and the notebook can show it:

    z ← repetition_penalty(z, history)     CTRL (Keskar et al. 2019): z_i/θ if z_i > 0 else z_i·θ, i seen
    greedy (T = 0):  next = argmax_i z_i    (top-k / top-p do not apply)
    otherwise:       z ← z / T              temperature
                     z ← top_k_filter(z, k) keep the k largest logits (exactly k), the rest −∞
                     z ← top_p_filter(z, p) nucleus (Holtzman et al. 2020): the smallest set of most
                                            likely tokens whose probability mass is ≥ p
                     next ~ softmax(z)      drawn with the row's own torch.Generator

Decoding uses the model's preallocated KV cache: one *prefill* forward over the whole prompt, then one
forward of a single token per step (`start_pos` = how many positions the cache already holds).
`decode="static"` / `"compile"` run those steps with static shapes instead, so that torch.compile and
CUDA graphs can capture them (nanog4v/fast_decode.py); the readable `"dynamic"` path is the default.

Batching (`generate`): prompts of different lengths are **left**-padded to a common length P so that
every row's next token sits in the same column; `attention_mask` (B, P + t) marks real positions with
1 and the model derives positions as cumsum(mask) − 1, exactly as for the row alone. A row that has
finished (eos or a stop string) keeps being fed `pad_id` with mask 0, so it never influences anything,
until every row is done.

Reproducibility: with `seed` set, row b draws from its own `torch.Generator` seeded with `seed + b`,
independent of the global RNG. So row b of a batched run samples exactly like a batch-1 run of the
same prompt with seed `seed + b` (`stream` is row 0), up to floating-point differences between the
batched and unbatched logits, which can only matter at a near-tie of the draw. Greedy decoding has no
randomness: batched and batch-1 results are equal token for token.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F

from .fast_decode import DECODES, StaticStep


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick each next token. The defaults are greedy decoding of up to 64 tokens."""
    max_new_tokens: int = 64
    temperature: float = 0.0          # 0 = greedy (argmax); else logits / temperature
    top_k: int = 0                    # 0 = off; else keep the k most likely tokens
    top_p: float = 1.0                # 1 = off; else nucleus sampling with mass p
    repetition_penalty: float = 1.0   # 1 = off; θ > 1 discourages ids already in prompt + output
    stop: tuple[str, ...] = ()        # generation ends where one of these appears in the text
    seed: int | None = None           # None = the global RNG; int = reproducible per-row generators

    def __post_init__(self):
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)   # accept a list or a single string
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            problems.append(f"max_new_tokens must be an int >= 0, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be an int >= 0, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not all(isinstance(s, str) and s for s in stop):
            problems.append(f"stop strings must be non-empty strings, got {stop!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            problems.append(f"seed must be None or an int, got {self.seed!r}")
        if problems:
            raise ValueError("SamplingConfig: " + "; ".join(problems))


class Decoder(Protocol):
    """Anything that turns ids back into text (nanog4v.tokenizer.Tokenizer, a SentencePieceProcessor)."""
    def decode(self, ids: list[int]) -> str: ...


# --- 1. the logit transforms (pure functions on (B, V) logits) -----------------------------------

def apply_repetition_penalty(logits: torch.Tensor, history: torch.Tensor | None,
                             penalty: float) -> torch.Tensor:
    """CTRL's penalty as transformers applies it: for every id that occurs in `history`,
    z_i ← z_i / θ if z_i > 0 else z_i · θ (so θ > 1 always makes a seen token less likely).

    logits (B, V); history (B, T) ids of the prompt and the output so far, negative entries (padding)
    ignored. Each id is penalised once, however often it occurred.
    """
    if penalty == 1.0 or history is None or history.numel() == 0:
        return logits
    valid = (history >= 0).to(logits.dtype)                                        # (B, T)
    seen = logits.new_zeros(logits.shape).scatter_add_(1, history.clamp(min=0), valid) > 0  # (B, V)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(z / T): T < 1 sharpens the distribution, T > 1 flattens it (T = 0 means greedy)."""
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits of each row (ties broken by `topk`); the rest become −∞."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    keep = torch.zeros_like(logits, dtype=torch.bool)
    keep.scatter_(-1, logits.topk(k, dim=-1).indices, True)                       # (B, V)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability mass is ≥ p.

    Sorted by probability, token j is kept iff the mass of the tokens *before* it is < p; so the most
    likely token is always kept, and the set stops at the first token that brings the mass to ≥ p.
    """
    if p >= 1.0:
        return logits
    probs, order = logits.softmax(-1).sort(dim=-1, descending=True, stable=True)   # (B, V) each
    mass_before = F.pad(probs.cumsum(-1)[..., :-1], (1, 0))                         # exclusive cumsum
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, mass_before < p)
    return logits.masked_fill(~keep, float("-inf"))


def make_generators(seed: int | None, batch: int, device: torch.device | str = "cpu"
                    ) -> list[torch.Generator] | None:
    """One generator per row, row b seeded with seed + b (None: use the global RNG)."""
    if seed is None:
        return None
    return [torch.Generator(device=device).manual_seed(seed + b) for b in range(batch)]


def sample_next(logits: torch.Tensor, history: torch.Tensor | None, cfg: SamplingConfig,
                generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """The next token id of each row: logits (B, V) → ids (B,). See the module docstring for the order."""
    z = apply_repetition_penalty(logits.float(), history, cfg.repetition_penalty)
    if cfg.temperature == 0:
        return z.argmax(-1)                                                       # (B,)
    z = top_p_filter(top_k_filter(apply_temperature(z, cfg.temperature), cfg.top_k), cfg.top_p)
    probs = z.softmax(-1)                                                          # (B, V)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    if len(generators) != probs.shape[0]:
        raise ValueError(f"sample_next: {len(generators)} generators for a batch of {probs.shape[0]}")
    return torch.cat([torch.multinomial(probs[b:b + 1], 1, generator=g).view(1)
                      for b, g in enumerate(generators)])                         # (B,)


# --- 2. stop strings ------------------------------------------------------------------------------

class StopScanner:
    """Watches one row's growing continuation for stop strings and says which tokens are safe to emit.

    Tokens and text do not line up: a stop string such as "###" may arrive in pieces ("##", "#"), and
    one token may hold text on both sides of where a stop string begins. So after each token:
      - text = decode(continuation); if a stop string occurs in it, the continuation ends at its first
        occurrence `cut`, and the result is the longest run of tokens whose text ends at or before
        `cut`: the stop string is never part of the result, and a token that *straddles* its start
        is dropped with it (the decoded result is then a prefix of the text before the stop string);
      - otherwise the tail of the text that is still a prefix of some stop string is held back:
        tokens whose text ends inside it are emitted only once it is clear they are not a stop string
        (or when generation ends for another reason: eos or max_new_tokens release everything).
    A token's text "ends" at len(decode(ids[:k])), counted only while decode(ids[:k]) is a prefix of
    the full text, so a token that ends inside a multi-byte UTF-8 character (decoded as '�') waits
    until the character is complete.
    The continuation is decoded on its own: a tokenizer that drops a leading space at the start of
    a decode (SentencePiece) cannot match a stop string's leading space at the very first token.
    """

    def __init__(self, tokenizer: Decoder, stops: Sequence[str]):
        self.tokenizer, self.stops = tokenizer, tuple(stops)
        self.longest = max(len(s) for s in self.stops)
        self.safe = 0             # how many leading tokens are known to be outside any stop string
        self.stopped = False

    def update(self, ids: list[int]) -> tuple[int, bool]:
        """ids: the whole continuation so far. Returns (tokens safe to emit, whether a stop string hit)."""
        text = self.tokenizer.decode(ids)
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        self.stopped = bool(hits)
        if hits:
            limit = min(hits)
        else:   # also hold a trailing '�': bytes of a character still arriving may complete a stop string
            limit = min(self._held_from(text), len(text.rstrip("\ufffd")))
        for k in range(self.safe + 1, len(ids) + 1):
            head = self.tokenizer.decode(ids[:k])
            if len(head) <= limit and text.startswith(head):
                self.safe = k
        return self.safe, self.stopped

    def _held_from(self, text: str) -> int:
        """The first index i such that text[i:] could still grow into a stop string (else len(text))."""
        for i in range(max(0, len(text) - self.longest + 1), len(text)):
            if any(s.startswith(text[i:]) for s in self.stops):
                return i
        return len(text)


# --- 3. the decoding loop -------------------------------------------------------------------------

def _left_pad(model, prompts, embeds, pad_id):
    """Left-pad the prompts (id lists) or prompt embeddings ((L_i, dim) tensors) to one length P.

    Returns tokens (B, P) or None, embeds (B, P, dim) or None, mask (B, P) long (1 = real),
    history (B, P) ids with −1 at the padding, or (B, 0) for embeddings (their ids are unknown).
    """
    if (prompts is None) == (embeds is None):
        raise ValueError("generate: pass exactly one of prompts (id lists) or embeds (tensors)")
    rows = prompts if prompts is not None else embeds
    if len(rows) == 0 or any(len(r) == 0 for r in rows):
        raise ValueError("generate: every prompt needs at least one token")
    param = next(model.parameters())
    lengths = [len(r) for r in rows]
    B, P = len(rows), max(lengths)
    mask = torch.zeros(B, P, dtype=torch.long, device=param.device)
    for b, n in enumerate(lengths):
        mask[b, P - n:] = 1
    if prompts is not None:
        history = torch.full((B, P), -1, dtype=torch.long)
        for b, ids in enumerate(prompts):
            history[b, P - len(ids):] = torch.tensor(ids, dtype=torch.long)
        history = history.to(param.device)
        tokens = history.clamp(min=0).masked_fill(mask == 0, pad_id)                # (B, P)
        return tokens, None, mask, history
    dim = rows[0].shape[-1]
    if any(e.dim() != 2 or e.shape[-1] != dim for e in rows):
        raise ValueError(f"generate: embeds must be (L_i, {dim}) tensors, got "
                         f"{[tuple(e.shape) for e in rows]}")
    padded = torch.zeros(B, P, dim, dtype=param.dtype, device=param.device)         # (B, P, dim)
    for b, e in enumerate(rows):
        padded[b, P - len(e):] = e.to(padded)
    return None, padded, mask, torch.empty(B, 0, dtype=torch.long, device=param.device)


@torch.inference_mode()
def _decode(model, tokens, embeds, mask, history, cfg: SamplingConfig, pad_id: int,
            finished: torch.Tensor, decode: str = "dynamic") -> Iterator[torch.Tensor]:
    """Prefill, then yield the sampled ids (B,) of each step and feed them back through the KV cache.

    `finished` (B,) bool is owned by the caller, who marks rows done between steps; a finished row is
    fed `pad_id` with mask 0 from then on. The loop ends when every row is finished or after
    cfg.max_new_tokens steps; the cache is released when the generator closes. `decode` picks the
    forward of the steps after the prefill (see DECODES and nanog4v/fast_decode.py).
    """
    B, P = mask.shape
    if cfg.max_new_tokens == 0:
        return
    param = next(model.parameters())
    if cfg.repetition_penalty == 1.0:
        history = None                                     # nothing to keep track of
    generators = make_generators(cfg.seed, B, param.device)
    mask = F.pad(mask, (0, cfg.max_new_tokens), value=1)   # (B, P + max_new): new tokens real, a finished row's 0
    padded = bool((mask[:, :P] == 0).any())
    static = None
    if decode == "dynamic":
        model.setup_cache(B, P + cfg.max_new_tokens, dtype=param.dtype, device=param.device)
    else:                                                  # static shapes, for torch.compile / CUDA graphs
        static = StaticStep(model, B, P + cfg.max_new_tokens, compile=decode == "compile")
    try:
        logits = model(tokens, embeds=embeds, start_pos=0,
                       attention_mask=mask[:, :P] if padded else None, last_only=True)  # (B, 1, V)
        for step in range(cfg.max_new_tokens):
            next_ids = sample_next(logits[:, -1], history, cfg, generators)          # (B,)
            yield next_ids
            done = int(finished.sum())                     # rows the caller has marked finished
            if step + 1 == cfg.max_new_tokens or done == B:
                return
            pos = P + step                                 # where the new token goes in the cache
            feed = next_ids
            if done:                                       # (nothing to change while every row runs)
                feed = next_ids.masked_fill(finished, pad_id)
                mask[:, pos] = (~finished).long()
                padded = True
            if history is not None:
                history = torch.cat([history, feed.masked_fill(finished, -1)[:, None]], 1)
            if static is not None:
                logits = static(feed, pos, mask)           # (B, 1, V); the whole cache, masked
            else:
                logits = model(feed[:, None], start_pos=pos,
                               attention_mask=mask[:, :pos + 1] if padded else None, last_only=True)
    finally:
        model.clear_cache()


def generate(model, prompts: list[list[int]] | None = None, *,
             embeds: list[torch.Tensor] | None = None, cfg: SamplingConfig = SamplingConfig(),
             eos_id: int | None, pad_id: int = 0, tokenizer: Decoder | None = None,
             decode: str = "dynamic") -> list[list[int]]:
    """Batched generation: one continuation (a list of new ids, without eos) per prompt.

    prompts: token ids per row, or embeds: (L_i, dim) input embeddings per row (e.g. a prompt with
    video tokens spliced in). Rows stop independently at `eos_id` (not included), at a stop string
    of cfg.stop (not included; needs `tokenizer`; see StopScanner), or after cfg.max_new_tokens.
    The repetition penalty counts prompt and generated ids (generated only, for `embeds`).
    The model is used as it is: put it in eval mode first (LoRA dropout would otherwise stay on).
    decode: "dynamic" (the readable steps), "static" or "compile" (nanog4v/fast_decode.py); the same ids.
    """
    if cfg.stop and tokenizer is None:
        raise ValueError("generate: stop strings need a tokenizer (anything with decode(ids))")
    _check_decode("generate", decode)
    tokens, inputs, mask, history = _left_pad(model, prompts, embeds, pad_id)
    B = mask.shape[0]
    finished = torch.zeros(B, dtype=torch.bool, device=mask.device)
    done = [False] * B
    outs: list[list[int]] = [[] for _ in range(B)]
    scanners = [StopScanner(tokenizer, cfg.stop) for _ in range(B)] if cfg.stop else None
    with contextlib.closing(_decode(model, tokens, inputs, mask, history, cfg, pad_id, finished, decode)) as steps:
        for next_ids in steps:
            before = sum(done)
            for b, tok in enumerate(next_ids.tolist()):
                if done[b]:
                    continue
                if tok == eos_id:
                    done[b] = True
                    continue
                outs[b].append(tok)
                if scanners is not None:
                    safe, stopped = scanners[b].update(outs[b])
                    if stopped:
                        outs[b], done[b] = outs[b][:safe], True
            if sum(done) != before:
                finished.copy_(torch.tensor(done))
    return outs


def stream(model, prompt_ids: list[int] | None = None, *, embeds: torch.Tensor | None = None,
           cfg: SamplingConfig = SamplingConfig(), eos_id: int | None,
           tokenizer: Decoder | None = None, decode: str = "dynamic") -> Iterator[int]:
    """Generate for one prompt, yielding each token id as soon as it is known to belong to the result.

    prompt_ids: the prompt's ids, or embeds: (1, L, dim) input embeddings. Stops like `generate`
    (and yields the same ids). Without stop strings every token is yielded the moment it is
    sampled; with them, tokens that might start a stop string wait until that is ruled out.
    decode: as for `generate`.
    """
    if cfg.stop and tokenizer is None:
        raise ValueError("stream: stop strings need a tokenizer (anything with decode(ids))")
    _check_decode("stream", decode)
    if embeds is not None:
        if embeds.dim() != 3 or embeds.shape[0] != 1:
            raise ValueError(f"stream: embeds must be (1, L, dim), got {tuple(embeds.shape)}")
        embeds = [embeds[0]]
    tokens, inputs, mask, history = _left_pad(
        model, None if prompt_ids is None else [list(prompt_ids)], embeds, pad_id=0)
    return _stream(model, tokens, inputs, mask, history, cfg, eos_id, tokenizer, decode)


def _check_decode(who: str, decode: str) -> None:
    if decode not in DECODES:
        raise ValueError(f"{who}: decode must be one of {', '.join(DECODES)}, not {decode!r}")


def _stream(model, tokens, inputs, mask, history, cfg, eos_id, tokenizer, decode) -> Iterator[int]:
    finished = torch.zeros(1, dtype=torch.bool, device=mask.device)
    scanner = StopScanner(tokenizer, cfg.stop) if cfg.stop else None
    out: list[int] = []
    emitted = 0
    with contextlib.closing(_decode(model, tokens, inputs, mask, history, cfg, 0, finished, decode)) as steps:
        for next_ids in steps:
            tok = int(next_ids[0])
            if tok == eos_id:
                break
            out.append(tok)
            safe, stopped = scanner.update(out) if scanner is not None else (len(out), False)
            yield from out[emitted:safe]
            emitted = safe
            if stopped:
                return
    yield from out[emitted:]        # eos or max_new_tokens: held-back tokens were not a stop string
