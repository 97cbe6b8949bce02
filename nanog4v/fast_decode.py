"""A decode step whose shapes never change, so that it can be captured: CUDA graphs on a GPU
(`torch.compile(mode="reduce-overhead")`), plain `torch.compile` on a CPU. The recipe is gpt-fast's.

**Why static shapes.** The readable decode (generate.py `_decode`) feeds one token per step at
`start_pos`, a Python int, and attends over the keys written so far: step t multiplies a (B, H, 1, d)
query with P + t + 1 keys, a new shape at every step. A captured step cannot follow that:
  - a CUDA graph records a fixed sequence of kernel launches, with their sizes and memory addresses,
    and replays it; attention over P + t + 1 keys is a different launch at every t;
  - torch.compile specialises the code it generates on shapes and on Python ints (each new `start_pos`
    is a new constant): it would recompile every step, or fall back to dynamic shapes and no graphs.
It matters on a GPU: a batch-1 step of LLaMA-7B is hundreds of small kernels, each launched from Python,
and the launches, not the arithmetic, set the pace. Replaying one captured graph per step removes them.

**The static step** (`decode_step`) keeps every shape fixed by the cache and passes the position as data:
  - cache_pos (1,) is a tensor, not an int: the new key/value go to that column of the cache by
    `index_copy_` (`KVCache.write`), and the RoPE cos/sin are computed from positions derived from it;
  - attention runs over all S columns of the preallocated cache (B, Hkv, S, d) at every step;
  - a mask (B, 1, 1, S) says which columns the new token may see: column j ≤ cache_pos (the columns to
    its right are not written yet, or still hold an earlier generation's keys) that is a real token of
    row b (not left padding, not the pad a finished row is fed) or the token itself. A masked score is
    −∞ and gets softmax weight exactly 0, so attention over the S columns gives the readable path's
    weights on its P + t + 1 columns: the same logits up to float rounding;
  - row b's RoPE position is its number of real tokens up to cache_pos, minus 1 (as in
    `LLaMA._positions_and_mask`), so a left-padded row computes what it would alone: `generate`'s
    batches with left padding and per-row stopping run on this path too.
What changes between steps (the tokens, cache_pos, the real-token mask) is small tensors; a CUDA graph
copies them into its own input buffers at each replay.

Prefill is not captured: it stays the eager, dynamic-shape forward over the prompt (ids or embeddings),
writing columns [0, P) of the same cache. Sampling, stop strings and batching are generate.py's.

The cache holds P + max_new_tokens positions rounded up to `CACHE_BLOCK`, so prompts of different
lengths (a conversation grows turn by turn) share a few shapes and their compiled code; and it stays with
the model between calls (until `release`), so a captured graph finds its buffers where it recorded them.
The price: every step reads all S cached columns, not P + t + 1 (small next to reading the weights).

On a CPU the compiled step is correct but not faster: inside it `cpu_linear`'s one-row kernels are off
(inductor cannot lower the oneDNN op they call: `cpu_linear.linear` is plain `F.linear` while compiling)
and inductor's own matmuls stream the weights no faster; bf16 attention over S columns is slow there too (bench/decode.py). On a CPU it is
the test of what a GPU captures.

    generate/stream(..., decode="dynamic")   the readable path (default)
    generate/stream(..., decode="static")    this step, run eagerly (what gets captured; tests, bench)
    generate/stream(..., decode="compile")   this step under torch.compile; chat.py --fast-decode
"""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
import weakref

import torch
from torch import nn

from .llama import KVCache, rope_cos_sin

DECODES = ("dynamic", "static", "compile")
CACHE_BLOCK = 256                   # the static cache's length is a multiple of this
_CACHES: weakref.WeakKeyDictionary[nn.Module, list[KVCache]] = weakref.WeakKeyDictionary()


