"""One optimiser step of stage 1 and of stage 2 at the full 7B shape, on this CPU, through train.py.

    python bench/train_smoke_7b.py                    # CLIP ViT-L/14 + LLaMA-7B, bf16, ≈ 14.1 GB in bench/scratch/
    python bench/train_smoke_7b.py --llm-layers 2 --vision-layers 2          # a quick smoke of the script
    python bench/train_smoke_7b.py --torchrun-layers 2                      # + 2 gloo processes at reduced depth

Not a test and not in CI: it writes random bf16 weights in the official layouts (a transformers
CLIPVisionModel directory, a Hugging Face LLaMA directory; tensor by tensor, so the writer needs little
RAM) and a tiny data set (examples/toy_clip.mp4 as VideoChat-11k-style QA, two dialogues), then runs
exactly what a user runs — `python train.py --preset 7b --stage 1 … --max-steps 1`, then `--stage 2
--init <stage 1>` — each in its own process, and reports its wall time, the step's seconds (log.jsonl)
and the peak RSS of the largest process (each reports its own `ru_maxrss`). With `--torchrun-layers K` it also runs stage 2
as `torchrun --nproc_per_node=2` (gloo) on a K-layer LLaMA: the same code path as 8 GPUs, at a depth that
fits two copies in RAM. The real LLaMA tokenizer comes from ../shared/assets (it is not shipped).
"""
from __future__ import annotations

import argparse
import json
import resource
import runpy
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from llama7b import read_bandwidth, write_random_checkpoint  # noqa: E402
from nanog4v.config import preset  # noqa: E402
from nanog4v.vision import VisionTransformer  # noqa: E402
from nanog4v.weights import save_vision  # noqa: E402

GB = 1e9
TOKENIZER = ROOT.parent / "shared" / "assets" / "llama-tokenizer" / "tokenizer.model"


def write_vision(path: Path, layers: int) -> None:
    """A random ViT-L/14 (bf16) as a transformers CLIPVisionModel directory; reused when present."""
    cfg = replace(preset("7b").vision, n_layers=layers)
    if (path / "config.json").is_file() and json.loads((path / "config.json").read_text())["num_hidden_layers"] == layers:
        return
    torch.manual_seed(0)
    save_vision(VisionTransformer(cfg).to(torch.bfloat16), path)


def write_data(path: Path) -> dict[str, Path]:
    """Two VideoChat-11k-style QA records on the example clip; two text dialogues for stage 2."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "examples" / "toy_clip.mp4", path / "clip.mp4")
    qa = [{"video": "clip.mp4", "QA": [{"q": "Describe the video in detail.",
                                        "a": "A large red circle moves to the right while a small yellow square grows."}]},
          {"video": "clip.mp4", "QA": [{"q": "What colour is the circle?", "a": "The circle is red."}]}]
    (path / "stage1.json").write_text(json.dumps(qa))
    dialogues = [{"conversations": [{"from": "human", "value": "Show me a red circle moving left."},
                                    {"from": "gpt", "value": "Of course. <video> a red circle moves left </video>"}]},
                 {"conversations": [{"from": "human", "value": "What can you do?"},
                                    {"from": "gpt", "value": "I can talk about videos and show you new ones."}]}]
    (path / "stage2.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dialogues))
    return {"stage1": path / "stage1.json", "stage2": path / "stage2.jsonl"}


def child(argv: list[str]) -> None:
    """`--child train.py ARGS`: run train.py in this process, then print its peak RSS (ru_maxrss) on stderr."""
    sys.argv = argv
    try:
        runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
    finally:
        print(f"PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)


def run(launcher: list[str], train_args: list[str], out: Path) -> dict:
    """Run train.py in fresh process(es): wall seconds, the step's seconds, the largest process's peak RSS."""
    cmd = [*launcher, str(Path(__file__).resolve()), "--child", "train.py", *train_args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, cmd))}\n{done.stderr[-3000:]}")
    peaks = [int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    return {"wall_s": wall, "step": log[-1], "peak_rss_gb": max(peaks) * 1024 / GB}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", type=Path, default=ROOT / "bench" / "scratch", help="where the weights go")
    p.add_argument("--llm-layers", type=int, default=32)
    p.add_argument("--vision-layers", type=int, default=24)
    p.add_argument("--torchrun-layers", type=int, help="also stage 2 under torchrun (2 processes) at this depth")
    p.add_argument("--seq", type=int, default=256, help="--max-seq-len of the runs")
    args = p.parse_args()
    if not TOKENIZER.is_file():
        raise SystemExit(f"{TOKENIZER}: the LLaMA tokenizer is needed (32,000 pieces) and is not shipped")
    s, tag = args.scratch, f"{args.llm_layers}L"
    llama, vision = s / f"llama-7b-{tag}", s / f"clip-vit-large-{args.vision_layers}L"
    write_random_checkpoint(llama, replace(preset("7b").llama, n_layers=args.llm_layers), "5GB")
    write_vision(vision, args.vision_layers)
    data = write_data(s / "data")
    read_bw, _ = read_bandwidth("cpu")

    def common(llm: Path, batch: int = 1) -> list[str]:
        return ["--preset", "7b", "--vision", str(vision), "--llama", str(llm), "--tokenizer", str(TOKENIZER),
                "--dtype", "bfloat16", "--batch-size", str(batch), "--max-steps", "1", "--max-seq-len", str(args.seq),
                "--eval-n", "0", "--quiet", "--warmup-steps", "0"]
    rows = []
    for stage in (1, 2):
        out = s / f"runs-{tag}" / f"stage{stage}"
        shutil.rmtree(out, ignore_errors=True)
        extra = ["--data", str(data["stage1"])] if stage == 1 else \
            ["--data", str(data["stage2"]), "--init", str(s / f"runs-{tag}" / "stage1")]
        r = run([sys.executable], ["--stage", str(stage), *common(llama), *extra, "--out", str(out)], out)
        rows.append((f"stage {stage}, 1 process, {args.llm_layers}-layer LLaMA, {args.vision_layers}-layer ViT", r))
    if args.torchrun_layers:
        k = args.torchrun_layers
        small = s / f"llama-7b-{k}L"
        write_random_checkpoint(small, replace(preset("7b").llama, n_layers=k), "5GB")
        init = s / f"runs-{k}L-init"
        shutil.rmtree(init, ignore_errors=True)
        run([sys.executable], ["--stage", "1", *common(small), "--data", str(data["stage1"]), "--out", str(init)], init)
        out = s / f"runs-{k}L-torchrun" / "stage2"
        shutil.rmtree(out, ignore_errors=True)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        r = run(torchrun, ["--stage", "2", *common(small, batch=2), "--data", str(data["stage2"]), "--init", str(init),
                           "--out", str(out)], out)
        rows.append((f"stage 2, torchrun 2 × gloo, {k}-layer LLaMA, global batch 2", r))
    print(f"\n{time.strftime('%Y-%m-%d')}; {torch.backends.cpu.get_cpu_capability()}; read bandwidth "
          f"{read_bw / GB:.1f} GB/s; torch {torch.__version__}; bf16 frozen weights, --max-seq-len {args.seq}\n")
    print("| run | wall (process) | the step (log.jsonl) | tokens | peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        step = r["step"]
        print(f"| {name} | {r['wall_s']:.1f} s | {step['elapsed_s']:.1f} s | {step['tokens']} | "
              f"{r['peak_rss_gb']:.2f} GB |")


if __name__ == "__main__":
    main()
