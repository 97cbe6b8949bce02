"""Tokenizer: SentencePiece parity, round trips, and the streaming decoder against full decoding.

Two sources of models: the real LLaMA tokenizer in ../shared/assets (skipped when absent) and tiny
byte-fallback models trained here in milliseconds — one set up like LLaMA's (identity normaliser,
dummy prefix, spaces kept) and one with SentencePiece's defaults (NFKC, extra spaces removed), which
takes the other branch of the leading-space rule.
"""
import copy
import random
import unicodedata

import pytest
import sentencepiece as spm

from conftest import shared_asset
from nanog4v.tokenizer import REPLACEMENT, StreamDecoder, Tokenizer, TokenizerError, decode_bytes

TEXTS = [
    "Hello world",
    "The boat drifts down the river at dawn.",
    "你好，世界！这是一个视频。",                       # Chinese: whole pieces and byte fallback
    "A dog 🐕 barks 😀🎬 at the 🚤!",                  # 4-byte emoji → 4 byte pieces each
    "###Human: hi\n###AI: yo",
    " Hello",                                          # leading space → a lone "▁" piece first
    "  Hello  world  ",                                # double and trailing spaces
    "\nline\n\n tab\tend",
    "",
]
CORPUS = ["The quick brown fox jumps over the lazy dog.", "###Human: hi\n###AI: yo",
          "A boat sails on the river at dawn.", "Hello world, hello video.",
          "GPT4Video generates video prompts at the right time."] * 20 + ["你好世界"]


@pytest.fixture(scope="module")
def llama_tok():
    return Tokenizer(shared_asset("llama-tokenizer/tokenizer.model"))


def _train(directory, name, **options):
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(directory / name),
                                   vocab_size=300, model_type="bpe", byte_fallback=True,
                                   character_coverage=0.98, hard_vocab_limit=False,
                                   minloglevel=2, **options)
    return Tokenizer(directory / f"{name}.model")


