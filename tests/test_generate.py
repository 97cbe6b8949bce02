"""Sampling and generation (nanog4v/generate.py): the logit transforms on hand-made numbers, KV-cache
decoding against full recomputation, seeds, batching with left padding, stop strings, the embeddings
path, and greedy parity with transformers' generate()."""

import pytest
import torch
from torch import nn

from conftest import shared_asset
from nanog4v.config import LlamaConfig
from nanog4v.generate import (SamplingConfig, StopScanner, apply_repetition_penalty, apply_temperature,
                              generate, sample_next, stream, top_k_filter, top_p_filter)
from nanog4v.llama import LLaMA

INF = float("inf")
TINY = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=128,
                   max_seq_len=128)
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12, 13, 14, 15, 16, 17]]   # three different lengths


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LLaMA(TINY).eval()


def greedy(n, **kw):
    return SamplingConfig(max_new_tokens=n, **kw)


# --- 1. the transforms on hand-made logits ------------------------------------------------------------

def test_top_k_keeps_exactly_k():
    z = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0]])          # second row: all tied
    out = top_k_filter(z, 2)
    assert torch.equal(out[0], torch.tensor([-INF, 5.0, -INF, 4.0, -INF]))
    assert int(torch.isfinite(out[1]).sum()) == 2         # ties: still exactly k
    assert torch.equal(top_k_filter(z, 0), z) and torch.equal(top_k_filter(z, 5), z)


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.125, 0.5, 0.0625, 0.25, 0.0625]])
    z = probs.log()
    kept = lambda p: set(torch.isfinite(top_p_filter(z, p))[0].nonzero().flatten().tolist())
    assert kept(0.4) == {1}                     # 0.5 ≥ 0.4
    assert kept(0.6) == {1, 3}                  # 0.75 ≥ 0.6
    assert kept(0.8) == {1, 3, 0}               # 0.875 ≥ 0.8
    assert kept(0.9) == {1, 3, 0, 2}            # 0.9375; of the tied 0.0625s the first index is kept
    assert kept(1.0) == {0, 1, 2, 3, 4}
    uniform = torch.zeros(1, 4)                  # probabilities exactly 0.25: mass exactly p counts
    assert int(torch.isfinite(top_p_filter(uniform, 0.5)).sum()) == 2
    assert int(torch.isfinite(top_p_filter(uniform, 0.75)).sum()) == 3
    # on random rows: the kept mass is ≥ p and dropping the least likely kept token falls below p
    g = torch.Generator().manual_seed(1)
    z = torch.randn(64, 50, generator=g) * 2
    p = torch.rand(64, generator=g) * 0.98 + 0.01
    for row, pr in zip(z, p.tolist()):
        keep = torch.isfinite(top_p_filter(row[None], pr)[0])
        mass = row.softmax(-1)[keep]
        assert mass.sum() >= pr - 1e-6 and mass.sum() - mass.min() < pr + 1e-6


def test_repetition_penalty_values():
    z = torch.tensor([[2.0, -2.0, 0.5, -0.5, 1.0],
                      [2.0, -2.0, 0.5, -0.5, 1.0]])
    history = torch.tensor([[1, 1, 2, -1],          # id 1 twice (penalised once), -1 = padding
                            [0, 3, -1, -1]])
    out = apply_repetition_penalty(z, history, 2.0)
    assert torch.equal(out, torch.tensor([[2.0, -4.0, 0.25, -0.5, 1.0],
                                          [1.0, -2.0, 0.5, -1.0, 1.0]]))
    assert torch.equal(apply_repetition_penalty(z, history, 1.0), z)


def test_temperature_and_sampling_distribution():
    z = torch.tensor([[0.5, 0.3, 0.2, 1e-9]]).log()
    assert torch.allclose(apply_temperature(z, 0.5), 2 * z)
    assert sample_next(z, None, SamplingConfig()).tolist() == [0]                     # greedy
    rows = z.expand(20000, 4)
    counts = lambda ids: torch.bincount(ids, minlength=4).float() / len(ids)
    f = counts(sample_next(rows, None, SamplingConfig(temperature=1.0, top_k=2)))
    assert f[2] == 0 and f[3] == 0 and abs(f[0] - 0.625) < 0.02                      # 0.5 / 0.8
    f = counts(sample_next(rows, None, SamplingConfig(temperature=0.5)))            # p² renormalised
    assert abs(f[0] - 0.25 / 0.38) < 0.02 and abs(f[2] - 0.04 / 0.38) < 0.01
    f = counts(sample_next(rows, None, SamplingConfig(temperature=1.0, top_p=0.7)))  # {0, 1}
    assert f[2] == 0 and abs(f[0] - 0.625) < 0.02


