"""A LLaMA-7B-shaped checkpoint on this machine: load time, peak RSS, time to first token, batch-1 decode
vs the bandwidth limit, and the CPU kernels cpu_linear chose.

    python bench/llama7b.py                      # full LLaMA-7B shape: writes ≈13.5 GB (bf16) to bench/scratch/
    python bench/llama7b.py --layers 2 --shard-size 300MB   # smoke test: ≈1.3 GB in 5 shards
    python bench/llama7b.py --threads 1          # also worth a row: one thread vs torch's default
    python bench/llama7b.py --device cuda        # decode on a GPU (loaded on the CPU, then moved)
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/llama7b.py
                                                 # an AVX2-only CPU (no bf16 units), emulated on an AVX-512 one

1. Writes random bf16 weights in the Hugging Face sharded layout (config.json, model-0000k-of-0000n.
   safetensors, model.safetensors.index.json) tensor by tensor, so the writer needs little RAM; an
   existing checkpoint with the same config is reused.
2. In a fresh subprocess (so that RSS counts nothing but the load), after a header with the machine
   (CPU model, `get_cpu_capability()`, torch, threads, the AVX2-emulation variables if set):
   - `load_llama(dtype=bfloat16)`, its time and peak RSS (`ru_maxrss`, taken right after the load,
     before any forward) against the checkpoint's bytes (target ≤ 1.1×);
   - time to first token of a video-chat-sized prompt: `--prompt-tokens` (default 350; GPT4Video's
     prompts, a 4-frame video's tokens plus text, hold ≈ 65–350) random input *embeddings* (1, L, dim),
     through `generate(embeds=...)` as chat feeds them (KV cache set up, prefill of the last position's
     logits, greedy first token). Twice: the process's first prefill (cold: cpu_linear times its
     candidate kernels on these first calls) and a second random prompt of the same length (warm);
     tokens/s and the effective TFLOP/s, 2 · parameters (all but the embedding table) · tokens / s;
   - batch-1 greedy decode seconds/token with the KV cache (median of the `--tokens` − 1 steps after a
     warm-up one) against the bandwidth limit: every step reads all weights except the embedding table
     once, so s/token ≥ bytes / read bandwidth (target: reach ≥ 70% of it). The read bandwidth (sum
     over a 1 GiB fp32 tensor, best of 5) is measured right before and right after the decode; the
     limit uses the higher;
   - the decisions of nanog4v/cpu_linear.py (`cpu_linear.choices()`): per kind of call, the kernel
     chosen and every candidate's best µs per row.
   Everything prints as markdown tables for bench/RESULTS.md.
3. transformers `generate()` on the same files, only when two copies fit in RAM (a 7B bf16 model on
   the 23 GiB development machine does not: it is skipped and the table says so).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from nanog4v import cpu_decode, cpu_linear  # noqa: E402
from nanog4v.config import preset  # noqa: E402
from nanog4v.generate import SamplingConfig, generate  # noqa: E402
from nanog4v.llama import LLaMA  # noqa: E402
from nanog4v.safetensors_io import write_checkpoint  # noqa: E402
from nanog4v.weights import llama_config_to_hf, load_llama  # noqa: E402

GB = 1e9
# set, they make this AVX-512 machine's torch, oneDNN and MKL run as on an AVX2-only CPU (no bf16 units)
EMULATION_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


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


def cpu_model() -> str:
    """/proc/cpuinfo's "model name" and the bf16 instruction flags it lists (empty where it has none)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                "unknown")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}; bf16 flags in cpuinfo: {', '.join(bf16) or 'none'}"


