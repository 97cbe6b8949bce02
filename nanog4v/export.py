"""Export a trained GPT4Video's language model: the LLaMA with its LoRA merged, in Hugging Face's layout.

    python -m nanog4v.export --ckpt weights/nano --out exported/nano-llama       # a chat checkpoint directory
    python -m nanog4v.export --ckpt runs/7b-stage2 --llama weights/llama-7b --out exported/llama-7b-g4v

Stage 2 trains LoRA adapters on LLaMA's q_proj and v_proj (paper §3.3). Merging folds each one into its
base weight, W ← W + (α/r)·B A (`lora.merge_lora`), so the result is a plain LLaMA that any tool reading
the Hugging Face layout loads with no adapter code: `transformers.LlamaForCausalLM.from_pretrained(OUT)`
gives the same logits as our model with the unmerged adapter (tests/test_export.py).

--ckpt is either a chat checkpoint directory (`tokenizer.model`, `llama/`, `stage2/`: what chat.py reads)
or one stage-2 run as `train.py --out` writes it (`config.json` + `gpt4video.safetensors`); a run does not
hold its frozen LLaMA, so it comes from --llama, or else from the run's `adapter/adapter_config.json`
(`base_model_name_or_path`, written by train.py). A run of the `owl-video` preset was trained on
mPLUG-Owl's video checkpoint: --llama (or the adapter's base) is then that checkpoint's directory, and
its LLaMA (`language_model.*`) is what gets the LoRA and is exported. The tokenizer is --tokenizer, or `tokenizer.model`
beside the checkpoint or inside the LLaMA directory.

OUT receives `config.json` + `model.safetensors` (sharded beyond --max-shard-size) from `save_llama`,
`tokenizer.model` and the `tokenizer_config.json` / `special_tokens_map.json` that let
`transformers.LlamaTokenizer.from_pretrained(OUT)` build the tokenizer (it needs `sentencepiece` and
`protobuf` to convert tokenizer.model), and `generation_config.json`. That tokenizer encodes as SentencePiece
does except for text that starts with a space: its Metaspace pre-tokenizer adds no dummy prefix there, so
" hi" gets one "▁" fewer (transformers 5's LlamaTokenizer, not the export). Everything is written into a
temporary directory beside OUT and renamed into place when complete: a failure leaves no half export, and
an existing OUT is never overwritten. The video half (ViT, abstractor) is not exported: it has no Hugging
Face class. Errors print one line `error: <file or --flag>: <problem>` and exit with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from .cli import file_in_the_way
from .llama import LLaMA
from .lora import ADAPTER_CONFIG, merge_lora
from .model import GPT4Video
from .safetensors_io import CheckpointError, read_config
from .tokenizer import Tokenizer, TokenizerError
from .weights import load_llama, load_mplug_owl, save_llama

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExportError(ValueError):
    """A command-line problem, printed as one line `error: …`."""


def merged_llama(stage_dir: Path, llama_path: Path, dtype: torch.dtype = torch.float32) -> LLaMA:
    """The frozen LLaMA at `llama_path` with the LoRA of the stage-2 model `stage_dir` merged in, in eval
    mode. The adapter is read strictly, as chat.py reads it (`GPT4Video.load_trainable`: every key, its
    shape); the ViT stays on the meta device (never read) and the abstractor is read and dropped."""
    cfg, lora = GPT4Video.read_config(stage_dir)
    if not lora:
        raise CheckpointError(f"{stage_dir / 'config.json'}: a stage-1 model (no LoRA): its LLaMA is {llama_path} "
                              "unchanged, nothing to merge")
    if cfg.name == "owl-video":                  # trained on mPLUG-Owl's checkpoint: its LLaMA is inside it
        model = load_mplug_owl(llama_path, dtype)
        model.cfg = dataclasses.replace(model.cfg, lora=cfg.lora)
    else:
        with torch.device("meta"):
            model = GPT4Video(cfg)
        model.llm = load_llama(llama_path, dtype=dtype).requires_grad_(False)
    theirs, ours = model.llm.cfg, cfg.llama
    mismatch = [f"{k} {getattr(ours, k)} != {getattr(theirs, k)}" for k in ("dim", "n_layers", "n_heads", "n_kv_heads")
                if getattr(ours, k) != getattr(theirs, k)]
    if mismatch:
        raise CheckpointError(f"{stage_dir / 'config.json'}: was not trained on the LLaMA in {llama_path}: "
                              + "; ".join(mismatch))
    model.add_lora()
    model.load_trainable(stage_dir)
    return merge_lora(model.llm).eval()


def tokenizer_files(llm: LLaMA, max_len: int) -> dict[str, dict]:
    """tokenizer_config.json, special_tokens_map.json and generation_config.json for LLaMA's
    SentencePiece tokenizer (unk 0, bos 1, eos 2, no pad piece: docs/formats.md, Tokenizer)."""
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "LlamaTokenizer", **special, "pad_token": None, "add_bos_token": True,
              "add_eos_token": False, "clean_up_tokenization_spaces": False, "legacy": True,
              "model_max_length": max_len, "sp_model_kwargs": {}}
    generation = {"bos_token_id": llm.cfg.bos_id, "eos_token_id": llm.cfg.eos_id, "pad_token_id": 0}
    return {"tokenizer_config.json": config, "special_tokens_map.json": special,
            "generation_config.json": generation}


def export(stage_dir: Path, llama_path: Path, tokenizer: Path, out: Path, dtype: torch.dtype | None = None,
           max_shard_size: str = "5GB") -> Path:
    """Write the merged LLaMA and the tokenizer files to `out` (which must not exist), atomically.
    dtype None: the base LLaMA's own (its config.json `torch_dtype`), float32 if it names none."""
    if dtype is None:
        hf = read_config(llama_path) or {}
        dtype = DTYPES.get(hf.get("dtype") or hf.get("torch_dtype"), torch.float32)
    pieces = Tokenizer(tokenizer).vocab_size
    llm = merged_llama(stage_dir, llama_path, dtype)
    if pieces > llm.cfg.vocab_size:
        raise CheckpointError(f"{tokenizer}: {pieces} pieces, but the LLaMA in {llama_path} has only "
                              f"{llm.cfg.vocab_size} embeddings")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))     # beside OUT: one rename
    try:
        save_llama(llm, tmp, max_shard_size=max_shard_size)
        shutil.copyfile(tokenizer, tmp / "tokenizer.model")
        for name, content in tokenizer_files(llm, llm.cfg.max_seq_len).items():
            (tmp / name).write_text(json.dumps(content, indent=2))
        tmp.rename(out)                         # fails, leaving OUT alone, if OUT appeared meanwhile
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --- the command line --------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nanog4v.export", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--ckpt", type=Path, required=True, help="a chat checkpoint directory or a stage-2 train.py --out")
    p.add_argument("--out", type=Path, required=True, help="the directory to write (must not exist)")
    p.add_argument("--llama", type=Path, help="the frozen LLaMA it was trained on (default: CKPT/llama, or the "
                   "run adapter's base_model_name_or_path)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.model (default: CKPT/tokenizer.model or LLAMA/tokenizer.model)")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto: the base LLaMA's dtype")
    p.add_argument("--max-shard-size", default="5GB", help="shard model.safetensors beyond this size, e.g. 5GB, 200MB")
    return p.parse_args(argv)


