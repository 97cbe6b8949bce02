"""The video abstractor (paper §3.2, Eq. 1–4) and the projection into the LLM's embedding space.

The frozen ViT turns T frames into T·(1+P) tokens (4·257 = 1028 at `7b`): far too many to hand to the
LLM. The abstractor squeezes them into N learned *query* tokens with cross-attention (Eq. 1):

    Attn(Q, K, V) = softmax(Q Kᵀ / √d) V                                                     (1)
    F_s = CrossAttn^L(Q_s, [F_v; Q_s])    spatial stream, N_s × D                             (2)
    F_t = CrossAttn^L(Q_t, [F_v; Q_t])    temporal stream, N_t × D                            (3)
    F̂_v = F_s + F_t                       (N_s = N_t = N)                                     (4)
    F_video = W F̂_v + b                   projection into the LLM, N × d_llm

Each of the L layers is mPLUG-Owl's abstractor layer (the paper builds on mPLUG-Owl and is silent on the
layer): the queries are normed (norm1), the frame tokens are normed (normk), the keys and values are
computed from the concatenation of both (mPLUG-Owl puts the queries first; attention is a weighted sum
over a *set*, so this equals the paper's [F_v; Q] order), the residual starts from the *normed* queries,
and the MLP is SwiGLU with a LayerNorm inside: w2(ffn_ln(silu(w1 x) ⊙ w3 x)).

How the two streams see the frame structure (our choice; the paper does not say):
  * the **temporal** stream adds a learned per-frame embedding E_t[t] to every token of frame t, so it
    can tell frames apart and order them (what moved where, and in which direction);
  * the **spatial** stream sees the frame tokens as they come out of the ViT. They already carry
    *where in the frame* they are (CLIP added its per-patch position embedding at the input and the
    residual stream keeps it), but nothing says *which frame* they are from: the spatial stream is a
    function of the set of tokens, i.e. exactly invariant to reordering the frames. It can only pool
    what is in the video, not when — the split of labour the paper's names suggest. (An extra per-patch
    embedding would be redundant with CLIP's and would tie the abstractor to one ViT resolution.)
  Queries and E_t are initialised N(0, 0.02²) — random, not mPLUG-Owl's zeros, because we train from
  scratch and identical queries would stay identical.

`VideoAbstractor` is this form. `OfficialAbstractor` (`variant="official"`) is what the official
GPT4Video code runs (mPLUG-Owl's video abstractor): the 2N queries [Q_s; Q_t] go through *one* stack
jointly (so they also attend to each other), with no frame embedding at all; the first N outputs get
their own projection, the last N another, the two are summed, and a learned end-of-video embedding is
appended: N + 1 tokens (65 at `7b`). In mPLUG-Owl the frame order reaches the abstractor through the
video ViT's temporal convolutions; with our per-frame CLIP ViT the official form cannot tell frame
order at all. The paper's form is the default because it is what the paper describes (Eq. 2–4: two
separate streams, one sum, one projection) and because its temporal stream is the one that knows frame
order.

The ablation the paper does not report, `streams="spatial"` or `"temporal"`, builds one stream only and
uses it alone in Eq. 4 (F̂_v = F_s, or F̂_v = F_t); `"both"` is the paper. `build_abstractor` returns the
class that `cfg.variant` names; `cfg.num_output_tokens` says how many tokens it makes (N, or N + 1).

If the ViT width differs from D, one linear map (`frame_proj`) brings the frame tokens to D first;
at the paper's sizes (1024 = 1024) it is the identity, and the layer is mPLUG-Owl's exactly.
Every matrix is a `cpu_linear.Linear` (an `nn.Linear` whose CPU inference takes the fastest kernel).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .config import AbstractorConfig
from .cpu_linear import Linear

# norm1 / normk / norm2 are plain nn.LayerNorm in mPLUG-Owl (eps 1e-5); only ffn_ln uses cfg.norm_eps (1e-6)
QK_NORM_EPS = 1e-5


class SwiGLU(nn.Module):
    """mPLUG-Owl's abstractor MLP: w2(ffn_ln(silu(w1 x) ⊙ w3 x)), all linears with bias."""

    def __init__(self, dim: int, hidden: int, eps: float):
        super().__init__()
        self.w1 = Linear(dim, hidden)
        self.w3 = Linear(dim, hidden)
        self.ffn_ln = nn.LayerNorm(hidden, eps=eps)
        self.w2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.ffn_ln(F.silu(self.w1(x)) * self.w3(x)))  # (B, N, hidden) -> (B, N, D)


