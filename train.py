"""Train GPT4Video, stage by stage (paper §3.3).

    python train.py --preset nano --stage all --out weights/nano   # the whole nano recipe: world, stages 0, 1, 2
    python train.py --stage 0 [--world DIR] [--out DIR]   # nano: tokenizer, ViT and LLaMA from the toy world
    python train.py --stage all --quick --world-n 80 --out DIR   # the quick variant of stage 0: minutes, weaker
    python train.py --stage 1 [--preset nano|7b|test] [--data FILE ...] [--out DIR] [--resume] [--max-steps N]
    python train.py --stage 2 ...                         # LoRA on the dialogues, from the stage-1 model (--init;
                                                          # required unless the preset has one, e.g. nano)
    torchrun --nproc_per_node=K train.py --stage 2 ...    # data-parallel on K processes (NCCL on GPUs, gloo on CPU)
    python train.py --preset owl-video --stage 2 --init weights/mplug-owl-llama-7b-video --data meta.json ...

**Stage 1** (video-text alignment): the ViT and LLaMA are frozen; the video abstractor and its
projection learn on VideoChat-11k-style video QA. **Stage 2** (instruction tuning): everything is
frozen except LoRA adapters on LLaMA's q_proj and v_proj, trained on GPT4Video-50k-style dialogues
(text only) and the safety dialogues. **Stage 0** (nano and test presets only) makes what the paper
takes as given — the tokenizer, the ViT and the LLaMA — from the toy world (nanog4v/toy/stage0.py).
`--stage all` runs the whole toy recipe into one --out (nanog4v/toy/recipe.py): the toy world, stage
0, cached ViT features, then this script's stage 1 and stage 2, skipping what is already done.

Defaults come from the preset (`nanog4v/config.py`, `TrainConfig` per stage): `7b` uses the paper's
settings (stage 1: lr 1e-4, 2 epochs; stage 2: lr 2e-5, 3 epochs). Every one can be overridden
(--lr, --epochs, --batch-size = the global batch, --grad-accum, --warmup-steps, ...).

**Over processes** (torchrun): --batch-size is the global batch and --grad-accum A splits it into A
micro-batches, A/K per process, so K changes no micro-batch (nor, without dropout, a loss); without
--grad-accum, A is the preset's rounded up to a multiple of K (`distributed.grad_accum_for`; a batch that
does not split is an error before anything loads). Each process reads the frozen weights onto its own
GPU; DDP holds only the trainable tensors. --num-workers processes decode videos for each (default: its
share of the CPUs, at most 8; none for text or --features-dir); log.jsonl's `data_wait` is how long a
step waited for data, `skipped` the micro-batches it skipped because none of their videos decoded.

**Starting where the official code starts** (`--preset owl-video`): --init is mPLUG-Owl's released video
checkpoint directory (ViT with temporal modules, abstractor and LLaMA-7B, already video-trained; read by
`weights.load_mplug_owl`, tokenizer.model from the same folder) and stage 2 trains LoRA on it as the
official code does (q_proj, v_proj; r 16, α 16, dropout 0.1; everything else frozen). Stage 2 of every
preset starts from a model whose video half is trained: without --init (and without a preset default)
it is an error, unless --no-init asks for a fresh abstractor on purpose.

Where things are, by default (paths relative to this file; stage 0 writes the nano ones):

    weights/nano/tokenizer.model      SentencePiece model           (7b: weights/llama-7b/tokenizer.model)
    weights/nano/vision/              CLIP ViT, transformers layout (7b: weights/clip-vit-large-patch14/)
    weights/nano/llama/               LLaMA, Hugging Face layout    (7b: weights/llama-7b/)
    weights/nano/stage1/              the stage-1 model, the --init of stage 2
    weights/nano/toyworld/            the toy world (python -m nanog4v.toy; made when missing): stage 1 reads
                                      stage1_train.json, stage 2 stage2_train.jsonl + safety_train.jsonl;
                                      the end-of-stage check uses stage1_val.json / stage2_val.jsonl
    runs/<preset>-stage<k>/           --out (relative to the working directory)

What --out receives: `log.jsonl` (one line per optimiser step: loss, lr, grad norm, tokens, time),
`last.pt` (the resumable training state, see nanog4v/trainer.py), `loss.png`, the trained model
(`config.json` + `gpt4video.safetensors`, for weights.load_gpt4video / --init), for stage 2 also the
LoRA adapter in peft's layout (`adapter/`), and `summary.json` (steps, time, final loss, evaluation).

Data files may be VideoChat-11k JSON, GPT4Video-50k-style dialogues, safety dialogues or generic
JSONL, or the official repository's meta.json (its "train" list; --val reads its "test" list): the format
is recognised from the first well-formed record (nanog4v/readers.py:sniff_format).
Stage 1 can read cached ViT features instead of decoding videos (--features-dir; make them with
`python -m nanog4v.features`). Errors print one line `error: <file or --flag>: <problem>` and exit with
status 2; every number flag is checked before any work (`check_args`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from nanog4v.abstractor import build_abstractor
from nanog4v.cli import file_in_the_way, number_flag_problem
from nanog4v.config import PRESETS, G4VConfig, preset
from nanog4v.data import ConversationDataset, DataError
from nanog4v.inference import reply_accuracy
from nanog4v.lora import save_lora
from nanog4v.model import GPT4Video
from nanog4v.readers import read_records
from nanog4v.tokenizer import Tokenizer, TokenizerError
from nanog4v.toy import recipe
from nanog4v.toy.worlddir import WorldError
from nanog4v.toy.recipe import RecipeError
from nanog4v.toy.stage0 import Stage0Error
from nanog4v.plots import plot_losses
from nanog4v.distributed import DistributedError, default_num_workers, grad_accum_for, init_distributed, world_size
from nanog4v.trainer import LoopConfig, TrainError, checkpoint_blocks, fit, read_log
from nanog4v.weights import CheckpointError, load_llama, load_mplug_owl, load_vision

ROOT = Path(__file__).resolve().parent
NANO, WORLD = ROOT / "weights" / "nano", ROOT / "weights" / "nano" / "toyworld"
SEVEN_B = {  # flag: (default path, what it is, Hugging Face repository, download folder)
    "vision": ("weights/clip-vit-large-patch14", "CLIP ViT-L/14", "openai/clip-vit-large-patch14",
               "weights/clip-vit-large-patch14"),
    "llama": ("weights/llama-7b", "LLaMA-7B in Hugging Face layout", "huggyllama/llama-7b", "weights/llama-7b"),
    "tokenizer": ("weights/llama-7b/tokenizer.model", "LLaMA's tokenizer.model", "huggyllama/llama-7b",
                  "weights/llama-7b")}
NANO_DEFAULTS = {"vision": NANO / "vision", "llama": NANO / "llama", "tokenizer": NANO / "tokenizer.model",
                 "data": {1: [WORLD / "stage1_train.json"],
                          2: [WORLD / "stage2_train.jsonl", WORLD / "safety_train.jsonl"]},
                 "val": {1: [WORLD / "stage1_val.json"], 2: [WORLD / "stage2_val.jsonl"]},
                 "init": {2: NANO / "stage1"}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train GPT4Video stage 1 (abstractor) or stage 2 (LoRA).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", required=True, choices=["0", "1", "2", "all"])
    p.add_argument("--preset", default="nano", choices=sorted(PRESETS))
    p.add_argument("--data", nargs="+", type=Path, help="training files (default: the preset's)")
    p.add_argument("--val", nargs="+", type=Path, help="validation files for the end-of-stage check")
    p.add_argument("--video-root", type=Path, help="resolve video paths here (default: each file's folder)")
    p.add_argument("--vision", type=Path, help="frozen CLIP ViT: directory or .safetensors")
    p.add_argument("--llama", type=Path, help="frozen LLaMA: Hugging Face directory")
    p.add_argument("--tokenizer", type=Path, help="SentencePiece tokenizer.model")
    p.add_argument("--world", type=Path, help="toy world for --stage 0 (default: OUT/toyworld, made if missing)")
    p.add_argument("--world-n", type=int, default=2000, help="clips in a toy world made by --stage 0|all")
    p.add_argument("--quick", action="store_true", help="--stage 0|all: stage 0's quick settings (stage0.QUICK: a "
                   "per-frame ViT, no pretrained abstractor; minutes, and a weaker model than the shipped one)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--init", type=Path, help="start from this model's trainable parts (a stage-1 --out; "
                       "stage 2 needs one unless the preset has a default or --no-init is given); owl-video: "
                       "mPLUG-Owl's video checkpoint directory")
    start.add_argument("--no-init", action="store_true", help="stage 2 on a fresh, random abstractor (tests, "
                       "text-only ablations): the video path is then untrained")
    p.add_argument("--out", type=Path, help="output directory (default: runs/<preset>-stage<k>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--max-steps", type=int, help="stop after this optimiser step (the schedule still spans "
                   "all epochs, so --resume continues it)")
    for name, kind in [("lr", float), ("epochs", int), ("batch-size", int), ("grad-accum", int),
                       ("warmup-steps", int), ("weight-decay", float), ("grad-clip", float), ("max-seq-len", int)]:
        p.add_argument(f"--{name}", type=kind, help="default: the preset's stage setting")
    p.add_argument("--frames", type=int, help="frames per video T (default: the preset's)")
    p.add_argument("--lora-r", type=int, help="stage 2: LoRA rank r (default: the preset's; α stays the "
                   "preset's; an --init that already has LoRA keeps its own)")
    p.add_argument("--features-dir", type=Path, help="cached ViT features (python -m nanog4v.features)")
    p.add_argument("--loss-on", default="ai", choices=["ai", "all"],
                   help="Eq. 5 on AI turns only, or on every text token as the official code did")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute LLaMA blocks in backward")
    p.add_argument("--device", choices=["cpu", "cuda", "mps"], help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="frozen weights (default: bf16 on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=100, help="write last.pt every N steps (and at the end)")
    p.add_argument("--eval-n", type=int, default=64, help="AI turns scored at the end (0: no evaluation)")
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes decoding videos, per process "
                   "(default: the CPUs per process, at most 8; 0 when there is nothing to decode)")
    p.add_argument("--strict", action="store_true", help="a malformed record is an error, not a skip")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    return p.parse_args(argv)


NUMBER_FLAGS = {  # flag: (lowest, highest, whether the lowest itself is allowed); None: no bound
    "lr": (0, None, False), "epochs": (1, None, True), "batch_size": (1, None, True), "grad_accum": (1, None, True),
    "warmup_steps": (0, None, True), "weight_decay": (0, None, True), "grad_clip": (0, None, True),
    "max_seq_len": (1, None, True), "max_steps": (1, None, True), "frames": (1, None, True),
    "lora_r": (1, None, True), "seed": (0, 2**31 - 1, True), "save_every": (1, None, True),
    "eval_n": (0, None, True), "num_workers": (0, None, True), "world_n": (10, None, True)}


def check_args(args) -> None:
    """Every number flag finite and in its range, --out not a file: one TrainError before any work."""
    problem = number_flag_problem(args, NUMBER_FLAGS)
    if problem:
        raise TrainError(problem)
    if args.quick and args.stage not in ("0", "all"):
        raise TrainError(f"--quick: stage 0's quick settings; --stage {args.stage} has no stage 0")
    in_the_way = file_in_the_way(args.out) if args.out is not None else None
    if in_the_way:
        raise TrainError(f"--out: {in_the_way} is a file, not a directory")


# --- paths and settings ----------------------------------------------------------------------------

def _need(path: Path, what: str, flag: str, preset_name: str) -> Path:
    """`path`, or a TrainError that says how to get it."""
    if path.exists():
        return path
    if preset_name == "7b" and flag in SEVEN_B:
        _, what, repo, folder = SEVEN_B[flag]
        raise TrainError(f"{path}: missing; put {what} there or pass --{flag} PATH. On a machine with internet: "
                         f"huggingface-cli download {repo} --include '*.json' '*.model' '*.safetensors' "
                         f"--local-dir {folder} (see weights/README.md)")
    if preset_name == "nano":
        raise TrainError(f"{path}: missing; the nano preset's {what} is made by stage 0 "
                         f"(python train.py --preset nano --stage all), or pass --{flag} PATH")
    raise TrainError(f"{path}: no such file or directory ({what}, --{flag})")


def resolve_paths(args, stage: int) -> dict:
    """Fill in the preset's default paths and check that every input exists."""
    name = args.preset
    defaults = {"nano": NANO_DEFAULTS,
                "7b": {k: ROOT / v[0] for k, v in SEVEN_B.items()}}.get(name, {})
    init = None if args.no_init else args.init or defaults.get("init", {}).get(stage)
    if name == "owl-video":
        if init is None:
            raise TrainError("train.py: --preset owl-video starts from mPLUG-Owl's video checkpoint: pass --init DIR "
                             "(the downloaded MAGAer13/mplug-owl-llama-7b-video, see weights/README.md)")
        defaults = {"tokenizer": Path(init) / "tokenizer.model", "vision": Path(init), "llama": Path(init)}
    if stage == 2 and init is None and not args.no_init:       # LoRA on a random abstractor is no GPT4Video
        raise TrainError(f"train.py: --preset {name} --stage 2 trains LoRA on top of a stage-1 model: pass --init DIR "
                         f"(the --out of python train.py --preset {name} --stage 1), or --no-init to train on a "
                         "fresh, random abstractor")
    paths = {}
    for flag, what in [("vision", "frozen ViT"), ("llama", "frozen LLaMA"), ("tokenizer", "tokenizer")]:
        path = getattr(args, flag) or defaults.get(flag)
        if path is None:
            raise TrainError(f"train.py: --{flag} is required with --preset {name}")
        paths[flag] = _need(Path(path), what, flag, name)
    if name == "nano" and not args.data and not (WORLD / "world.json").is_file():
        recipe.toy_world(WORLD, args.world_n, 0, args.quiet)    # not shipped: rendered from its seed (~1 min)
    data = args.data or defaults.get("data", {}).get(stage)
    if not data:
        raise TrainError(f"train.py: --data is required with --preset {name} (stage 1: VideoChat-11k JSON; "
                         "stage 2: dialogue and safety JSONL)")
    paths["data"] = [_need(Path(f), "training data", "data", name) for f in data]
    val = args.val or [f for f in defaults.get("val", {}).get(stage, []) if f.exists()]
    paths["val"] = [_need(Path(f), "validation data", "val", name) for f in val]
    what = "mPLUG-Owl's video checkpoint" if name == "owl-video" else "stage-1 model"
    paths["init"] = _need(Path(init), what, "init", name) if init else None
    if args.features_dir is not None:
        paths["features_dir"] = _need(args.features_dir, "cached features", "features-dir", name)
    return paths


