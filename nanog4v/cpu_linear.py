"""y = x Wᵀ + b through the fastest correct CPU kernel for *this* machine, chosen by measuring.

Inference on a CPU spends nearly all its time in these products, and which kernel is fastest depends
on the CPU (AVX-512 with bf16 units, or AVX2 only), the dtype, the shape and the number of rows:

    decoding (one row)   every weight is read once per token, so the kernel that streams memory fastest
                         wins. MKL's fp32 gemv runs on one thread; oneDNN's fused linear uses them all
                         but costs ~15 µs more a call. For bf16, oneDNN repacks the weight on every call
                         on CPUs with bf16 units; ATen's own gemv (oneDNN off) reads it once, fast for
                         short rows, slowly for long ones (LLaMA-7B's down_proj). Our C loop
                         (cpu_gemv.py) streams both kinds on all threads.
    prefill (many rows)  compute-bound. Without bf16 units a bf16 GEMM runs ~4× slower than an fp32 one
                         (AVX2: ~45 vs ~180 GFLOP/s), so bf16 weights are multiplied in fp32, a block of
                         W converted at a time: bf16's memory, fp32's speed.

KERNELS — each gives F.linear's values up to summation order (fp32: ~1e-6 relative; bf16/fp16: one
rounding of the fp32 result, as oneDNN does):

    plain    F.linear, PyTorch's own choice
    onednn   oneDNN's fused linear (`torch.ops.mkldnn._linear_pointwise`, what torch.compile calls); fp32
    gemv     F.linear with oneDNN switched off for the call: ATen's bf16/fp16 kernels
    upcast   bf16/fp16 W copied UPCAST_BLOCK elements at a time into an fp32 buffer, fp32 GEMM, rounded back
    c        one row, fp32 or bf16: our C loop (cpu_gemv.py), 8 rows of W a block, compiled on first use
    c1       the same loop row by row (one sequential stream of W: short rows)

The choice is measured on the real work, at no extra cost. Calls are grouped by kind — row class (1,
≤ 8, ≤ 64, more), W's shape, dtypes, bias, threads. The first calls of a new kind are trials: each is
served by the candidate timed least so far, and once every candidate has served ROUNDS calls the fastest
(best seconds per row) serves that kind for the rest of the process; `choices()` lists the decisions with
their times. The trials run under the real conditions — a decode step's weights cold in memory, a small
model's warm in cache — which a separate micro-benchmark would not reproduce. A tie (within MARGIN)
goes to the kernel the rest of the family (same row class and dtypes) mostly uses, so a step does not
hop between kernels and near-equal timings do not flip the choice from run to run (`_decide_family`).
Training (autograd), GPUs and code traced by torch.compile take F.linear.

Switches: `cpu_linear.ENABLED = False` (or NANOG4V_PLAIN_LINEAR=1 at import) makes `linear` plain
`F.linear` everywhere, e.g. to compare against a reference bit for bit; `cpu_linear.FORCE = "upcast"` (or
NANOG4V_LINEAR_KERNEL=upcast) runs one kernel wherever it applies, whatever this machine measures.
"""
from __future__ import annotations

import os
import threading
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_gemv

ENABLED = os.environ.get("NANOG4V_PLAIN_LINEAR", "0") != "1"   # False: always plain F.linear
FORCE: str | None = os.environ.get("NANOG4V_LINEAR_KERNEL") or None   # a kernel's name: no measuring

# oneDNN's fused linear op (what torch.compile calls on the CPU); absent from builds without oneDNN
ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
HALF = (torch.bfloat16, torch.float16)
ROW_CLASSES = (1, 8, 64)          # a call of R rows is timed as the first class ≥ R, or as "more"
ROUNDS = 3                        # timed calls per candidate before the choice
MARGIN = 0.10                     # candidates within 10 % of the fastest are a tie
UPCAST_BLOCK = 1 << 22            # elements of W converted to fp32 at a time (a 16 MiB buffer)


# --- the kernels: (x, weight, bias) -> F.linear(x, weight, bias) -------------------------------------
def _onednn(x, weight, bias):
    if not torch.backends.mkldnn.enabled:                       # the user switched oneDNN off
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _gemv(x, weight, bias):
    """oneDNN off for this one call. The switch is process-global: another thread's matmul in that
    window would also skip oneDNN (slower, same result)."""
    if not torch.backends.mkldnn.enabled:
        return F.linear(x, weight, bias)
    torch.backends.mkldnn.enabled = False
    try:
        return F.linear(x, weight, bias)
    finally:
        torch.backends.mkldnn.enabled = True


_scratch = threading.local()      # each thread's fp32 buffer for upcast's blocks of W