class CrossAttentionLayer(nn.Module):
    """One abstractor layer: the queries attend over [normed queries; normed frame tokens] (Eq. 1–3)."""

    def __init__(self, cfg: AbstractorConfig):
        super().__init__()
        if cfg.dim % cfg.n_heads:
            raise ValueError(f"abstractor.py: dim {cfg.dim} is not a multiple of n_heads {cfg.n_heads}")
        d = cfg.dim
        self.n_heads = cfg.n_heads
        self.norm1 = nn.LayerNorm(d, eps=QK_NORM_EPS)   # on the queries
        self.normk = nn.LayerNorm(d, eps=QK_NORM_EPS)   # on the frame tokens
        self.query, self.key, self.value = Linear(d, d), Linear(d, d), Linear(d, d)
        self.attn_dropout = nn.Dropout(cfg.attn_dropout)
        self.out_proj = Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=QK_NORM_EPS)
        self.mlp = SwiGLU(d, cfg.mlp_dim, cfg.norm_eps)

    def forward(self, queries: torch.Tensor, frames: torch.Tensor):
        """queries (B, N, D), frames (B, M = T·(1+P), D) -> (queries (B, N, D), attention (B, H, N, N+M))."""
        q = self.norm1(queries)                                          # (B, N, D)
        kv = torch.cat([q, self.normk(frames)], dim=1)                   # (B, N+M, D): [Q; F_v]
        split = lambda x: rearrange(x, "b n (h d) -> b h n d", h=self.n_heads)
        Q, K, V = split(self.query(q)), split(self.key(kv)), split(self.value(kv))  # (B, H, N|N+M, d_h)
        attn = (Q @ K.transpose(-2, -1) * Q.shape[-1] ** -0.5).softmax(-1)          # (B, H, N, N+M)  Eq. 1
        out = rearrange(self.attn_dropout(attn) @ V, "b h n d -> b n (h d)")        # (B, N, D)
        x = q + self.out_proj(out)                                       # residual from the *normed* queries
        x = x + self.mlp(self.norm2(x))                                  # (B, N, D)
        return x, attn


class QueryStream(nn.Module):
    """N learned queries refined by L cross-attention layers over the frame tokens: Eq. 2 (or 3)."""

    def __init__(self, cfg: AbstractorConfig, num_queries: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, cfg.dim) * 0.02)  # Q: (N, D)
        self.layers = nn.ModuleList(CrossAttentionLayer(cfg) for _ in range(cfg.n_layers))

    def forward(self, frames: torch.Tensor, attentions: list | None = None) -> torch.Tensor:
        """frames (B, M, D) -> (B, N, D); appends each layer's attention map to `attentions` if given."""
        x = self.queries.expand(frames.shape[0], -1, -1)                # (B, N, D)
        for layer in self.layers:
            x, attn = layer(x, frames)                                   # (B, N, D), (B, H, N, N+M)
            if attentions is not None:
                attentions.append(attn)
        return x


STREAMS = ("both", "spatial", "temporal")


