"""The decode step of one new token, written in C: the layers, the final norm and the LM head, nothing else.

A batch-1 decode step reads every weight once, so at the memory's limit a 134M-parameter LLaMA in bf16
takes ~7 ms a token on a 2-core machine that reads ~32 GB/s. Run op by op in PyTorch the same step took
~13 ms: the 7 products of each layer ~8 ms of it, and the rest was the other ~30 small ops a layer (two
RMSNorms, RoPE, the cache write, attention, SiLU, the residual adds, the reshapes), each a few µs of
dispatch on a vector of 768 numbers. Here every layer of llama.py's `Block`, then its final RMSNorm and LM
head, run in one C call, as llama2.c writes it:

    x = E[token]  (or the given input embedding)            the residual stream, fp32 inside
    for each layer:
        n = RMSNorm(x) · g_attn
        q, k, v = W_q n, W_k n, W_v n                       cpu_gemv's loops, on all threads
        q, k = RoPE(q), RoPE(k);  cache[pos] = k, v         cos, sin: a table of every cache position
        a = softmax(q Kᵀ / √d) V    per head over positions 0 … pos (GQA: head h reads kv head h // group)
        x = x + W_o a
        n = RMSNorm(x) · g_mlp
        x = x + W_down (SiLU(W_gate n) ⊙ W_up n)
    logits = W_head (RMSNorm(x) · g_final)                  fp32 out (bf16 values in a bf16 model)

In a bf16 model every intermediate that PyTorch would store as a bf16 tensor is rounded to bf16 at the
same place here (round to nearest even), so the C step computes what `LLaMA.forward` computes up to the
order of the sums inside products, norms and attention (tests/test_cpu_decode.py). Each product runs 8
rows of W a block or row by row (`cpu_gemv`): the first steps of a model try both and time every product,
then each of the eight (a layer's seven and the head) keeps the faster (`choices()`): measured, as
`cpu_linear` chooses its kernels. The embedding row, the RoPE angles (llama.py's `rope_cos_sin` of every
position, computed once per KV cache) and the head are in the call as well: run by PyTorch around it, the
head read its 49 MB (134M, bf16) slower than the layers' products stream, and the ~20 small ops (embedding,
positions, angles, final norm, the head's dispatch) ran on caches the weights had just flushed: ~0.7 ms of
an ~8 ms bf16 step. Against the layers-only call, old / new ms a token paired in one process: bf16 1.15×,
fp32 1.13× (bench/RESULTS.md).

`LLaMA.forward` calls `step` first; it answers None, and PyTorch's forward runs, unless the call is one new
token of one row at an int position inside the KV caches, without a mask, in inference on the CPU, fp32 or
bf16 throughout, with plain `cpu_linear.Linear` matrices and one norm eps (a LoRA-wrapped layer or head,
training, a GPU, torch.compile, batches and prefill all take PyTorch's path). The C arguments are kept
between steps (`_Plan`) and rebuilt when a tensor moved or a module was swapped; the scalars (eps, RoPE's
θ) are read when they are built. Switches: `cpu_decode.ENABLED = False` (or NANOG4V_PLAIN_DECODE=1 at
import); `cpu_linear.ENABLED = False` turns it off too; `FORCE_ROWS = 1 or 8` skips the timing.
"""
from __future__ import annotations

import ctypes
import os
import weakref

import torch

from . import cpu_gemv, cpu_linear

ENABLED = os.environ.get("NANOG4V_PLAIN_DECODE", "0") != "1"
FORCE_ROWS: int | None = None       # 1 or 8: every product with that many rows of W a block, no timing
ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

