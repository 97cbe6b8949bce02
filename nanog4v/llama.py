"""LLaMA (Touvron et al. 2023, arXiv 2302.13971), written out by hand.

    tokens (B, L) ─embed_tokens─▶ h (B, L, D)
    N × [ h = h + Attention(RMSNorm(h))            causal self-attention with RoPE, GQA, KV cache
          h = h + SwiGLU(RMSNorm(h)) ]
    RMSNorm ─lm_head─▶ logits (B, L, V)

Module and parameter names are the Hugging Face `LlamaForCausalLM` names without the `model.` prefix
(`embed_tokens`, `layers.3.self_attn.q_proj`, ..., `norm`, `lm_head`), so an official checkpoint
loads by stripping that prefix (`nanog4v.weights.load_llama`), LoRA targets read like peft's, and
`save_llama` writes back what transformers reads. Every matrix is a `cpu_linear.Linear`: an `nn.Linear`
whose CPU inference runs the kernel measured fastest on this machine (same parameters, same values). A
decode step of one token on the CPU runs all the layers below, the final norm and the LM head in one C call
(`cpu_decode.py`, the same arithmetic without PyTorch's per-op cost); this file stays the definition.

A forward can start from token ids or from input embeddings (GPT4Video splices its 65 video tokens
into the prompt as embeddings), at any `start_pos`, with an optional padding mask. With a KV cache
(`setup_cache`) each call appends its keys/values, so generation runs one prefill and then one token
per step; without one, forward is the plain causal training forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import cpu_decode
from .config import LlamaConfig
from .cpu_linear import Linear


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019): no centring, no bias.

        RMSNorm(x) = x / sqrt(mean_i(x_i²) + eps) · g

    Computed in fp32 and cast back to x's dtype *before* the gain g is applied, as HF LLaMA does,
    so bf16 results match the reference bit for bit.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))                     # g: (D,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles (RoFormer, Su et al. 2021) for integer `positions` (B, L).

        inv_freq_j = θ^(−2j/d),  j = 0 … d/2−1        angle(p, j) = p · inv_freq_j

    The d/2 angles are duplicated to d ("rotate_half" layout, see `apply_rope`). Computed in fp32
    on every call (a few tiny ops) rather than kept as a buffer that `model.to(bfloat16)` would
    round; cast to the activations' dtype at the end, like the reference.
    """
    j = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = 1.0 / (theta ** (j / head_dim))                         # (d/2,)
    angles = positions.float()[..., None] * inv_freq                    # (B, L, d/2)
    angles = torch.cat([angles, angles], dim=-1)                        # (B, L, d)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) ↦ (−x2, x1) on the two halves of the last axis."""
    x1, x2 = x.chunk(2, dim=-1)                                         # 2 × (..., d/2)
    return torch.cat([-x2, x1], dim=-1)                                 # (..., d)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each head's (x_j, x_{j+d/2}) pair by angle(p, j):  x' = x·cos + rotate_half(x)·sin.

    Meta's original code rotates *adjacent* pairs (x_2j, x_2j+1). Hugging Face checkpoints were
    converted with the rows of q_proj and k_proj permuted per head so that the half-split form above
    gives the same attention scores. We load HF-layout weights, so we use the half-split form; a raw
    Meta `consolidated.*.pth` would need that permutation first.

    x: (B, H, L, d); cos, sin: (B, L, d).
    """
    cos, sin = cos[:, None], sin[:, None]                               # (B, 1, L, d)
    return x * cos + rotate_half(x) * sin


class KVCache(nn.Module):
    """Keys and values of one attention layer, preallocated for `max_seq_len` positions.

    A static buffer (not a growing list of tensors) avoids reallocating: position p of row b lives at
    [b, :, p]. Keys are stored after RoPE. `update` (int start_pos) returns the positions written so
    far, a new length every step; `write` (tensor position) returns the whole buffer, for a decode
    step whose shapes never change (nanog4v/fast_decode.py).
    """

    def __init__(self, batch_size: int, max_seq_len: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, Hkv, L, d) at [start_pos, start_pos + L); return all keys/values so far."""
        B, _, L, _ = k.shape
        end = start_pos + L
        if B > self.k.shape[0] or end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[0]} rows × {self.k.shape[2]} positions; "
                             f"got {B} rows up to position {end} (call setup_cache with more)")
        self.k[:B, :, start_pos:end] = k
        self.v[:B, :, start_pos:end] = v
        return self.k[:B, :, :end], self.v[:B, :, :end]                 # 2 × (B, Hkv, end, d)

    def write(self, cache_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """The static decode step's write (nanog4v/fast_decode.py): k, v (B, Hkv, 1, d) into column
        cache_pos, a (1,) tensor, by `index_copy_`; returns the *whole* buffers (B, Hkv, max_seq_len, d),
        the same shapes at every step (the caller's mask hides the columns not written yet)."""
        if k.shape[0] != self.k.shape[0] or k.shape[2] != 1:
            raise ValueError(f"KVCache.write: one new position for all {self.k.shape[0]} rows, "
                             f"got {tuple(k.shape)}")
        self.k.index_copy_(2, cache_pos, k)
        self.v.index_copy_(2, cache_pos, v)
        return self.k, self.v                                           # 2 × (B, Hkv, max_seq_len, d)


PREFILL_BLOCK = 64       # queries a block in `causal_attention` on the CPU
BLOCKED_FROM = 320       # ... for prompts of at least this many tokens (shorter: one SDPA call, a tie)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool) -> torch.Tensor:
    """softmax(Q Kᵀ / √d + M) V with M the causal mask, for L queries over the same L keys (a prefill).

    q (B, H, L, d), k and v (B, Hkv, L, d) → (B, H, L, d). A long prompt's inference on the CPU runs in
    blocks of PREFILL_BLOCK queries, block [s, e) against keys [0, e) only, under its (e − s, e) mask:

        keys:                0 ........ s .... e ........ L
        queries s … e − 1:   ████████████▙                    keys after e never computed

    PyTorch's CPU attention kernel with is_causal=True took 17–27 % longer than these blocks for 512
    tokens (12 heads of 64, fp32 and bf16) and for LLaMA-7B's 350 × 32 heads of 128 (2 threads; the
    134M model's whole bf16 prefill of 320–512 tokens 3–4 % faster, bench/RESULTS.md); for 128 tokens
    it was faster, for 192–256 a tie, hence BLOCKED_FROM. A GPU, autograd and short prompts take one
    `scaled_dot_product_attention(is_causal=True)`. The same values up to the order of the sums.
    """
    L = q.shape[2]
    if q.device.type != "cpu" or L < BLOCKED_FROM or torch.is_grad_enabled():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    out = torch.empty_like(q)                                               # (B, H, L, d)
    for s in range(0, L, PREFILL_BLOCK):
        e = min(L, s + PREFILL_BLOCK)
        allowed = torch.ones(e - s, e, dtype=torch.bool, device=q.device).tril(s)   # key j ≤ query s + i
        out[:, :, s:e] = F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, :e], v[:, :, :e],
                                                        attn_mask=allowed, enable_gqa=gqa)
    return out


