"""GPT4Video: frozen ViT → video abstractor (Eq. 1–4) → projection → LLaMA (+LoRA), and the loss of Eq. 5.

The pieces live in their own files; this one wires them together and does the two things that only
exist at the level of the whole model:

1. **The splice.** A tokenised conversation (``nanog4v.data.encode_conversation``) holds, for every video,
   N placeholder tokens between ``<video>`` and ``</video>``. After the token embedding, the N
   placeholder embeddings of each slot are *replaced* by that video's N projected abstractor outputs
   F_video, so the LLM reads the video as N "soft tokens" in the middle of the text::

       text embeddings (B, L, d_llm) ── at every slot (row, start, k): e[row, start:start+N] = F_video[k]

2. **The loss (Eq. 5).** Next-token cross-entropy over the positions whose label is not −100:
   L = −Σ_i log p(x_i | x_<i, F_video), i over the AI turns' tokens (``data.py`` builds the mask).

Which parameters learn is a property of the stage (paper §3.3): stage 1 trains the abstractor and its
projection with the LLM frozen; stage 2 trains LoRA adapters only (text-only data). The ViT is always
frozen. ``save_pretrained`` writes just those trainable parts; the frozen ViT and LLaMA come from their
official checkpoints through ``weights.py`` (``weights.load_gpt4video`` puts the three together).
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .abstractor import build_abstractor
from .config import G4VConfig
from .data import IGNORE
from .llama import LLaMA
from .lora import add_lora, lora_state_dict
from .safetensors_io import CheckpointError, shorten, state_problems
from .vision import VisionTransformer


def splice_video(embeds: torch.Tensor, video_tokens: torch.Tensor,
                 video_slots: list[tuple[int, int, int]]) -> torch.Tensor:
    """Put each video's N embeddings in place of its N placeholder tokens.

    embeds (B, L, d) text embeddings; video_tokens (V, N, d) one row per video in the batch;
    video_slots [(row, start, k)]: video k goes to embeds[row, start:start+N]. Returns a new tensor
    (autograd flows into `video_tokens`; text positions are untouched).
    """
    n = video_tokens.shape[1]
    out = embeds.clone()                                                # (B, L, d)
    for row, start, k in video_slots:
        if start < 0 or start + n > out.shape[1]:
            raise ValueError(f"video slot {start}..{start + n} does not fit a sequence of {out.shape[1]}")
        out[row, start:start + n] = video_tokens[k].to(out.dtype)      # (N, d)
    return out


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 5: mean next-token cross-entropy over the positions whose label is not IGNORE."""
    return F.cross_entropy(rearrange(logits[:, :-1], "b l v -> (b l) v").float(),
                           rearrange(labels[:, 1:], "b l -> (b l)"), ignore_index=IGNORE)