SOURCE = r"""
#include <math.h>
#include <time.h>

typedef struct {
    int64_t dim, n_heads, n_kv_heads, head_dim, hidden, max_seq, pos;
    float eps;
    int32_t bf16, threads;              /* bf16: weights, cache and activations are bf16 (else fp32) */
    const void *attn_norm, *mlp_norm;   /* RMSNorm gains (dim) */
    const void *w[7];                   /* q, k, v, o, gate, up, down: (out, in) row-major */
    int32_t rows[7];                    /* rows of W a block in each product: 8 or 1 */
    double seconds[7];                  /* each product's time, added to (for choosing rows) */
    void *k_cache, *v_cache;            /* (n_kv_heads, max_seq, head_dim): batch row 0 */
    const void *cos, *sin;              /* (head_dim): this position's RoPE cos and sin, in the dtype */
    float *scratch;                     /* the work space: scratch_size floats (+ dim for `decode`'s x) */
    int64_t scratch_size;               /* 2 dim + 2 (n_heads + n_kv_heads) head_dim + 2 hidden + n_heads max_seq */
} Layer;

static inline uint16_t f32_to_bf16(float f) {       /* round to nearest, ties to even; NaN stays NaN */
    uint32_t u; memcpy(&u, &f, 4);
    uint32_t nan = (u & 0x7fffffff) > 0x7f800000;  /* (a select, not a branch: loops of it vectorise) */
    return (uint16_t)(nan ? (u >> 16) | 0x40 : (u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
static inline float rnd(const Layer *L, float v) { return L->bf16 ? bf16_to_f32(f32_to_bf16(v)) : v; }
static inline float load(const Layer *L, const void *p, int64_t i) {
    return L->bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
static inline void store(const Layer *L, void *p, int64_t i, float v) {
    if (L->bf16) ((uint16_t *)p)[i] = f32_to_bf16(v); else ((float *)p)[i] = v;
}
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

/* y (N) = W x (K) with `rows` rows of W a block, rounded as a stored tensor; its time added to *seconds */
static void matvec(const Layer *L, const void *W, int32_t rows, const float *x, float *y, int64_t N, int64_t K,
                   double *seconds) {
    double start = now();
    if (L->bf16) (rows == 1 ? gemv1_bf16 : gemv_bf16)(W, x, y, N, K, L->threads);
    else (rows == 1 ? gemv1_f32 : gemv_f32)(W, x, y, N, K, L->threads);
    *seconds += now() - start;
    if (L->bf16) {
        #pragma omp simd
        for (int64_t n = 0; n < N; n++) y[n] = bf16_to_f32(f32_to_bf16(y[n]));
    }
}
static void product(Layer *L, int i, const float *x, float *y, int64_t N, int64_t K) {   /* y = W_i x */
    matvec(L, L->w[i], L->rows[i], x, y, N, K, &L->seconds[i]);
}

/* out = g · (x / sqrt(mean(x²) + eps)): normalised in fp32, rounded, then the gain (llama.py's RMSNorm) */
static void rmsnorm(const Layer *L, const void *g, const float *x, float *out) {
    float ss = 0;
    for (int64_t i = 0; i < L->dim; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / L->dim + L->eps);
    for (int64_t i = 0; i < L->dim; i++) out[i] = rnd(L, load(L, g, i) * rnd(L, x[i] * r));
}

/* each head's (x_j, x_j+d/2) rotated: x·cos + rotate_half(x)·sin, rotate_half(x) = (−x2, x1) */
static void rope(const Layer *L, float *x, int64_t heads) {
    int64_t d = L->head_dim, half = d / 2;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t j = 0; j < half; j++) {
            float *a = x + h * d + j, *b = a + half, x1 = *a, x2 = *b;
            *a = rnd(L, rnd(L, x1 * load(L, L->cos, j)) + rnd(L, -x2 * load(L, L->sin, j)));
            *b = rnd(L, rnd(L, x2 * load(L, L->cos, j + half)) + rnd(L, x1 * load(L, L->sin, j + half)));
        }
}

/* a · b[0:n] and y += a · b[0:n] for b in the cache's dtype (one branch per row, so the loops vectorise) */
static inline float dot(const Layer *L, const float *a, const void *b, int64_t n) {
    float s = 0;
    if (L->bf16) {
        const uint16_t *p = b;
        #pragma omp simd reduction(+:s)
        for (int64_t j = 0; j < n; j++) s += a[j] * bf16_to_f32(p[j]);
    } else {
        const float *p = b;
        #pragma omp simd reduction(+:s)
        for (int64_t j = 0; j < n; j++) s += a[j] * p[j];
    }
    return s;
}
static inline void axpy(const Layer *L, float *y, float a, const void *b, int64_t n) {
    if (L->bf16) {
        const uint16_t *p = b;
        #pragma omp simd
        for (int64_t j = 0; j < n; j++) y[j] += a * bf16_to_f32(p[j]);
    } else {
        const float *p = b;
        #pragma omp simd
        for (int64_t j = 0; j < n; j++) y[j] += a * p[j];
    }
}

/* out (n_heads · d): softmax(q Kᵀ / √d) V over the cache's positions 0 … pos, one head per iteration */
static void attend(const Layer *L, const float *q, float *out, float *scores) {
    int64_t d = L->head_dim, S = L->pos + 1, group = L->n_heads / L->n_kv_heads, size = L->bf16 ? 2 : 4;
    float scale = 1.0f / sqrtf((float)d);
    #pragma omp parallel for num_threads(L->threads) schedule(static)
    for (int64_t h = 0; h < L->n_heads; h++) {
        const char *K = (const char *)L->k_cache + (h / group) * L->max_seq * d * size;   /* its kv head */
        const char *V = (const char *)L->v_cache + (h / group) * L->max_seq * d * size;
        float *s = scores + h * L->max_seq, *o = out + h * d, top = -INFINITY, sum = 0;
        for (int64_t t = 0; t < S; t++) {
            s[t] = dot(L, q + h * d, K + t * d * size, d) * scale;
            top = s[t] > top ? s[t] : top;
        }
        for (int64_t t = 0; t < S; t++) { s[t] = expf(s[t] - top); sum += s[t]; }
        for (int64_t j = 0; j < d; j++) o[j] = 0;
        for (int64_t t = 0; t < S; t++) axpy(L, o, s[t], V + t * d * size, d);
        for (int64_t j = 0; j < d; j++) o[j] = rnd(L, o[j] / sum);
    }
}

/* x (dim) ← the layer applied to x at position pos, in place; writes k, v into the cache */
static void layer(Layer *L, float *x) {
    int64_t D = L->dim, d = L->head_dim, F = L->hidden, qd = L->n_heads * d, kvd = L->n_kv_heads * d;
    float *n = L->scratch, *q = n + D, *k = q + qd, *v = k + kvd, *a = v + kvd, *o = a + qd;
    float *g = o + D, *u = g + F, *scores = u + F;
    rmsnorm(L, L->attn_norm, x, n);                                       /* attention */
    product(L, 0, n, q, qd, D); product(L, 1, n, k, kvd, D); product(L, 2, n, v, kvd, D);
    rope(L, q, L->n_heads); rope(L, k, L->n_kv_heads);
    for (int64_t hk = 0; hk < L->n_kv_heads; hk++)
        for (int64_t j = 0; j < d; j++) {
            int64_t at = (hk * L->max_seq + L->pos) * d + j;
            store(L, L->k_cache, at, k[hk * d + j]); store(L, L->v_cache, at, v[hk * d + j]);
        }
    attend(L, q, a, scores);
    product(L, 3, a, o, D, qd);
    for (int64_t i = 0; i < D; i++) x[i] = rnd(L, x[i] + o[i]);
    rmsnorm(L, L->mlp_norm, x, n);                                        /* SwiGLU MLP */
    product(L, 4, n, g, F, D); product(L, 5, n, u, F, D);
    #pragma omp parallel for num_threads(L->threads) schedule(static)
    for (int64_t i = 0; i < F; i++) g[i] = rnd(L, rnd(L, g[i] / (1.0f + expf(-g[i]))) * u[i]);
    product(L, 6, g, o, D, F);
    for (int64_t i = 0; i < D; i++) x[i] = rnd(L, x[i] + o[i]);
}

/* The n layers applied to h (dim), the new token at position pos, then the final RMSNorm (gain `norm`) and the
   LM head (vocab, dim): out = the logits (vocab), fp32 (in a bf16 model, bf16 values). rows: each product's rows
   of W a block (the 7 of a layer, then the head's). Each layer's seconds and *head_seconds are reset, then timed. */
void decode(Layer *layers, int64_t n, int64_t pos, const void *cos, const void *sin, const int32_t *rows,
            const void *h, const void *norm, const void *lm_head, int64_t vocab, float *out, double *head_seconds) {
    float *x = layers[0].scratch + layers[0].scratch_size;    /* the residual stream, after the work space */
    for (int64_t i = 0; i < layers[0].dim; i++) x[i] = load(layers, h, i);
    for (int64_t l = 0; l < n; l++) {
        Layer *L = layers + l;
        L->pos = pos; L->cos = cos; L->sin = sin;
        for (int i = 0; i < 7; i++) { L->rows[i] = rows[i]; L->seconds[i] = 0; }
        layer(L, x);
    }
    float *normed = layers[0].scratch;
    rmsnorm(layers, norm, x, normed);
    *head_seconds = 0;
    matvec(layers, lm_head, rows[7], normed, out, vocab, layers[0].dim, head_seconds);
}
"""