def stage_settings(args, cfg: G4VConfig, stage: int):
    """The preset's TrainConfig for this stage with the command line's overrides."""
    tc = cfg.stage1 if stage == 1 else cfg.stage2
    overrides = {k: getattr(args, k) for k in ("lr", "epochs", "batch_size", "grad_accum", "warmup_steps",
                                               "weight_decay", "grad_clip", "max_seq_len")
                 if getattr(args, k) is not None}
    tc = replace(tc, **overrides)                                          # (checked by check_args)
    return replace(tc, max_seq_len=min(tc.max_seq_len, cfg.llama.max_seq_len))


# --- the model ---------------------------------------------------------------------------------------

def build_model(cfg: G4VConfig, paths: dict, stage: int, dtype: torch.dtype, seed: int,
                device: str = "cpu") -> GPT4Video:
    """Frozen ViT and LLaMA from their official layouts (their shapes win over the preset's), a fresh
    abstractor (seeded) or the one of --init (with its LoRA, if any), then `set_stage(stage)`.
    The model is first built on the meta device, so no random 7B LLaMA is ever materialised, and the
    frozen weights are read straight onto `device`, one tensor at a time (no host copy of the model).
    owl-video: the whole model is mPLUG-Owl's video checkpoint (--init)."""
    if cfg.name == "owl-video":
        model = load_mplug_owl(paths["init"], dtype=dtype, device=device)
        model.cfg = replace(model.cfg, num_frames=cfg.num_frames, lora=cfg.lora, stage1=cfg.stage1, stage2=cfg.stage2)
        model.set_stage(stage)
        return model
    vision = load_vision(paths["vision"], dtype=dtype, device=device)
    llm = load_llama(paths["llama"], dtype=dtype, device=device)
    init, lora = paths["init"], False
    if init is not None:                                   # the --init run's abstractor shape and frames win
        saved, lora = GPT4Video.read_config(init)
        cfg = replace(cfg, num_frames=saved.num_frames, abstractor=saved.abstractor,
                      lora=saved.lora if lora else cfg.lora)
    cfg = replace(cfg, vision=vision.cfg, llama=llm.cfg)
    with torch.device("meta"):
        model = GPT4Video(cfg)
    model.vision, model.llm = vision.requires_grad_(False), llm.requires_grad_(False)
    torch.manual_seed(seed)                                                # the same init on every rank
    model.abstractor = build_abstractor(cfg.abstractor, cfg.vision.dim, cfg.llama.dim, cfg.num_frames)
    if init is not None:
        if lora:
            model.add_lora()
        model.load_trainable(init)
    model.set_stage(stage)
    return model


