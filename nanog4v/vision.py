"""CLIP's vision transformer (Radford et al. 2021; Dosovitskiy et al. 2020) and its preprocessing.

GPT4Video (arXiv 2311.16511, §3.1) encodes each of the T sampled frames with a frozen CLIP ViT-L/14:
a 224×224 frame is cut into 16×16 patches of 14×14 pixels, each patch becomes a 1024-d token, a
learned [CLS] token is prepended and learned position embeddings are added, and 24 pre-norm
transformer blocks mix the 257 tokens. The per-frame output (257, 1024) is the input F_v of the
video abstractor (Eq. 1–4 in `abstractor.py`).

    x_0 = LN_pre([cls; E·patches] + pos)                      (N, 1+P, D)
    x'  = x + Attn(LN_1 x)         Attn = softmax(q kᵀ/√d_h) v, per head       (Eq. 1 of Vaswani et al.)
    x'' = x' + W_2 act(W_1 LN_2 x')   act = quick-GELU: z·σ(1.702 z)

Parameter shapes equal Hugging Face's `CLIPVisionModel`, so the official checkpoint loads through a
one-to-one key table (`weights.load_vision`). Its matrices are `cpu_linear.Linear`: on a CPU, frozen
inference runs each through the kernel measured fastest there (a bf16 ViT-L/14 on an AVX2-only CPU
encodes 3.3× faster by multiplying in fp32).

**mPLUG-Owl's video ViT** (what the official GPT4Video code starts from; `VisionConfig.temporal`,
`fused_qkv`) is the same network with two changes. Before every block, the patch tokens of the T frames
of one clip pass through a small temporal module that lets each patch see the same patch one frame
before and after (the [CLS] token is passed through, so the residual doubles it):

    x ← x + Up(QuickGELU(DWConv_t(Down(LN(x)))))     Down: D → D/2, DWConv_t: kernel 3 over time, per channel

`Up` starts at zero, so an image model is the T = 1 case. And its attention computes q, k, v with one
fused projection whose rows are grouped per head as [q; k; v] (`Attention(fused=True)`), the checkpoint's
`query_key_value` layout, so that checkpoint also loads one-to-one (`weights.load_mplug_owl`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import VisionConfig
from .cpu_linear import Linear, linear

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's sigmoid approximation of GELU, x·σ(1.702x); the OpenAI weights were trained with it."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,                                            # exact (erf) GELU, e.g. LAION's CLIPs
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
}


class Attention(nn.Module):
    """Multi-head self-attention over all 1+P tokens of one frame (no mask: every token sees all).
    `fused`: one projection `qkv` (D → 3D) whose output is [q; k; v] per head (mPLUG-Owl's layout)."""

    def __init__(self, dim: int, n_heads: int, fused: bool = False):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"VisionConfig: dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        if fused:
            self.qkv = Linear(dim, 3 * dim)
        else:
            self.q_proj = Linear(dim, dim)
            self.k_proj = Linear(dim, dim)
            self.v_proj = Linear(dim, dim)
        self.out_proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        # x: (N, L, D) with L = 1+P tokens; heads split D into n_heads × d_h
        if hasattr(self, "qkv"):
            q, k, v = rearrange(self.qkv(x), "n l (h three d) -> three n h l d", h=self.n_heads, three=3)
        else:
            q, k, v = (rearrange(proj(x), "n l (h d) -> n h l d", h=self.n_heads)   # (N, H, L, d_h)
                       for proj in (self.q_proj, self.k_proj, self.v_proj))
        if return_weights:
            # The same computation written out, to expose softmax(q kᵀ / √d_h) for visualisation.
            scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5                # (N, H, L, L)
            weights = scores.softmax(dim=-1)                                       # (N, H, L, L)
            out = weights @ v                                                      # (N, H, L, d_h)
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v)                         # (N, H, L, d_h)
        out = self.out_proj(rearrange(out, "n h l d -> n l (h d)"))                # (N, L, D)
        return (out, weights) if return_weights else out