class Layer(ctypes.Structure):
    """The C `Layer` above, field for field."""
    _fields_ = ([(f, ctypes.c_int64) for f in ("dim", "n_heads", "n_kv_heads", "head_dim", "hidden", "max_seq", "pos")]
                + [("eps", ctypes.c_float), ("bf16", ctypes.c_int32), ("threads", ctypes.c_int32),
                   ("attn_norm", ctypes.c_void_p), ("mlp_norm", ctypes.c_void_p), ("w", ctypes.c_void_p * 7),
                   ("rows", ctypes.c_int32 * 7), ("seconds", ctypes.c_double * 7), ("k_cache", ctypes.c_void_p),
                   ("v_cache", ctypes.c_void_p), ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p),
                   ("scratch", ctypes.c_void_p), ("scratch_size", ctypes.c_int64)])


_lib: ctypes.CDLL | None = None
error: str | None = None            # why the C step is unavailable (None: not tried yet, or it loaded)


def available() -> bool:
    """Is the compiled step loaded (built with cpu_gemv's loops on the first call)? `error` says why not."""
    global _lib, error
    if _lib is None and error is None:
        try:
            _lib = cpu_gemv.compile_library("cpu_decode", cpu_gemv.SOURCE + SOURCE)
            _lib.decode.argtypes = [ctypes.POINTER(Layer), ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ctypes.c_double)]
            _lib.decode.restype = None
        except OSError as e:
            error = str(e)
    return _lib is not None


