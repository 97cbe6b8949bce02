"""A LLaMA-7B-shaped checkpoint on this machine: load time, peak RSS, batch-1 decode vs the bandwidth limit.

    python bench/llama7b.py                      # full LLaMA-7B shape: writes ≈13.5 GB (bf16) to bench/scratch/
    python bench/llama7b.py --layers 2 --shard-size 300MB   # smoke test: ≈1.3 GB in 5 shards
    python bench/llama7b.py --threads 1          # also worth a row: one thread vs torch's default
    python bench/llama7b.py --device cuda        # decode on a GPU (loaded on the CPU, then moved)

1. Writes random bf16 weights in the Hugging Face sharded layout (config.json, model-0000k-of-0000n.
   safetensors, model.safetensors.index.json) tensor by tensor, so the writer needs little RAM; an
   existing checkpoint with the same config is reused.
2. In a fresh subprocess (so that RSS counts nothing but the load): `load_llama(dtype=bfloat16)`,
   its time and peak RSS (`ru_maxrss`) against the checkpoint's bytes (target ≤ 1.1×); batch-1
   greedy decode seconds/token with the KV cache; the memory read bandwidth (sum over a 1 GiB fp32
   tensor, best of 5) and from it the bandwidth limit: every decode step must read all weights
   except the embedding table once, so s/token ≥ bytes / bandwidth (target: reach ≥ 70% of it).
3. transformers `generate()` on the same files, only when two copies fit in RAM (a 7B bf16 model on
   the 23 GiB development machine does not: it is skipped and the table says so).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from nanog4v.config import preset  # noqa: E402
from nanog4v.llama import LLaMA  # noqa: E402
from nanog4v.safetensors_io import write_checkpoint  # noqa: E402
from nanog4v.weights import llama_config_to_hf, load_llama  # noqa: E402

GB = 1e9


def write_random_checkpoint(path: Path, cfg, shard_size: str, seed: int = 0) -> None:
    """Random N(0, 0.02) bf16 matrices and unit norm gains, written one tensor at a time."""
    config = llama_config_to_hf(cfg, torch.bfloat16)
    if (path / "config.json").is_file() and json.loads((path / "config.json").read_text()) == config:
        print(f"reusing {path}")
        return
    with torch.device("meta"):                                           # shapes only, no memory
        state = LLaMA(cfg).state_dict()
    shapes = {(n if n == "lm_head.weight" else "model." + n): tuple(t.shape) for n, t in state.items()}
    gen = torch.Generator().manual_seed(seed)

    def tensor_of(key: str) -> torch.Tensor:
        if key.endswith("norm.weight"):
            return torch.ones(shapes[key], dtype=torch.bfloat16)
        return torch.empty(shapes[key], dtype=torch.bfloat16).normal_(0.0, 0.02, generator=gen)

    t0 = time.perf_counter()
    write_checkpoint(path, config, {k: (s, torch.bfloat16) for k, s in shapes.items()}, tensor_of, shard_size)
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    print(f"wrote {path}: {size / GB:.2f} GB in {time.perf_counter() - t0:.0f} s")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux: KiB


def rss_bytes() -> int:
    """Resident set size now (ru_maxrss is the peak so far, which imports may have set)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def read_bandwidth(device: str, nbytes: int = 2**30, repeats: int = 5) -> tuple[float, float]:
    """Bytes/s of a streaming read (x.sum()) and of a copy (counting read + write), best of `repeats`."""
    x = torch.ones(nbytes // 4, device=device)
    y = torch.empty_like(x)
    reads, copies = [], []
    for _ in range(repeats):
        sync(device); t0 = time.perf_counter(); x.sum(); sync(device)  # noqa: E702
        reads.append(time.perf_counter() - t0)
        sync(device); t0 = time.perf_counter(); y.copy_(x); sync(device)  # noqa: E702
        copies.append(time.perf_counter() - t0)
    return nbytes / min(reads), 2 * nbytes / min(copies)


def decode_seconds_per_token(model, prompt: torch.Tensor, n_new: int, device: str) -> tuple[float, list[int]]:
    """Median seconds of one greedy decode step with the KV cache (after a prefill and one warm-up step)."""
    model.setup_cache(1, prompt.shape[1] + n_new + 1)
    tok = model(prompt, last_only=True).argmax(-1)                       # (1, 1)
    out, times = [tok.item()], []
    for i in range(n_new):
        sync(device)
        t0 = time.perf_counter()
        tok = model(tok, start_pos=prompt.shape[1] + i).argmax(-1)       # (1, 1)
        out.append(tok.item())                                           # .item() waits for the step
        times.append(time.perf_counter() - t0)
    model.clear_cache()
    return statistics.median(times[1:]), out


def measure(path: Path, n_new: int, device: str, compare: str) -> None:
    """Runs in a fresh process: nothing but imports is resident before the load."""
    baseline = rss_bytes()
    ckpt_bytes = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    t0 = time.perf_counter()
    model = load_llama(path, dtype=torch.bfloat16)
    load_s = time.perf_counter() - t0
    peak = peak_rss_bytes()
    model.to(device)
    cfg = model.cfg
    step_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "embed_tokens.weight")
    prompt = torch.randint(3, cfg.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        ours_prefill = model(prompt).float().cpu()                       # (1, 8, V)
        ours_s, ours_tokens = decode_seconds_per_token(model, prompt, n_new, device)
    read_bw, copy_bw = read_bandwidth(device)
    limit_s = step_bytes / read_bw
    rows = [
        ("config", f"{cfg.n_layers} layers, dim {cfg.dim}, heads {cfg.n_heads}/{cfg.n_kv_heads}, "
                   f"hidden {cfg.hidden_dim}, vocab {cfg.vocab_size}, bf16, device {device}, "
                   f"{torch.get_num_threads()} CPU threads"),
        ("checkpoint", f"{ckpt_bytes / GB:.2f} GB in {len(list(path.glob('*.safetensors')))} file(s)"),
        ("load_llama time", f"{load_s:.1f} s ({ckpt_bytes / GB / load_s:.2f} GB/s; page cache state unknown)"),
        ("peak RSS after load / checkpoint bytes",
         f"**{peak / ckpt_bytes:.3f}** (peak {peak / GB:.2f} GB; {baseline / GB:.2f} GB of it is the "
         f"interpreter + torch before loading; (peak − that) / bytes = {(peak - baseline) / ckpt_bytes:.3f})"),
        ("read bandwidth (x.sum(), 1 GiB fp32)", f"{read_bw / GB:.1f} GB/s (copy: {copy_bw / GB:.1f} GB/s)"),
        ("bandwidth limit: weights read per step / read bandwidth",
         f"{step_bytes / GB:.2f} GB / {read_bw / GB:.1f} GB/s = {limit_s * 1e3:.1f} ms/token"),
        ("ours: batch-1 greedy decode (KV cache)", f"{ours_s * 1e3:.1f} ms/token ({1 / ours_s:.2f} tok/s)"),
        ("ours: % of the bandwidth limit", f"**{100 * limit_s / ours_s:.0f}%** (target ≥ 70%)"),
    ]
    need = 2.2 * ckpt_bytes
    if compare == "no" or (compare == "auto" and need > mem_available_bytes() + peak - baseline):
        rows.append(("transformers generate()", f"skipped: two bf16 copies need ≈ {need / GB:.1f} GB, "
                     f"{(mem_available_bytes() + peak - baseline) / GB:.1f} GB available"))
    else:
        import transformers
        del model
        gc.collect()
        t0 = time.perf_counter()
        hf = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval().to(device)
        hf_load = time.perf_counter() - t0

        def generate(n: int) -> tuple[float, list[int]]:
            sync(device); t0 = time.perf_counter()  # noqa: E702
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=0)
            sync(device)
            return time.perf_counter() - t0, out[0, prompt.shape[1]:].tolist()
        with torch.inference_mode():
            _, hf_tokens = generate(n_new + 1)                           # warm-up, and the tokens
            hf_s = statistics.median((generate(n_new + 1)[0] - generate(1)[0]) / n_new for _ in range(3))
            diff = (hf(prompt).logits.float().cpu() - ours_prefill).abs().max().item()
        same = next((i for i, (a, b) in enumerate(zip(hf_tokens, ours_tokens)) if a != b), len(ours_tokens))
        rows += [("transformers: from_pretrained time", f"{hf_load:.1f} s"),
                 ("transformers: generate() decode", f"{hf_s * 1e3:.1f} ms/token ({1 / hf_s:.2f} tok/s)"),
                 ("ours / transformers decode speed", f"**{hf_s / ours_s:.2f}×**"),
                 ("prompt logits: max |ours − transformers| (bf16)", f"{diff:.3g}"),
                 ("greedy tokens equal to ours before the first difference (bf16 near-ties)",
                  f"{same}/{len(ours_tokens)}")]
    print("\n| what | measured |\n| --- | --- |")
    for what, value in rows:
        print(f"| {what} | {value} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: LLaMA-7B's 32)")
    ap.add_argument("--scratch", type=Path, default=ROOT / "bench" / "scratch")
    ap.add_argument("--shard-size", default="2GB", help='max shard size, e.g. "2GB", "300MB"')
    ap.add_argument("--tokens", type=int, default=16, help="decode steps to time")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--compare", choices=["auto", "yes", "no"], default="auto",
                    help="transformers comparison: auto = only when two copies fit in RAM")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)   # internal: the fresh subprocess
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        return measure(args.measure, args.tokens, args.device, args.compare)
    cfg = preset("7b").llama
    if args.layers is not None:
        cfg = dataclasses.replace(cfg, n_layers=args.layers)
    path = args.scratch / f"llama7b-shape-{cfg.n_layers}layers"
    write_random_checkpoint(path, cfg, args.shard_size)
    gc.collect()
    subprocess.run([sys.executable, __file__, "--measure", str(path), "--tokens", str(args.tokens),
                    "--device", args.device, "--compare", args.compare, "--threads", str(args.threads or 0)],
                   check=True)


if __name__ == "__main__":
    main()
