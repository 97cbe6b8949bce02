"""LLaMA's SentencePiece tokenizer, and a streaming detokeniser for chat.

The model file (`tokenizer.model`, vocab 32000) is run by the `sentencepiece` library: encoding and
whole-sequence decoding are its job. What we write here is the *streaming* decoder, because turning
ids into text one token at a time is not `decode(id)` per token. Three things get in the way:

1. **The space marker.** A piece's spaces are written "▁" ("▁Hello" = " Hello"). Encoding adds a
   dummy prefix space ("Hello" → "▁Hello"), so decoding drops the leading "▁" of the first piece —
   and only of the first: decode([▁Hello]) = "Hello" but a later ▁Hello is " Hello".
2. **Byte fallback.** A character missing from the vocabulary is spelled by its UTF-8 bytes, one
   piece each: "😀" = <0xF0> <0x9F> <0x98> <0x80>. No text can be shown until the last byte arrives.
3. **Broken bytes.** A byte run that is not valid UTF-8 decodes to U+FFFD "�", one per bad byte
   (SentencePiece's rule, not Python's `errors="replace"`, which merges a bad run into one "�").

`StreamDecoder` mirrors SentencePiece's `Decode` (sentencepiece_processor.cc) piece by piece and holds
back only the bytes of an unfinished character, so for every prefix of any id sequence

    "".join(pieces pushed so far) + flush() == Tokenizer.decode(prefix).

(Assumed: no denormalisation rules in the model — LLaMA's has none, nor does a model trained with
SentencePiece's defaults; with them, Decode rewrites the joined text after the loop.)

LLaMA's model has no pad piece (pad id −1). `pad_id` falls back to the unk id 0: the official
GPT4Video code pads with 0 and masks label 0 out of the loss, and `<unk>` never occurs in real text.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm

SPACE = "\u2581"            # "▁", SentencePiece's visible space
REPLACEMENT = "\ufffd"      # "�", what an invalid UTF-8 byte decodes to


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used, text it cannot encode or ids it cannot decode; the message
    is one line and names the file."""


class Tokenizer:
    """A SentencePiece model: `encode`, `decode`, special ids, and streaming decoding."""

    def __init__(self, model_path: str | Path):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise TokenizerError(f"{self.path}: no such tokenizer file")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as e:  # e.g. "could not parse ModelProto"
            raise TokenizerError(f"{self.path}: not a SentencePiece model "
                                 f"({str(e).strip().splitlines()[0]})") from None
        self.vocab_size: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.unk_id: int = self.sp.unk_id()
        pad = self.sp.pad_id()
        self.pad_id: int = pad if pad >= 0 else self.unk_id   # see the module docstring
        # What the decoder needs to know about each piece, looked up once: 32000 small entries.
        self.pieces: list[str] = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        self.byte_of: dict[int, int] = {i: int(self.pieces[i][1:-1], 16)  # "<0xE4>" -> 0xE4
                                        for i in range(self.vocab_size) if self.sp.is_byte(i)}
        self.invisible: set[int] = {i for i in range(self.vocab_size) if self.sp.is_control(i)}
        self.unk_surface: str = self.sp.decode([self.unk_id]) if self.unk_id >= 0 else ""
        # The normaliser's two switches that decide whether a leading "▁" is dropped.
        spec = _normalizer_spec(self.sp, self.path)
        self.strip_first_space: bool = spec.add_dummy_prefix or spec.remove_extra_whitespaces
        self.strip_all_leading: bool = spec.remove_extra_whitespaces

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Text → ids (SentencePiece's own `EncodeAsIds`), optionally with <s> first and </s> last.

        Raises TokenizerError for a string that is not valid Unicode (a lone surrogate such as "\\ud800",
        which is how Python keeps undecodable command-line bytes): SentencePiece takes UTF-8 only."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TokenizerError(f"{self.path}: cannot encode text that is not valid Unicode (a lone surrogate "
                                 f"U+{ord(text[e.start]):04X} at character {e.start})") from None
        return self.sp.encode(text, add_bos=bos, add_eos=eos)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text. Control ids (<s>, </s>) vanish; the first piece's dummy-prefix space is dropped."""
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        return self.sp.decode(ids)

    def id_to_piece(self, i: int) -> str:
        self._check_ids([i])
        return self.pieces[i]

    def stream(self, ids: Iterable[int]) -> Iterator[str]:
        """Yield text as ids arrive (e.g. from `generate`); the pieces join to `decode(ids)`."""
        decoder = StreamDecoder(self)
        for i in ids:
            text = decoder.push(i)
            if text:
                yield text
        text = decoder.flush()
        if text:
            yield text

    def _check_ids(self, ids: list[int]) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"{self.path}: ids out of range [0, {self.vocab_size}): {bad[:8]}")

    def __repr__(self) -> str:
        return (f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, "
                f"eos={self.eos_id}, pad={self.pad_id})")