def load_average() -> str:
    """Other jobs on the machine skew every number here; the load average says whether there were any."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def print_machine(device: str) -> None:
    """The header: what the numbers below were measured on."""
    emulation = {k: os.environ[k] for k in EMULATION_VARS if k in os.environ}
    rows = [("CPU", cpu_model()),
            ("`torch.backends.cpu.get_cpu_capability()`", f"**{torch.backends.cpu.get_cpu_capability()}**"),
            ("torch", torch.__version__),
            ("CPU threads (`torch.get_num_threads()`)", str(torch.get_num_threads())),
            ("AVX2 emulation variables", ", ".join(f"{k}={v}" for k, v in emulation.items()) or "none set"),
            ("device", device),
            ("load average at the start (1 / 5 / 15 min)", load_average())]
    print("\n| machine | |\n| --- | --- |")
    for what, value in rows:
        print(f"| {what} | {value} |")
    sys.stdout.flush()                                                   # before the subprocess's later output


def time_to_first_token(model, n_tokens: int, seed: int, device: str) -> float:
    """Seconds from a prompt of `n_tokens` random input embeddings to its first greedy token, as chat runs
    it: `generate(embeds=...)` sets up the KV cache, prefills (the last position's logits only), takes
    the argmax. Random N(0, 0.02) embeddings: the speed does not depend on the values."""
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    embeds = (torch.randn(n_tokens, model.cfg.dim, generator=gen) * 0.02).to(device, param.dtype)  # (L, dim)
    sync(device)
    t0 = time.perf_counter()
    out = generate(model, embeds=[embeds], cfg=SamplingConfig(max_new_tokens=1), eos_id=None)  # .tolist() waits
    seconds = time.perf_counter() - t0
    assert len(out[0]) == 1
    return seconds


def decode_step_seconds(model, prompt: torch.Tensor, n_new: int, device: str
                        ) -> tuple[list[float], list[float], list[int]]:
    """Seconds of each greedy decode step with the KV cache (after a prefill and one warm-up step), and the
    read bandwidth sampled right after each step (0.5 GiB x.sum()): the same minute's memory, step by step."""
    model.setup_cache(1, prompt.shape[1] + n_new + 1)
    tok = model(prompt, last_only=True).argmax(-1)                       # (1, 1)
    out, times, bandwidths = [tok.item()], [], []
    for i in range(n_new):
        sync(device)
        t0 = time.perf_counter()
        tok = model(tok, start_pos=prompt.shape[1] + i).argmax(-1)       # (1, 1)
        out.append(tok.item())                                           # .item() waits for the step
        times.append(time.perf_counter() - t0)
        bandwidths.append(read_bandwidth(device, nbytes=2**29, repeats=1)[0])
    model.clear_cache()
    return times[1:], bandwidths[1:], out


def prefill_rows(model, n_tokens: int, device: str) -> list[tuple[str, str]]:
    """Time to first token, cold (the process's first prefill) and warm (a second prompt, same length)."""
    n_params = sum(p.numel() for n, p in model.named_parameters() if n != "embed_tokens.weight")
    head_share = model.lm_head.weight.numel() / n_params
    rows = []
    for label, seed in (("cold: the process's first prefill, cpu_linear's trials included", 1),
                        ("warm: a second random prompt of the same length", 2)):
        s = time_to_first_token(model, n_tokens, seed, device)
        rows.append((f"time to first token, {n_tokens}-token prompt of input embeddings (B=1), {label}",
                     f"**{s:.2f} s** ({n_tokens / s:.1f} tokens/s, {2 * n_params * n_tokens / s / 1e12:.2f} "
                     f"TFLOP/s; cpu_linear kinds still on trial after it: {cpu_linear.pending()})"))
    rows.append(("prefill TFLOP/s counts",
                 f"2 · {n_params / 1e9:.2f} G parameters (all but the embedding table) · tokens; the LM head "
                 f"({100 * head_share:.1f}% of them) runs on the last position only, attention's L² terms "
                 f"are not counted"))
    return rows


def decode_rows(model, prompt: torch.Tensor, n_new: int, device: str
                ) -> tuple[list[tuple[str, str]], float, list[int]]:
    """Decode ms/token against the bandwidth limit. The read bandwidth of a shared VM drifts (35–66 GB/s
    within minutes here), so it is measured twice: right before and right after the decode (the limit
    from the higher: the conservative figure), and sampled after every step (each step against the
    bandwidth of its own moment; the median of those ratios). Returns the rows, the median s/step and
    the greedy tokens."""
    step_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "embed_tokens.weight")
    read_before, copy_before = read_bandwidth(device)
    times, sampled, tokens = decode_step_seconds(model, prompt, n_new, device)
    read_after, copy_after = read_bandwidth(device)
    read_bw = max(read_before, read_after)
    limit_s, ours_s = step_bytes / read_bw, statistics.median(times)
    per_step = statistics.median(step_bytes / bw / t for bw, t in zip(sampled, times))
    rows = [
        ("decode: bytes read per token (all weights but the embedding table)", f"{step_bytes / GB:.2f} GB"),
        ("read bandwidth (x.sum(), 1 GiB fp32, best of 5): right before / right after the decode",
         f"{read_before / GB:.1f} / {read_after / GB:.1f} GB/s (copy: {copy_before / GB:.1f} / "
         f"{copy_after / GB:.1f} GB/s); the limit uses the higher, {read_bw / GB:.1f} GB/s"),
        ("bandwidth limit: bytes per token / read bandwidth",
         f"{step_bytes / GB:.2f} GB / {read_bw / GB:.1f} GB/s = {limit_s * 1e3:.1f} ms/token"),
        (f"ours: batch-1 greedy decode (KV cache), median of {len(times)} steps",
         f"{ours_s * 1e3:.1f} ms/token ({1 / ours_s:.2f} tok/s; steps {min(times) * 1e3:.1f}–"
         f"{max(times) * 1e3:.1f} ms; weights stream at {step_bytes / ours_s / GB:.1f} GB/s)"),
        ("ours: % of the bandwidth limit (the higher of before / after)", f"**{100 * limit_s / ours_s:.0f}%** "
         "(target ≥ 70%)"),
        ("ours: % of the limit step by step (bandwidth sampled after each step: "
         f"{min(sampled) / GB:.1f}–{max(sampled) / GB:.1f} GB/s, median {statistics.median(sampled) / GB:.1f})",
         f"**{100 * per_step:.0f}%** (median of the steps' ratios)"),
    ]
    return rows, ours_s, tokens