def _parts(block) -> tuple[list, list, object] | None:
    """The block's 7 matrices (ROLES order) and 2 RMSNorm gains as tensors, and its KV cache; None when a
    matrix is not a plain `cpu_linear.Linear` (e.g. LoRA-wrapped). Read from the modules' own dicts: the
    step runs this for every layer, and nn.Module's attribute lookup costs ~1 µs a name."""
    mods = block._modules
    attn, mlp = mods["self_attn"], mods["mlp"]
    linears = [attn._modules[r] for r in ROLES[:4]] + [mlp._modules[r] for r in ROLES[4:]]
    if any(type(m) is not cpu_linear.Linear or m._parameters["bias"] is not None for m in linears):
        return None
    norms = [mods[n]._parameters["weight"] for n in ("input_layernorm", "post_attention_layernorm")]
    return [m._parameters["weight"] for m in linears], norms, attn.cache


def _gather(model) -> tuple[list, tuple] | None:
    """Every block's `_parts`, and the final RMSNorm's gain and the LM head's matrix; None when a matrix is not
    a plain `cpu_linear.Linear` or a layer has no KV cache."""
    parts, head = [_parts(block) for block in model._modules["layers"]], model._modules["lm_head"]
    if (not parts or any(p is None or p[2] is None for p in parts) or type(head) is not cpu_linear.Linear
            or head._parameters["bias"] is not None):
        return None
    return parts, (model._modules["norm"]._parameters["weight"], head._parameters["weight"])


def _one_new_token(x: torch.Tensor, mask, start_pos) -> bool:
    """Switched on, and x (1, 1) / (1, 1, D) one token of one row at an int position, no mask, CPU inference."""
    return (ENABLED and cpu_linear.ENABLED and mask is None and type(start_pos) is int and x.shape[:2] == (1, 1)
            and x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.compiler.is_compiling())


