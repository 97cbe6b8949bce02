"""The static-shape decode step (nanog4v/fast_decode.py) against the readable dynamic one: the same greedy
tokens and the same logits (fp32, max |Δ| ≤ 1e-4) from ids and from embeddings with video-like vectors
spliced in, batched with left padding and per-row eos; eagerly and under torch.compile (CPU); the static
cache's reuse; chat.py --fast-decode reaching the decode with the same replies."""
import dataclasses
import importlib.util
import io
import json
import sys

import pytest
import torch

import nanog4v.generate as gen
from conftest import ROOT
from nanog4v import fast_decode
from nanog4v.config import preset
from nanog4v.fast_decode import CACHE_BLOCK, StaticStep, compile_problem, compiled_step, release
from nanog4v.generate import SamplingConfig, generate, stream
from nanog4v.llama import LLaMA

# the `test` preset (dim 64, 2 layers, 4 heads / 2 kv heads) with 8192 tokens, so that the LM head (2¹⁹
# weights) is a matrix on which cpu_linear's chooser may pick oneDNN in eager decoding, as on a real model
CFG = dataclasses.replace(preset("test").llama, vocab_size=8192)
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12, 13, 14, 15, 16, 17]]
N = 24                                          # new tokens: 23 decode steps after the prefill

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LLaMA(CFG).eval()


def video_prompt(model) -> torch.Tensor:
    """(1, 12, dim): text embeddings with 4 random 'video tokens' spliced in, as chat.py's prompts are."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        text = model.embed_tokens(torch.tensor([1, 30, 31, 40, 41, 42, 43, 44]))       # (8, dim)
    video = torch.randn(4, CFG.dim, generator=g) * text.std()                          # (4, dim)
    return torch.cat([text[:3], video, text[3:]])[None]                                # (1, 12, dim)


def run(model, monkeypatch, decode, prompt, n=N, eos_id=None, **kw):
    """(ids, logits (steps, B, V) of every step) of generate/stream with `decode`, and the static steps taken."""
    seen, static_calls = [], []

    def spy(logits, history, cfg, generators=None):
        seen.append(logits.clone())
        return gen_sample_next(logits, history, cfg, generators)

    def counted(self, feed, pos, mask):
        static_calls.append((pos, self.fn))
        return step_call(self, feed, pos, mask)

    gen_sample_next, step_call = gen.sample_next, StaticStep.__call__
    monkeypatch.setattr(gen, "sample_next", spy)
    monkeypatch.setattr(StaticStep, "__call__", counted)
    cfg = SamplingConfig(max_new_tokens=n, **kw)
    if isinstance(prompt, torch.Tensor):
        ids = [list(stream(model, embeds=prompt, cfg=cfg, eos_id=eos_id, decode=decode))]
    else:
        ids = generate(model, prompt, cfg=cfg, eos_id=eos_id, decode=decode)
    monkeypatch.undo()
    return ids, torch.stack(seen), static_calls


def assert_same(model, monkeypatch, decode, prompt):
    ids, logits, _ = run(model, monkeypatch, "dynamic", prompt)
    ids2, logits2, calls = run(model, monkeypatch, decode, prompt)
    P = prompt.shape[1] if isinstance(prompt, torch.Tensor) else max(map(len, prompt))
    assert [pos for pos, _ in calls] == list(range(P, P + N - 1))      # every step after the prefill
    assert ids2 == ids and all(len(r) == N for r in ids)
    assert len(set(ids[0])) > 3                                         # not one token repeated
    assert (logits2 - logits).abs().max().item() <= 1e-4
    assert not model.has_cache                                          # detached after generation
    return calls


# --- the static step, eagerly ----------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["ids", "embeds"])
def test_static_decode_equals_dynamic_tokens_and_logits(model, monkeypatch, prompt):
    calls = assert_same(model, monkeypatch, "static", [PROMPTS[0]] if prompt == "ids" else video_prompt(model))
    assert all(fn is fast_decode.decode_step for _, fn in calls)


def test_static_decode_batched_left_padding_and_per_row_eos(model, monkeypatch):
    assert_same(model, monkeypatch, "static", PROMPTS)                  # three lengths: left padding
    free = generate(model, PROMPTS, cfg=SamplingConfig(max_new_tokens=N), eos_id=None)
    eos = free[1][3]                                                    # row 1 stops at step 3, others later
    for penalty in (1.0, 1.3):
        ids, logits, _ = run(model, monkeypatch, "dynamic", PROMPTS, eos_id=eos, repetition_penalty=penalty)
        ids2, logits2, calls = run(model, monkeypatch, "static", PROMPTS, eos_id=eos, repetition_penalty=penalty)
        assert ids2 == ids and len(ids[1]) <= 3 and max(map(len, ids)) == N and len(calls) == N - 1
        assert (logits2 - logits).abs().max().item() <= 1e-4            # finished rows' (ignored) logits too


def test_static_cache_is_rounded_up_kept_and_reused(model):
    cfg = SamplingConfig(max_new_tokens=4)
    generate(model, [PROMPTS[0]], cfg=cfg, eos_id=None, decode="static")
    kept = fast_decode._CACHES[model]
    assert kept[0].k.shape == (1, CFG.n_kv_heads, CACHE_BLOCK, CFG.head_dim) and len(kept) == CFG.n_layers
    generate(model, [PROMPTS[2]], cfg=cfg, eos_id=None, decode="static")   # another length, same block
    assert fast_decode._CACHES[model][0].k.data_ptr() == kept[0].k.data_ptr()
    long = [list(range(1, CACHE_BLOCK))]                                # 255 + 4 positions: two blocks
    generate(model, long, cfg=cfg, eos_id=None, decode="static")
    assert fast_decode._CACHES[model][0].k.shape[2] == 2 * CACHE_BLOCK
    release(model)
    assert model not in fast_decode._CACHES and not model.has_cache


def test_bad_decode_and_bad_write_raise(model):
    with pytest.raises(ValueError, match="generate: decode must be one of dynamic, static, compile, not 'fast'"):
        generate(model, [[1]], eos_id=None, decode="fast")
    with pytest.raises(ValueError, match="stream: decode must be one of"):
        stream(model, [1], eos_id=None, decode="")
    model.setup_cache(2, 8)
    with pytest.raises(ValueError, match="one new position for all 2 rows"):
        model.layers[0].self_attn.cache.write(torch.tensor([3]), torch.zeros(1, 2, 1, 16), torch.zeros(1, 2, 1, 16))
    model.clear_cache()
    assert compile_problem("mps") == "the compiled decode step runs on cuda or cpu, not mps"


# --- under torch.compile (CPU: inductor's C++ kernels) ---------------------------------------------------

@pytest.fixture(scope="module")
def compiles():
    """Skip when torch.compile cannot build C++ kernels here at all (tried on a one-line function); the
    decode step's own compile (~10-20 s on 2 cores, once per process) must then succeed."""
    problem = compile_problem("cpu")
    if problem:
        pytest.skip(problem)
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(3))
    except Exception as e:                                   # no working toolchain: not this code's fault
        pytest.skip(f"torch.compile does not work on this machine: {type(e).__name__}: {str(e)[:200]}")


