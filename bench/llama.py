"""Batch-1 LLaMA decode and prefill speed: our KV-cache `generate` vs transformers' `generate()`.

    python bench/llama.py            # ~134M-parameter LLaMA (dim 768, 12 layers, vocab 32000), fp32 + bf16
    python bench/llama.py --quick    # tiny config, a smoke test in seconds

Both models hold the same random weights: transformers writes the checkpoint once (save_pretrained,
into bench/scratch/, which git ignores) and `nanog4v.weights.load_llama` reads it. Same dtype, same
torch thread count, same process, runs interleaved (ours, theirs, ours, ...) so that background load
hits both alike; each number is the median of --repeats runs after one warm-up.

  decode  tokens/s = new tokens / wall time of generating them greedily from a short prompt
          (transformers: do_sample=False, min_new_tokens = max_new_tokens, so both emit every token);
          % of limit = (bytes of every weight but the embedding table / read bandwidth) / seconds per
          token: a batch-1 step must stream all of them once, so 100 % is the memory's limit. The read
          bandwidth (1 GiB fp32 x.sum(), best of 5) is measured in the same run, before and after each
          dtype's decode rows, and the higher of the two is used (the conservative figure: it drifts by
          ±30 % within minutes on a shared VM); "round by round" samples it after every timed round and
          sets each run against its own round's bandwidth (median).
  prefill tokens/s = prompt tokens / wall time of generate(max_new_tokens=1) on a long prompt
Targets: decode ≥ 1.5× transformers and ≥ 70 % of the limit, prefill ≥ 1.0× transformers.

The first line says where it ran: torch.backends.cpu.get_cpu_capability() (AVX512, AVX2, ...), the CPU,
and the ISA-limiting variables if set — `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2` makes an AVX-512 machine run PyTorch's, oneDNN's and MKL's AVX2 code (an
emulated AVX2 machine: its kernels, this machine's memory). The last tables are what nanog4v.cpu_linear
chose for each kind of matmul on this machine, and how nanog4v.cpu_decode's C decode step runs each product.

On a CPU shared with other work, use `--threads 1` (or fewer threads than idle cores): an OpenMP
team whose threads get descheduled makes every small op wait, and both sides' numbers become noise.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llama7b import EMULATION_VARS, cpu_model, print_decode_choices, read_bandwidth  # noqa: E402  (bench/llama7b.py's)
from nanog4v import cpu_linear  # noqa: E402
from nanog4v.generate import SamplingConfig, generate  # noqa: E402
from nanog4v.weights import load_llama  # noqa: E402

FULL = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
            intermediate_size=2048, vocab_size=32000)
QUICK = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=512)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def where_it_runs(device: str) -> str:
    """The CPU capability PyTorch dispatches to, the CPU (bench/llama7b.py's `cpu_model`) and any of the
    ISA-limiting variables that are set."""
    if device != "cpu":
        return f"device {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else device})"
    limits = " ".join(f"{k}={os.environ[k]}" for k in EMULATION_VARS if k in os.environ)
    return (f"get_cpu_capability() = {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} × "
            f"{cpu_model()}" + (f"; emulated by {limits}" if limits else ""))


def weight_bytes(model) -> int:
    """Bytes a decode step streams: every parameter but the embedding table (only one row of it is read)."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)


def make_checkpoint(shape: dict, folder: Path) -> Path:
    """A random LlamaForCausalLM saved by transformers (written once, reused by later runs)."""
    import transformers
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**shape, max_position_embeddings=2048, rms_norm_eps=1e-6,
                                   tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_rates(runs: dict, tokens: int, repeats: int, device: str, step_bytes: int = 0) -> dict:
    """tokens/s (median over `repeats`) of each zero-argument callable in `runs`, interleaved. With
    `step_bytes` (decode), also each one's share of the bandwidth limit round by round: the read bandwidth
    is sampled after every round (0.5 GiB x.sum()), each run is set against its own round's (median)."""
    for fn in runs.values():                                    # warm-up
        fn()
    times = {name: [] for name in runs}
    bandwidths = []
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))
        if step_bytes:
            bandwidths.append(read_bandwidth(device, nbytes=2**29, repeats=1)[0])
    rates = {name: tokens / statistics.median(t) for name, t in times.items()}
    if step_bytes:
        rates["share"] = {name: statistics.median(step_bytes / bw / (s / tokens) for bw, s in zip(bandwidths, t))
                          for name, t in times.items()}
        rates["bandwidths"] = bandwidths
    return rates


