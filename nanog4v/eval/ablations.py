"""`python -m nanog4v.eval.ablations --ckpt weights/nano --out runs/ablations`: the ablations the paper lacks.

GPT4Video reports no ablation of its own design choices. At nano scale each one is a short training run
from the shipped checkpoint's frozen parts (its ViT, LLaMA and tokenizer), scored on the held-out toy
split with `nanog4v.eval.tables`:

| family | variants | trains | scored by |
| --- | --- | --- | --- |
| streams (Eq. 4) | F_s + F_t (the paper), F_s only, F_t only | stage 1 | held-out QA, by question type |
| queries | N = 4, 16 (nano), 32 | stage 1 | held-out QA |
| frames | T = 2, 4 (nano), 8 | stage 1 | held-out QA |
| abstractor | the paper's Eq. 2–4 (nano), the official code's joint form, stage 0's pretrained one | stage 1 | held-out QA |
| LoRA rank | r = 4, 16 (nano), 64 (α = 16 throughout) | stage 2, from the shipped stage 1 | prompt fidelity, QA |

Every stage-1 variant starts from a fresh abstractor (seed 0) of the nano preset's shape (N = 16; the
shipped one has 34 queries, which stage 0 pretrained to hold a caption) and trains for `--epochs`
(default 1) through `train.py` itself — the variant's abstractor is written as an untrained `--init`, so
the run takes exactly the code path of the recipe. "pretrained abstractor" starts instead from the one
stage 0 taught to write each clip's caption (CKPT/abstractor, the shipped stage 1's `--init`). The
"both / N = 16 / T = 4" run is the shared baseline of the first three families. Results go to
OUT/results.json (one entry per variant: settings, wall time, final loss, the scores) and a markdown
table on stdout.

Every accuracy is given with its standard error, √(p(1 − p)/n): two variants whose scores differ by less
than about two of them are not told apart. One standard error ≤ 1.5 points needs n ≳ 1,100 questions of
the kind compared (motion, colour, count each make a seventh to a fifth of the QA), more than one world's
held-out split holds; `--data` scores on the held-out split of a larger world rendered with the checkpoint
world's seed, so that it holds out the same colour–shape pairs (`python -m nanog4v.toy --out DIR --n 16000
--seed 0` for weights/nano: ≈ 10,000 questions, ≥ 1,076 of each type; training still reads the checkpoint's
own world).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..abstractor import build_abstractor
from ..cli import number_flag_problem
from ..config import G4VConfig, preset
from ..features import cache_features, unique_videos
from ..model import GPT4Video
from ..readers import read_videochat
from ..tokenizer import Tokenizer
from ..weights import load_gpt4video, load_vision
from .tables import held_out, questions, table1, table3

ROOT = Path(__file__).resolve().parents[2]
BASELINE = "both, N=16, T=4"
VARIANTS = {   # name -> (family, stage, changes to the abstractor / num_frames / LoRA rank)
    BASELINE: ("streams", 1, {}),
    "spatial only": ("streams", 1, {"streams": "spatial"}),
    "temporal only": ("streams", 1, {"streams": "temporal"}),
    "N=4": ("queries", 1, {"num_queries": 4}),
    "N=32": ("queries", 1, {"num_queries": 32}),
    "T=2": ("frames", 1, {"num_frames": 2}),
    "T=8": ("frames", 1, {"num_frames": 8}),
    "official abstractor": ("abstractor", 1, {"variant": "official"}),
    "pretrained abstractor": ("abstractor", 1, {"pretrained": True}),    # stage 0's (CKPT/abstractor), not fresh
    "r=4": ("lora", 2, {"r": 4}),
    "r=16": ("lora", 2, {"r": 16}),
    "r=64": ("lora", 2, {"r": 64}),
}


def untrained_init(ckpt: Path, changes: dict, directory: Path) -> Path:
    """The shipped stage-1 config with the preset's abstractor and `changes`, and a fresh abstractor (seed
    0), saved as a train.py --init. (The preset's shape, not the shipped one's: stage 0 may have pretrained
    the shipped abstractor with more queries, to hold a caption; the ablations compare fresh abstractors.)"""
    cfg = G4VConfig.from_dict(json.loads((ckpt / "stage1" / "config.json").read_text())["config"])
    frames = changes.get("num_frames", cfg.num_frames)
    abstractor = replace(preset(cfg.name).abstractor, **{k: v for k, v in changes.items() if k != "num_frames"})
    cfg = replace(cfg, num_frames=frames, abstractor=abstractor)
    with torch.device("meta"):
        model = GPT4Video(cfg)                      # the frozen parts stay on meta: only the abstractor is saved
    torch.manual_seed(0)
    model.abstractor = build_abstractor(cfg.abstractor, cfg.vision.dim, cfg.llama.dim, cfg.num_frames)
    return model.save_pretrained(directory)


def features(ckpt: Path, out: Path, num_frames: int) -> Path:
    """The frozen ViT's features of every stage-1 training clip at T = num_frames, cached once in
    OUT/features_T{T} (stage 1 then never decodes a video: ≈ 25× faster on a CPU)."""
    directory = out / f"features_T{num_frames}"
    videos = unique_videos(list(read_videochat(ckpt / "toyworld" / "stage1_train.json")))
    cache_features(load_vision(ckpt / "vision"), videos, directory, num_frames, progress=False)
    return directory


def train(ckpt: Path, stage: int, init: Path, out: Path, epochs: int, extra: list[str]) -> dict:
    """One `train.py --stage {1,2}` run on the shipped frozen parts; returns its summary.json."""
    world = ckpt / "toyworld"
    data = [world / "stage1_train.json"] if stage == 1 else [world / "stage2_train.jsonl", world / "safety_train.jsonl"]
    argv = [sys.executable, str(ROOT / "train.py"), "--stage", str(stage), "--preset", "nano", "--quiet",
            "--vision", str(ckpt / "vision"), "--llama", str(ckpt / "llama"), "--tokenizer", str(ckpt / "tokenizer.model"),
            "--data", *map(str, data), "--init", str(init), "--out", str(out), "--epochs", str(epochs),
            "--eval-n", "0", *extra]
    run = subprocess.run(argv, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{out}: train.py failed: {run.stderr.strip().splitlines()[-1:]}")
    return json.loads((out / "summary.json").read_text())


def standard_error(p: float, n: int) -> float:
    """One standard error of an accuracy p measured on n independent questions: √(p(1 − p)/n)."""
    return (p * (1 - p) / n) ** 0.5 if n else float("nan")


def score(ckpt: Path, run_dir: Path, stage: int, limit: int | None, data: Path) -> dict:
    """Held-out QA (both stages) and prompt fidelity (stage 2) of a trained variant, on the world `data`."""
    model = load_gpt4video(run_dir, vision_path=ckpt / "vision", llama_path=ckpt / "llama").eval()
    tokenizer = Tokenizer(ckpt / "tokenizer.model")
    files = held_out(data)
    qa, _ = questions(files["stage1"], limit)
    scores, _ = table1(model, tokenizer, qa)
    out = {"qa_accuracy": scores["qa_accuracy"], "qa_n": scores["qa_n"], "data": str(data),
           "qa_by_type": {t: v["accuracy"] for t, v in scores["qa_by_type"].items()},
           "qa_by_type_n": {t: v["n"] for t, v in scores["qa_by_type"].items()}}
    if stage == 2:
        generation, _ = table3(model, tokenizer, files["stage2"], limit)
        out.update(prompt_fidelity=generation["prompt_fidelity"], show_n=generation["show_n"])
    return out


def run_ablations(ckpt, out, names: list[str], epochs: int = 1, limit: int | None = None, log=print,
                  data=None) -> dict:
    """Train and score each variant of `names` (VARIANTS) into OUT/<name>, scored on the held-out split of
    `data` (default: the checkpoint's own world); OUT/results.json is rewritten after every run."""
    ckpt, out = Path(ckpt), Path(out)
    data = Path(data) if data is not None else ckpt / "toyworld"
    for world in {ckpt / "toyworld", data}:         # fail early, naming the file, if a world is missing
        held_out(world)
    ours, theirs = (json.loads((w / "world.json").read_text())["heldout_pairs"] for w in (ckpt / "toyworld", data))
    if ours != theirs:      # another seed holds out other pairs: pairs the checkpoint trained on would be "held out"
        raise ValueError(f"{data / 'world.json'}: held-out pairs {theirs} are not the checkpoint's {ours}; render "
                         f"the larger world with the checkpoint world's --seed")
    pretrained = ckpt / "abstractor" / "config.json"
    if not pretrained.is_file() and any(VARIANTS[n][2].get("pretrained") for n in names):
        raise ValueError(f"{pretrained}: missing; this checkpoint's stage 0 pretrained no abstractor "
                         "(Stage0Settings.abstractor_steps), so 'pretrained abstractor' has nothing to start from")
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    for name in names:
        family, stage, changes = VARIANTS[name]
        run_dir = out / name.replace(" ", "_").replace(",", "").replace("=", "")
        started = time.time()
        if stage == 1:                 # a fresh abstractor, or the one stage 0 taught to write captions
            init = ckpt / "abstractor" if changes.get("pretrained") else untrained_init(ckpt, changes, run_dir / "init")
            frames = json.loads((init / "config.json").read_text())["config"]["num_frames"]
            summary = train(ckpt, 1, init, run_dir, epochs, ["--features-dir", str(features(ckpt, out, frames))])
        else:
            summary = train(ckpt, 2, ckpt / "stage1", run_dir, epochs, ["--lora-r", str(changes["r"])])
        results[name] = {"family": family, "stage": stage, "changes": changes, "epochs": epochs,
                         "steps": summary["step"], "final_loss": summary["loss"], "train_s": summary["wall_s"],
                         **score(ckpt, run_dir, stage, limit, data), "wall_s": round(time.time() - started, 1)}
        log(f"ablations: {name}: QA {results[name]['qa_accuracy']:.3f} "
            f"({results[name]['wall_s']:.0f} s)")
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")   # after every run: resumable
    return results


TYPES = ("motion", "colour", "count")        # where a choice should show: the temporal stream, the spatial one


def markdown(results: dict) -> str:
    """One row per variant: accuracies ± one standard error (per type only where results.json has the
    type's n; results saved before it was recorded show the accuracy alone)."""
    def cell(p, n):
        return "–" if p is None else f"{100 * p:.1f}" + (f" ± {100 * standard_error(p, n):.1f} %" if n else " %")
    lines = ["| family | variant | steps | final loss | held-out QA | " + " | ".join(TYPES) + " | prompt fidelity |",
             "| --- | --- | --- | --- | --- | " + "--- | " * len(TYPES) + "--- |"]
    for name in VARIANTS:
        r = results.get(name)
        if r is not None:
            n_by_type = r.get("qa_by_type_n", {})
            types = " | ".join(cell(r["qa_by_type"].get(t), n_by_type.get(t)) for t in TYPES)
            fidelity = cell(r["prompt_fidelity"], r["show_n"]) if "prompt_fidelity" in r else "–"
            lines.append(f"| {r['family']} | {name} | {r['steps']} | {r['final_loss']:.3f} | "
                         f"{cell(r['qa_accuracy'], r['qa_n'])} (n {r['qa_n']}) | {types} | {fidelity} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanog4v.eval.ablations", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, default=ROOT / "weights" / "nano")
    p.add_argument("--out", type=Path, default=Path("runs") / "ablations")
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="VARIANT",
                   help=f"variants to run (default: all): {', '.join(VARIANTS)}")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run (the shipped recipe: 8 for stage 1, 3 for stage 2)")
    p.add_argument("--limit", type=int, help="held-out questions (and show turns) scored per run (default: all; "
                   "the shipped world's 1,266 give one standard error ≈ 1.4 points overall)")
    p.add_argument("--data", type=Path, help="score on this toy world's held-out split (default: CKPT/toyworld); "
                   "render it with the checkpoint world's --seed: the same held-out pairs")
    args = p.parse_args(argv)
    try:
        problem = number_flag_problem(args, {"limit": (1, None, True), "epochs": (1, None, True)})
        if problem:
            raise ValueError(problem)
        results = run_ablations(args.ckpt, args.out, args.only, args.epochs, args.limit,
                                log=lambda m: print(m, file=sys.stderr), data=args.data)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