class GPT4Video(nn.Module):
    def __init__(self, cfg: G4VConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionTransformer(cfg.vision)                     # frozen CLIP ViT
        self.abstractor = build_abstractor(cfg.abstractor, cfg.vision.dim, cfg.llama.dim, cfg.num_frames)
        self.llm = LLaMA(cfg.llama)                                     # frozen LLaMA (+LoRA in stage 2)
        self.has_lora = False
        self.vision.requires_grad_(False)
        self.llm.requires_grad_(False)

    @property
    def num_video_tokens(self) -> int:
        """N: how many embeddings one video occupies in the LLM's sequence (the slot length)."""
        return self.abstractor.num_output_tokens

    # --- video → N soft tokens ------------------------------------------------------------------
    def encode_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen ViT on every frame: pixels (B, T, 3, S, S) -> F_v (B, T, 1+P, D_v). (A video ViT,
        mPLUG-Owl's, also mixes the T frames of each clip: `num_frames`.)"""
        b, t = pixels.shape[:2]
        frames = rearrange(pixels, "b t c h w -> (b t) c h w")         # (B*T, 3, S, S)
        with torch.no_grad():
            features = self.vision(frames.to(self.vision_dtype), num_frames=t)   # (B*T, 1+P, D_v)
        return rearrange(features, "(b t) p d -> b t p d", b=b)        # (B, T, 1+P, D_v)

    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, T, 3, S, S) -> F_video (B, N, d_llm): ViT, then the abstractor and projection."""
        return self.abstractor(self.encode_frames(pixels).float())     # (B, N, d_llm)

    @property
    def vision_dtype(self) -> torch.dtype:
        return next(self.vision.parameters()).dtype

    # --- the forward of Eq. 5 -----------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *,
                attention_mask: torch.Tensor | None = None, video_slots=(),
                videos: torch.Tensor | None = None, features: torch.Tensor | None = None):
        """input_ids (B, L) with N placeholders per slot; videos (V, T, 3, S, S) pixels or features
        (V, T, 1+P, D_v) cached ViT outputs. Returns (logits (B, L, vocab), loss or None)."""
        if input_ids.shape[1] > self.cfg.llama.max_seq_len:
            raise ValueError(f"sequence of {input_ids.shape[1]} tokens (video tokens included) exceeds "
                             f"max_seq_len {self.cfg.llama.max_seq_len}")
        embeds = self.llm.embed_tokens(input_ids)                      # (B, L, d_llm)
        if video_slots:
            video_tokens = (self.abstractor(features.float()) if features is not None
                            else self.encode_video(videos))             # (V, N, d_llm)
            embeds = splice_video(embeds, video_tokens.to(embeds.dtype), list(video_slots))
        logits = self.llm(embeds=embeds, attention_mask=attention_mask)  # (B, L, vocab)
        return logits, (lm_loss(logits, labels) if labels is not None else None)

    # --- the two training stages --------------------------------------------------------------
    def add_lora(self) -> None:
        """Wrap the LLM's target projections with LoRA (cfg.lora); base weights stay frozen."""
        if not self.has_lora:
            c = self.cfg.lora
            add_lora(self.llm, targets=c.targets, r=c.r, alpha=c.alpha, dropout=c.dropout)
            self.has_lora = True

    def set_stage(self, stage: int) -> list[nn.Parameter]:
        """Freeze everything except what `stage` trains; return those parameters for the optimiser.
        Stage 1: abstractor + projection. Stage 2: LoRA only (added here if absent)."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, not {stage}")
        if stage == 2:
            self.add_lora()
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("abstractor.") if stage == 1 else "lora_" in name)
        return [p for p in self.parameters() if p.requires_grad]

    # --- files -------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What GPT4Video adds to the frozen models: abstractor + projection, and LoRA (if any)."""
        state = {f"abstractor.{k}": v for k, v in self.abstractor.state_dict().items()}
        state.update({f"llm.{k}": v for k, v in lora_state_dict(self.llm).items()})
        return state

    def save_pretrained(self, directory: str | Path) -> Path:
        """`gpt4video.safetensors` (trainable parts) + `config.json`, written atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "gpt4video.safetensors.tmp"
        save_file({k: v.detach().contiguous().cpu() for k, v in self.trainable_state_dict().items()},
                  str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / "gpt4video.safetensors")
        meta = {"config": self.cfg.to_dict(), "lora": self.has_lora}
        (directory / "config.json.tmp").write_text(json.dumps(meta, indent=2))
        (directory / "config.json.tmp").replace(directory / "config.json")
        return directory

    @staticmethod
    def read_config(directory: str | Path) -> tuple[G4VConfig, bool]:
        """(config, whether it has LoRA) of a directory `save_pretrained` wrote; CheckpointError if it is not one.
        config.json must be what `save_pretrained` writes: {"config": every field of G4VConfig with a value
        of its type, "lora": true | false}, and no other key."""
        directory = Path(directory)
        for f in (directory / "config.json", directory / "gpt4video.safetensors"):
            if not f.is_file():
                raise CheckpointError(f"{f}: missing (not a GPT4Video checkpoint directory: it needs config.json "
                                      "and gpt4video.safetensors, as save_pretrained and train.py --out write)")
        file = directory / "config.json"
        try:
            meta = json.loads(file.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise CheckpointError(f"{file}: not a GPT4Video config (not valid JSON: {e})") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{file}: not a GPT4Video config (a JSON {_json_kind(meta)}, not an object)")
        problems = [f"{k}: unknown key" for k in meta if k not in CONFIG_KEYS]
        problems += [f"{k}: missing" for k in CONFIG_KEYS if k not in meta]
        if "config" in meta:
            problems += config_problems(G4VConfig, meta["config"], "config")
        if not isinstance(meta.get("lora", False), bool):
            problems.append(f"lora: {_short(meta['lora'])} is not true or false")
        if problems:
            more = f"; ... ({len(problems) - 6} more)" if len(problems) > 6 else ""
            raise CheckpointError(f"{file}: not a GPT4Video config: " + "; ".join(problems[:6]) + more)
        return G4VConfig.from_dict(meta["config"]), meta["lora"]

    def load_trainable(self, directory: str | Path) -> None:
        """The trainable parts from `directory/gpt4video.safetensors`, strictly: every key of
        `trainable_state_dict` with its shape and a floating-point dtype (converted to the model's: a float16
        or bfloat16 file loads as float32), nothing else (tensors on the meta device get real ones)."""
        file = Path(directory) / "gpt4video.safetensors"
        try:
            state = load_file(str(file))
        except (SafetensorError, OSError, ValueError, TypeError) as e:   # a bad header, a short file, ...
            raise CheckpointError(f"{file}: unreadable ({' '.join(str(e).split()) or type(e).__name__})") from None
        expected = self.trainable_state_dict()
        problems = state_problems(state, expected)
        not_float = [f"{k} ({str(t.dtype).removeprefix('torch.')})" for k, t in sorted(state.items())
                     if k in expected and not t.is_floating_point()]
        if not_float:
            problems.append(f"wrong dtype: {shorten(not_float)}")
        if problems:
            raise CheckpointError(f"{file}: does not fit the model: " + "; ".join(problems))
        state = {k: t.to(expected[k].dtype) for k, t in state.items()}
        self.load_state_dict(state, strict=False, assign=True)


# --- config.json, checked -------------------------------------------------------------------------

CONFIG_KEYS = ("config", "lora")                         # what save_pretrained writes, and nothing else


def config_problems(cls, d, where: str) -> list[str]:
    """Why `d` is not the `to_dict()` of a `cls` config: ['config.llama.dim: "64" is not an int',
    "config.llama.wat: unknown key", "config.vision: missing", ...], or [] when every field is there with
    a value of its type and nothing else is. (G4VConfig.from_dict alone would fill a missing field with
    the 7B default and keep a string where an int belongs.)"""
    if not isinstance(d, dict):
        return [f"{where}: {_short(d)} is not an object"]
    types = typing.get_type_hints(cls)
    problems = [f"{where}.{k}: unknown key" for k in d if k not in types]
    for name, kind in types.items():
        here = f"{where}.{name}"
        if name not in d:
            if (cls.__name__, name) not in ADDED_LATER:
                problems.append(f"{here}: missing")
        elif dataclasses.is_dataclass(kind):
            problems += config_problems(kind, d[name], here)
        elif not _is_a(d[name], kind):
            problems.append(f"{here}: {_short(d[name])} is not {TYPE_NAMES.get(kind, 'a list of strings')}")
    return problems


# fields added after checkpoints were first written: absent means the default, which is how such a
# checkpoint was made (a per-frame ViT, CLIP's frame processing)
ADDED_LATER = {("VisionConfig", "temporal"), ("VisionConfig", "fused_qkv"), ("G4VConfig", "frames")}
TYPE_NAMES = {bool: "true or false", int: "an int", float: "a finite number", str: "a string"}


def _is_a(value, kind) -> bool:
    """Whether a JSON value stands for a config field of type `kind`: bool, int, float, str or tuple[str, ...]."""
    if kind in (bool, str):
        return isinstance(value, kind)
    if isinstance(value, bool):                          # JSON true is not the number 1
        return False
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    item = typing.get_args(kind)[0]                     # tuple[str, ...], written as a JSON list
    return isinstance(value, list) and all(isinstance(v, item) for v in value)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_kind(value) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