class VideoAbstractor(nn.Module):
    """The paper's abstractor (Eq. 2–4): frame features (B, T, 1+P, vision_dim) -> tokens (B, N, llm_dim).

    Two separate query streams, F_s over the frame tokens as they are and F_t over the frame tokens
    plus a per-frame embedding E_t, summed and projected: F_video = proj(F_s + F_t). `cfg.streams`
    "spatial" or "temporal" builds that stream only and uses it alone in Eq. 4.
    """

    def __init__(self, cfg: AbstractorConfig, vision_dim: int, llm_dim: int, num_frames: int):
        super().__init__()
        if cfg.variant != "paper" or cfg.streams not in STREAMS:
            raise ValueError(f"abstractor.py: streams must be 'both', 'spatial' or 'temporal' with variant "
                             f"'paper' (see build_abstractor), got {cfg.streams!r} with {cfg.variant!r}")
        self.cfg, self.vision_dim, self.num_frames = cfg, vision_dim, num_frames
        self.frame_proj = nn.Identity() if vision_dim == cfg.dim else Linear(vision_dim, cfg.dim)
        if cfg.streams != "spatial":
            self.temporal_embed = nn.Parameter(torch.randn(num_frames, cfg.dim) * 0.02)  # E_t: (T, D)
            self.temporal = QueryStream(cfg, cfg.num_queries)            # Eq. 3: Q_t
        if cfg.streams != "temporal":
            self.spatial = QueryStream(cfg, cfg.num_queries)             # Eq. 2: Q_s
        self.proj = Linear(cfg.dim, llm_dim)                             # W, b

    @property
    def num_output_tokens(self) -> int:
        """How many LLM embeddings one video becomes: N."""
        return self.cfg.num_output_tokens

    def streams(self, frame_features: torch.Tensor, attentions: dict | None = None):
        """The two query streams before the sum and projection: (F_s, F_t), each (B, N, D); None for a
        stream an ablation (cfg.streams) left out."""
        if frame_features.shape[1:2] != (self.num_frames,) or frame_features.shape[-1] != self.vision_dim:
            raise ValueError(f"abstractor.py: expected frame features (B, T={self.num_frames}, 1+P, "
                             f"{self.vision_dim}), got {tuple(frame_features.shape)}")
        f = self.frame_proj(frame_features)                             # (B, T, 1+P, D)
        collect = lambda name: None if attentions is None else attentions.setdefault(name, [])
        F_s = F_t = None
        if self.cfg.streams != "temporal":
            f_s = rearrange(f, "b t p d -> b (t p) d")                   # (B, T·(1+P), D): no frame identity
            F_s = self.spatial(f_s, collect("spatial"))                  # (B, N, D)  Eq. 2
        if self.cfg.streams != "spatial":
            f_t = rearrange(f + self.temporal_embed[:, None], "b t p d -> b (t p) d")  # + E_t[t] on frame t
            F_t = self.temporal(f_t, collect("temporal"))                # (B, N, D)  Eq. 3
        return F_s, F_t

    def forward(self, frame_features: torch.Tensor, return_attention: bool = False):
        """frame_features (B, T, 1+P, vision_dim) -> video tokens (B, N, llm_dim).

        With `return_attention=True` also returns {stream: [per-layer (B, H, N, N + T·(1+P))]}; the key
        axis holds the N queries first, then the frame tokens frame by frame.
        """
        maps: dict = {}
        F_s, F_t = self.streams(frame_features, maps if return_attention else None)
        if F_s is None or F_t is None:                                   # a one-stream ablation
            video = self.proj(F_t if F_s is None else F_s)               # (B, N, d_llm)
        else:
            video = self.proj(F_s + F_t)                                 # Eq. 4, W F̂_v + b: (B, N, d_llm)
        return (video, maps) if return_attention else video


