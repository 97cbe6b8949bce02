"""Frames per second of our CLIP ViT (nanog4v/vision.py) against transformers.CLIPVisionModel.

Both models hold the same random weights (transformers saves them in the official layout, our
`load_vision` reads them back), run in the same process with the same dtype, device and thread
count, under `torch.inference_mode`. The two are timed in alternation (HF, ours, HF, ours, ...) so a
busy machine slows both alike; each cell is the median over the repeats. Prints a markdown table
with the ratio ours/HF (target ≥ 1.0) and the largest output difference as a sanity check.

    python bench/vision.py                 # ViT-B/16- and ViT-L/14-sized, batch 4 and 16, fp32 and bf16
    python bench/vision.py --quick         # a tiny ViT, one batch: a smoke test in seconds
    python bench/vision.py --dtypes fp32 --batches 4 --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import CLIPVisionConfig, CLIPVisionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nanog4v.weights import load_vision  # noqa: E402

SIZES = {   # transformers CLIPVisionConfig fields
    "ViT-B/16": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, patch_size=16, image_size=224),
    "ViT-L/14": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, patch_size=14, image_size=224),
    "tiny": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                 intermediate_size=100, patch_size=14, image_size=56),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def race(fns: dict, warmup: int, repeats: int, device: str) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternation after `warmup` calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_size(name: str, dtypes: list[str], batches: list[int], args) -> None:
    """Print one table row per (dtype, batch) for the ViT size `name`."""
    torch.manual_seed(0)
    hf = CLIPVisionModel(CLIPVisionConfig(**SIZES[name])).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            hf = hf.to(device=args.device, dtype=dtype)
            ours = load_vision(tmp, dtype=dtype).to(args.device)
            size = SIZES[name]["image_size"]
            for batch in batches:
                pixels = torch.randn(batch, 3, size, size, device=args.device, dtype=dtype)
                with torch.inference_mode():
                    diff = (ours(pixels).float() - hf(pixel_values=pixels).last_hidden_state.float())
                    seconds = race({"hf": lambda: hf(pixel_values=pixels), "ours": lambda: ours(pixels)},
                                   args.warmup, args.repeats, args.device)
                hf_fps, our_fps = batch / seconds["hf"], batch / seconds["ours"]
                print(f"| {name} | {dtype_name} | {batch} | {hf_fps:.1f} | {our_fps:.1f} | "
                      f"{our_fps / hf_fps:.2f} | {diff.abs().max().item():.1e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny ViT, fp32, batch 2: a smoke test")
    parser.add_argument("--sizes", default="ViT-B/16,ViT-L/14", help=f"comma list of {list(SIZES)}")
    parser.add_argument("--dtypes", default="fp32,bf16", help=f"comma list of {list(DTYPES)}")
    parser.add_argument("--batches", default="4,16")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.dtypes, args.batches, args.warmup, args.repeats = "tiny", "fp32", "2", 1, 3
    torch.set_num_threads(args.threads)
    sizes, dtypes = args.sizes.split(","), args.dtypes.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    for bad in [s for s in sizes if s not in SIZES] + [d for d in dtypes if d not in DTYPES]:
        parser.error(f"unknown size or dtype {bad!r}")

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(f"CLIP ViT forward, frames/s (median of {args.repeats}, after {args.warmup} warm-up calls); "
          f"{device}; torch {torch.__version__}, transformers {transformers.__version__} "
          f"(CLIPVisionModel, sdpa attention)\n")
    print("| model | dtype | batch | HF frames/s | ours frames/s | ours/HF | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in sizes:
        bench_size(name, dtypes, batches, args)


if __name__ == "__main__":
    main()
