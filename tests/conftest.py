"""Shared test fixtures. Real artifacts live in ../shared/assets (absent on a user's fresh clone)."""
import dataclasses
import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import sentencepiece as spm
import torch

from nanog4v.config import preset
from nanog4v.data import SYSTEM
from nanog4v.llama import LLaMA
from nanog4v.model import GPT4Video
from nanog4v.toy.world import Scene, Thing, render as render_scene
from nanog4v.toy.worlddir import write_world
from nanog4v.video_out import write_video
from nanog4v.weights import save_llama

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny shapes on a shared 2-core machine: one thread is faster than two fighting another job (and gives
    the same numbers). A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Evil:
    """Unpickling this makes a directory: what an untrusted pickle could do instead."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os
        return os.makedirs, (str(self.target),)


def train_tiny_tokenizer(path: Path, lines, vocab_size: int = 400, **options):
    """A SentencePiece model trained inside a test, with LLaMA's settings (BPE, byte fallback, identity
    normalisation, spaces kept, <unk>=0 <s>=1 </s>=2, no pad piece); `options` override them."""
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
    words = ("the a red blue green circle square triangle moves left right up down grows shrinks spins "
             "video shows what is colour of object how many objects there it can not help with that").split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, rng.integers(3, 12))) + "." for _ in range(400)]
    lines += [SYSTEM.strip(), "###Human: <video></video>", "###AI: <video> a red circle </video>"] * 20
    return train_tiny_tokenizer(tmp_path_factory.mktemp("spm") / "tiny.model", lines)


# --- a tiny checkpoint in the chat layout, clips, and a training world (shared by the chat, train and hostile tests)

TRAIN_COLOURS = {"red": (230, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (240, 220, 40)}
TRAIN_SHAPES = ["circle", "square", "triangle", "star"]

@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """The `test` preset with random weights in the layout load_chat_model reads: tokenizer.model, vision/
    (saved by transformers' CLIPVisionModel), llama/ (Hugging Face layout), stage2/ (with LoRA)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    ckpt = tmp_path_factory.mktemp("ckpt")
    lines = ["a red circle moves left on a grey background.", "What colour is the circle?", SYSTEM.strip(),
             "###Human: <video></video>", "###AI: <video> a red circle </video>", "I'm sorry, I can't help."] * 30
    tokenizer = train_tiny_tokenizer(ckpt / "tokenizer.model", lines, vocab_size=400)
    cfg = preset("test")
    cfg = dataclasses.replace(cfg, llama=dataclasses.replace(cfg.llama, vocab_size=tokenizer.vocab_size))
    torch.manual_seed(0)
    v = cfg.vision
    CLIPVisionModel(CLIPVisionConfig(hidden_size=v.dim, intermediate_size=v.mlp_dim, num_hidden_layers=v.n_layers,
                                     num_attention_heads=v.n_heads, image_size=v.image_size,
                                     patch_size=v.patch_size)).save_pretrained(ckpt / "vision")
    save_llama(LLaMA(cfg.llama), ckpt / "llama")
    model = GPT4Video(cfg)
    model.add_lora()
    model.save_pretrained(ckpt / "stage2")
    return ckpt


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """A toy clip, a hazard clip, and broken inputs: empty, not a video, audio only, a directory."""
    d = tmp_path_factory.mktemp("clips")
    write_video(d / "toy.mp4", render_scene(Scene((Thing("circle", "red", "large", "centre", "grows"),), "grey"), 8), 8)
    write_video(d / "hazard.mp4", render_scene(Scene((Thing("hazard", "striped", "large", "centre", "spins"),), "navy"), 8), 8)
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("not a video\n" * 50)
    with av.open(str(d / "tone.m4a"), "w") as container:           # one second of a sine tone, no video
        stream = container.add_stream("aac", rate=16000)
        t = np.arange(16000) / 16000
        frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                           format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 16000, 0, Fraction(1, 16000)
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    (d / "folder.mp4").mkdir()
    return d



@pytest.fixture(scope="session")
def train_world(tmp_path_factory):
    """Four clips, stage-1/stage-2/safety files, a SentencePiece model, a CLIP ViT and a LLaMA on disk."""
    d = tmp_path_factory.mktemp("world")
    (d / "videos").mkdir()
    for i, (name, rgb) in enumerate(TRAIN_COLOURS.items()):
        frames = np.zeros((4, 32, 32, 3), np.uint8)
        for t in range(4):
            frames[t, 8:24, 4 + 4 * t:20 + 4 * t] = rgb                     # a square moving right
        write_video(d / "videos" / f"c{i}.mp4", frames, fps=4)
    qa = [{"video": f"videos/c{i}.mp4", "QA": [{"q": "What colour is the square?", "a": f"It is {name}."}]}
          for i, name in enumerate(TRAIN_COLOURS)]
    (d / "stage1.json").write_text(json.dumps(qa))
    (d / "stage1_val.json").write_text(json.dumps(qa[:2]))
    dialogues = [{"conversations": [{"from": "human", "value": f"Show me a {c} {s}."},
                                    {"from": "gpt", "value": f"Here: <video> a {c} {s} moves left </video>"}]}
                 for c, s in zip(TRAIN_COLOURS, TRAIN_SHAPES)]
    (d / "stage2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dialogues))
    safety = [{"label": "refuse", "conversations": [{"from": "human", "value": "Show a violent fight."},
                                                    {"from": "gpt", "value": "Sorry, I can't help with that."}]},
              {"label": "benign", "conversations": [{"from": "human", "value": "Show a fencing match."},
                                                    {"from": "gpt", "value": "Sure: <video> two fencers </video>"}]}]
    (d / "safety.jsonl").write_text("".join(json.dumps(r) + "\n" for r in safety))
    rng = np.random.default_rng(0)
    words = "the a it is red green blue yellow circle square triangle star moves left what colour show me".split()
    lines = [" ".join(rng.choice(words, rng.integers(3, 10))) + "." for _ in range(300)]
    lines += [SYSTEM.strip(), "###Human: <video></video>", "###AI: Here: <video> a red circle </video>"] * 50
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=500, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (d / "tokenizer.model").write_bytes(model.getvalue())
    import transformers                                                      # the official CLIP layout
    v = preset("test").vision
    torch.manual_seed(0)
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=v.dim, num_hidden_layers=v.n_layers, num_attention_heads=v.n_heads, intermediate_size=v.mlp_dim,
        image_size=v.image_size, patch_size=v.patch_size, hidden_act="quick_gelu")).save_pretrained(d / "vit")
    save_llama(LLaMA(preset("test").llama), d / "llama")                                # the official LLaMA layout
    return d



def train_args(world, out, stage, *extra):
    """train.py's argv for a tiny run of the `test` preset; stage 2 without an --init in `extra` gets --no-init
    (a fresh abstractor: these runs test the training loop, not the model)."""
    data = [world / "stage1.json"] if stage == 1 else [world / "stage2.jsonl", world / "safety.jsonl"]
    fresh = ["--no-init"] if stage == 2 and "--init" not in map(str, extra) else []
    return ["--stage", str(stage), "--preset", "test", "--vision", str(world / "vit"), "--llama", str(world / "llama"),
            "--tokenizer", str(world / "tokenizer.model"), "--data", *map(str, data), "--out", str(out),
            "--max-seq-len", "256", "--quiet", "--eval-n", "0", *fresh, *extra]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A toy world of 14 tiny clips (32 px, 4 frames), rendered once per test module that asks for it."""
    out = tmp_path_factory.mktemp("world")
    write_world(out, n=14, seed=3, frames=4, size=32)
    return out
