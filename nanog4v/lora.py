"""LoRA: low-rank adaptation (Hu et al. 2021, arXiv 2106.09685), written out by hand.

A frozen linear layer W (out × in) learns an update of rank r ≪ min(out, in) (paper Eq. 3):

    h = W x + ΔW x = W x + (α/r) · B A x,      A: (r, in) Kaiming-uniform,  B: (out, r) zeros

so ΔW = 0 at the start and training moves only r·(in + out) numbers per layer. GPT4Video (stage 2)
puts it on LLaMA's `q_proj` and `v_proj` with r = 16, α = 16, dropout 0.1 on the LoRA input:
8.4 M trainable parameters next to 6.7 B frozen ones (`trainable_report`).

The wrapped layer keeps the frozen base `weight` (and `bias`) under their old names, so the base
checkpoint's keys do not change; LoRA adds `lora_A` and `lora_B` beside them. After training,
`merge_lora` folds W ← W + (α/r)·B A into the base weight (a plain linear again, no extra cost at
inference), `save_llama` can then export it, and `unmerge_lora` takes it back out.

Adapters are saved in peft's layout (docs/formats.md) — `adapter_model.safetensors` with keys
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` plus `adapter_config.json` — so
`peft.PeftModel.from_pretrained` loads ours and `load_lora` loads peft's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .cpu_linear import linear
from .safetensors_io import CheckpointError, find_tensors, read_tensors, state_problems

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_BIN = "adapter_model.bin"                    # older peft versions' file (read with weights_only=True)
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."      # peft's wrapper around the HF model (whose layers sit in `model.`)


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update:

        y = x Wᵀ + b + (α/r) · dropout(x) Aᵀ Bᵀ          (Hu et al. 2021, Eq. 3)

    The adapter is stored in float32 when the base is float16/bfloat16 (as peft does by default):
    small learning-rate updates would vanish in bf16. Its input is cast to the adapter's dtype and
    its output back to the base's. The frozen matmul W x goes through `cpu_linear.linear`, so decoding
    with an unmerged adapter keeps the CPU kernel chosen for this machine.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {r}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scaling, self.dropout_p = r, alpha, alpha / r, dropout
        self.weight = base.weight                                        # W: (out, in), frozen
        self.weight.requires_grad_(False)
        self.bias = base.bias                                            # b: (out,) or None
        if self.bias is not None:
            self.bias.requires_grad_(False)
        w = base.weight
        dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=w.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=w.device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))           # nn.Linear's own init
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight, self.bias)                            # (..., out)  W x + b
        if self.merged:                                                  # ΔW is already inside W
            return y
        h = self.dropout(x).to(self.lora_A.dtype)                        # (..., in)
        delta = F.linear(F.linear(h, self.lora_A), self.lora_B)          # (..., r) → (..., out)  B A x
        return y + (delta * self.scaling).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) · B A, (out, in), in the adapter's dtype."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + ΔW: afterwards forward is one plain matmul. A no-op when already merged."""
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W − ΔW. Floating point: W comes back within rounding (one ulp of W + ΔW), not bit-exact."""
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}, "
                f"dropout={self.dropout_p}, merged={self.merged}")


# --- wrapping a model --------------------------------------------------------------------------------

def lora_layers(module: nn.Module) -> dict[str, LoRALinear]:
    """Every `LoRALinear` inside `module`, by its dotted name ("layers.0.self_attn.q_proj")."""
    return {name: m for name, m in module.named_modules() if isinstance(m, LoRALinear)}


def _is_lora_param(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("lora_A", "lora_B")


def add_lora(module: nn.Module, targets=("q_proj", "v_proj"), r: int = 16, alpha: float = 16.0,
             dropout: float = 0.1) -> nn.Module:
    """Wrap every `nn.Linear` whose attribute name is in `targets` with LoRA, freeze everything else.

    Names are HF's (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj), so the same list
    means the same layers as peft's `target_modules`. `add_lora(m, **asdict(cfg.lora))` works too.
    Returns `module` (changed in place); only `lora_A` / `lora_B` require grad afterwards.
    """
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if lora_layers(module):
        raise ValueError(f"add_lora: {type(module).__name__} already has LoRA layers")
    wrapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(parent, name, LoRALinear(child, r, alpha, dropout))
                wrapped += 1
    if wrapped == 0:
        raise ValueError(f"add_lora: no nn.Linear named {list(targets)} in {type(module).__name__}")
    for name, p in module.named_parameters():
        p.requires_grad_(_is_lora_param(name))
    return module


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W += (α/r) B A); forward is then plain LLaMA."""
    for layer in _require_lora(module, "merge_lora").values():
        layer.merge()
    return module


def unmerge_lora(module: nn.Module) -> nn.Module:
    """Undo `merge_lora` (W −= (α/r) B A), e.g. to train on or to swap adapters."""
    for layer in _require_lora(module, "unmerge_lora").values():
        layer.unmerge()
    return module