@pytest.mark.parametrize("prompt", ["ids", "embeds"])
def test_compiled_decode_equals_dynamic_tokens_and_logits(model, monkeypatch, compiles, prompt):
    calls = assert_same(model, monkeypatch, "compile", [PROMPTS[0]] if prompt == "ids" else video_prompt(model))
    assert all(fn is compiled_step("cpu") for _, fn in calls)


# --- chat.py --fast-decode -------------------------------------------------------------------------------

def test_chat_fast_decode_flag_reaches_the_decode_with_the_same_replies(tiny_ckpt, clips, tmp_path, capsys,
                                                                        monkeypatch, compiles):
    spec = importlib.util.spec_from_file_location("chat_script_fast", ROOT / "chat.py")
    chat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chat)
    decodes, steps = [], []
    real_stream, step_call = gen.stream, StaticStep.__call__

    def spy(*args, decode="dynamic", **kw):
        decodes.append(decode)
        return real_stream(*args, decode=decode, **kw)

    def counted(self, *args):
        steps.append(self.fn)
        return step_call(self, *args)

    monkeypatch.setattr("nanog4v.assistant.stream", spy)
    monkeypatch.setattr(StaticStep, "__call__", counted)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    replies = {}
    for flag in ([], ["--fast-decode"]):
        argv = ["--preset", "test", "--ckpt", tiny_ckpt, "--out", tmp_path, "--video", clips / "toy.mp4",
                "--max-new-tokens", "12", "--t2v", "none", "--json", "--device", "cpu", "--prompt", "What colour?", *flag]
        decodes.clear(), steps.clear()
        assert chat.main([str(a) for a in argv]) == 0
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        replies[bool(flag)] = [json.loads(line) for line in out.splitlines()]
        assert decodes == ["compile" if flag else "dynamic"]
        assert steps == ([compiled_step("cpu")] * len(steps) if flag else []) and (len(steps) > 0) == bool(flag)
    assert replies[True] == replies[False] and replies[False][0]["reply"], replies
    monkeypatch.setenv("CXX", "no-such-c++")                  # checked before the model is loaded: exit 2
    assert chat.main(["--preset", "test", "--ckpt", str(tiny_ckpt), "--prompt", "hi", "--device", "cpu",
                      "--fast-decode"]) == 2
    assert capsys.readouterr().err == ("error: --fast-decode: torch.compile on the CPU needs a C++ compiler, "
                                       "and no-such-c++ is not on PATH (or set $CXX)\n")