def test_config_rejects_bad_values():
    for bad in [dict(top_p=0.0), dict(temperature=-1.0), dict(top_k=-1), dict(stop=("",)),
                dict(max_new_tokens=-1), dict(repetition_penalty=0.0)]:
        with pytest.raises(ValueError, match="SamplingConfig"):
            SamplingConfig(**bad)
    assert SamplingConfig(stop="###").stop == ("###",)


# --- 2. decoding with the KV cache -----------------------------------------------------------------

@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_greedy_equals_full_forward_argmax(model, penalty):
    """Every cached greedy step equals argmax of a full, cache-free forward over prompt + output so far
    (with the repetition penalty applied over prompt + output, when on)."""
    prompt, n = PROMPTS[0], 16
    out = generate(model, [prompt], cfg=greedy(n, repetition_penalty=penalty), eos_id=None)[0]
    assert len(out) == n
    assert not model.has_cache                                   # released after generation
    seq = list(prompt)
    with torch.no_grad():
        for k in range(n):
            z = model(torch.tensor([seq]))[:, -1]                # (1, V), no cache
            z = apply_repetition_penalty(z, torch.tensor([seq]), penalty)
            assert int(z.argmax()) == out[k], f"step {k}"
            seq.append(out[k])
    assert list(stream(model, prompt, cfg=greedy(n, repetition_penalty=penalty), eos_id=None)) == out


def test_seed_reproducible_and_independent_of_global_rng(model):
    cfg = SamplingConfig(max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.95, seed=1)
    torch.manual_seed(123)
    a = generate(model, [PROMPTS[0]], cfg=cfg, eos_id=None)[0]
    torch.manual_seed(7)
    b = generate(model, [PROMPTS[0]], cfg=cfg, eos_id=None)[0]
    c = generate(model, [PROMPTS[0]], cfg=SamplingConfig(**{**cfg.__dict__, "seed": 2}), eos_id=None)[0]
    assert a == b and a != c
    assert list(stream(model, PROMPTS[0], cfg=cfg, eos_id=None)) == a


def test_batched_sampling_row_b_uses_seed_plus_b(model):
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.8, top_k=20, seed=5)
    batched = generate(model, PROMPTS, cfg=cfg, eos_id=None)
    for b, prompt in enumerate(PROMPTS):
        alone = SamplingConfig(**{**cfg.__dict__, "seed": 5 + b})
        assert batched[b] == generate(model, [prompt], cfg=alone, eos_id=None)[0]


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_batched_equals_batch1_with_per_row_eos(model, penalty):
    cfg = greedy(12, repetition_penalty=penalty)
    free = [generate(model, [p], cfg=cfg, eos_id=None)[0] for p in PROMPTS]
    eos = free[1][3]                                  # row 1 meets this token by step 3
    alone = [generate(model, [p], cfg=cfg, eos_id=eos)[0] for p in PROMPTS]
    for f, a in zip(free, alone):                     # each row is cut before its first eos
        assert a == (f[:f.index(eos)] if eos in f else f)
    assert len(alone[1]) <= 3 and max(len(a) for a in alone) == 12   # rows stop at different steps
    assert generate(model, PROMPTS, cfg=cfg, eos_id=eos, pad_id=0) == alone
    assert generate(model, PROMPTS, cfg=cfg, eos_id=eos, pad_id=99) == alone   # the pad id is masked


def test_embeds_path_equals_ids_path(model):
    cfg = greedy(10)
    ids_out = generate(model, PROMPTS, cfg=cfg, eos_id=None)
    with torch.no_grad():
        embeds = [model.embed_tokens(torch.tensor(p)) for p in PROMPTS]           # (L_i, dim)
    assert generate(model, embeds=embeds, cfg=cfg, eos_id=None) == ids_out
    assert list(stream(model, embeds=embeds[2][None], cfg=cfg, eos_id=None)) == ids_out[2]