class Attention(nn.Module):
    """Multi-head causal self-attention with RoPE and grouped-query attention (GQA).

        Attention(Q, K, V) = softmax(Q Kᵀ / √d + M) V,   M = 0 where allowed, −∞ elsewhere

    GQA (Ainslie et al. 2023): n_kv_heads ≤ n_heads key/value heads, each shared by
    n_heads / n_kv_heads query heads (query head h reads kv head h // (n_heads / n_kv_heads)).
    LLaMA-1 has n_kv_heads = n_heads; LLaMA-2-70B and LLaMA-3 use fewer.
    """

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, start_pos):
        """x (B, L, D) → (B, L, D). `mask` (B, 1, L, S) bool (True = may attend) or None = causal.

        start_pos: an int (prefill and the readable decode), or a (1,) tensor for the static decode step
        of nanog4v/fast_decode.py, which attends over the whole cache under its `mask`."""
        q = rearrange(self.q_proj(x), "b l (h d) -> b h l d", d=self.head_dim)   # (B, H, L, d)
        k = rearrange(self.k_proj(x), "b l (h d) -> b h l d", d=self.head_dim)   # (B, Hkv, L, d)
        v = rearrange(self.v_proj(x), "b l (h d) -> b h l d", d=self.head_dim)   # (B, Hkv, L, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.cache is not None and isinstance(start_pos, torch.Tensor):   # the static decode step
            k, v = self.cache.write(start_pos, k, v)                     # (B, Hkv, max_seq_len, d)
        elif self.cache is not None:
            cached_k, cached_v = self.cache.update(start_pos, k, v)      # (B, Hkv, S, d), S = start_pos + L
            if start_pos > 0:  # a prefill (start 0) attends over its own contiguous k, v: same values, faster
                k, v = cached_k, cached_v
        # mask None: a chunk that starts at 0 is plain causal; a single new token sees every key.
        gqa = self.n_kv_heads != self.n_heads
        if mask is None and q.shape[2] > 1:
            out = causal_attention(q, k, v, gqa)                            # (B, H, L, d)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)  # (B, H, L, d)
        return self.o_proj(rearrange(out, "b h l d -> b l (h d)"))       # (B, L, D)


class MLP(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): MLP(x) = W_down (SiLU(W_gate x) ⊙ W_up x), SiLU(z) = z·σ(z)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))   # (B, L, D)


