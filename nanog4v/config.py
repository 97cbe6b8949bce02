"""Configuration: plain frozen dataclasses and three named presets.

    preset("test")  tiny shapes for unit tests (seconds on a CPU)
    preset("nano")  the toy world: the paper's recipe at laptop scale
    preset("7b")    the paper: CLIP ViT-L/14 + video abstractor + LLaMA-7B (GPT4Video, arXiv 2311.16511)
    preset("owl-video")  where the official code starts: mPLUG-Owl's video model (its ViT with temporal
                    modules, its joint-query abstractor, LLaMA-7B), loaded by `weights.load_mplug_owl`

Every field is named after what it is in the paper or in the official checkpoint's config.json. A
config can be changed with `dataclasses.replace` (or `preset(name, num_frames=8)` for top-level
fields) and round-trips through JSON with `to_dict` / `from_dict`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VisionConfig:
    """CLIP's vision transformer (Radford et al. 2021). Defaults are ViT-L/14 at 224 px."""
    image_size: int = 224          # S: frames are resized and centre-cropped to S×S
    patch_size: int = 14           # p: (S/p)² patches; 224/14 = 16 → 256 patches
    dim: int = 1024                # D: token width (HF `hidden_size`)
    n_layers: int = 24             # HF `num_hidden_layers`
    n_heads: int = 16              # HF `num_attention_heads`
    mlp_dim: int = 4096            # HF `intermediate_size`
    norm_eps: float = 1e-5         # HF `layer_norm_eps`
    act: str = "quick_gelu"        # x·sigmoid(1.702x); HF `hidden_act`
    in_channels: int = 3
    # The official GPT4Video/mPLUG-Owl ViT applies its final LayerNorm to every output token;
    # HF CLIP's `last_hidden_state` is taken before it. Off = HF CLIP.
    post_layernorm_all_tokens: bool = False
    # mPLUG-Owl's video ViT: a temporal module (a depthwise convolution over time) before every block,
    # so the frames of one clip see each other; and attention's q, k, v as one fused projection.
    temporal: bool = False
    fused_qkv: bool = False

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:   # [CLS] + patches: 257 for ViT-L/14 at 224
        return 1 + self.num_patches


@dataclass(frozen=True)
class AbstractorConfig:
    """The video abstractor (paper §3.2, Eq. 1–4). Defaults are the paper's sizes."""
    dim: int = 1024                # D: width of the queries (= the ViT's width)
    n_layers: int = 6              # L cross-attention layers per query stream
    n_heads: int = 16
    mlp_dim: int = 4096
    num_queries: int = 64          # N_s = N_t = N
    norm_eps: float = 1e-6
    attn_dropout: float = 0.0      # the official code used 0.1
    variant: str = "paper"         # "paper": Eq. 2–4 as written | "official": mPLUG-Owl's joint form
    streams: str = "both"          # Eq. 4 ablation (paper variant): "both" F_s + F_t | "spatial" | "temporal"

    @property
    def num_output_tokens(self) -> int:
        """LLM embeddings per video: N, or N + 1 for the official variant (its end-of-video token)."""
        return self.num_queries + (self.variant == "official")


@dataclass(frozen=True)
class LlamaConfig:
    """LLaMA (Touvron et al. 2023). Defaults are LLaMA-7B (v1)."""
    dim: int = 4096                # HF `hidden_size`
    n_layers: int = 32             # HF `num_hidden_layers`
    n_heads: int = 32              # HF `num_attention_heads`
    n_kv_heads: int = 32           # HF `num_key_value_heads` (< n_heads: grouped-query attention)
    hidden_dim: int = 11008        # SwiGLU inner width, HF `intermediate_size`
    vocab_size: int = 32000
    norm_eps: float = 1e-6         # HF `rms_norm_eps` (LLaMA-2 uses 1e-5)
    rope_theta: float = 10000.0
    max_seq_len: int = 2048        # HF `max_position_embeddings`
    tie_embeddings: bool = False   # HF `tie_word_embeddings`
    bos_id: int = 1
    eos_id: int = 2

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclass(frozen=True)
class LoraConfig:
    """LoRA (Hu et al. 2021) as the official GPT4Video code set it (peft on q_proj and v_proj)."""
    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass(frozen=True)
class TrainConfig:
    """One training stage's optimisation settings (paper §4.1)."""
    lr: float = 1e-4
    epochs: int = 2
    batch_size: int = 2
    grad_accum: int = 1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_seq_len: int = 512


FRAMES = ("clip", "mplug-owl")


@dataclass(frozen=True)
class G4VConfig:
    name: str = "7b"
    num_frames: int = 4            # T: frames sampled per video (the official code used 8)
    # how a video becomes T frames of S×S pixels (`data.video_pixels`): "clip", segment centres in time and
    # CLIP's shorter-side resize + centre crop; "mplug-owl", its processor: frame k_i = ⌊s/2⌋ + round(s·i),
    # s = (n−1)/T, squashed to S×S (the aspect ratio is not kept)
    frames: str = "clip"
    vision: VisionConfig = field(default_factory=VisionConfig)
    abstractor: AbstractorConfig = field(default_factory=AbstractorConfig)
    llama: LlamaConfig = field(default_factory=LlamaConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    stage1: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, epochs=2))
    stage2: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-5, epochs=3))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "G4VConfig":
        return _from_dict(cls, d)


