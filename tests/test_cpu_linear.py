"""nanog4v.cpu_linear: every kernel the chooser can pick gives F.linear's values (forced, so each runs on
any machine); the chooser serves real calls as trials and keeps the fastest."""
import time

import pytest
import torch
import torch.nn.functional as F

from nanog4v import cpu_gemv, cpu_linear
from nanog4v.config import LlamaConfig
from nanog4v.generate import SamplingConfig, generate
from nanog4v.llama import LLaMA

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}   # max |Δ| / max |y|
SHAPES = [(1, 1, 96), (96,), (3, 96), (2, 70, 96)]                       # one row, a vector, few, many


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(cpu_linear, "FORCE", None)
    monkeypatch.setattr(cpu_linear, "ENABLED", True)
    cpu_linear.reset()
    yield
    cpu_linear.reset()


def cases():
    for name in cpu_linear.KERNELS:
        for dtype in TOL:
            x, w = torch.ones(1, dtype=dtype), torch.ones(1, 1, dtype=dtype)
            if cpu_linear.applicable(name, x, w):
                yield name, dtype


@pytest.mark.parametrize("name,dtype", list(cases()))
def test_every_kernel_gives_f_linears_values(name, dtype, monkeypatch):
    """Forced: each kernel, on every input layout, with and without bias, = F.linear in fp32 up to
    summation order and one rounding; same shape, dtype, contiguous; oneDNN switched back on after."""
    monkeypatch.setattr(cpu_linear, "FORCE", name)
    monkeypatch.setattr(cpu_linear, "UPCAST_BLOCK", 96 * 7)      # upcast: 7 rows of W a block, 300 = 42·7 + 6
    torch.manual_seed(0)
    w, b = torch.randn(300, 96).to(dtype), torch.randn(300).to(dtype)
    calls = []
    kernel = cpu_linear.KERNELS[name]
    monkeypatch.setitem(cpu_linear.KERNELS, name, lambda *a: calls.append(1) or kernel(*a))
    for shape in SHAPES:
        x = torch.randn(shape).to(dtype)
        for bias in (None, b):
            with torch.inference_mode():
                got = cpu_linear.linear(x, w, bias)
            ref = F.linear(x.float(), w.float(), None if bias is None else bias.float())
            assert got.shape == ref.shape and got.dtype == dtype and got.is_contiguous()
            assert ((got.float() - ref).abs().max() / ref.abs().max()).item() <= TOL[dtype]
    served = sum(cpu_linear.applicable(name, torch.ones(shape, dtype=dtype), w) for shape in SHAPES)
    assert len(calls) == 2 * served > 0 and torch.backends.mkldnn.enabled      # c: one row only, else plain


@pytest.mark.parametrize("dtype", list(TOL))
def test_upcast_rounds_the_fp32_product_once(dtype, monkeypatch):
    """upcast = the fp32 product rounded once to the dtype (within that rounding: |Δ| ≤ eps · |y|), for
    every block of W, the last shorter one included, whatever the block size."""
    torch.manual_seed(1)
    x, w, b = torch.randn(5, 64).to(dtype), torch.randn(1000, 64).to(dtype), torch.randn(1000).to(dtype)
    ref = F.linear(x.float(), w.float()) + b.float()                     # (5, 1000) fp32
    bound = torch.finfo(dtype).eps * ref.abs() + 1e-5
    for block in (64 * 3, 64 * 1000, 1 << 22):
        monkeypatch.setattr(cpu_linear, "UPCAST_BLOCK", block)
        got = cpu_linear.KERNELS["upcast"](x, w, b)
        assert got.dtype == dtype and bool(((got.float() - ref).abs() <= bound).all())


def test_forced_kernel_that_does_not_apply_is_plain_and_bad_names_are_refused(monkeypatch):
    x, w = torch.randn(1, 96, dtype=torch.bfloat16), torch.randn(300, 96, dtype=torch.bfloat16)
    monkeypatch.setattr(cpu_linear, "FORCE", "onednn")                # fp32 only
    with torch.no_grad():
        assert torch.equal(cpu_linear.linear(x, w), F.linear(x, w))
        monkeypatch.setattr(cpu_linear, "FORCE", "fastest")
        with pytest.raises(ValueError, match="NANOG4V_LINEAR_KERNEL.*'fastest'"):
            cpu_linear.linear(x, w)


def test_plain_switch_and_training_are_f_linear_bit_for_bit(monkeypatch):
    """ENABLED = False, autograd, or a tensor off the CPU's inference path: F.linear itself, no trials."""
    torch.manual_seed(0)
    w, b = torch.randn(300, 96), torch.randn(300)
    x = torch.randn(1, 96, requires_grad=True)
    y = cpu_linear.linear(x, w, b)                                   # training: differentiable F.linear
    y.sum().backward()
    # the gradient is a sum of 300 fp32 terms of size ~1, in an order that depends on the CPU and threads:
    # within 1e-4 of the exact (float64) sum
    assert torch.equal(y, F.linear(x, w, b)) and torch.allclose(x.grad[0].double(), w.double().sum(0), rtol=0, atol=1e-4)
    monkeypatch.setattr(cpu_linear, "ENABLED", False)
    with torch.no_grad():
        assert torch.equal(cpu_linear.linear(x, w, b), F.linear(x, w, b))
    assert cpu_linear.choices() == [] and cpu_linear.pending() == 0