class OfficialAbstractor(nn.Module):
    """The official code's abstractor (mPLUG-Owl's joint form): frame features (B, T, 1+P, vision_dim) ->
    video tokens (B, N+1, llm_dim).

    One stack of 2N queries [Q_s; Q_t] (`query_tokens`, `temporal_query_tokens`) over the frame tokens, no
    frame embedding; the first N outputs go through `proj` (mPLUG-Owl `visual_fc`), the last N through
    `temporal_proj` (`temporal_visual_fc`), the two are summed, and the learned end-of-video embedding `eos`
    (`vit_eos`) is appended. It takes any T; for one frame (an image), mPLUG-Owl runs the N spatial
    queries alone and adds no temporal term, and so does this (`num_frames` is accepted only for the same
    signature as `VideoAbstractor`).
    """

    def __init__(self, cfg: AbstractorConfig, vision_dim: int, llm_dim: int, num_frames: int | None = None):
        super().__init__()
        if cfg.variant != "official" or cfg.streams != "both":
            raise ValueError(f"abstractor.py: streams must be 'both' with variant 'official' (see "
                             f"build_abstractor), got {cfg.streams!r} with {cfg.variant!r}")
        self.cfg, self.vision_dim = cfg, vision_dim                      # num_frames: unused, any T works
        self.frame_proj = nn.Identity() if vision_dim == cfg.dim else Linear(vision_dim, cfg.dim)
        self.query_tokens = nn.Parameter(torch.randn(cfg.num_queries, cfg.dim) * 0.02)           # Q_s: (N, D)
        self.temporal_query_tokens = nn.Parameter(torch.randn(cfg.num_queries, cfg.dim) * 0.02)  # Q_t: (N, D)
        self.layers = nn.ModuleList(CrossAttentionLayer(cfg) for _ in range(cfg.n_layers))
        self.proj = Linear(cfg.dim, llm_dim)                             # mPLUG-Owl `visual_fc`
        self.temporal_proj = Linear(cfg.dim, llm_dim)                    # mPLUG-Owl `temporal_visual_fc`
        self.eos = nn.Parameter(torch.randn(1, llm_dim) * 0.02)          # mPLUG-Owl `vit_eos`

    @property
    def num_output_tokens(self) -> int:
        """How many LLM embeddings one video becomes: N + 1 (with the end-of-video token)."""
        return self.cfg.num_output_tokens

    def streams(self, frame_features: torch.Tensor, attentions: dict | None = None):
        """The first and last N outputs of the joint stack, (F_s, F_t), each (B, N, D); F_t is None for
        one frame."""
        if frame_features.ndim != 4 or frame_features.shape[-1] != self.vision_dim:
            raise ValueError(f"abstractor.py: expected frame features (B, T, 1+P, {self.vision_dim}), "
                             f"got {tuple(frame_features.shape)}")
        b, t = frame_features.shape[:2]
        f = rearrange(self.frame_proj(frame_features), "b t p d -> b (t p) d")   # (B, T·(1+P), D)
        queries = self.query_tokens if t == 1 else torch.cat([self.query_tokens, self.temporal_query_tokens])
        x = queries.expand(b, -1, -1)                                    # (B, 2N, D): [Q_s; Q_t]
        for layer in self.layers:
            x, attn = layer(x, f)                                        # (B, 2N, D), (B, H, 2N, 2N + T·(1+P))
            if attentions is not None:
                attentions.setdefault("joint", []).append(attn)
        n = self.cfg.num_queries
        return x[:, :n], (x[:, n:] if t > 1 else None)                   # (B, N, D) ×2

    def forward(self, frame_features: torch.Tensor, return_attention: bool = False):
        """frame_features (B, T, 1+P, vision_dim) -> video tokens (B, N+1, llm_dim).

        With `return_attention=True` also returns {"joint": [per-layer (B, H, 2N, 2N + T·(1+P))]}.
        """
        maps: dict = {}
        F_s, F_t = self.streams(frame_features, maps if return_attention else None)
        video = self.proj(F_s)                                           # (B, N, d_llm)
        if F_t is not None:
            video = video + self.temporal_proj(F_t)
        eos = self.eos.expand(video.shape[0], -1, -1).to(video.dtype)    # (B, 1, d_llm)
        video = torch.cat([video, eos], dim=1)                           # (B, N+1, d_llm)
        return (video, maps) if return_attention else video


def build_abstractor(cfg: AbstractorConfig, vision_dim: int, llm_dim: int,
                     num_frames: int) -> VideoAbstractor | OfficialAbstractor:
    """The abstractor `cfg.variant` names: "paper" (`VideoAbstractor`) or "official" (`OfficialAbstractor`)."""
    if cfg.variant == "paper":
        return VideoAbstractor(cfg, vision_dim, llm_dim, num_frames)
    if cfg.variant == "official":
        return OfficialAbstractor(cfg, vision_dim, llm_dim, num_frames)
    raise ValueError(f"abstractor.py: variant must be 'paper' or 'official', got {cfg.variant!r}")