def test_bad_calls_raise(model):
    with pytest.raises(ValueError, match="exactly one"):
        generate(model, cfg=greedy(2), eos_id=None)
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, PROMPTS, cfg=greedy(2, stop=("x",)), eos_id=None)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []], cfg=greedy(2), eos_id=None)
    assert generate(model, PROMPTS, cfg=greedy(0), eos_id=None) == [[], [], []]


# --- 3. stop strings ------------------------------------------------------------------------------

class ScriptedLM(nn.Module):
    """A stand-in for LLaMA whose greedy continuation is a fixed script of ids (then `after`).

    `script` is one list of ids for every row, or a list of such lists (row b follows script[b]).
    It records how often it was called and the last attention mask it was given.
    """

    def __init__(self, script, vocab, after=0):
        super().__init__()
        self.scripts = [list(s) for s in script] if isinstance(script[0], list) else [list(script)]
        self.vocab, self.after = vocab, after
        self.anchor = nn.Parameter(torch.zeros(()))       # gives generate() a device and dtype
        self.calls, self.prompt_len, self.last_mask = 0, 0, None

    def setup_cache(self, batch_size, max_seq_len, dtype=None, device=None):
        pass

    def clear_cache(self):
        pass

    def forward(self, tokens=None, *, embeds=None, start_pos=0, attention_mask=None, last_only=False):
        B, L = (tokens if tokens is not None else embeds).shape[:2]
        if start_pos == 0:
            self.prompt_len = L
        step = start_pos + L - self.prompt_len             # how many tokens were generated so far
        self.calls += 1
        self.last_mask = attention_mask
        logits = torch.zeros(B, 1, self.vocab)
        for b in range(B):
            script = self.scripts[b % len(self.scripts)]
            logits[b, 0, script[step] if step < len(script) else self.after] = 1.0
        return logits