def train_stage(args) -> dict:
    """Train stage 1 or 2 as `args` say; returns {"model", "step", "total_steps", "loss", "eval"}."""
    stage, started = int(args.stage), time.time()

    # 1. where: the device, the processes (torchrun) and how they share a step, the inputs, the settings
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available() or device == "mps" and not torch.backends.mps.is_available():
        raise TrainError(f"train.py: --device {device}: no such device here")
    cfg = preset(args.preset, **({"num_frames": args.frames} if args.frames else {}))
    if args.lora_r is not None:
        cfg = replace(cfg, lora=replace(cfg.lora, r=args.lora_r))
    tc = stage_settings(args, cfg, stage)
    grad_accum = grad_accum_for(tc.batch_size, tc.grad_accum, world_size(), given=args.grad_accum is not None)
    world = init_distributed(device)
    if device == "cuda":
        device = f"cuda:{world.local_rank}"
    say = print if world.main and not args.quiet else (lambda *a, **k: None)
    paths = resolve_paths(args, stage)

    # 2. the model: frozen ViT and LLaMA, the trainable abstractor (stage 1) or LoRA (stage 2); the tokenizer
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    model = build_model(cfg, paths, stage, dtype, args.seed, device)
    cfg, tc = model.cfg, replace(stage_settings(args, model.cfg, stage), grad_accum=grad_accum)
    if args.frames and args.frames != cfg.num_frames:
        raise TrainError(f"{paths['init']}: was trained with {cfg.num_frames} frames, not --frames {args.frames}")
    tokenizer = Tokenizer(paths["tokenizer"])
    if tokenizer.vocab_size > cfg.llama.vocab_size:
        raise TrainError(f"{paths['tokenizer']}: {tokenizer.vocab_size} pieces, but the LLaMA in "
                         f"{paths['llama']} has only {cfg.llama.vocab_size} embeddings")
    model.to(device)
    if args.activation_checkpointing:
        checkpoint_blocks(model.llm)

    # 3. the data: conversation records, tokenised with Eq. 5's labels
    records = read_records(paths["data"], args.video_root, args.strict, log=say)
    data = ConversationDataset(records, tokenizer, cfg, features_dir=paths.get("features_dir"),
                               loss_on=args.loss_on, max_seq_len=tc.max_seq_len)
    if len(data) == 0:
        raise TrainError(f"{paths['data'][0]}: no usable training examples ({data.skips})")
    decodes = data.features_dir is None and any(item["videos"] for item in data.items)
    workers = args.num_workers if args.num_workers is not None else default_num_workers(decodes, world)
    say(f"stage {stage}: {len(data)} examples ({data.skips}); {sum(p.numel() for p in model.parameters() if p.requires_grad):,} "
        f"trainable parameters; lr {tc.lr}, {tc.epochs} epochs, global batch {tc.batch_size} in {tc.grad_accum} "
        f"micro-batch(es) over {world.world_size} process(es); {workers} data worker(s) per process")

    # 4. the loop (nanog4v/trainer.py): AdamW, warm-up + cosine, accumulation, last.pt, log.jsonl
    out = args.out or Path("runs") / f"{args.preset}-stage{stage}"
    out.mkdir(parents=True, exist_ok=True)
    signature = {"preset": args.preset, "stage": stage, "seed": args.seed, "loss_on": args.loss_on,
                 "num_examples": len(data), "world_size": world.world_size,
                 "data": [str(f.resolve()) for f in paths["data"]], **{k: v for k, v in vars(tc).items()}}
    loop = LoopConfig(out=out, lr=tc.lr, epochs=tc.epochs, batch_size=tc.batch_size, grad_accum=tc.grad_accum,
                      warmup_steps=tc.warmup_steps, weight_decay=tc.weight_decay, grad_clip=tc.grad_clip,
                      seed=args.seed, max_steps=args.max_steps, save_every=args.save_every, device=device,
                      bf16=device.startswith("cuda"), num_workers=workers, progress=not args.quiet,
                      signature=signature,   # stage 1 with text-only examples: the abstractor may sit idle
                      find_unused_parameters=stage == 1 and any(not item["videos"] for item in data.items))
    try:
        result = fit(model, data, tokenizer.pad_id, loop, world, resume=args.resume)
    finally:
        if world.main:
            plot_run(out, f"GPT4Video stage {stage} ({args.preset}): Eq. 5")

    # 5. save: the trainable parts (and the adapter in peft's layout), a validation check, the summary
    evaluation = None
    if world.main:
        model.save_pretrained(out)
        if stage == 2:
            save_lora(model.llm, out / "adapter", base_model=str(paths["llama"].resolve()))
        if paths["val"] and args.eval_n > 0:
            val = read_records(paths["val"], args.video_root, args.strict, log=say, split="test")  # meta.json: "test"
            evaluation = reply_accuracy(model, tokenizer, val, features_dir=paths.get("features_dir"),
                                        limit=args.eval_n, device=device, bf16=loop.bf16)
            say(f"validation: exact-answer accuracy {evaluation['accuracy']:.3f} on {evaluation['n']} replies")
        summary = {"stage": stage, "preset": args.preset, **result, "wall_s": round(time.time() - started, 1),
                   "eval": evaluation, "argv": sys.argv}
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        say(f"wrote {out}: model, log.jsonl, loss.png, summary.json (step {result['step']}/{result['total_steps']},"
            f" loss {result['loss']:.4f})")
    if world.world_size > 1:
        dist.barrier()
    return {"model": model, **result, "eval": evaluation}