def _require_lora(module: nn.Module, who: str) -> dict[str, LoRALinear]:
    layers = lora_layers(module)
    if not layers:
        raise ValueError(f"{who}: {type(module).__name__} has no LoRA layers (call add_lora first)")
    return layers


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors: {"layers.0.self_attn.q_proj.lora_A": (r, in), "...lora_B": (out, r)}."""
    return {k: v for k, v in module.state_dict().items() if _is_lora_param(k)}


# --- saving and loading adapters (peft's file layout) ------------------------------------------------

def _peft_key(name: str) -> str:
    """Our "layers.0.self_attn.q_proj.lora_A" → peft's "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".
    Our LLaMA's names are HF's minus "model." (except `lm_head`, which has none in HF either)."""
    return PEFT_PREFIX + ("" if name.startswith("lm_head.") else "model.") + name + ".weight"


def _our_name(key: str) -> str | None:
    """Inverse of `_peft_key`; None for a key that is not a LoRA tensor of that layout."""
    if not (key.startswith(PEFT_PREFIX) and key.endswith(".weight")):
        return None
    name = key[len(PEFT_PREFIX):-len(".weight")].removeprefix("model.")
    return name if _is_lora_param(name) else None


def save_lora(module: nn.Module, path: str | Path, base_model: str | None = None) -> Path:
    """Write `adapter_model.safetensors` (adapters only) and `adapter_config.json` to directory `path`.
    `base_model` (a hub id or a directory: the LLaMA the adapter was trained on) goes into the config's
    `base_model_name_or_path`, where peft looks for the base; None when unknown."""
    layers = _require_lora(module, "save_lora")
    settings = {(m.r, m.alpha, m.dropout_p) for m in layers.values()}
    if len(settings) != 1:
        raise ValueError(f"save_lora: adapters with different (r, alpha, dropout): {sorted(settings)}")
    (r, alpha, dropout), = settings
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {_peft_key(k): v.detach().contiguous() for k, v in lora_state_dict(module).items()}
    save_file(tensors, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
              "lora_dropout": dropout, "target_modules": sorted({n.rsplit(".", 1)[-1] for n in layers}),
              "bias": "none", "use_rslora": False, "fan_in_fan_out": False, "init_lora_weights": True,
              "inference_mode": True, "base_model_name_or_path": base_model, "modules_to_save": None}
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return path


def load_lora(module: nn.Module, path: str | Path) -> nn.Module:
    """Load adapters saved by `save_lora` (or by peft) into `module`, strictly.

    Without LoRA layers yet, `module` gets them first (`add_lora` with the file's r, α, dropout and
    the targets its keys name). Every adapter tensor of `module` must be in the file and vice
    versa, with the same shape; otherwise one `CheckpointError` names the file and lists problems.
    The weights may also be older peft's `adapter_model.bin` (read as tensors only, never unpickled).
    """
    path = Path(path)
    cfg_file, weights_file = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not weights_file.is_file() and (path / ADAPTER_BIN).is_file():
        weights_file = path / ADAPTER_BIN
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise CheckpointError(f"{f}: no such file (expected a LoRA adapter directory)")
    try:
        cfg = json.loads(cfg_file.read_text())
        r, alpha, dropout = int(cfg["r"]), float(cfg["lora_alpha"]), float(cfg.get("lora_dropout", 0.0))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: not a LoRA adapter config ({type(e).__name__}: {e})") from None
    unsupported = [f"{k}={cfg[k]!r}" for k, ok in [("peft_type", "LORA"), ("use_rslora", False),
                                                   ("fan_in_fan_out", False), ("bias", "none")]
                   if k in cfg and cfg[k] != ok]
    if unsupported:
        raise CheckpointError(f"{cfg_file}: unsupported LoRA settings: {', '.join(unsupported)}")
    if weights_file.suffix == ".bin":
        sources = find_tensors(weights_file)                   # CheckpointError for a pickle that is more
        tensors = read_tensors(sources, sources)
    else:
        try:
            with safe_open(str(weights_file), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for bad files
            raise CheckpointError(f"{weights_file}: not a readable safetensors file ({e})") from None

    layers = lora_layers(module)
    if not layers:
        targets = sorted({n.rsplit(".", 2)[-2] for n in map(_our_name, tensors) if n is not None})
        if not targets:
            raise CheckpointError(f"{weights_file}: no LoRA tensors in this file")
        add_lora(module, targets, r, alpha, dropout)
        layers = lora_layers(module)
    problems = []
    merged = [n for n, m in layers.items() if m.merged]
    if merged:
        problems.append(f"merged (call unmerge_lora first): {_short(merged)}")
    wrong_scale = [n for n, m in layers.items() if (m.r, m.alpha) != (r, alpha)]
    if wrong_scale:
        problems.append(f"file has r={r}, alpha={alpha}, layers differ: {_short(wrong_scale)}")
    wanted = {_peft_key(k): p for k, p in module.named_parameters() if _is_lora_param(k)}   # the file's names
    problems += state_problems(tensors, wanted)
    if problems:
        raise CheckpointError(f"{weights_file}: cannot load into {type(module).__name__}: "
                              + "; ".join(problems))
    with torch.no_grad():
        for k, p in wanted.items():
            p.copy_(tensors[k])
    return module


def _short(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# --- how much trains ---------------------------------------------------------------------------------

def trainable_parameters(model: nn.Module) -> tuple[int, int, float]:
    """(trainable, total, percent) over distinct parameters (a tied embedding counts once)."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return trainable, total, 100.0 * trainable / max(total, 1)


def trainable_report(model: nn.Module) -> str:
    """A two-line summary, e.g. for LLaMA-7B with GPT4Video's LoRA:

        LoRA r=16 alpha=16.0 (scale 1.0) dropout=0.1 on q_proj, v_proj: 64 layers, 8,388,608 parameters
        trainable params: 8,388,608 || all params: 6,746,804,224 || trainable%: 0.1243
    """
    trainable, total, percent = trainable_parameters(model)
    lines = []
    layers = lora_layers(model)
    if layers:
        one = next(iter(layers.values()))
        names = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in layers}))
        n_lora = sum(m.lora_A.numel() + m.lora_B.numel() for m in layers.values())
        lines.append(f"LoRA r={one.r} alpha={one.alpha} (scale {one.scaling:g}) dropout={one.dropout_p} "
                     f"on {names}: {len(layers)} layers, {n_lora:,} parameters")
    lines.append(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {percent:.4f}")
    return "\n".join(lines)
