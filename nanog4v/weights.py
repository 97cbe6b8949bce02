"""The official checkpoint layouts: CLIP's vision tower and LLaMA in Hugging Face's layout, in and out.

Each loader builds our module on the `meta` device and hands `safetensors_io.load_checkpoint` a
renaming table (official key -> ours); names, shapes and dtypes are checked before any data is read,
and the tensors are streamed in one at a time, from safetensors or (safely) PyTorch `.bin` files. The
savers are the inverse tables, written through `safetensors_io.write_checkpoint`. `load_gpt4video` puts a
trained GPT4Video together from those frozen parts and its own trainable parts; `load_mplug_owl` reads the
whole of mPLUG-Owl's video checkpoint, where the official code starts. The layouts
themselves, and what was checked against which library version, are in docs/formats.md.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .safetensors_io import CheckpointError, _first_line, load_checkpoint, read_config, shorten, write_checkpoint

# --- 3. the official layouts ------------------------------------------------------------------------
# (CLIP vision: `load_vision`; LLaMA: `load_llama` / `save_llama` — each with its key table.)

# CLIP's vision tower (docs/formats.md, CLIP). Keys are read after the `vision_model.` prefix, which full
# CLIPModel files and transformers-4.x vision-only files carry and 5.x vision-only files do not.
CLIP_VISION_KEYS = {                                       # official -> ours (nanog4v/vision.py)
    "embeddings.class_embedding": "class_token",
    "embeddings.patch_embedding.weight": "patch_embed.weight",
    "embeddings.position_embedding.weight": "pos_embed",
    "pre_layrnorm.weight": "ln_pre.weight", "pre_layrnorm.bias": "ln_pre.bias",   # (sic) "layrnorm"
    "post_layernorm.weight": "ln_post.weight", "post_layernorm.bias": "ln_post.bias",
}
CLIP_VISION_LAYER_KEYS = {                 # `encoder.layers.{i}.X.{weight,bias}` -> `blocks.{i}.Y.…`
    "layer_norm1": "ln_1", "self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj", "self_attn.out_proj": "attn.out_proj",
    "layer_norm2": "ln_2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
# mPLUG-Owl's temporal module of a video ViT (`VisionConfig.temporal`), by mPLUG-Owl's own names; a CLIP
# layout with these keys and "temporal": true in config.json is how stage 0 saves a video ViT of its own
CLIP_TEMPORAL_KEYS = ("temporal.ln", "temporal.down_proj", "temporal.conv", "temporal.up_proj")
CLIP_NOT_VISION = ("text_model.", "visual_projection.", "text_projection.", "logit_scale")
# transformers' CLIPVisionConfig defaults, for fields a config.json saved "as a diff" leaves out
CLIP_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                            layer_norm_eps=1e-5, hidden_act="quick_gelu")


def rename_clip_vision(key: str) -> str | None:
    """Official CLIP key -> our VisionTransformer name; None for the text tower and projections."""
    if key.startswith(CLIP_NOT_VISION) or key.endswith("position_ids"):
        return None
    name = key.removeprefix("vision_model.")
    if name.startswith("encoder.layers."):
        i, _, rest = name.removeprefix("encoder.layers.").partition(".")
        module, _, leaf = rest.rpartition(".")                 # leaf: weight | bias
        ours = CLIP_VISION_LAYER_KEYS.get(module, module if module in CLIP_TEMPORAL_KEYS else None)
        return f"blocks.{i}.{ours}.{leaf}" if ours and i.isdigit() else key
    return CLIP_VISION_KEYS.get(name, key)     # an unknown key comes back as is: "unexpected"


def load_vision(path: str | Path, dtype: torch.dtype = torch.float32, cfg=None,
                device: torch.device | str = "cpu") -> nn.Module:
    """CLIP's vision tower from a CLIPModel or CLIPVisionModel checkpoint (a directory, a .safetensors
    file or a PyTorch .bin) as a `VisionTransformer` in eval mode, its weights on `device`. Sizes come from
    `config.json` (its `vision_config` for a full CLIP model) unless a `VisionConfig` is passed as `cfg`."""
    from .config import VisionConfig
    from .vision import VisionTransformer
    if cfg is None:
        hf = read_config(path)
        if hf is None:
            raise CheckpointError(f"{path}: no config.json beside the weights (or pass cfg=VisionConfig(...))")
        hf = {**CLIP_VISION_DEFAULTS, **hf.get("vision_config", hf)}
        cfg = VisionConfig(image_size=hf["image_size"], patch_size=hf["patch_size"], dim=hf["hidden_size"],
                           n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
                           mlp_dim=hf["intermediate_size"], norm_eps=hf["layer_norm_eps"],
                           act=hf["hidden_act"], in_channels=hf["num_channels"], temporal=bool(hf.get("temporal")))
    try:
        with torch.device("meta"):
            model = VisionTransformer(cfg)
    except ValueError as e:                                    # e.g. an unknown hidden_act
        raise CheckpointError(f"{path}: {e}") from None
    return load_checkpoint(model, path, rename_clip_vision, dtype, device)


def save_vision(model: nn.Module, path, dtype: torch.dtype | None = None) -> Path:
    """`model` as a transformers CLIPVisionModel directory (config.json + model.safetensors), the
    inverse of `load_vision`'s key table. Keys carry the `vision_model.` prefix, which transformers 4.x
    requires and 5.x accepts. dtype: the model's unless given. A video ViT (`cfg.temporal`) adds its
    temporal modules under mPLUG-Owl's names and "temporal": true (transformers' CLIP does not run them)."""
    cfg = model.cfg
    if cfg.post_layernorm_all_tokens:
        raise ValueError("save_vision: post_layernorm_all_tokens is not a CLIP setting (mPLUG-Owl's ViT)")
    ours_to_hf = {ours: hf for hf, ours in CLIP_VISION_KEYS.items()}
    layer_to_hf = {ours: hf for hf, ours in CLIP_VISION_LAYER_KEYS.items()} | {k: k for k in CLIP_TEMPORAL_KEYS}

    def hf_name(name: str) -> str:
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            module, leaf = rest.rsplit(".", 1)
            return f"vision_model.encoder.layers.{i}.{layer_to_hf[module]}.{leaf}"
        return f"vision_model.{ours_to_hf[name]}"

    tensors = {hf_name(n): t.detach() for n, t in model.state_dict().items()}
    dtype = dtype or next(model.parameters()).dtype
    specs = {k: (tuple(t.shape), dtype) for k, t in tensors.items()}
    hf = dict(architectures=["CLIPVisionModel"], model_type="clip_vision_model", hidden_size=cfg.dim,
              intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
              num_channels=cfg.in_channels, image_size=cfg.image_size, patch_size=cfg.patch_size,
              layer_norm_eps=cfg.norm_eps, hidden_act=cfg.act, projection_dim=cfg.dim,
              torch_dtype=str(dtype).removeprefix("torch."), dtype=str(dtype).removeprefix("torch."),
              **({"temporal": True} if cfg.temporal else {}))
    return write_checkpoint(path, hf, specs, tensors.__getitem__)


# LLaMA (docs/formats.md, LLaMA): our names are HF's minus "model."; `lm_head.weight` has no prefix either.

def llama_config_from_hf(hf: dict, where: str | Path = "config.json"):
    """`LlamaConfig` from a HF LLaMA config.json: 4.x (`rope_theta`) or 5.x (`rope_parameters`)."""
    from .config import LlamaConfig
    first = lambda v, default: default if v is None else v[0] if isinstance(v, list) else v  # LLaMA-3: eos list
    rope = hf.get("rope_parameters") or {}
    wanted = dict(model_type="llama", hidden_act="silu", attention_bias=False, mlp_bias=False)
    bad = [f"{k}={hf[k]!r} (need {v!r})" for k, v in wanted.items() if hf.get(k, v) != v]
    for r in (rope, hf.get("rope_scaling") or {}):             # 5.x: rope_parameters; 4.x: rope_scaling
        if r.get("rope_type", r.get("type", "default")) != "default":
            bad.append(f"rope_type={r.get('rope_type', r.get('type'))!r} (only 'default' RoPE is implemented)")
    try:
        dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, dim // n_heads):   # our head_dim is dim / n_heads
            bad.append(f"head_dim={hf['head_dim']} (need {dim // n_heads})")
        if bad:
            raise CheckpointError(f"{where}: unsupported LLaMA config: {'; '.join(bad)}")
        return LlamaConfig(
            dim=dim, n_layers=hf["num_hidden_layers"], n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads, hidden_dim=hf["intermediate_size"],
            vocab_size=hf["vocab_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            max_seq_len=hf.get("max_position_embeddings", 2048),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_id=first(hf.get("bos_token_id"), 1), eos_id=first(hf.get("eos_token_id"), 2))
    except KeyError as e:
        raise CheckpointError(f"{where}: config.json has no {e}") from None


def llama_config_to_hf(cfg, dtype: torch.dtype) -> dict:
    """The config.json of `LlamaForCausalLM` for `cfg`, readable by transformers 4.x and 5.x."""
    name, theta = str(dtype).removeprefix("torch."), cfg.rope_theta
    return dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=cfg.dim,
                intermediate_size=cfg.hidden_dim, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, hidden_act="silu",
                rms_norm_eps=cfg.norm_eps, max_position_embeddings=cfg.max_seq_len, vocab_size=cfg.vocab_size,
                tie_word_embeddings=cfg.tie_embeddings, bos_token_id=cfg.bos_id, eos_token_id=cfg.eos_id,
                attention_bias=False, mlp_bias=False, rope_theta=theta, initializer_range=0.02,
                rope_parameters={"rope_type": "default", "rope_theta": theta}, torch_dtype=name, dtype=name)


def load_llama(path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> nn.Module:
    """A HF LLaMA directory (config.json + model.safetensors, or shards + index; or the same as PyTorch
    `.bin` files) as `LLaMA` in eval mode, its weights on `device`."""
    from .llama import LLaMA
    if (hf := read_config(path)) is None:
        raise CheckpointError(f"{path}: no config.json (expected a Hugging Face LLaMA directory)")
    cfg = llama_config_from_hf(hf, Path(path) / "config.json")
    with torch.device("meta"):
        model = LLaMA(cfg)
    if cfg.tie_embeddings:
        del model.lm_head.weight                  # not in the file: re-tied to embed_tokens below
    # ignored: RoPE's inv_freq table (saved by old exports), a tied checkpoint's copy of the embedding
    skip = lambda key: key.endswith("rotary_emb.inv_freq") or (key == "lm_head.weight" and cfg.tie_embeddings)
    load_checkpoint(model, path, lambda key: None if skip(key) else key.removeprefix("model."), dtype, device)
    model.tie_weights()
    return model.eval()


def save_llama(model: nn.Module, path: str | Path, max_shard_size: int | str = "5GB") -> Path:
    """`model` as a HF `LlamaForCausalLM` directory (what `from_pretrained` loads), dtype kept.
    Only base weights: LoRA must be merged first (`lora.merge_lora`; an unmerged adapter is refused, not
    dropped), its "lora_" tensors are then left out; so is a tied lm_head."""
    from .llama import LLaMA
    from .lora import lora_layers
    unmerged = [name for name, layer in lora_layers(model).items() if not layer.merged]
    if unmerged:
        raise ValueError(f"save_llama: {len(unmerged)} LoRA layers are not merged ({shorten(unmerged, 4)}); "
                         "call lora.merge_lora(model) first, or save the adapter with lora.save_lora")
    cfg, skip = model.cfg, ("lm_head.weight" if model.cfg.tie_embeddings else None)
    hf_name = lambda n: n if n == "lm_head.weight" else "model." + n
    tensors = {hf_name(n): t.detach() for n, t in model.state_dict().items() if "lora_" not in n and n != skip}
    with torch.device("meta"):
        expected = {hf_name(n) for n in LLaMA(cfg).state_dict() if n != skip}
    if set(tensors) != expected:
        raise ValueError(f"save_llama: not a plain LLaMA: extra {shorten(sorted(set(tensors) - expected))}, "
                         f"missing {shorten(sorted(expected - set(tensors)))}")
    specs = {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()}
    hf = llama_config_to_hf(cfg, specs["model.embed_tokens.weight"][1])
    return write_checkpoint(path, hf, specs, tensors.__getitem__, max_shard_size)


# GPT4Video: the frozen parts from their official checkpoints, the trainable parts from save_pretrained's files

def load_gpt4video(directory: str | Path, *, vision_path: str | Path, llama_path: str | Path,
                   dtype: torch.dtype = torch.float32) -> nn.Module:
    """Frozen ViT and LLaMA from their official checkpoints, trainable parts from `directory`.
    Every problem is one CheckpointError naming the file: a config that does not build a model or does
    not match the frozen models' widths, a safetensors file that does not fit it."""
    from .model import GPT4Video
    cfg, lora = GPT4Video.read_config(directory)
    config_file = Path(directory) / "config.json"
    try:
        with torch.device("meta"):                  # no random 7B copy: every tensor comes from a file
            model = GPT4Video(cfg)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:     # e.g. n_heads 0, a negative width
        raise CheckpointError(f"{config_file}: not a GPT4Video config ({_first_line(e)})") from None
    model.vision = load_vision(vision_path, dtype=dtype).requires_grad_(False)
    model.llm = load_llama(llama_path, dtype=dtype).requires_grad_(False)
    widths = [(f"vision.{k}", getattr(cfg.vision, k), getattr(model.vision.cfg, k), vision_path)
              for k in ("dim", "image_size", "patch_size")] + [("llama.dim", cfg.llama.dim, model.llm.cfg.dim, llama_path)]
    mismatch = [f"{name} {ours} != {theirs} in {path}" for name, ours, theirs, path in widths if ours != theirs]
    if mismatch:
        raise CheckpointError(f"{config_file}: does not match the frozen models: " + "; ".join(mismatch))
    if lora:
        try:
            model.add_lora()
        except (ValueError, RuntimeError) as e:                     # e.g. LoRA rank 0
            raise CheckpointError(f"{config_file}: not a GPT4Video config ({_first_line(e)})") from None
    model.load_trainable(directory)                  # materialises the abstractor
    still_meta = [n for n, t in model.state_dict().items() if t.is_meta]
    if still_meta:
        raise CheckpointError(f"{directory}: not initialised after loading: {still_meta[:5]}")
    model.requires_grad_(False)                      # inference; `set_stage` picks what trains
    return model.eval()