def applicable(model, x: torch.Tensor, mask, start_pos) -> bool:
    """Can `model` (llama.py's LLaMA) take this step in C? x: the token (1, 1) or its embedding (1, 1, D). One
    new token of one row at an int position inside its KV caches, no mask, inference on the CPU, fp32 or bf16
    throughout, plain matrices, one layer shape, one norm eps."""
    dtype = model.embed_tokens.weight.dtype
    if not (_one_new_token(x, mask, start_pos) and dtype in cpu_gemv.DTYPES):
        return False
    if (gathered := _gather(model)) is None:
        return False
    parts, head = gathered
    if len({(p[0][0].shape, p[0][4].shape, p[2].k.shape) for p in parts}) != 1:
        return False
    eps = {model.norm.eps} | {n.eps for b in model.layers for n in (b.input_layernorm, b.post_attention_layernorm)}
    tensors = [t for weights, norms, cache in parts for t in [*weights, *norms, cache.k, cache.v]] + list(head)
    return (0 <= start_pos < parts[0][2].k.shape[2] and all(t.dtype == dtype for t in tensors)
            and all(t.is_contiguous() for t in [*tensors, model.embed_tokens.weight]) and len(eps) == 1 and available())


# --- rows of W a block, measured: (shapes, dtype, threads) -> the 8 products' choice ----------------
PRODUCTS = ROLES + ("lm_head",)     # a layer's 7, then the LM head
_choices: dict[tuple, tuple[int, ...]] = {}
_trials: dict[tuple, dict[int, list[list[float]]]] = {}   # kind -> rows -> per product, seconds of each trial


def _rows(kind: tuple) -> tuple[int, ...]:
    """The rows-per-block of the 8 products for this call: forced, decided, or the next trial's."""
    if FORCE_ROWS is not None:
        return (FORCE_ROWS,) * len(PRODUCTS)
    if kind in _choices:
        return _choices[kind]
    trials = _trials.setdefault(kind, {8: [[] for _ in PRODUCTS], 1: [[] for _ in PRODUCTS]})
    return (min(trials, key=lambda r: len(trials[r][0])),) * len(PRODUCTS)


def _record(kind: tuple, rows: tuple[int, ...], seconds) -> None:
    """After a trial call: keep its times (per product, a list of them: one a layer); once both settings
    have ROUNDS calls, each product takes its faster."""
    if FORCE_ROWS is not None or kind in _choices:
        return
    trials = _trials[kind]
    for times, t in zip(trials[rows[0]], seconds):
        times.extend(t)
    if all(len(t[-1]) >= cpu_linear.ROUNDS for t in trials.values()):
        _choices[kind] = tuple(min(trials, key=lambda r: min(trials[r][i])) for i in range(len(PRODUCTS)))


def choices() -> list[dict]:
    """Every decision so far: the layer's shapes (and the vocabulary), dtype, threads and each product's rows a
    block with the best µs of each setting's trials."""
    out = []
    for kind, rows in _choices.items():
        trials = _trials[kind]
        out.append(dict(shapes=kind[0], dtype=str(kind[1]).removeprefix("torch."), threads=kind[2],
                        rows={role: (r, {k: round(min(trials[k][i]) * 1e6, 1) for k in trials})
                              for i, (role, r) in enumerate(zip(PRODUCTS, rows))}))
    return out


def reset() -> None:
    _choices.clear()
    _trials.clear()