class MLP(nn.Module):
    """The position-wise feed-forward network: fc2(act(fc1 x)), D → mlp_dim → D."""

    def __init__(self, dim: int, mlp_dim: int, act: str):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"VisionConfig: unknown act {act!r}; choose one of {sorted(ACTIVATIONS)}")
        self.fc1 = Linear(dim, mlp_dim)
        self.fc2 = Linear(mlp_dim, dim)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))    # (N, L, D) -> (N, L, mlp_dim) -> (N, L, D)


class Temporal(nn.Module):
    """mPLUG-Owl's temporal module: each patch token mixes with the same patch in the frames before and
    after it, x ↦ Up(QuickGELU(DWConv_t(Down(LN(x))))); the [CLS] token is returned unchanged."""

    def __init__(self, dim: int, grid: int):
        super().__init__()
        self.grid = grid                                              # S/p patches per side
        self.ln = nn.LayerNorm(dim)                                   # eps 1e-5, as in mPLUG-Owl
        self.down_proj = nn.Conv3d(dim, dim // 2, kernel_size=1)      # a per-token linear map D → D/2
        self.conv = nn.Conv3d(dim // 2, dim // 2, kernel_size=(3, 1, 1), padding=(1, 0, 0), groups=dim // 2)
        self.up_proj = nn.Conv3d(dim // 2, dim, kernel_size=1)        # D/2 → D (zero at initialisation)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The 1×1×1 convolutions are per-token linear maps and run as such (`linear` with the kernels
        flattened: the same values; a bf16 Conv3d without bf16 units takes ~150× longer on the CPU)."""
        cls, patches = x[:, :, :1], x[:, :, 1:]                       # x: (B, T, 1+P, D)
        down, up = self.down_proj, self.up_proj
        y = linear(self.ln(patches), down.weight.flatten(1), down.bias)        # (B, T, P, D/2)
        y = rearrange(y, "b t (gh gw) c -> b c t gh gw", gh=self.grid)         # (B, D/2, T, g, g)
        y = rearrange(quick_gelu(self.conv(y)), "b c t gh gw -> b t (gh gw) c")  # kernel 3 over t, zero-padded
        return torch.cat([cls, linear(y, up.weight.flatten(1), up.bias)], dim=2)  # (B, T, 1+P, D)


class Block(nn.Module):
    """A pre-norm transformer block: the residual stream is never normalised, only the branch inputs.
    With `cfg.temporal`, mPLUG-Owl's `Temporal` module first mixes each clip's T frames."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        if cfg.temporal:
            self.temporal = Temporal(cfg.dim, cfg.image_size // cfg.patch_size)
        self.ln_1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.dim, cfg.n_heads, fused=cfg.fused_qkv)
        self.ln_2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.dim, cfg.mlp_dim, cfg.act)

    def forward(self, x: torch.Tensor, return_weights: bool = False, num_frames: int = 1):
        if num_frames > 1 and hasattr(self, "temporal"):             # (mPLUG-Owl skips it for one frame)
            clips = rearrange(x, "(b t) l d -> b t l d", t=num_frames)
            x = rearrange(clips + self.temporal(clips), "b t l d -> (b t) l d")
        if return_weights:
            a, weights = self.attn(self.ln_1(x), return_weights=True)
        else:
            a, weights = self.attn(self.ln_1(x)), None
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return (x, weights) if return_weights else x


class VisionTransformer(nn.Module):
    """CLIP's ViT: frames (N, 3, S, S) → token features (N, 1+P, D); (N, 257, 1024) for ViT-L/14.

    With `cfg.post_layernorm_all_tokens` off, the output is Hugging Face's `last_hidden_state`: the
    final LayerNorm `ln_post` is *not* applied (HF applies it only to the pooled [CLS] token, for the
    contrastive head). With it on, `ln_post` is applied to every token, as mPLUG-Owl's ViT in the
    official GPT4Video code does before the abstractor.
    """

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"VisionConfig: image_size {cfg.image_size} is not a multiple of "
                             f"patch_size {cfg.patch_size}")
        self.cfg = cfg
        D = cfg.dim
        # A conv with kernel = stride = p is the paper's "linear projection of flattened patches" E.
        self.patch_embed = nn.Conv2d(cfg.in_channels, D, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_token = nn.Parameter(torch.randn(D) * D ** -0.5)
        self.pos_embed = nn.Parameter(torch.randn(cfg.num_tokens, D) * 0.02)
        self.ln_pre = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_post = nn.LayerNorm(D, eps=cfg.norm_eps)

    def forward(self, pixels: torch.Tensor, return_attention_layer: int | None = None, num_frames: int = 1):
        """pixels (N, 3, S, S), normalised by `preprocess` → last hidden state (N, 1+P, D).

        With `return_attention_layer=k`, also returns block k's attention weights (N, H, 1+P, 1+P),
        computed explicitly (the default path uses fused `F.scaled_dot_product_attention`).
        `num_frames` = T: the N frames are N/T clips of T consecutive frames each, which the temporal
        modules (`cfg.temporal`) mix; a per-frame ViT ignores it.
        """
        C, S = self.cfg.in_channels, self.cfg.image_size
        if pixels.shape[1:] != (C, S, S) or pixels.shape[0] % num_frames:
            raise ValueError(f"vision.py: expected pixels (N, {C}, {S}, {S}) with N a multiple of "
                             f"T={num_frames}, got {tuple(pixels.shape)}")
        k = return_attention_layer
        probed = None if k is None else self.blocks[k]                 # negative k counts from the end
        pixels = pixels.to(self.patch_embed.weight.dtype)
        x = self.patch_embed(pixels)                                   # (N, D, S/p, S/p)
        x = rearrange(x, "n d gh gw -> n (gh gw) d")                   # (N, P, D), row-major patches
        cls = self.class_token.expand(x.shape[0], 1, -1)               # (N, 1, D)
        x = torch.cat([cls, x], dim=1) + self.pos_embed                # (N, 1+P, D)
        x = self.ln_pre(x)
        weights = None
        for block in self.blocks:
            if block is probed:
                x, weights = block(x, return_weights=True, num_frames=num_frames)  # (N, H, 1+P, 1+P)
            else:
                x = block(x, num_frames=num_frames)
        if self.cfg.post_layernorm_all_tokens:
            x = self.ln_post(x)
        return x if k is None else (x, weights)


def preprocess(frames: np.ndarray | torch.Tensor, size: int, keep_aspect: bool = True) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) → CLIP input (T, 3, size, size), float32, normalised.

    The steps of CLIP's image processor: resize the shorter side to `size` (the longer one to
    int(size·long/short)) with antialiased bicubic, centre-crop size×size, scale to [0, 1], subtract
    the mean and divide by the std of CLIP's training images.

    The reference (`transformers.CLIPImageProcessor`, PIL backend) resizes with Pillow, which works in
    uint8 in two passes — horizontal, then vertical — rounding and clipping to 0..255 after each. We do
    the same passes with `F.interpolate(..., antialias=True)` (whose bicubic kernel, a = −0.5, and
    support scaling are Pillow's) in float, rounding and clamping after each pass. What remains is
    Pillow's fixed-point weight rounding: ≤ 1/255 on a few pixels in a thousand.
    Runs on the frames' device when they are a torch tensor. `keep_aspect=False` is mPLUG-Owl's processor:
    both sides resized to `size` (the picture is squashed, nothing is cropped), the same two passes.
    (mPLUG-Owl has decord resize while decoding, with FFmpeg's scaler: its pixels differ a little.)
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.ndim != 4 \
            or frames.shape[-1] != 3 or 0 in frames.shape:
        got = (f"{frames.dtype} {tuple(frames.shape)}" if hasattr(frames, "shape") else type(frames).__name__)
        raise ValueError(f"preprocess: expected uint8 frames (T, H, W, 3), got {got}")
    T, H, W, _ = frames.shape
    short, long = min(H, W), max(H, W)
    new_long = int(size * long / short)                            # HF's rule (truncates)
    new_h, new_w = (size, new_long) if H <= W else (new_long, size)
    if not keep_aspect:
        new_h = new_w = size
    x = rearrange(frames, "t h w c -> t c h w").float()            # (T, 3, H, W), values 0..255
    if new_w != W:
        x = F.interpolate(x, size=(H, new_w), mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)                              # (T, 3, H, new_w)
    if new_h != H:
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)                              # (T, 3, new_h, new_w)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[:, :, top:top + size, left:left + size]                 # (T, 3, size, size)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return ((x / 255.0 - mean) / std).contiguous()                 # (T, 3, size, size)
