"""y = W x for one row x, written in C: a weight-streaming kernel for decoding on the CPU.

Decoding one token reads every weight once, so a one-row product is as fast as its kernel streams W from
memory. The library kernels stream some shapes well and others badly: ATen's bf16 gemv reads a
4096 × 11008 bf16 matrix (LLaMA-7B's down_proj: rows 11,008 long) at ~15 GB/s on a 2-core machine that
reads ~30 GB/s, and MKL's fp32 gemv runs on one thread. This one is the textbook loop, as llama.cpp and
llama2.c write it:

    for each block of 8 rows of W (the blocks split over the threads):
        a0..a7 = 0
        for k in 0..K-1:            (vectorised by the compiler: omp simd)
            a_r += W[n + r, k] · x[k]           bf16 weights widened to fp32 by a 16-bit shift
        y[n..n+7] = a0..a7

Eight rows share each load of x and give the FMA units eight independent sums. For short rows (768
bf16 = 1.5 KB) the 8 interleaved rows are 8 short streams that the prefetchers pick up late, and the
same loop row by row (`gemv1_*`: W read as one sequential stream) is ~1.7× faster; for long rows
(11,008) the 8-row loop is, x no longer staying in L1 between rows. The sums are fp32, so a bf16 product
is an fp32 product rounded once, like `cpu_linear`'s upcast. The C source below is compiled once per
machine with the system's C compiler (`cc -O3 -march=native -fopenmp`: this CPU's vector instructions,
AVX2 or AVX-512) into ~/.cache/nanog4v/ (`compile_library`, which cpu_decode.py uses too) and loaded
with ctypes; torch's own OpenMP runtime runs its threads. Without a C compiler `available()` is False and
`cpu_linear` never picks it. Which loop is fastest for which shape is `cpu_linear`'s (kernels c and c1)
and `cpu_decode`'s measurement, not an assumption here.

Environment: NANOG4V_CACHE (where the library goes), CC (the compiler), NANOG4V_C_ARCH (`-march=` value,
default native; e.g. haswell builds the AVX2 code on an AVX-512 machine, for benchmarks).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = r"""
#include <stdint.h>
#include <string.h>

#define ROWS 8   /* rows of W per block: they share each load of x, and 8 sums keep the FMA units busy */

static inline float bf16_to_f32(uint16_t h) {   /* bf16 is the top half of an fp32 */
    uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f;
}

/* y (N) = W (N, K, row-major) x (K); W fp32 */
void gemv_f32(const float *W, const float *x, float *y, int64_t N, int64_t K, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n += ROWS) {
        int64_t rows = N - n < ROWS ? N - n : ROWS;
        const float *w[ROWS];
        for (int r = 0; r < ROWS; r++) w[r] = W + (n + (r < rows ? r : 0)) * K;   /* a short last block re-reads row n */
        float a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
        #pragma omp simd reduction(+:a0, a1, a2, a3, a4, a5, a6, a7)
        for (int64_t k = 0; k < K; k++) {
            float xk = x[k];
            a0 += w[0][k] * xk; a1 += w[1][k] * xk; a2 += w[2][k] * xk; a3 += w[3][k] * xk;
            a4 += w[4][k] * xk; a5 += w[5][k] * xk; a6 += w[6][k] * xk; a7 += w[7][k] * xk;
        }
        float a[ROWS] = {a0, a1, a2, a3, a4, a5, a6, a7};
        for (int64_t r = 0; r < rows; r++) y[n + r] = a[r];
    }
}

/* the same with W in bf16 (uint16 bit patterns), sums in fp32 */
void gemv_bf16(const uint16_t *W, const float *x, float *y, int64_t N, int64_t K, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n += ROWS) {
        int64_t rows = N - n < ROWS ? N - n : ROWS;
        const uint16_t *w[ROWS];
        for (int r = 0; r < ROWS; r++) w[r] = W + (n + (r < rows ? r : 0)) * K;
        float a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
        #pragma omp simd reduction(+:a0, a1, a2, a3, a4, a5, a6, a7)
        for (int64_t k = 0; k < K; k++) {
            float xk = x[k];
            a0 += bf16_to_f32(w[0][k]) * xk; a1 += bf16_to_f32(w[1][k]) * xk;
            a2 += bf16_to_f32(w[2][k]) * xk; a3 += bf16_to_f32(w[3][k]) * xk;
            a4 += bf16_to_f32(w[4][k]) * xk; a5 += bf16_to_f32(w[5][k]) * xk;
            a6 += bf16_to_f32(w[6][k]) * xk; a7 += bf16_to_f32(w[7][k]) * xk;
        }
        float a[ROWS] = {a0, a1, a2, a3, a4, a5, a6, a7};
        for (int64_t r = 0; r < rows; r++) y[n + r] = a[r];
    }
}