def bench_dtype(folder: Path, dtype: torch.dtype, args) -> tuple[list[tuple], bool]:
    import transformers
    ours = load_llama(folder, dtype).to(args.device)
    theirs = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=dtype).to(args.device).eval()
    vocab = ours.cfg.vocab_size
    g = torch.Generator().manual_seed(1)
    short = torch.randint(3, vocab, (1, args.decode_prompt), generator=g).to(args.device)
    long = torch.randint(3, vocab, (1, args.prompt_len), generator=g).to(args.device)

    def ours_gen(prompt, n):
        return generate(ours, [prompt[0].tolist()], cfg=SamplingConfig(max_new_tokens=n), eos_id=None)[0]

    @torch.inference_mode()
    def theirs_gen(prompt, n):
        out = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
        return out[0, prompt.shape[1]:].tolist()

    # same greedy tokens up to our first eos (transformers suppresses eos while < min_new_tokens);
    # in bf16 a near-tie may round differently, so "no" there is not necessarily a bug
    a, b = ours_gen(short, args.new_tokens), theirs_gen(short, args.new_tokens)
    upto = a.index(2) if 2 in a else len(a)
    same = a[:upto] == b[:upto]

    n = args.new_tokens
    step_bytes = weight_bytes(ours)
    bw_before = read_bandwidth(args.device)[0]
    decode = median_rates({"ours": lambda: ours_gen(short, n), "transformers": lambda: theirs_gen(short, n)},
                          n, args.repeats, args.device, step_bytes)
    bandwidth = max(bw_before, read_bandwidth(args.device)[0])
    limit = step_bytes / bandwidth                               # seconds per token at the memory's limit
    share, sampled = decode.pop("share"), decode.pop("bandwidths")
    prefill = median_rates({"ours": lambda: ours_gen(long, 1), "transformers": lambda: theirs_gen(long, 1)},
                           args.prompt_len, args.repeats, args.device)
    rows = [("decode", f"{n} new tokens, {args.decode_prompt}-token prompt", decode, 1.5,
             f"{limit * decode['ours']:.0%} / {limit * decode['transformers']:.0%} of {limit * 1e3:.2f} ms "
             f"({step_bytes / 1e6:.0f} MB at {bandwidth / 1e9:.1f} GB/s, the higher of before / after); "
             f"round by round: {share['ours']:.0%} / {share['transformers']:.0%} (sampled "
             f"{min(sampled) / 1e9:.0f}–{max(sampled) / 1e9:.0f} GB/s)"),
            ("prefill", f"{args.prompt_len}-token prompt", prefill, 1.0, "")]
    return rows, same


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny config and short runs (smoke test)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--new-tokens", type=int, default=None, help="decode length (default 128; quick 16)")
    p.add_argument("--prompt-len", type=int, default=None, help="prefill length (default 512; quick 32)")
    p.add_argument("--decode-prompt", type=int, default=8, help="prompt length for the decode runs")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per number (default 5; quick 2)")
    p.add_argument("--scratch", type=Path, default=ROOT / "bench" / "scratch")
    args = p.parse_args(argv)
    args.new_tokens = args.new_tokens or (16 if args.quick else 128)
    args.prompt_len = args.prompt_len or (32 if args.quick else 512)
    args.repeats = args.repeats or (2 if args.quick else 5)
    torch.set_num_threads(args.threads)

    import transformers
    transformers.logging.set_verbosity_error()
    shape = QUICK if args.quick else FULL
    folder = make_checkpoint(shape, args.scratch / ("llama-quick" if args.quick else "llama-134m"))
    n_params = sum(p.numel() for p in load_llama(folder).parameters())
    print(f"{time.strftime('%Y-%m-%d')}; {where_it_runs(args.device)}; LLaMA {shape} = {n_params / 1e6:.1f}M "
          f"parameters; {args.threads} torch threads, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; median of {args.repeats}\n")
    print("| dtype | phase | setting | ours tok/s | transformers tok/s | ratio | target | "
          "bandwidth limit: ours / transformers | same greedy tokens |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
    for name in args.dtypes.split(","):
        rows, same = bench_dtype(folder, DTYPES[name], args)
        for phase, setting, rate, target, share in rows:
            ratio = rate["ours"] / rate["transformers"]
            print(f"| {name} | {phase} | {setting} | {rate['ours']:.1f} | {rate['transformers']:.1f} | "
                  f"{ratio:.2f}× | ≥ {target}× | {share} | {'yes' if same else 'no'} |", flush=True)
    print("\nnanog4v.cpu_linear's choices on this machine (best µs per row of each candidate's trials):\n")
    print("| rows | W shape | dtype | kernel | candidates |")
    print("| --- | --- | --- | --- | --- |")
    for c in cpu_linear.choices():
        times = ", ".join(f"{k} {v:g}" for k, v in c["us_per_row"].items())
        print(f"| {c['rows']} | {c['shape'][0]}×{c['shape'][1]} | {c['dtype']} | {c['kernel']} | {times} |")
    print_decode_choices()


if __name__ == "__main__":
    main()