class Pieces:
    """A tokenizer-like object: id i decodes to pieces[i]."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids):
        if self.pieces and isinstance(self.pieces[0], bytes):   # byte-level BPE style
            return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")
        return "".join(self.pieces[i] for i in ids)


PIECES = Pieces(["Hel", "lo", " ", "wo", "rld", "\n#", "##", "Hu", "man", "!"])
SCRIPT = [0, 1, 2, 3, 4, 5, 6, 7, 8]                     # "Hello world\n###Human"


@pytest.mark.parametrize("stop, n, expected", [
    (("###",), 9, [0, 1, 2, 3, 4]),        # "\n#" straddles the start of "###": dropped with it
    (("\n###",), 9, [0, 1, 2, 3, 4]),      # the stop string starts exactly at a token
    (("world",), 9, [0, 1, 2]),
    (("o w",), 9, [0]),                    # "lo" straddles
    (("man", "###"), 9, [0, 1, 2, 3, 4]),  # the first stop string to appear ends generation
    (("wo", "o w"), 9, [0]),               # both appear at "wo": the earlier occurrence counts
    (("zzz",), 9, SCRIPT),                 # never appears
    (("###",), 6, [0, 1, 2, 3, 4, 5]),     # ends at max_new_tokens: the held-back "\n#" is released
])
def test_stop_strings_scripted(stop, n, expected):
    cfg = greedy(n, stop=stop)
    lm = ScriptedLM(SCRIPT, vocab=10)
    assert generate(lm, [[0]], cfg=cfg, eos_id=None, tokenizer=PIECES) == [expected]
    assert list(stream(lm, [0], cfg=cfg, eos_id=None, tokenizer=PIECES)) == expected
    assert not any(s in PIECES.decode(expected) for s in stop)


def test_stream_is_lazy_and_holds_back_possible_stop_prefix():
    lm = ScriptedLM(SCRIPT, vocab=10)
    it = stream(lm, [0], cfg=greedy(9, stop=("###",)), eos_id=None, tokenizer=PIECES)
    assert next(it) == 0 and lm.calls == 1               # the first token comes from the prefill
    scanner = StopScanner(PIECES, ("###",))
    assert scanner.update(SCRIPT[:5]) == (5, False)
    assert scanner.update(SCRIPT[:6]) == (5, False)      # "\n#" could begin "###": held back
    assert scanner.update(SCRIPT[:7]) == (5, True)
    lm = ScriptedLM([0, 1, 9, 3], vocab=10)              # eos (9) after two tokens
    assert list(stream(lm, [0], cfg=greedy(9), eos_id=9)) == [0, 1]


def test_stop_string_after_a_split_character():
    """Byte-level tokens may split a character and join its end to the next text: a token whose text
    is an incomplete character is kept only if the token completing it is kept."""
    tok = Pieces([b"caf\xc3\xa9 ", b"\xf0\x9f", b"\x8e\x89###", b"AI", b"\x8e\x89"])
    for script, expected in [([0, 1, 2, 3], [0]),             # "café 🎉###AI": token 2 straddles
                             ([0, 1, 4, 3], [0, 1, 4, 3])]:   # "café 🎉AI": no stop string
        lm = ScriptedLM(script, vocab=5)
        cfg = greedy(4, stop=("###",))
        assert list(stream(lm, [0], cfg=cfg, eos_id=None, tokenizer=tok)) == expected
        assert generate(lm, [[0]], cfg=cfg, eos_id=None, tokenizer=tok) == [expected]


def test_finished_rows_are_fed_masked_padding():
    lm = ScriptedLM([[0, 1, 9, 3, 4, 5], [0, 1, 2, 3, 4, 5]], vocab=10)
    assert generate(lm, [[7, 7], [7]], cfg=greedy(6), eos_id=9, pad_id=8) == [[0, 1], [0, 1, 2, 3, 4, 5]]
    assert lm.last_mask.tolist() == [[1, 1, 1, 1, 0, 0, 0],   # row 0: eos at step 2, then masked
                                     [0, 1, 1, 1, 1, 1, 1]]   # row 1: left padding


def test_stop_strings_real_tokenizer_multibyte():
    sentencepiece = pytest.importorskip("sentencepiece")
    sp = sentencepiece.SentencePieceProcessor(
        model_file=str(shared_asset("llama-tokenizer/tokenizer.model")))
    for text, stop, before in [("Answer: yes.\n###Human: hi", "\n###", "Answer: yes."),
                               ("café 🎉###AI", "###", "café 🎉"),     # 🎉 is four byte tokens
                               ("café 🎉###AI", "🎉", "café ")]:       # stop inside byte tokens
        ids = sp.encode(text)
        lm = ScriptedLM(ids, vocab=sp.get_piece_size())
        cfg = greedy(len(ids), stop=(stop,))
        out = list(stream(lm, [1], cfg=cfg, eos_id=2, tokenizer=sp))
        assert sp.decode(out) == before
        assert generate(lm, [[1]], cfg=cfg, eos_id=2, tokenizer=sp) == [out]


def test_batched_stop_strings_equal_batch1(model):
    letters = "abcdefghijklmnopqrstuvwxyz"
    tok = Pieces([letters[i % 26] + letters[(7 * i) % 26] for i in range(TINY.vocab_size)])
    free = [generate(model, [p], cfg=greedy(12), eos_id=None)[0] for p in PROMPTS]
    stop = tok.decode(free[0][4:6])[1:3]                  # straddles tokens 4 and 5 of row 0
    cfg = greedy(12, stop=(stop,))
    alone = [generate(model, [p], cfg=cfg, eos_id=None, tokenizer=tok)[0] for p in PROMPTS]
    assert len(alone[0]) <= 4 and stop not in tok.decode(alone[0])
    assert generate(model, PROMPTS, cfg=cfg, eos_id=None, tokenizer=tok) == alone


# --- 4. against transformers ----------------------------------------------------------------------

def test_greedy_matches_transformers_generate(tmp_path):
    transformers = pytest.importorskip("transformers")
    from nanog4v.weights import load_llama
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, initializer_range=0.1)              # larger weights: decisive argmaxes
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = load_llama(tmp_path)
    B, P, n = len(PROMPTS), max(map(len, PROMPTS)), 16
    ids = torch.zeros(B, P, dtype=torch.long)
    mask = torch.zeros(B, P, dtype=torch.long)
    for b, p in enumerate(PROMPTS):                       # left padding, as transformers expects
        ids[b, P - len(p):], mask[b, P - len(p):] = torch.tensor(p), 1
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                          pad_token_id=0, eos_token_id=2)[:, P:].tolist()
    ref = [r[:r.index(2)] if 2 in r else r for r in ref]  # transformers pads finished rows
    assert generate(ours, PROMPTS, cfg=greedy(n), eos_id=2) == ref
    for p, r in zip(PROMPTS, ref):
        assert list(stream(ours, p, cfg=greedy(n), eos_id=2)) == r
    assert sum(map(len, ref)) > 2 * n                      # mostly real tokens, not an early eos
