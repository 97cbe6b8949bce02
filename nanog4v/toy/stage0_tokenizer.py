"""The stage-0 tokenizer: LLaMA's SentencePiece settings, trained on the toy world's text.

`train_tokenizer` runs BPE on the world's corpus.txt with LLaMA's settings: byte fallback, identity
normalisation, spaces kept, <unk> 0 / <s> 1 / </s> 2, no pad piece (data.py needs them to tokenise the
template segment by segment). The template's fixed strings are *user-defined symbols*, one piece each:
the system text (≈110 pieces otherwise, now 1 + "\\n"), "###Human:", "###AI:" and the video tags. Every
example in stages 1–2 starts with the system text, so this shortens every sequence. A user cannot type
these pieces: data.escape breaks "###" and human video tags before tokenisation.

Two stage-0 options add pieces (`tokenizer_symbols`): the "objects" slot needs every motion whole (a slot
token sums one embedding per word), and `Stage0Settings.phrase_pieces` keeps every motion and place
phrase whole ("▁moves▁left", "▁on▁the▁left"), so that a caption is one token per attribute.
"""
from __future__ import annotations

import io
from pathlib import Path

from ..data import AI, HUMAN, SYSTEM
from ..tokenizer import Tokenizer
from .stage0_objects import MOTION_SYMBOLS, PLACE_SYMBOLS
from .worlddir import WorldError

VIDEO_TAGS = [f"<{slash}video{k}>" for k in ("", 1, 2, 3, 4) for slash in ("", "/")]
TEMPLATE_SYMBOLS = ["\u2581" + SYSTEM.strip().replace(" ", "\u2581"), HUMAN, AI,
                    *VIDEO_TAGS, *("\u2581" + tag for tag in VIDEO_TAGS)]   # "▁" = a space before


def train_tokenizer(corpus, out_path, vocab_size: int, symbols=TEMPLATE_SYMBOLS) -> Tokenizer:
    """SentencePiece BPE on `corpus` (a text file, one sentence a line) with LLaMA's settings and the
    template's fixed strings (`symbols`) as single pieces; writes `out_path` and returns it loaded."""
    import sentencepiece as spm
    corpus = Path(corpus)
    if not corpus.is_file():
        raise WorldError(f"{corpus}: no such corpus file (write the world with python -m nanog4v.toy)")
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, user_defined_symbols=list(symbols),
        hard_vocab_limit=False, minloglevel=2)           # a small corpus may give fewer pieces: fine
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(model.getvalue())
    return Tokenizer(out_path)


def tokenizer_symbols(settings) -> list[str]:
    """The pieces the tokenizer must keep whole, given stage0.Stage0Settings: the template's; each motion
    for the "objects" slot or "bare-objects" drills (their tokens sum a motion's embedding); each motion
    and place phrase with `phrase_pieces`."""
    objects = {"objects", "bare-objects"} & {settings.llama_slot, *settings.llama_drill_slots}
    return TEMPLATE_SYMBOLS + (list(MOTION_SYMBOLS) if objects or settings.phrase_pieces
                               else []) + (list(PLACE_SYMBOLS) if settings.phrase_pieces else [])