@pytest.fixture
def no_c(monkeypatch):
    """The C kernel out of the running (as on a machine without a compiler)."""
    monkeypatch.setattr(cpu_gemv, "_lib", None)
    monkeypatch.setattr(cpu_gemv, "error", "switched off for this test")


def slowed(monkeypatch, delays: dict) -> list[str]:
    """Make kernels slower by fixed delays (s): delays[name], or delays[name, W's shape]; returns the log of
    which kernel served each call."""
    served = []
    for name in {k if isinstance(k, str) else k[0] for k in delays}:
        kernel = cpu_linear.KERNELS[name]
        kernel = getattr(kernel, "unslowed", kernel)          # slowing again replaces the delays, not adds

        def run(x, w, b, _kernel=kernel, _name=name):
            served.append(_name)
            time.sleep(delays.get((_name, tuple(w.shape)), delays.get(_name, 0.0)))
            return _kernel(x, w, b)
        run.unslowed = kernel
        monkeypatch.setitem(cpu_linear.KERNELS, name, run)
    return served


@pytest.mark.parametrize("slow,expect", [("plain", "onednn"), ("onednn", "plain")])
def test_chooser_serves_real_calls_as_trials_then_keeps_the_fastest(slow, expect, monkeypatch, no_c):
    """fp32: plain and onednn take turns on the first 2 × ROUNDS calls of a kind; the fastest serves the
    rest; each call's result is F.linear's whoever served it; another kind (more rows) is tried anew."""
    served = slowed(monkeypatch, {"plain": 0.0, "onednn": 0.0, slow: 0.02})
    torch.manual_seed(0)
    w = torch.randn(300, 96)
    n = 2 * cpu_linear.ROUNDS
    with torch.inference_mode():
        for _ in range(n + 3):
            x = torch.randn(1, 1, 96)
            assert torch.allclose(cpu_linear.linear(x, w), F.linear(x, w), atol=1e-5)
        cpu_linear.linear(torch.randn(70, 96), w)                    # rows class "more": a new trial
    assert sorted(served[:n]) == sorted(["plain", "onednn"] * cpu_linear.ROUNDS)
    assert served[n:n + 3] == [expect] * 3 and served[n + 3] == "plain"
    (choice,) = cpu_linear.choices()
    assert choice["kernel"] == expect and choice["rows"] == 1 and choice["shape"] == (300, 96)
    assert choice["us_per_row"][slow] > 2e4 > choice["us_per_row"][expect]


def test_ties_go_to_the_familys_kernel(monkeypatch, no_c):
    """One-row fp32 family: the big matrix is clearly faster on onednn, so the small one, whose onednn is
    5 % slower than plain (a tie), takes onednn too; in a family led by plain, a tie takes plain."""
    big, small, odd = (400, 96), (50, 96), (60, 96)
    slowed(monkeypatch, {("plain", big): 0.03, ("onednn", big): 0.01,
                         ("plain", small): 0.020, ("onednn", small): 0.021,
                         ("plain", odd): 0.020, ("onednn", odd): 0.0195, "gemv": 0.0, "upcast": 0.0})
    with torch.inference_mode():
        for shape in (small, big, odd):                                  # the small one is decided first
            w = torch.randn(shape)
            for _ in range(2 * cpu_linear.ROUNDS):
                cpu_linear.linear(torch.randn(1, 96), w)
    picked = {c["shape"]: c["kernel"] for c in cpu_linear.choices()}
    assert picked == {small: "onednn", big: "onednn", odd: "onednn"}
    cpu_linear.reset()                                                   # now a family led by plain
    slowed(monkeypatch, {("plain", big): 0.01, ("onednn", big): 0.03, ("plain", odd): 0.020,
                         ("onednn", odd): 0.0195})
    with torch.inference_mode():
        for shape in (big, odd):
            w = torch.randn(shape)
            for _ in range(2 * cpu_linear.ROUNDS):
                cpu_linear.linear(torch.randn(1, 96), w)
    choices = {c["shape"]: c for c in cpu_linear.choices()}
    assert {shape: c["kernel"] for shape, c in choices.items()} == {big: "plain", odd: "plain"}
    assert choices[big]["us_per_row"]["plain"] < 2e4 < choices[big]["us_per_row"]["onednn"] < 4e4   # new delays only