def decode_step(model, tokens: torch.Tensor, cache_pos: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """One new token per row, at cache column cache_pos (1,) → logits (B, 1, V) float32.

    tokens (B, 1) ids; real (B, S) bool, False at padding (left padding, the pad a finished row is fed),
    its columns right of cache_pos ignored; S is the attached cache's length. Every shape is fixed by B, S.
    """
    S = real.shape[1]
    k_idx = torch.arange(S, device=real.device)                               # (S,)
    written = k_idx <= cache_pos                                              # (S,) columns 0 … cache_pos
    positions = ((real & written).sum(-1, keepdim=True) - 1).clamp(min=0)     # (B, 1) RoPE positions
    mask = written & (real | (k_idx == cache_pos))                            # (B, S) True = may attend
    h = model.embed_tokens(tokens)                                            # (B, 1, D)
    cos, sin = rope_cos_sin(positions, model.cfg.head_dim, model.cfg.rope_theta, h.dtype)  # (B, 1, d)
    for layer in model.layers:
        h = layer(h, cos, sin, mask[:, None, None, :], cache_pos)             # (B, 1, D)
    return model.lm_head(model.norm(h)).float()                               # (B, 1, V)


@functools.cache
def compiled_step(device_type: str):
    """`decode_step` under torch.compile: CUDA graphs on a GPU, the default mode (C++ kernels) elsewhere."""
    return torch.compile(decode_step, mode="reduce-overhead" if device_type == "cuda" else None)


class StaticStep:
    """The decode step of one generation (generate.py `_decode`): attaches a static cache of at least
    `length` positions for `batch` rows to `model`; each call feeds one token per row."""

    def __init__(self, model, batch: int, length: int, compile: bool):
        param = next(model.parameters())
        S = -(-length // CACHE_BLOCK) * CACHE_BLOCK                           # length rounded up
        attach_cache(model, batch, S, param.dtype, param.device)
        self.model = model
        self.cache_pos = torch.zeros(1, dtype=torch.long, device=param.device)   # (1,)
        self.real = torch.ones(batch, S, dtype=torch.bool, device=param.device)   # (B, S)
        self.graphs = compile and param.device.type == "cuda"
        self.fn = compiled_step(param.device.type) if compile else decode_step

    def __call__(self, feed: torch.Tensor, pos: int, mask: torch.Tensor) -> torch.Tensor:
        """feed (B,) ids for cache column `pos`; mask (B, ≥ pos + 1) 1 = real token → logits (B, 1, V)."""
        self.real[:, :pos + 1] = mask[:, :pos + 1].bool()   # the columns to the right: hidden by cache_pos
        self.cache_pos.fill_(pos)
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()       # a new replay: earlier outputs may be overwritten
        logits = self.fn(self.model, feed[:, None], self.cache_pos, self.real)                # (B, 1, V)
        return logits.clone() if self.graphs else logits     # so the caller's copy survives the next replay


def attach_cache(model, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> None:
    """Give `model` a KV cache of batch × length positions: the one it had last time if that one fits
    exactly (same buffers, same addresses), else a new one, kept for next time."""
    caches = _CACHES.get(model)
    k = caches[0].k if caches else None
    if k is None or (k.shape[0], k.shape[2], k.dtype, k.device) != (batch, length, dtype, device):
        model.setup_cache(batch, length, dtype=dtype, device=device)
        _CACHES[model] = [layer.self_attn.cache for layer in model.layers]
        return
    for layer, cache in zip(model.layers, caches):
        layer.self_attn.cache = cache


def release(model) -> None:
    """Free the static cache kept for `model` (it is detached from the model after each generation)."""
    _CACHES.pop(model, None)


def compile_problem(device: str) -> str | None:
    """Why torch.compile cannot build the decode step on `device`, in one line; None when it can."""
    if device not in ("cuda", "cpu"):
        return f"the compiled decode step runs on cuda or cpu, not {device}"
    if device == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile on cuda needs triton (pip install triton)"
    cxx = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if device == "cpu" and shutil.which(cxx) is None:
        return f"torch.compile on the CPU needs a C++ compiler, and {cxx} is not on PATH (or set $CXX)"
    return None


__all__ = ["DECODES", "CACHE_BLOCK", "decode_step", "compiled_step", "StaticStep", "attach_cache", "release",
           "compile_problem"]