/* row by row: W read as one sequential stream, best for short rows (768 bf16 = 1.5 KB, where 8 interleaved
   rows are 8 short streams that the prefetchers pick up late); worse when x outgrows L1 (rows of 11008) */
void gemv1_f32(const float *W, const float *x, float *y, int64_t N, int64_t K, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *w = W + n * K;
        float a = 0;
        #pragma omp simd reduction(+:a)
        for (int64_t k = 0; k < K; k++) a += w[k] * x[k];
        y[n] = a;
    }
}

void gemv1_bf16(const uint16_t *W, const float *x, float *y, int64_t N, int64_t K, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const uint16_t *w = W + n * K;
        float a = 0;
        #pragma omp simd reduction(+:a)
        for (int64_t k = 0; k < K; k++) a += bf16_to_f32(w[k]) * x[k];
        y[n] = a;
    }
}
"""
GEMVS = ("gemv_f32", "gemv_bf16", "gemv1_f32", "gemv1_bf16")   # (W, x, y, N, K, threads)
DTYPES = (torch.float32, torch.bfloat16)
_lib: ctypes.CDLL | None = None
error: str | None = None          # why the kernel is unavailable (None: not tried yet, or it loaded)


def _cpu_id() -> str:
    """What -march=native compiles for: the CPU's feature flags (Linux), else the capability torch reports."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return flags + torch.backends.cpu.get_cpu_capability()


def compile_library(stem: str, source: str) -> ctypes.CDLL:
    """Compile C `source` for this CPU into NANOG4V_CACHE/<stem>-<key>.so (once: the key hashes the source,
    compiler, flags and CPU) and load it. OSError when there is no compiler or the compile fails."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise OSError("no C compiler (cc, gcc or clang) on PATH")
    flags = ["-O3", f"-march={os.environ.get('NANOG4V_C_ARCH', 'native')}", "-shared", "-fPIC"]
    cache = Path(os.environ.get("NANOG4V_CACHE", Path.home() / ".cache" / "nanog4v"))
    key = hashlib.sha1("\n".join([source, cc, *flags, _cpu_id()]).encode()).hexdigest()[:16]
    lib = cache / f"{stem}-{key}.so"
    if not lib.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src, out = Path(tmp) / f"{stem}.c", Path(tmp) / f"{stem}.so"
            src.write_text(source)
            for openmp in (["-fopenmp"], []):             # without OpenMP (e.g. clang lacking libomp): one thread
                run = subprocess.run([cc, *flags, *openmp, str(src), "-o", str(out), "-lm"],
                                     capture_output=True, text=True)
                if run.returncode == 0:
                    break
            else:
                raise OSError(f"{cc} failed: {(run.stderr.strip().splitlines() or [f'exit {run.returncode}'])[-1]}")
            os.replace(out, lib)                          # atomic: another process never loads half a file
    return ctypes.CDLL(str(lib))


def available() -> bool:
    """Is the compiled kernel loaded (built on the first call)? `error` says why not."""
    global _lib, error
    if _lib is None and error is None:
        try:
            _lib = compile_library("cpu_gemv", SOURCE)
            for name in GEMVS:
                getattr(_lib, name).argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
                getattr(_lib, name).restype = None
        except OSError as e:
            error = str(e)
    return _lib is not None


def applicable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """One row of x, fp32 or bf16 like W, W contiguous on the CPU (and the kernel builds here)."""
    return (x.numel() == x.shape[-1] and x.dtype == weight.dtype and weight.dtype in DTYPES
            and weight.device.type == "cpu" and weight.is_contiguous() and available())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, rows: int = 8) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for one row of x (`applicable`): fp32 sums, rounded once to x's dtype.
    rows: rows of W per block, 8 (gemv_*) or 1 (gemv1_*, row by row)."""
    N, K = weight.shape
    x32 = x.reshape(K).to(torch.float32).contiguous()          # (K,) fp32
    y = torch.empty(N)                                          # (N,) fp32
    kernel = f"gemv{'1' if rows == 1 else ''}_{'bf16' if weight.dtype == torch.bfloat16 else 'f32'}"
    getattr(_lib, kernel)(weight.data_ptr(), x32.data_ptr(), y.data_ptr(), N, K, torch.get_num_threads())
    if bias is not None:
        y += bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], N)


def linear1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`linear` row by row (cpu_linear's kernel c1)."""
    return linear(x, weight, bias, rows=1)