def _normalizer_spec(sp: spm.SentencePieceProcessor, path: Path):
    """The model's `normalizer_spec` (add_dummy_prefix, remove_extra_whitespaces, ...)."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as model_pb2  # needs `protobuf`
    except ImportError as e:
        raise TokenizerError(f"{path}: reading the model's settings needs protobuf ({e})") from None
    return model_pb2.ModelProto.FromString(sp.serialized_model_proto()).normalizer_spec


# --- streaming -------------------------------------------------------------------------------------

def _utf8_length(lead: int) -> int:
    """Bytes in the UTF-8 character that starts with byte `lead`; 0 if no character starts so."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0   # 0x80–0xBF continuation bytes, 0xC0/0xC1 (overlong), 0xF5–0xFF (beyond U+10FFFF)


def _continuation_ok(lead: int, k: int, byte: int) -> bool:
    """May `byte` be the k-th byte (k ≥ 1) of a character starting with `lead`? (Unicode Table 3-7:
    the second byte's range also rules out overlong forms, surrogates and code points > U+10FFFF.)"""
    lo, hi = 0x80, 0xBF
    if k == 1:
        lo, hi = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F),
                  0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(lead, (lo, hi))
    return lo <= byte <= hi


def decode_bytes(buf: bytearray, final: bool) -> str:
    """Decode (and remove) the front of `buf` the way SentencePiece decodes a run of byte pieces.

    Each well-formed UTF-8 character becomes itself; a byte that cannot start one, or whose
    character is broken by a bad byte, becomes one "�" and decoding restarts at the next byte.
    With `final=False` an unfinished but so-far-valid character at the end stays in `buf` (more
    bytes may complete it); with `final=True` its bytes are bad too.
    """
    out, i = [], 0
    while i < len(buf):
        n = _utf8_length(buf[i])
        have = buf[i + 1:i + n]                                  # the continuation bytes we have
        ok = n > 0 and all(_continuation_ok(buf[i], k + 1, b) for k, b in enumerate(have))
        if ok and len(have) == n - 1:                            # a whole character
            out.append(bytes(buf[i:i + n]).decode("utf-8"))
            i += n
        elif ok and not final:                                   # unfinished: wait for more bytes
            break
        else:                                                    # invalid byte at i
            out.append(REPLACEMENT)
            i += 1
    del buf[:i]
    return "".join(out)


class StreamDecoder:
    """Incremental `Tokenizer.decode`: `push(id)` returns the text that id makes certain.

    Mirrors SentencePiece's Decode loop: a non-byte piece first settles any pending byte run, then
    renders itself — "▁" → " ", except that a leading "▁" is dropped while nothing has been written
    yet (`at_start`). Byte pieces collect in `pending` until they form characters.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self.pending = bytearray()   # bytes of a character not finished yet
        self.at_start = True         # SentencePiece's `is_bos_ws`: may the next "▁" be dropped?
        self.wrote_any = False       # has any non-empty text been produced?
        self.dropped_space = False   # SentencePiece's `bos_ws_seen`: last piece lost its "▁"

    def push(self, token_id: int) -> str:
        tok = self.tok
        token_id = int(token_id)
        tok._check_ids([token_id])
        if token_id in tok.byte_of:                              # <0xE4>: wait for the whole char
            self.pending.append(tok.byte_of[token_id])
            return self._emit(decode_bytes(self.pending, final=False))
        text = decode_bytes(self.pending, final=True)            # a byte run ends here
        self.wrote_any |= bool(text)
        if self.dropped_space or self.wrote_any:
            self.at_start = False
        piece, self.dropped_space = tok.pieces[token_id], False
        if token_id in tok.invisible:                            # <s>, </s>
            piece = ""
        elif token_id == tok.unk_id:                             # <unk> → " ⁇ "
            piece = tok.unk_surface
        else:
            if self.at_start and tok.strip_first_space and piece.startswith(SPACE):
                piece = piece[1:]                                # the dummy prefix space
                self.dropped_space = not tok.strip_all_leading
            piece = piece.replace(SPACE, " ")
        return self._emit(text + piece)

    def flush(self) -> str:
        """End of stream: whatever bytes are still pending decode as broken ("�" each)."""
        return self._emit(decode_bytes(self.pending, final=True))

    def _emit(self, text: str) -> str:
        self.wrote_any |= bool(text)
        return text