class _Plan:
    """A model's layers and head as C arguments, kept between steps; rebuilt when any of their tensors moved (a
    new KV cache, converted weights) or a module was swapped (`key`)."""

    def __init__(self, key: tuple, model, parts: list, head: tuple, dtype: torch.dtype, rope):
        blocks = model.layers
        attn, (weights, norms, cache) = blocks[0].self_attn, parts[0]
        D, F = weights[3].shape[0], weights[4].shape[0]
        H, Hkv, d, S = attn.n_heads, attn.n_kv_heads, attn.head_dim, cache.k.shape[2]
        self.key, self.max_seq, self.vocab = key, S, head[1].shape[0]
        self.kind = ((D, H, Hkv, d, F, self.vocab), dtype, key[0])      # key[0]: the threads
        self.head = [t.data_ptr() for t in head]                          # final norm's gain, LM head (V, D)
        self.head_seconds = ctypes.c_double()
        size_of = torch.finfo(dtype).bits // 8
        self.embed, self.vocab_in = model.embed_tokens.weight.data_ptr(), model.embed_tokens.weight.shape[0]
        self.row_bytes, self.rope_bytes = D * size_of, d * size_of       # a row of the table, of cos / sin
        size = 2 * D + 2 * (H + Hkv) * d + 2 * F + H * S
        with torch.inference_mode(False):
            self.cos, self.sin = rope(torch.arange(S)[None], d, model.cfg.rope_theta, dtype)  # (1, S, d): each pos
            self.scratch = torch.empty(size + D)                           # fp32 work space, then x (D)
        self.layers = (Layer * len(blocks))(*[
            Layer(D, H, Hkv, d, F, S, 0, block.input_layernorm.eps, dtype == torch.bfloat16, key[0],
                  norms[0].data_ptr(), norms[1].data_ptr(), (ctypes.c_void_p * 7)(*[w.data_ptr() for w in weights]),
                  (ctypes.c_int32 * 7)(), (ctypes.c_double * 7)(), cache.k.data_ptr(), cache.v.data_ptr(),
                  None, None, self.scratch.data_ptr(), size)
            for block, (weights, norms, cache) in zip(blocks, parts)])


_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # the model -> _Plan


def step(model, tokens: torch.Tensor | None, embeds: torch.Tensor | None, start_pos, mask, rope) -> torch.Tensor | None:
    """The logits (1, 1, V), fp32, of `model` (llama.py's LLaMA) for one new token (tokens (1, 1), or its input
    embedding embeds (1, 1, D)) at position start_pos, computed in C, writing the layers' KV caches: what
    `model(tokens or embeds, start_pos=start_pos)` gives. rope: llama.py's `rope_cos_sin` (for the table of
    angles). None where that does not apply (`applicable`): the caller runs PyTorch's layers."""
    x = tokens if embeds is None else embeds
    if not _one_new_token(x, mask, start_pos):
        return None
    if (gathered := _gather(model)) is None:
        return None
    parts, head = gathered
    key = (torch.get_num_threads(), model.embed_tokens.weight.data_ptr(),   # where every tensor is and its shape
           *[(t.data_ptr(), t.shape)                # (a new cache may reuse a freed one's memory with another length)
             for weights, norms, cache in parts for t in [*weights, *norms, cache.k, cache.v]],
           *[(t.data_ptr(), t.shape) for t in head])
    plan = _plans.get(model)
    if plan is None or plan.key != key:
        if not applicable(model, x, mask, start_pos):
            return None
        plan = _plans[model] = _Plan(key, model, parts, head, model.embed_tokens.weight.dtype, rope)
    if not 0 <= start_pos < plan.max_seq:
        return None                                                        # (the PyTorch path raises the error)
    if embeds is None:                                                     # the token's row of the embedding table
        token = int(tokens)
        if not 0 <= token < plan.vocab_in:
            return None                                                    # (PyTorch's embedding raises)
        h = plan.embed + token * plan.row_bytes
    else:
        embeds = embeds.to(plan.kind[1]).contiguous()                      # (1, 1, D)
        h = embeds.data_ptr()
    rows = _rows(plan.kind)
    logits = torch.empty(1, 1, plan.vocab)                                 # (1, 1, V) fp32
    _lib.decode(plan.layers, len(plan.layers), start_pos, plan.cos.data_ptr() + start_pos * plan.rope_bytes,
                plan.sin.data_ptr() + start_pos * plan.rope_bytes, (ctypes.c_int32 * len(PRODUCTS))(*rows), h,
                *plan.head, plan.vocab, logits.data_ptr(),
                ctypes.byref(plan.head_seconds))
    if plan.kind not in _choices:
        per_layer = [list(layer.seconds) for layer in plan.layers]        # (layers, 7)
        _record(plan.kind, rows, [*zip(*per_layer), [plan.head_seconds.value]])
    return logits


__all__ = ["ENABLED", "FORCE_ROWS", "PRODUCTS", "ROLES", "applicable", "available", "choices", "error", "reset",
           "step"]
