"""Shared test fixtures. Real artifacts live in ../shared/assets (absent on a user's fresh clone)."""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_ASSETS = ROOT.parent / "shared" / "assets"


def shared_asset(relative: str) -> Path:
    """Path of a file under ../shared/assets, or skip the test when it is not there."""
    path = SHARED_ASSETS / relative
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/assets is only beside the development checkout)")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def train_tiny_tokenizer(path: Path, lines, vocab_size: int = 400, **options):
    """A SentencePiece model trained inside a test, with LLaMA's settings (BPE, byte fallback, identity
    normalisation, spaces kept, <unk>=0 <s>=1 </s>=2, no pad piece); `options` override them."""
    import io

    import sentencepiece as spm

    from nanog4v.tokenizer import Tokenizer

    settings = dict(model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
                    remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                    character_coverage=1.0, minloglevel=2)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                   **{**settings, **options})
    Path(path).write_bytes(model.getvalue())
    return Tokenizer(path)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """Trained on toy-world sentences and the template's lines, so pieces such as "###" exist."""
    import numpy as np

    from nanog4v.data import SYSTEM

    words = ("the a red blue green circle square triangle moves left right up down grows shrinks spins "
             "video shows what is colour of object how many objects there it can not help with that").split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, rng.integers(3, 12))) + "." for _ in range(400)]
    lines += [SYSTEM.strip(), "###Human: <video></video>", "###AI: <video> a red circle </video>"] * 20
    return train_tiny_tokenizer(tmp_path_factory.mktemp("spm") / "tiny.model", lines)
