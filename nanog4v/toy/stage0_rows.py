"""How stage 0's documents become the LLaMA's training rows (stage0.pretrain_llama).

A document is a list of template parts (`data.Part`); `encode_document` tokenises and labels it exactly
as `data.encode_conversation(loss_on="ai")` does (Eq. 5: only the AI answers are targets). Documents go
into rows whole — packed several to a row (`pack`), or one to a row in batches of similar length
(`by_length`) — and `lm_batch` pads rows into next-token inputs and targets. A video slot holding a scene
as slot tokens (`stage0_objects.ObjectsPart`) becomes summed embeddings (`lm_forward`).
"""
from __future__ import annotations

import random

import torch

from ..data import IGNORE, Part, encode_parts
from ..llama import LLaMA
from ..tokenizer import Tokenizer
from .stage0_objects import ObjectsPart, bag_batch, bag_embeddings, slot_tokens


def encode_document(tokenizer: Tokenizer, parts: list[Part], slot_size: int = 0,
                    rng: random.Random | None = None) -> tuple[list, list[int]]:
    """(ids, labels) exactly as encode_conversation(loss_on="ai") makes them: only the AI answers
    and their </s> are targets (IGNORE elsewhere). A slot holding a scene (`ObjectsPart`) becomes its
    `slot_size` slot tokens, each a tuple of ids whose embeddings are summed (stage0_objects)."""
    ids, labels = [tokenizer.bos_id], [IGNORE]
    for part, part_ids in encode_parts(tokenizer, parts, 0):
        if isinstance(part, ObjectsPart):
            part_ids = slot_tokens(tokenizer, part.scene, slot_size, rng or random.Random(0))
        ids += part_ids
        labels += part_ids if part.kind in ("answer", "eos") else [IGNORE] * len(part_ids)
    return ids, labels


def pack(docs: list[tuple[list[int], list[int]]], length: int, rng: random.Random) -> list[tuple[list[int], list[int]]]:
    """Whole (ids, labels) documents, shuffled, packed greedily into rows of at most `length` tokens.
    A row starts at a document's <s>, so every question sits in the same row as the caption it asks
    about (a random window of one long stream would often cut them apart). A longer one is cut."""
    docs = rng.sample(docs, len(docs))
    rows, row = [], ([], [])
    for ids, labels in docs:
        if row[0] and len(row[0]) + len(ids) > length:
            rows.append(row)
            row = ([], [])
        row[0].extend(ids[:length])
        row[1].extend(labels[:length])
    return rows + [row] if row[0] else rows


def by_length(docs: list[tuple[list[int], list[int]]], length: int, tokens: int,
              rng: random.Random) -> list[list[tuple[list[int], list[int]]]]:
    """Batches of one document a row: shuffled, sorted by length (so little is padding), cut into batches
    of at most `tokens` tokens, the batches shuffled. No row holds two documents, so a question can only
    find the words of its own clip (packed, "the circle" may be an earlier document's)."""
    docs = sorted(((ids[:length], labels[:length]) for ids, labels in rng.sample(docs, len(docs))),
                  key=lambda d: len(d[0]))
    batches, batch = [], []
    for doc in docs:
        if batch and (len(batch) + 1) * len(doc[0]) > tokens:
            batches.append(batch)
            batch = []
        batch.append(doc)
    batches += [batch] if batch else []
    return rng.sample(batches, len(batches))


def lm_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows → inputs (B, L−1) and next-token targets (B, L−1), padding targeted IGNORE (−100). Rows with
    slot tokens give inputs (ids, weights), each (B, L−1, K) (stage0_objects.bag_batch)."""
    L = max(len(ids) for ids, _ in rows)
    y = torch.full((len(rows), L), IGNORE, dtype=torch.long)                   # (B, L)
    for i, (_, labels) in enumerate(rows):
        y[i, :len(labels)] = torch.tensor(labels)
    if any(isinstance(t, tuple) for ids, _ in rows for t in ids):
        ids, weights = bag_batch([ids for ids, _ in rows], pad_id)              # (B, L, K) each
        return (ids[:, :-1], weights[:, :-1]), y[:, 1:]
    x = torch.full((len(rows), L), pad_id, dtype=torch.long)                   # (B, L)
    for i, (ids, _) in enumerate(rows):
        x[i, :len(ids)] = torch.tensor(ids)
    return x[:, :-1], y[:, 1:]                                                  # (B, L−1) each


def lm_forward(model: LLaMA, x) -> torch.Tensor:
    """Logits (B, L, V) of lm_batch's inputs: ids, or (ids, weights) of slot tokens."""
    return model(x) if torch.is_tensor(x) else model(embeds=bag_embeddings(model, *x))