class Block(nn.Module):
    """One pre-norm decoder layer:  h = x + Attn(RMSNorm(x));  out = h + MLP(RMSNorm(h))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, start_pos):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, start_pos)
        return h + self.mlp(self.post_attention_layernorm(h))


class LLaMA(nn.Module):
    """The decoder-only language model; forward returns next-token logits (B, L, V) in float32."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        if cfg.dim % cfg.n_heads or cfg.n_heads % cfg.n_kv_heads:
            raise ValueError(f"LlamaConfig: dim {cfg.dim} must divide by n_heads {cfg.n_heads}, "
                             f"and n_heads by n_kv_heads {cfg.n_kv_heads}")
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        self.tie_weights()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """N(0, 0.02) for every matrix, like HF's `initializer_range` (used when training from scratch)."""
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def tie_weights(self) -> None:
        """With tied embeddings the LM head *is* the embedding matrix (one parameter, two uses)."""
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    # --- KV cache ---------------------------------------------------------------------------------
    def setup_cache(self, batch_size: int, max_seq_len: int, dtype=None, device=None) -> None:
        """Preallocate K/V for `batch_size` rows × `max_seq_len` positions in every layer.

        Default dtype/device: the model's. Positions may exceed `cfg.max_seq_len` (RoPE is defined
        for any position), but the model was not trained there.
        """
        w = self.embed_tokens.weight
        for layer in self.layers:
            layer.self_attn.cache = KVCache(batch_size, max_seq_len, self.cfg.n_kv_heads,
                                            self.cfg.head_dim, dtype or w.dtype, device or w.device)

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.self_attn.cache = None

    @property
    def has_cache(self) -> bool:
        return self.layers[0].self_attn.cache is not None

    # --- forward ------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor | None = None, *, embeds: torch.Tensor | None = None,
                start_pos: int = 0, attention_mask: torch.Tensor | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Logits for tokens (B, L) or input embeddings (B, L, D) placed at positions start_pos….

        attention_mask (B, start_pos + L): 1 = real token, 0 = padding (left padding in batched
        generation, right padding in training). As in HF, a token's position is the number of real
        tokens before it (cumsum(mask) − 1), so a left-padded row computes exactly what it would
        alone; padded keys are never attended to. Without a mask, positions are start_pos … .
        With a cache, keys/values are written at [start_pos, start_pos + L) and attention covers
        [0, start_pos + L); without one, only this call's L tokens. `last_only` returns (B, 1, V)
        for the last position only (saves the (L, V) head matmul in a prefill).
        """
        if (tokens is None) == (embeds is None):
            raise ValueError("LLaMA.forward: pass exactly one of tokens (B, L) or embeds (B, L, dim)")
        # one new token on the CPU: the whole step in C (cpu_decode.py); None: PyTorch's forward below
        logits = cpu_decode.step(self, tokens, embeds, start_pos, attention_mask, rope_cos_sin)
        if logits is not None:
            return logits                                                # (1, 1, V)
        if embeds is None:
            h = self.embed_tokens(tokens)                                # (B, L, D)
        else:
            h = embeds.to(self.embed_tokens.weight.dtype)                # (B, L, D)
        B, L, _ = h.shape
        cached = self.has_cache
        positions, mask = self._positions_and_mask(B, L, start_pos, attention_mask, cached, h.device)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, h.dtype)  # (B, L, d)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, start_pos)                      # (B, L, D)
        if last_only:
            h = h[:, -1:]                                                # (B, 1, D)
        return self.lm_head(self.norm(h)).float()                        # (B, L, V)

    @staticmethod
    def _positions_and_mask(B, L, start_pos, attention_mask, cached, device):
        """Positions (B, L) for RoPE and the boolean attention mask (B, 1, L, S) or None.

        Query i (absolute index start_pos + i) may attend to key j when j ≤ its index (causal) and
        key j is a real token. A padding query also attends to itself, so no row of the softmax
        is empty: an all-masked row would give NaN, and NaN × 0 would leak into real rows.
        """
        q_idx = torch.arange(L, device=device) + (start_pos if cached else 0)      # (L,)
        S = start_pos + L if cached else L
        if attention_mask is None:
            positions = (torch.arange(L, device=device) + start_pos).expand(B, L)  # (B, L)
            if L == 1 or S == L:
                return positions, None                                   # attend all / plain causal
            k_idx = torch.arange(S, device=device)                       # (S,)
            return positions, (k_idx[None, :] <= q_idx[:, None]).expand(B, 1, L, S)
        if attention_mask.shape != (B, start_pos + L):
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} is not (B, start_pos + L)")
        real = attention_mask.to(device=device, dtype=torch.bool)        # (B, start_pos + L)
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)[:, -L:]    # (B, L)
        k_idx = torch.arange(S, device=device)                           # (S,)
        causal = k_idx[None, :] <= q_idx[:, None]                        # (L, S)
        itself = k_idx[None, :] == q_idx[:, None]                        # (L, S)
        mask = causal & (real[:, None, -S:] | itself)                    # (B, L, S)
        return positions, mask[:, None]                                  # (B, 1, L, S)


def num_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["LLaMA", "RMSNorm", "rope_cos_sin", "rotate_half", "apply_rope", "KVCache", "causal_attention",
           "Attention", "MLP", "Block", "num_parameters"]