# mPLUG-Owl's video model (`MAGAer13/mplug-owl-llama-7b-video`; docs/formats.md, mPLUG-Owl video): the
# checkpoint the official GPT4Video code fine-tunes. One state dict holds ViT, abstractor and LLaMA; its
# config.json is transformers-4.29 era, sizes nested in `vision_config`, `visual_abstractor_config`,
# `text_config` (possibly saved as a diff: the defaults below are its config classes').
OWL_VISION_DEFAULTS = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           num_channels=3, image_size=224, patch_size=14, layer_norm_eps=1e-6, hidden_act="quick_gelu")
OWL_ABSTRACTOR_DEFAULTS = dict(hidden_size=1024, num_hidden_layers=6, num_attention_heads=16, intermediate_size=4096,
                               attention_probs_dropout_prob=0.1, layer_norm_eps=1e-6, encoder_hidden_size=1024)
OWL_TEXT_DEFAULTS = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
OWL_KEYS = {                                               # official (after a prefix) -> ours (GPT4Video)
    "query_tokens": "abstractor.query_tokens", "temporal_query_tokens": "abstractor.temporal_query_tokens",
    "vision_model.embeddings.cls_token": "vision.class_token",        # (1, 1, D) -> (D,): see load_checkpoint
    "vision_model.embeddings.patch_embed.weight": "vision.patch_embed.weight",
    "vision_model.embeddings.position_embedding": "vision.pos_embed",   # (1, 1+P, D) -> (1+P, D)
    "vision_model.embeddings.pre_layernorm": "vision.ln_pre", "vision_model.post_layernorm": "vision.ln_post",
    "abstractor.visual_fc": "abstractor.proj", "abstractor.temporal_visual_fc": "abstractor.temporal_proj",
    "abstractor.vit_eos": "abstractor.eos",
}
OWL_VISION_LAYER_KEYS = {"input_layernorm": "ln_1", "self_attn.query_key_value": "attn.qkv",
                         "self_attn.dense": "attn.out_proj", "post_attention_layernorm": "ln_2"}