def _upcast(x, weight, bias):
    """bf16/fp16 W (N, K) in fp32: yᵀ = W x32ᵀ one block of W's rows at a time, y rounded to x's dtype."""
    N, K = weight.shape
    x32 = x.reshape(-1, K).float()                                      # (R, K)
    out_t = torch.empty(N, x32.shape[0])                                # (N, R): a block of W → a block of rows
    step = max(1, UPCAST_BLOCK // K)                                    # rows of W per block
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < min(step, N) * K:
        with torch.inference_mode(False):                               # usable under no_grad as well
            buf = _scratch.buf = torch.empty(min(step, N) * K)          # kept: no fresh pages every call
    for i in range(0, N, step):
        rows = min(step, N - i)
        w32 = buf[:rows * K].view(rows, K).copy_(weight[i:i + rows])   # (rows, K) fp32
        torch.mm(w32, x32.t(), out=out_t[i:i + rows])                  # (rows, R)
    if bias is not None:
        out_t += bias.float()[:, None]
    y = out_t.t().to(x.dtype, memory_format=torch.contiguous_format)   # (R, N)
    return y.reshape(*x.shape[:-1], N)


KERNELS = {"plain": F.linear, "onednn": _onednn, "gemv": _gemv, "upcast": _upcast, "c": cpu_gemv.linear,
           "c1": cpu_gemv.linear1}


def applicable(name: str, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Can kernel `name` compute this product here (same values as F.linear)?"""
    if name in ("c", "c1"):                          # (asked only for these: they compile on first use)
        return cpu_gemv.applicable(x, weight)
    half = x.dtype in HALF and weight.dtype == x.dtype
    return {"plain": True,
            "onednn": ONEDNN_LINEAR and x.dtype == weight.dtype == torch.float32,
            "gemv": half,
            "upcast": half}[name]


def candidates(x: torch.Tensor, weight: torch.Tensor) -> list[str]:
    """The kernels worth timing for this call: gemv, c and c1 for one row, upcast for more rows."""
    one_row = x.numel() == x.shape[-1]
    names = ["plain", "onednn", "gemv", "c", "c1"] if one_row else ["plain", "onednn", "upcast"]
    return [n for n in names if applicable(n, x, weight)]


# --- the chooser -----------------------------------------------------------------------------------
_choices: dict[tuple, str] = {}                   # kind of call -> kernel
_trials: dict[tuple, dict[str, list[float]]] = {} # kind of call -> candidate -> seconds per row of its trials


def row_class(rows: int) -> int | str:
    return next((c for c in ROW_CLASSES if rows <= c), "more")


def _kind(x, weight, bias) -> tuple:
    return (row_class(x.numel() // x.shape[-1]), tuple(weight.shape), x.dtype, weight.dtype,
            bias is not None, torch.get_num_threads())


def _trial(kind, x, weight, bias) -> torch.Tensor:
    """Serve this real call with the candidate timed least so far, timed; decide once each has ROUNDS."""
    trials = _trials.setdefault(kind, {name: [] for name in candidates(x, weight)})
    name = min(trials, key=lambda n: len(trials[n]))
    start = time.perf_counter()
    y = KERNELS[name](x, weight, bias)
    trials[name].append((time.perf_counter() - start) / (x.numel() // x.shape[-1]))
    if all(len(t) >= ROUNDS for t in trials.values()):
        _decide_family(kind)
    return y


def _family(kind: tuple) -> tuple:
    rows, _, x_dtype, w_dtype, _, threads = kind
    return rows, x_dtype, w_dtype, threads


def _decide_family(kind: tuple) -> None:
    """(Re)decide every finished kind of `kind`'s family (same row class, dtypes, threads).

    A kind takes its fastest candidate (best time of its trials: the first call of each pays its set-up),
    except that a tie — within MARGIN of the fastest — goes to the family's leading kernel (the fastest
    for most of its weights). Consecutive calls of a step are of one family, and hopping between
    kernels costs more than each call's own time shows: a 134M model's fp32 decode ran 14 % faster with
    its 768×768 matrices on oneDNN, like its larger ones, than on MKL's one-thread gemv, which had timed
    only 9 % slower per call (bench/RESULTS.md).
    """
    family = _family(kind)
    best = {k: {n: min(t) for n, t in trials.items()} for k, trials in _trials.items()
            if _family(k) == family and all(len(t) >= ROUNDS for t in trials.values())}
    votes: dict[str, int] = {}
    for k, times in best.items():
        fastest = min(times, key=times.get)
        votes[fastest] = votes.get(fastest, 0) + k[1][0] * k[1][1]      # weighted by W's elements
    leader = max(votes, key=votes.get)
    for k, times in best.items():
        ties = [n for n, t in times.items() if t <= (1 + MARGIN) * min(times.values())]
        _choices[k] = leader if leader in ties else min(times, key=times.get)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` through the kernel chosen for this kind of call on this machine."""
    if not ENABLED or x.device.type != "cpu" or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return F.linear(x, weight, bias)
    if FORCE is not None:
        if FORCE not in KERNELS:
            raise ValueError(f"cpu_linear.FORCE (NANOG4V_LINEAR_KERNEL) = {FORCE!r}: not one of {list(KERNELS)}")
        return KERNELS[FORCE if applicable(FORCE, x, weight) else "plain"](x, weight, bias)
    kind = _kind(x, weight, bias)
    name = _choices.get(kind)
    if name is None:
        return _trial(kind, x, weight, bias)
    return KERNELS[name](x, weight, bias)


def choices() -> list[dict]:
    """Every decision so far: the kind of call, the kernel chosen, each candidate's best µs per row."""
    out = []
    for kind, name in _choices.items():
        rows, shape, x_dtype, _, bias, threads = kind
        us = {n: round(min(t) * 1e6, 1) for n, t in _trials[kind].items()}
        out.append(dict(rows=rows, shape=shape, dtype=str(x_dtype).removeprefix("torch."), bias=bias,
                        threads=threads, kernel=name, us_per_row=us))
    return out


def pending() -> int:
    """Kinds of call still on trial (each of their next calls is a trial)."""
    return len(_trials) - len(_choices)


def reset() -> None:
    """Forget every decision: the next calls of each kind are trials again."""
    _choices.clear()
    _trials.clear()


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state-dict keys) whose forward is `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


__all__ = ["ENABLED", "FORCE", "KERNELS", "ONEDNN_LINEAR", "applicable", "candidates", "choices", "linear",
           "pending", "reset", "row_class", "Linear"]