def resolve(args) -> tuple[Path, Path, Path]:
    """(stage-2 model directory, LLaMA directory, tokenizer.model) for --ckpt, checked to exist."""
    ckpt = args.ckpt
    if not ckpt.is_dir():
        raise ExportError(f"{ckpt}: no such checkpoint directory (--ckpt)")
    chat_layout = (ckpt / "stage2").is_dir()
    stage = ckpt / "stage2" if chat_layout else ckpt
    if not (stage / "gpt4video.safetensors").is_file():
        raise ExportError(f"{ckpt}: not a chat checkpoint directory (no stage2/) nor a stage-2 run "
                          "(no gpt4video.safetensors, as train.py --stage 2 --out writes)")
    llama, named_by = args.llama or (ckpt / "llama" if chat_layout else None), None
    if llama is None:
        llama, named_by = _adapter_base(stage), stage / "adapter" / ADAPTER_CONFIG
    if llama is None:
        raise ExportError(f"{stage}: a train.py run does not hold its frozen LLaMA; pass --llama DIR")
    if not llama.is_dir():
        raise ExportError(f"{named_by}: its base_model_name_or_path, {llama}, is not a directory here; pass --llama DIR"
                          if named_by else f"{llama}: no such LLaMA directory (--llama)")
    candidates = [args.tokenizer] if args.tokenizer else [ckpt / "tokenizer.model", llama / "tokenizer.model"]
    tokenizer = next((t for t in candidates if t.is_file()), None)
    if tokenizer is None:
        raise ExportError(f"{candidates[0]}: no such tokenizer file (pass --tokenizer FILE)")
    return stage, llama, tokenizer


def _adapter_base(run: Path) -> Path | None:
    """The base model directory a run's adapter names (`base_model_name_or_path`), if it names one."""
    try:
        base = json.loads((run / "adapter" / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(base) if isinstance(base, str) and base else None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if not re.fullmatch(r"\d+(\.\d+)?[KMG]B|\d+", args.max_shard_size, re.IGNORECASE):
            raise ExportError(f"--max-shard-size: {args.max_shard_size!r} is not a size such as 5GB, 200MB or bytes")
        if args.out.exists():
            raise ExportError(f"{args.out}: already exists (--out must be a new directory)")
        in_the_way = file_in_the_way(args.out.parent)
        if in_the_way:
            raise ExportError(f"--out: {in_the_way} is a file, not a directory")
        stage, llama, tokenizer = resolve(args)
        dtype = None if args.dtype == "auto" else DTYPES[args.dtype]
        export(stage, llama, tokenizer, args.out, dtype, args.max_shard_size)
    except (ExportError, CheckpointError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:                                   # a full disk, no permission to write beside OUT
        print(f"error: {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: LLaMA with the LoRA of {stage} merged (Hugging Face layout) and the tokenizer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