@pytest.fixture(scope="module")
def tiny_toks(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    llama_like = _train(d, "llama_like", normalization_rule_name="identity",
                        remove_extra_whitespaces=False)
    default = _train(d, "default")                     # nmt_nfkc, remove_extra_whitespaces=True
    return {"llama_like": llama_like, "default": default}


def _streamed_prefixes(tok, ids):
    """(pushed text so far, pushed + flush of a copy) after each id."""
    dec, pushed, out = StreamDecoder(tok), "", []
    for i in ids:
        pushed += dec.push(i)
        snapshot = copy.copy(dec)
        snapshot.pending = bytearray(dec.pending)      # flush the copy, keep streaming the original
        out.append((pushed, pushed + snapshot.flush()))
    return out


def _check_stream(tok, ids):
    """Every prefix flushes to its full decode, and pushed text is never taken back."""
    full = tok.decode(ids)
    for k, (pushed, flushed) in enumerate(_streamed_prefixes(tok, ids)):
        assert flushed == tok.decode(ids[:k + 1]), (ids[:k + 1], flushed)
        assert full.startswith(pushed), (ids[:k + 1], pushed, full)
    assert "".join(tok.stream(ids)) == full
    assert all(piece for piece in tok.stream(ids))     # the generator yields no empty strings


# --- the real LLaMA tokenizer ------------------------------------------------------------------------

def test_llama_special_ids(llama_tok):
    t = llama_tok
    assert (t.vocab_size, t.unk_id, t.bos_id, t.eos_id, t.pad_id) == (32000, 0, 1, 2, 0)
    assert t.sp.pad_id() == -1                         # no pad piece: pad falls back to unk (0)
    assert t.id_to_piece(13) == "<0x0A>" and t.id_to_piece(29871) == "\u2581"
    assert t.strip_first_space and not t.strip_all_leading


def test_llama_ids_match_sentencepiece(llama_tok):
    sp = spm.SentencePieceProcessor(model_file=str(llama_tok.path))
    for text in TEXTS:
        assert llama_tok.encode(text) == sp.EncodeAsIds(text)
        assert llama_tok.encode(text, bos=True, eos=True) == [1] + sp.EncodeAsIds(text) + [2]
    assert llama_tok.encode("Hello world") == [15043, 3186]          # ▁Hello ▁world
    assert llama_tok.encode(" Hello") == [29871, 15043]              # ▁ ▁Hello
    assert llama_tok.encode("\n") == [29871, 13]                     # byte fallback: "\n" = <0x0A>


@pytest.mark.parametrize("text", TEXTS)
def test_llama_round_trip_and_stream(llama_tok, text):
    ids = llama_tok.encode(text)
    assert llama_tok.decode(ids) == text
    assert llama_tok.decode([llama_tok.bos_id] + ids + [llama_tok.eos_id]) == text
    _check_stream(llama_tok, ids)
    _check_stream(llama_tok, [llama_tok.bos_id] + ids + [llama_tok.eos_id])


def test_llama_stream_token_by_token(llama_tok):
    t = llama_tok
    # An emoji's four byte pieces show nothing until the fourth; the first "▁" is dropped.
    ids = t.encode("😀 ok")
    assert [t.id_to_piece(i) for i in ids] == ["\u2581", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>",
                                               "\u2581ok"]
    dec = StreamDecoder(t)
    assert [dec.push(i) for i in ids] == ["", "", "", "", "😀", " ok"]
    assert dec.flush() == ""
    # Decoding a suffix alone would lose its space; the stream keeps it.
    dec = StreamDecoder(t)
    assert [dec.push(i) for i in t.encode("Hello world")] == ["Hello", " world"]
    assert t.decode(t.encode("Hello world")[1:]) == "world"
    # A cut-off character flushes as one "�" per byte, as SentencePiece decodes it.
    dec = StreamDecoder(t)
    assert dec.push(t.encode("你")[-1]) == "你"        # "你" has its own piece
    e4, b8 = 3 + 0xE4, 3 + 0xB8
    assert dec.push(e4) + dec.push(b8) == "" and dec.flush() == REPLACEMENT * 2
    assert t.decode([e4, b8]) == REPLACEMENT * 2


def test_llama_stream_random_ids(llama_tok):
    _fuzz(llama_tok, n=1500, seed=1)


# --- tiny models trained here (no ../shared needed) -------------------------------------------------

def test_tiny_models_ids_round_trip_stream(tiny_toks):
    for name, tok in tiny_toks.items():
        sp = spm.SentencePieceProcessor(model_file=str(tok.path))
        assert tok.vocab_size == 300 and (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)
        assert len(tok.byte_of) == 256
        for text in TEXTS:
            ids = tok.encode(text)
            assert ids == sp.EncodeAsIds(text)
            if name == "llama_like":
                assert tok.decode(ids) == text
            else:                                      # NFKC, and extra whitespace removed
                assert tok.decode(ids) == " ".join(unicodedata.normalize("NFKC", text).split())
            _check_stream(tok, ids)
    assert not tiny_toks["llama_like"].strip_all_leading and tiny_toks["default"].strip_all_leading
    # Chinese is rare in the corpus: it is spelled in bytes (byte fallback) and still round-trips.
    tok = tiny_toks["llama_like"]
    assert all(i in tok.byte_of for i in tok.encode("世界")[1:])


def test_tiny_leading_space_rules(tiny_toks):
    """Lone "▁" pieces first: LLaMA-like drops only the first; remove_extra_whitespaces drops all."""
    for name, expected in [("llama_like", "  ab"), ("default", "ab")]:
        tok = tiny_toks[name]
        space = tok.sp.piece_to_id("\u2581")
        ids = [tok.bos_id, space, space, space] + tok.encode("ab")[1:]
        assert tok.decode(ids) == expected
        _check_stream(tok, ids)


def test_tiny_stream_random_ids(tiny_toks):
    for tok in tiny_toks.values():
        _fuzz(tok, n=1500, seed=2)


@pytest.mark.parametrize("raw", [
    b"\xe4\xb8", b"\xe4\xb8A", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf0\x9f\x98",
    b"\x80\x80", b"\xe0\x9f\x80", b"\xf0\x8f\xbf\xbf", b"\xf0\x9f\x98\x80\xff", b"\xc3\xa9\xe2\x82\xac", b"\xff\xfe",
])
def test_byte_runs_decode_like_sentencepiece(tiny_toks, raw):
    """Invalid UTF-8: one "�" per bad byte (SentencePiece), not Python's one per bad run."""
    tok = tiny_toks["llama_like"]
    ids = [3 + b for b in raw]                         # <0x00> is id 3
    assert decode_bytes(bytearray(raw), final=True) == tok.decode(ids)
    _check_stream(tok, ids)
    _check_stream(tok, ids + tok.encode("ok"))


def _fuzz(tok, n, seed):
    """Random id sequences rich in byte pieces, "▁"-pieces and special ids."""
    rng = random.Random(seed)
    bytes_ = sorted(tok.byte_of)
    spaced = [i for i, p in enumerate(tok.pieces) if p.startswith("\u2581")][:300]
    for _ in range(n):
        ids = []
        for _ in range(rng.randint(1, 10)):
            r = rng.random()
            pool = bytes_ if r < 0.45 else [0, 1, 2] if r < 0.55 else spaced if r < 0.75 else None
            ids.append(rng.choice(pool) if pool else rng.randrange(tok.vocab_size))
        _check_stream(tok, ids)


# --- errors ------------------------------------------------------------------------------------------

def test_errors_name_the_file(tmp_path, tiny_toks):
    missing = tmp_path / "nope.model"
    with pytest.raises(TokenizerError, match="nope.model: no such tokenizer file"):
        Tokenizer(missing)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="garbage.model: not a SentencePiece model") as e:
        Tokenizer(garbage)
    assert "\n" not in str(e.value)
    tok = tiny_toks["llama_like"]
    with pytest.raises(TokenizerError, match=r"llama_like.model: ids out of range .*\[300, -1\]"):
        tok.decode([5, 300, -1])
    with pytest.raises(TokenizerError, match="out of range"):
        StreamDecoder(tok).push(10**6)


@pytest.mark.parametrize("text, where", [("\ud800", "U+D800 at character 0"), ("ok \udcff", "U+DCFF at character 3")])
def test_text_that_is_not_valid_unicode_is_one_tokenizer_error(tiny_toks, text, where):
    """A lone surrogate (undecodable command-line bytes end up as one) cannot be UTF-8: one line, not the
    RuntimeError of SentencePiece's C++ binding."""
    with pytest.raises(TokenizerError) as e:
        tiny_toks["llama_like"].encode(text)
    assert str(e.value).endswith(f"llama_like.model: cannot encode text that is not valid Unicode (a lone surrogate "
                                 f"{where})") and "\n" not in str(e.value)
