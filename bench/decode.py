"""Batch-1 greedy decode speed: the readable dynamic steps vs the static-shape step, eager and compiled.

    python bench/decode.py                   # CPU: the 134M LLaMA of bench/llama.py, fp32
    python bench/decode.py --quick           # tiny shape, a smoke test in seconds (plus the compile)
    python bench/decode.py --device cuda     # GPU: a LLaMA-7B shape, bf16, random weights made on the GPU

Decodes compared (nanog4v/generate.py `generate(..., decode=...)`, nanog4v/fast_decode.py):
  dynamic   the readable path: one token per step, attention over the keys written so far (a new shape
            every step)
  static    the static-shape step run eagerly: attention over the whole cache under a mask
  compile   the static step under torch.compile: the default mode (C++ kernels) on a CPU, mode
            "reduce-overhead" (CUDA graphs) on a GPU
  transformers  `LlamaForCausalLM.generate()` on the same weights (shared tensors, no second copy), the
            reference as in bench/llama.py; --no-transformers leaves it out

The weights are random (N(0, 0.02), norm gains 1), made on the device from a meta-device model, so the 7B
shape needs no checkpoint on disk. tokens/s = new tokens / wall time of `generate` on an 8-token prompt
(prefill and sampling included, as bench/llama.py counts); median of --repeats runs, interleaved, after
one warm-up; the compile mode's first call (the compile, and on a GPU the graph capture) is reported
apart. The bandwidth limit: a decode step reads every weight but the embedding table once, so tokens/s ≤
read bandwidth / those bytes (the read bandwidth is bench/llama7b.py's x.sum() over 1 GiB).

On a CPU shared with other work, use `--threads 1` (see bench/llama.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llama import FULL, QUICK, median_rates  # noqa: E402  (bench/llama.py: this folder is sys.path[0])
from llama7b import read_bandwidth  # noqa: E402

from nanog4v.config import preset  # noqa: E402
from nanog4v.generate import SamplingConfig, generate  # noqa: E402
from nanog4v.llama import LLaMA  # noqa: E402
from nanog4v.weights import llama_config_from_hf, llama_config_to_hf  # noqa: E402

GB = 1e9
SHAPES = {"quick": QUICK, "134m": FULL}                    # HF config keys, as bench/llama.py has them
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def random_llama(cfg, dtype: torch.dtype, device: str, seed: int = 0) -> LLaMA:
    """LLaMA(cfg) with random weights made directly on `device` (no full-size copy anywhere else)."""
    with torch.device("meta"):
        model = LLaMA(cfg).to(dtype)
    model = model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    model.tie_weights()
    return model.eval()


def transformers_twin(model: LLaMA, dtype: torch.dtype, device: str):
    """transformers' LlamaForCausalLM on the very same tensors (`assign=True`: no second copy)."""
    import transformers
    config = transformers.LlamaConfig(**llama_config_to_hf(model.cfg, dtype))
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(config).to(dtype)
    state = {k if k == "lm_head.weight" else "model." + k: v for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"transformers twin: missing {missing}, unexpected {unexpected}")
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config).to(device)    # inv_freq: computed, not loaded
    return hf.eval()


def agree(a: list[int], b: list[int]) -> str:
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return "yes" if a == b else f"first {same}/{len(a)}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--shape", choices=["quick", "134m", "7b"], help="default: 134m on cpu, 7b on cuda")
    p.add_argument("--quick", action="store_true", help="--shape quick, 16 tokens, 2 repeats")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: fp32 on cpu, bf16 on cuda")
    p.add_argument("--new-tokens", type=int, help="tokens per run (default 128; quick 16)")
    p.add_argument("--repeats", type=int, help="timed runs per number (default 3; quick 2)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-transformers", action="store_true", help="leave transformers' generate() out")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU on this machine")
    shape = args.shape or ("quick" if args.quick else "7b" if args.device == "cuda" else "134m")
    dtype = DTYPES[args.dtype or ("bf16" if args.device == "cuda" else "fp32")]
    n = args.new_tokens or (16 if args.quick else 128)
    repeats = args.repeats or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)

    cfg = preset("7b").llama if shape == "7b" else llama_config_from_hf(
        {**SHAPES[shape], "max_position_embeddings": 2048, "rms_norm_eps": 1e-6})
    model = random_llama(cfg, dtype, args.device)
    prompt = torch.randint(3, cfg.vocab_size, (1, 8), generator=torch.Generator().manual_seed(1))
    ids = prompt[0].tolist()
    runs = {mode: (lambda mode=mode: generate(model, [ids], cfg=SamplingConfig(max_new_tokens=n), eos_id=None,
                                              decode=mode)[0]) for mode in ("dynamic", "static", "compile")}
    if not args.no_transformers:
        import transformers
        transformers.logging.set_verbosity_error()
        hf = transformers_twin(model, dtype, args.device)
        hf_prompt = prompt.to(args.device)

        @torch.inference_mode()
        def theirs():
            out = hf.generate(hf_prompt, attention_mask=torch.ones_like(hf_prompt), do_sample=False,
                              max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
            return out[0, hf_prompt.shape[1]:].tolist()
        runs["transformers"] = theirs

    t0 = time.perf_counter()
    tokens = {"compile": runs["compile"]()}                        # the compile (and capture) happen here
    first_compile = time.perf_counter() - t0
    tokens.update({mode: fn() for mode, fn in runs.items() if mode != "compile"})
    rates = median_rates(runs, n, repeats, args.device)
    steady_compile = n / rates["compile"]

    step_bytes = sum(q.numel() * q.element_size() for name, q in model.named_parameters()
                     if name != "embed_tokens.weight")
    read_bw, _ = read_bandwidth(args.device)
    limit = read_bw / step_bytes                                    # tokens/s if a step only read weights
    where = (torch.cuda.get_device_name() if args.device == "cuda" else
             f"CPU, get_cpu_capability() = {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads")
    print(f"\n{time.strftime('%Y-%m-%d')}; LLaMA {shape} ({cfg.n_layers} layers, dim {cfg.dim}, vocab "
          f"{cfg.vocab_size}; {step_bytes / GB:.2f} GB of weights read per step), {str(dtype)[6:]}, {where}; "
          f"torch {torch.__version__}; read bandwidth {read_bw / GB:.1f} GB/s, so ≤ {limit:.1f} tok/s; batch 1, "
          f"greedy, 8-token prompt, {n} new tokens, median of {repeats}; load average at the end "
          f"{os.getloadavg()[0]:.2f} (other work on the machine)\n")
    print("| decode | tok/s | ms/token | × dynamic | % of the bandwidth limit | first call | same greedy tokens as dynamic |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for mode, rate in rates.items():
        first = f"{first_compile:.1f} s (≈ {first_compile - steady_compile:.1f} s compiling)" if mode == "compile" else ""
        print(f"| {mode} | {rate:.1f} | {1000 / rate:.2f} | {rate / rates['dynamic']:.2f}× | "
              f"{100 * rate / limit:.0f}% | {first} | {agree(tokens[mode], tokens['dynamic'])} |", flush=True)


if __name__ == "__main__":
    main()