def print_choices(users: dict[tuple, str]) -> None:
    """cpu_linear's decisions as a table; `users`: W's shape -> the modules that have it."""
    decisions = cpu_linear.choices()
    print("\n| cpu_linear: rows | W shape | used by | dtype | kernel | best µs/row of each candidate |"
          "\n| --- | --- | --- | --- | --- | --- |")
    if not decisions:
        why = ("cpu_linear is off (NANOG4V_PLAIN_LINEAR=1)" if not cpu_linear.ENABLED else
               f"cpu_linear.FORCE = {cpu_linear.FORCE!r}: nothing measured" if cpu_linear.FORCE else
               "no CPU linear calls were decided")
        print(f"| – | – | – | – | – | {why} |")
    rows_label = {1: "1", 8: "≤ 8", 64: "≤ 64", "more": "> 64"}
    for d in sorted(decisions, key=lambda d: (str(d["rows"]), d["shape"])):
        us = ", ".join(f"{n} {t:.1f}" for n, t in d["us_per_row"].items())
        shape = " × ".join(map(str, d["shape"]))
        print(f"| {rows_label.get(d['rows'], d['rows'])} | {shape} | {users.get(d['shape'], '?')} | {d['dtype']}"
              f"{' + bias' if d['bias'] else ''} | **{d['kernel']}** | {us} |")
    if cpu_linear.pending():
        print(f"| | | | | still on trial | {cpu_linear.pending()} kind(s) of call had too few calls to decide "
              f"({cpu_linear.ROUNDS} per candidate); not listed |")


def print_decode_choices() -> None:
    """nanog4v.cpu_decode's decisions: rows of W a block in each product of the C decode step."""
    print("\n| cpu_decode (the decode step in C): shapes (dim, heads, kv heads, head dim, hidden, vocab) "
          "| dtype | each product's rows of W a block (best µs of its trials with 8 / 1) |")
    print("| --- | --- | --- |")
    for c in cpu_decode.choices():
        rows = ", ".join(f"{role} **{r}** ({us[8]:g} / {us[1]:g})" for role, (r, us) in c["rows"].items())
        print(f"| {c['shapes']} | {c['dtype']} | {rows} |")
    if not cpu_decode.choices():
        why = cpu_decode.error or ("off (NANOG4V_PLAIN_DECODE=1)" if not cpu_decode.ENABLED else "no decision yet")
        print(f"| | | none: {why} |")

def linear_users(model) -> dict[tuple, str]:
    """W's shape -> the names (last part) of the model's Linear modules with that shape."""
    users: dict[tuple, list[str]] = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            names = users.setdefault(tuple(m.weight.shape), [])
            if name.rsplit(".", 1)[-1] not in names:
                names.append(name.rsplit(".", 1)[-1])
    return {shape: ", ".join(names) for shape, names in users.items()}


