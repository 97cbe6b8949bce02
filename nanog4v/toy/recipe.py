"""The whole nano recipe in one command: `python train.py --preset nano --stage all --out DIR`.

What the paper takes as given is made first, then the paper's two stages run exactly as a user runs
them by hand, one `train.py` command each:

    DIR/toyworld/                 the toy world (`python -m nanog4v.toy`), rendered when missing
    DIR/tokenizer.model, vision/, llama/, stage0.json      stage 0 (stage0.py), from the world's train split
    DIR/features/                 the frozen ViT's features of stage 1's clips (`python -m nanog4v.features`)
    DIR/abstractor/               only with Stage0Settings.abstractor_steps: the pretrained abstractor
                                  (stage0_abstractor.py), stage 1's --init
    DIR/stage1/                   python train.py --stage 1 --data toyworld/stage1_train.json --features-dir …
    DIR/stage2/                   python train.py --stage 2 --init DIR/stage1 --data toyworld/stage2_train.jsonl …
    DIR/losses.png                the loss curve of every stage, side by side

A part that is already in DIR is skipped (a stage's `summary.json` marks it done; a `last.pt` without
one is resumed), so the same command continues an interrupted run. The stages' settings are the
preset's; the flags that do not change the recipe (`RECIPE_FLAGS`) are handed on to each stage.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from ..config import preset
from ..features import cache_features, unique_videos
from ..readers import read_records
from ..plots import plot_losses
from ..trainer import read_log
from ..weights import load_vision
from .worlddir import write_world
from .stage0 import QUICK, run_stage0

TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"
RECIPE_FLAGS = {"eval_n": "--eval-n", "device": "--device", "dtype": "--dtype",
                "save_every": "--save-every", "num_workers": "--num-workers", "max_steps": "--max-steps",
                "frames": "--frames", "lora_r": "--lora-r", "loss_on": "--loss-on", "weight_decay": "--weight-decay",
                "grad_clip": "--grad-clip", "max_seq_len": "--max-seq-len", "strict": "--strict",
                "activation_checkpointing": "--activation-checkpointing"}


class RecipeError(RuntimeError):
    """A step of the recipe that failed; the message says which, and where its own error went."""


def toy_world(path: Path, n: int, seed: int, quiet: bool) -> Path:
    """The toy world at `path`, rendered first if it is not complete (world.json is written last)."""
    if not (path / "world.json").is_file():
        if not quiet:
            print(f"toy world: rendering {n} clips into {path}")
        write_world(path, n=n, seed=seed, force=True, progress=not quiet)
    return path


def stage0(out: Path, preset_name: str = "nano", *, world: Path | None = None, world_n: int = 2000, seed: int = 0,
           quiet: bool = False, quick: bool = False) -> dict:
    """`train.py --stage 0`: the toy preset's tokenizer, ViT and LLaMA from the toy world, into `out`;
    `quick` (--quick): stage0.QUICK's settings instead of the preset's (minutes, and a weaker model)."""
    world = toy_world(world or out / "toyworld", world_n, seed, quiet)
    return run_stage0(world, preset(preset_name), out, seed=seed, log=(lambda *a, **k: None) if quiet else print,
                      settings=QUICK if quick else None)


def handed_on(args) -> list[str]:
    """The command line's flags (`RECIPE_FLAGS`) that each stage's `train.py` run gets too."""
    argv = []
    for name, flag in RECIPE_FLAGS.items():
        value = getattr(args, name, None)
        if value is True:
            argv.append(flag)
        elif value not in (None, False):
            argv += [flag, str(value)]
    return argv


def run_all(out: Path, preset_name: str = "nano", *, world: Path | None = None, world_n: int = 2000, seed: int = 0,
            quiet: bool = False, quick: bool = False, passed_on: list[str] = ()) -> dict:
    """`train.py --stage all` (the module docstring); `quick`: stage 0's quick settings (`stage0`);
    `passed_on` are extra flags for both stages' runs. Returns the summary of stage 2."""
    world = toy_world(world or out / "toyworld", world_n, seed, quiet)
    if not (out / "stage0.json").is_file():
        stage0(out, preset_name, world=world, seed=seed, quiet=quiet, quick=quick)
    frozen = ["--vision", out / "vision", "--llama", out / "llama", "--tokenizer", out / "tokenizer.model"]
    stage1_data = [world / "stage1_train.json", world / "stage1_val.json"]
    videos = unique_videos(read_records(stage1_data, None, True, log=lambda *a, **k: None))
    cache_features(load_vision(out / "vision"), videos, out / "features", preset(preset_name).num_frames,
                   progress=not quiet)
    pretrained = pretrained_abstractor(out)
    stages = {1: ["--data", stage1_data[0], "--val", stage1_data[1], "--features-dir", out / "features", *pretrained],
              2: ["--data", world / "stage2_train.jsonl", world / "safety_train.jsonl",
                  "--val", world / "stage2_val.jsonl", "--init", out / "stage1"]}
    for k, data in stages.items():
        run_dir = out / f"stage{k}"
        if (run_dir / "summary.json").is_file():
            continue
        resume = ["--resume"] if (run_dir / "last.pt").is_file() else []
        argv = ["--stage", k, "--preset", preset_name, "--seed", seed, *frozen, *data, "--out", run_dir, *resume,
                *(["--quiet"] if quiet else []), *passed_on]
        threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}          # as many as this process uses
        if subprocess.run([sys.executable, str(TRAIN_PY), *map(str, argv)], env={**os.environ, **threads}).returncode:
            raise RecipeError(f"{run_dir}: stage {k} failed (its error is above); the same command continues it")
    plot_recipe(out)
    return json.loads((out / "stage2" / "summary.json").read_text())


def pretrained_abstractor(out: Path) -> list:
    """Stage 1's flags for stage 0's pretrained abstractor, if there is one: `--init` it, for the epochs
    stage 0's settings give (`Stage0Settings.abstractor_stage1_epochs`); else none."""
    if not (out / "abstractor" / "config.json").is_file():
        return []
    epochs = json.loads((out / "stage0.json").read_text())["settings"].get("abstractor_stage1_epochs")
    return ["--init", out / "abstractor", *(["--epochs", epochs] if epochs else [])]


def plot_recipe(out: Path) -> Path:
    """OUT/losses.png: the loss curve of every stage of the recipe, side by side (log scale)."""
    report = json.loads((out / "stage0.json").read_text())
    curves = {"stage 0: ViT (attribute BCE)": report["vision"]["losses"],
              "stage 0: LLaMA (Eq. 5 on the toy text)": report["llama"]["losses"]}
    for k in (1, 2):
        rows = read_log(out / f"stage{k}" / "log.jsonl")
        curves[f"stage {k}: {'abstractor' if k == 1 else 'LoRA'} (Eq. 5)"] = [row["loss"] for row in rows]
    return plot_losses(curves, out / "losses.png", log_scale=True)