def test_row_classes():
    assert [cpu_linear.row_class(r) for r in (1, 2, 8, 9, 64, 65, 4096)] == [1, 8, 8, 64, 64, "more", "more"]
    x16, w16 = torch.ones(1, 4, dtype=torch.bfloat16), torch.ones(3, 4, dtype=torch.bfloat16)
    c = ["c", "c1"] if cpu_gemv.available() else []
    assert cpu_linear.candidates(x16, w16) == ["plain", "gemv", *c]
    assert cpu_linear.candidates(x16.expand(5, 4), w16) == ["plain", "upcast"]
    assert cpu_linear.candidates(x16.float(), w16.float()) == ["plain", *(["onednn"] * cpu_linear.ONEDNN_LINEAR), *c]
    assert not {"c", "c1"} & set(cpu_linear.candidates(x16.half(), w16.half()))   # fp16: no C kernel


needs_c = pytest.mark.skipif(not cpu_gemv.available(), reason=f"no C kernel here: {cpu_gemv.error}")


@needs_c
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_c_kernel_rounds_the_fp32_product_once_and_can_win_the_trials(dtype, monkeypatch):
    """The C loops (8 rows a block, and row by row) = the fp32 product (bias added in fp32) rounded once to
    the dtype, for row counts that are and are not multiples of 8; the chooser times them for one row and
    keeps c when it is the fastest; a non-contiguous W is not theirs to serve."""
    torch.manual_seed(2)
    for n in (1, 3, 8, 301):
        x, w, b = torch.randn(1, 257).to(dtype), torch.randn(n, 257).to(dtype), torch.randn(n).to(dtype)
        ref = F.linear(x.float(), w.float()) + b.float()
        for rows in (8, 1):
            got = cpu_gemv.linear(x, w, b, rows=rows)
            assert got.dtype == dtype and got.shape == (1, n)
            assert bool(((got.float() - ref).abs() <= torch.finfo(dtype).eps * ref.abs() + 1e-4).all())
    assert not cpu_gemv.applicable(x, w.t().contiguous().t())
    served = slowed(monkeypatch, {"plain": 0.02, "onednn": 0.02, "gemv": 0.02, "c1": 0.02, "c": 0.0})
    with torch.inference_mode():
        for _ in range(7 * cpu_linear.ROUNDS):                       # 5 candidates' trials, then c
            cpu_linear.linear(torch.randn(1, 257).to(dtype), w)
    assert served.count("c") > cpu_linear.ROUNDS and [c["kernel"] for c in cpu_linear.choices()] == ["c"]


def test_c_kernel_without_a_compiler_is_unavailable_and_is_built_once(monkeypatch, tmp_path):
    """No compiler: available() is False with the reason, and no call picks the kernel. With one, the
    library is built into NANOG4V_CACHE once; a later process loads it without compiling."""
    x, w = torch.randn(1, 8), torch.randn(5, 8)
    with monkeypatch.context() as m:
        m.setattr(cpu_gemv, "_lib", None)
        m.setattr(cpu_gemv, "error", None)
        m.setattr(cpu_gemv.shutil, "which", lambda *a, **k: None)
        assert not cpu_gemv.available() and "no C compiler" in cpu_gemv.error
        assert cpu_linear.candidates(x, w) == ["plain", *(["onednn"] * cpu_linear.ONEDNN_LINEAR)]
    if not cpu_gemv.available():
        pytest.skip(f"no C kernel here: {cpu_gemv.error}")
    monkeypatch.setenv("NANOG4V_CACHE", str(tmp_path))
    for compiler_runs in (True, False):                    # first built, then loaded from the cache
        monkeypatch.setattr(cpu_gemv, "_lib", None)
        monkeypatch.setattr(cpu_gemv, "error", None)
        if not compiler_runs:
            monkeypatch.setattr(cpu_gemv.subprocess, "run", lambda *a, **k: pytest.fail("compiled twice"))
        assert cpu_gemv.available() and len(list(tmp_path.glob("cpu_gemv-*.so"))) == 1
        assert torch.allclose(cpu_gemv.linear(x, w), F.linear(x, w), atol=1e-5)


def test_greedy_tokens_equal_the_plain_path_in_fp32(monkeypatch):
    """A LLaMA decoding with the chooser, or with oneDNN forced everywhere, emits the plain path's tokens."""
    torch.manual_seed(0)
    model = LLaMA(LlamaConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=256,
                              vocab_size=512, max_seq_len=128)).eval()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4]]

    def tokens():
        return generate(model, prompts, cfg=SamplingConfig(max_new_tokens=24), eos_id=None)
    monkeypatch.setattr(cpu_linear, "ENABLED", False)
    plain = tokens()
    monkeypatch.setattr(cpu_linear, "ENABLED", True)
    assert tokens() == plain and cpu_linear.choices()                  # the chooser, trials included
    for forced in ("onednn", "c", "c1"):                                # c, c1 where they build, else plain
        monkeypatch.setattr(cpu_linear, "FORCE", forced)
        assert tokens() == plain