def measure(path: Path, n_new: int, n_prompt: int, device: str, compare: str) -> None:
    """Runs in a fresh process: nothing but imports is resident before the load."""
    baseline = rss_bytes()
    print_machine(device)
    ckpt_bytes = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    t0 = time.perf_counter()
    model = load_llama(path, dtype=torch.bfloat16)
    load_s = time.perf_counter() - t0
    peak = peak_rss_bytes()                                              # the load's peak: before any forward
    model.to(device)
    cfg = model.cfg
    users = linear_users(model)
    prompt = torch.randint(3, cfg.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0)).to(device)
    rows = [
        ("config", f"{cfg.n_layers} layers, dim {cfg.dim}, heads {cfg.n_heads}/{cfg.n_kv_heads}, "
                   f"hidden {cfg.hidden_dim}, vocab {cfg.vocab_size}, bf16, device {device}, "
                   f"{torch.get_num_threads()} CPU threads"),
        ("checkpoint", f"{ckpt_bytes / GB:.2f} GB in {len(list(path.glob('*.safetensors')))} file(s)"),
        ("load_llama time", f"{load_s:.1f} s ({ckpt_bytes / GB / load_s:.2f} GB/s; page cache state unknown)"),
        ("peak RSS after load / checkpoint bytes",
         f"**{peak / ckpt_bytes:.3f}** (peak {peak / GB:.2f} GB, taken before any forward; {baseline / GB:.2f} "
         f"GB of it is the interpreter + torch before loading; (peak − that) / bytes = "
         f"{(peak - baseline) / ckpt_bytes:.3f})"),
    ]
    with torch.inference_mode():
        rows += prefill_rows(model, n_prompt, device)
        ours_prefill = model(prompt).float().cpu()                       # (1, 8, V)
        more, ours_s, ours_tokens = decode_rows(model, prompt, n_new, device)
        rows += more
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

        def hf_generate(n: int) -> tuple[float, list[int]]:
            sync(device); t0 = time.perf_counter()  # noqa: E702
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=0)
            sync(device)
            return time.perf_counter() - t0, out[0, prompt.shape[1]:].tolist()
        with torch.inference_mode():
            _, hf_tokens = hf_generate(n_new + 1)                        # warm-up, and the tokens
            hf_s = statistics.median((hf_generate(n_new + 1)[0] - hf_generate(1)[0]) / n_new for _ in range(3))
            diff = (hf(prompt).logits.float().cpu() - ours_prefill).abs().max().item()
        same = next((i for i, (a, b) in enumerate(zip(hf_tokens, ours_tokens)) if a != b), len(ours_tokens))
        rows += [("transformers: from_pretrained time", f"{hf_load:.1f} s"),
                 ("transformers: generate() decode", f"{hf_s * 1e3:.1f} ms/token ({1 / hf_s:.2f} tok/s)"),
                 ("ours / transformers decode speed", f"**{hf_s / ours_s:.2f}×**"),
                 ("prompt logits: max |ours − transformers| (bf16)", f"{diff:.3g}"),
                 ("greedy tokens equal to ours before the first difference (bf16 near-ties)",
                  f"{same}/{len(ours_tokens)}")]
    rows.append(("load average at the end (1 / 5 / 15 min; this process counts up to its threads)",
                 load_average()))
    print("\n| what | measured |\n| --- | --- |")
    for what, value in rows:
        print(f"| {what} | {value} |")
    print_choices(users)
    print_decode_choices()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: LLaMA-7B's 32)")
    ap.add_argument("--scratch", type=Path, default=ROOT / "bench" / "scratch")
    ap.add_argument("--shard-size", default="2GB", help='max shard size, e.g. "2GB", "300MB"')
    ap.add_argument("--tokens", type=int, default=16, help="decode steps to time")
    ap.add_argument("--prompt-tokens", type=int, default=350,
                    help="prompt length (input embeddings) for the time to first token")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--compare", choices=["auto", "yes", "no"], default="auto",
                    help="transformers comparison: auto = only when two copies fit in RAM")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)   # internal: the fresh subprocess
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        return measure(args.measure, args.tokens, args.prompt_tokens, args.device, args.compare)
    cfg = preset("7b").llama
    if args.layers is not None:
        cfg = dataclasses.replace(cfg, n_layers=args.layers)
    path = args.scratch / f"llama7b-shape-{cfg.n_layers}layers"
    write_random_checkpoint(path, cfg, args.shard_size)
    gc.collect()
    subprocess.run([sys.executable, __file__, "--measure", str(path), "--tokens", str(args.tokens),
                    "--prompt-tokens", str(args.prompt_tokens), "--device", args.device, "--compare", args.compare,
                    "--threads", str(args.threads or 0)],
                   check=True)


if __name__ == "__main__":
    main()