def _from_dict(cls, d: dict):
    """Rebuild a (nested) frozen dataclass from `asdict` output; unknown keys are an error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
    kwargs = {}
    for name, value in d.items():
        sub = _NESTED.get((cls.__name__, name))
        if sub is not None:
            kwargs[name] = _from_dict(sub, value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


_NESTED = {
    ("G4VConfig", "vision"): VisionConfig,
    ("G4VConfig", "abstractor"): AbstractorConfig,
    ("G4VConfig", "llama"): LlamaConfig,
    ("G4VConfig", "lora"): LoraConfig,
    ("G4VConfig", "stage1"): TrainConfig,
    ("G4VConfig", "stage2"): TrainConfig,
}


# --- presets -----------------------------------------------------------------------------------

def _test() -> G4VConfig:
    """Tiny odd-sized shapes: every unit test runs in well under a second of CPU per forward."""
    return G4VConfig(
        name="test",
        num_frames=2,
        vision=VisionConfig(image_size=28, patch_size=14, dim=48, n_layers=2, n_heads=3, mlp_dim=96),
        abstractor=AbstractorConfig(dim=48, n_layers=2, n_heads=3, mlp_dim=96, num_queries=4),
        llama=LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96,
                          vocab_size=512, max_seq_len=256),
        lora=LoraConfig(r=4, alpha=8.0, dropout=0.0),
        stage1=TrainConfig(lr=1e-3, epochs=1, batch_size=2, warmup_steps=0, max_seq_len=128),
        stage2=TrainConfig(lr=1e-3, epochs=1, batch_size=2, warmup_steps=0, max_seq_len=128),
    )


def _nano() -> G4VConfig:
    """The toy world at laptop scale, sized for the whole recipe in ≈ 30 min on 2 CPU cores (stages 1 + 2
    in < 10 min: stage 1's 8 epochs score better than 3). On a CPU the number of optimiser steps matters
    more than the width: a 192-wide, 4-layer LLaMA at batch 8 reads captions better in the same minutes
    than a 256-wide, 6-layer one at batch 16 (weights/nano/README.md)."""
    return G4VConfig(
        name="nano",
        num_frames=4,
        vision=VisionConfig(image_size=64, patch_size=8, dim=128, n_layers=4, n_heads=4, mlp_dim=512),
        abstractor=AbstractorConfig(dim=128, n_layers=2, n_heads=4, mlp_dim=512, num_queries=16),
        llama=LlamaConfig(dim=192, n_layers=4, n_heads=8, n_kv_heads=8, hidden_dim=512,
                          vocab_size=1024, norm_eps=1e-5, max_seq_len=512),
        lora=LoraConfig(r=16, alpha=16.0, dropout=0.1),
        stage1=TrainConfig(lr=1e-3, epochs=8, batch_size=8, warmup_steps=20, max_seq_len=384),
        stage2=TrainConfig(lr=1e-3, epochs=3, batch_size=8, warmup_steps=20, max_seq_len=384),
    )


def _7b() -> G4VConfig:
    """The paper: ViT-L/14 at 224 px, T = 4, N = 64 queries, 6 abstractor layers, LLaMA-7B."""
    return G4VConfig(name="7b")


def _owl_video() -> G4VConfig:
    """mPLUG-Owl's video model (`MAGAer13/mplug-owl-llama-7b-video`), what the official GPT4Video code
    fine-tunes with LoRA: ViT-L/14 with temporal modules (eps 1e-6, final LayerNorm on every token), the
    joint abstractor with 2 × 64 queries and its end-of-video token (65 LLM tokens; MLP 2816 wide),
    LLaMA-7B. Stage 2 as the official code: LoRA r 16, α 16, dropout 0.1, lr 1e-4, batch 2, 512 tokens.
    `weights.load_mplug_owl` reads the sizes from the checkpoint's config.json; these are the released ones."""
    return G4VConfig(
        name="owl-video",
        frames="mplug-owl",
        vision=VisionConfig(norm_eps=1e-6, post_layernorm_all_tokens=True, temporal=True, fused_qkv=True),
        abstractor=AbstractorConfig(mlp_dim=2816, attn_dropout=0.1, variant="official"),
        stage2=TrainConfig(lr=1e-4, epochs=3, batch_size=2, warmup_steps=100, max_seq_len=512),
    )


PRESETS = {"test": _test, "nano": _nano, "7b": _7b, "owl-video": _owl_video}


def preset(name: str, **overrides) -> G4VConfig:
    """A named preset, optionally with top-level fields replaced: preset("7b", num_frames=8)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    return dataclasses.replace(cfg, **overrides) if overrides else cfg