OWL_ABSTRACTOR_LAYER_KEYS = {"attention.": "", "output.out_proj": "out_proj", "output.norm2": "norm2",
                             "output.mlp.": "mlp."}     # `crossattention.` dropped; norm1 / normk keep their names


def mplug_owl_abstractor_mlp(intermediate_size: int) -> int:
    """The abstractor MLP's width as mPLUG-Owl derives it: 2/3 of `intermediate_size` rounded up to a multiple
    of 256 (4096 -> 2816), unless it already is 2816. The config's number is *not* the width."""
    if intermediate_size == 2816:
        return intermediate_size
    return 256 * -(-int(2 * intermediate_size / 3) // 256)


def mplug_owl_config(hf: dict, where: str | Path = "config.json"):
    """The `owl-video` G4VConfig for an mPLUG-Owl config.json (sizes from the file, the rest the preset's)."""
    import dataclasses
    from .config import AbstractorConfig, VisionConfig, preset
    if not isinstance(hf, dict) or hf.get("model_type", "mplug-owl") != "mplug-owl" or "text_config" not in hf:
        raise CheckpointError(f"{where}: not an mPLUG-Owl config (needs model_type 'mplug-owl' and text_config)")
    v = {**OWL_VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    a = {**OWL_ABSTRACTOR_DEFAULTS, **(hf.get("visual_abstractor_config") or {})}
    if not (a["hidden_size"] == a["encoder_hidden_size"] == v["hidden_size"]):
        raise CheckpointError(f"{where}: abstractor width {a['hidden_size']} / encoder_hidden_size "
                              f"{a['encoder_hidden_size']} differ from the ViT's {v['hidden_size']}")
    base = preset("owl-video")
    vision = VisionConfig(image_size=v["image_size"], patch_size=v["patch_size"], dim=v["hidden_size"],
                          n_layers=v["num_hidden_layers"], n_heads=v["num_attention_heads"], mlp_dim=v["intermediate_size"],
                          norm_eps=v["layer_norm_eps"], act=v["hidden_act"], in_channels=v["num_channels"],
                          post_layernorm_all_tokens=True, temporal=True, fused_qkv=True)
    abstractor = AbstractorConfig(dim=a["hidden_size"], n_layers=a["num_hidden_layers"], n_heads=a["num_attention_heads"],
                                  mlp_dim=mplug_owl_abstractor_mlp(a["intermediate_size"]), norm_eps=a["layer_norm_eps"],
                                  num_queries=hf.get("num_query_tokens", 64),
                                  attn_dropout=a["attention_probs_dropout_prob"], variant="official")
    llama = llama_config_from_hf({**OWL_TEXT_DEFAULTS, **hf["text_config"]}, where)
    return dataclasses.replace(base, vision=vision, abstractor=abstractor, llama=llama)


def rename_mplug_owl(key: str) -> str | None:
    """Official mPLUG-Owl (video) key -> our GPT4Video name; None for RoPE's saved inv_freq tables."""
    if key.endswith("rotary_emb.inv_freq"):
        return None
    if key.startswith("language_model."):
        return "llm." + key.removeprefix("language_model.").removeprefix("model.")
    module, _, leaf = key.rpartition(".")
    if key in OWL_KEYS or module in OWL_KEYS:
        return OWL_KEYS[key] if key in OWL_KEYS else f"{OWL_KEYS[module]}.{leaf}"
    for prefix, ours in (("vision_model.encoder.layers.", "vision.blocks."), ("abstractor.encoder.layers.", "abstractor.layers.")):
        if key.startswith(prefix):
            i, _, rest = key.removeprefix(prefix).partition(".")
            if prefix.startswith("vision"):
                inner, _, leaf = rest.rpartition(".")
                rest = f"{OWL_VISION_LAYER_KEYS.get(inner, inner)}.{leaf}"
            else:
                rest = rest.removeprefix("crossattention.")
                for theirs, mine in OWL_ABSTRACTOR_LAYER_KEYS.items():
                    rest = rest.replace(theirs, mine, 1) if rest.startswith(theirs) else rest
            return f"{ours}{i}.{rest}"
    return key                                   # unknown: comes back as is, and is "unexpected"


def load_mplug_owl(path: str | Path, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> nn.Module:
    """mPLUG-Owl's video checkpoint (a directory: config.json + pytorch_model.bin or safetensors, sharded or
    not) as a `GPT4Video` of the `owl-video` preset in eval mode: `encode_video(pixels (B, T, 3, S, S))` gives
    its N + 1 video tokens (B, N + 1, d_llm), `.llm(tokens)` its LLaMA's logits. ViT and LLaMA in `dtype`;
    the abstractor in float32, as GPT4Video keeps its trainable parts; all of it on `device`. Every key is
    checked before any data is read, then the tensors are streamed in one at a time."""
    from .model import GPT4Video
    if (hf := read_config(path)) is None:
        raise CheckpointError(f"{path}: no config.json (expected an mPLUG-Owl checkpoint directory)")
    cfg = mplug_owl_config(hf, Path(path) / "config.json")
    with torch.device("meta"):
        model = GPT4Video(cfg)
    if cfg.llama.tie_embeddings:
        del model.llm.lm_head.weight             # re-tied to embed_tokens below, as load_llama does
    skip = lambda key: key == "language_model.lm_head.weight" and cfg.llama.tie_embeddings
    load_checkpoint(model, path, lambda key: None if skip(key) else rename_mplug_owl(key), dtype, device)
    model.llm.tie_weights()
    model.abstractor.float()
    return model.requires_grad_(False).eval()