def plot_run(out: Path, title: str) -> Path | None:
    """OUT/loss.png from OUT/log.jsonl, also after a failed run (the loss up to where it stopped); none
    from a damaged log (the resume that read it has reported it)."""
    try:
        rows = read_log(out / "log.jsonl")
    except TrainError:
        return None
    return plot_losses({title: [row["loss"] for row in rows]}, out / "loss.png")


def run(args) -> dict:
    """--stage 1|2 here; --stage 0|all are the toy recipe's (nanog4v/toy/recipe.py)."""
    check_args(args)
    if args.stage in ("0", "all"):
        if args.preset == "7b":
            raise TrainError(f"train.py: --stage {args.stage} makes the toy presets' frozen parts; 7b starts from "
                             "the official CLIP ViT-L/14 and LLaMA-7B (see weights/README.md)")
        toy = dict(world=args.world, world_n=args.world_n, seed=args.seed, quiet=args.quiet, quick=args.quick)
        if args.stage == "0":
            return recipe.stage0(args.out or Path("runs") / f"{args.preset}-stage0", args.preset, **toy)
        own = [k for k in ("lr", "epochs", "batch_size", "grad_accum", "warmup_steps", "init", "no_init", "data", "val",
                           "vision", "llama", "tokenizer", "features_dir", "resume") if getattr(args, k)]
        if own:
            raise TrainError("train.py: --stage all runs the toy presets with their own settings and paths; run the "
                             f"stages one by one to set {', '.join('--' + k.replace('_', '-') for k in own)}")
        return recipe.run_all(args.out or Path("runs") / f"{args.preset}-all", args.preset, **toy,
                              passed_on=recipe.handed_on(args))
    return train_stage(args)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (TrainError, DistributedError, DataError, CheckpointError, TokenizerError, Stage0Error, WorldError,
            RecipeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; continue with the same command and --resume", file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
