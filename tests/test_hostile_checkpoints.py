"""Hostile and unlucky checkpoints (issue 24, checkpoint side): a table of cases, each with its exact outcome.

A checkpoint that does not load is one CheckpointError "{file}: {problem}" from the loader, and through
chat.py one line `error: {file}: {problem}`, exit status 2, no traceback, nothing written; float tensors
of another precision load converted. The same BROKEN table through `python -m nanog4v.eval`, and the
evaluation's own hostile input: tests/test_hostile_eval.py. Every input is made here from the session's
tiny checkpoint; all in process.
"""
import importlib.util
import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import Evil, ROOT
from nanog4v.safetensors_io import CheckpointError
from nanog4v.t2v import T2VError, load_generator
from nanog4v.weights import load_gpt4video, load_llama, load_vision

spec = importlib.util.spec_from_file_location("chat_script_hostile", ROOT / "chat.py")
CHAT = importlib.util.module_from_spec(spec)
spec.loader.exec_module(CHAT)

TRAINABLE, CONFIG = "stage2/gpt4video.safetensors", "stage2/config.json"


pytestmark = pytest.mark.usefixtures("one_thread")


def checkpoint(tiny_ckpt, where):
    """A chat checkpoint directory at `where` whose stage2/ is a copy (the rest links to the tiny one)."""
    where.mkdir()
    for name in ("tokenizer.model", "vision", "llama"):
        (where / name).symlink_to(tiny_ckpt / name)
    shutil.copytree(tiny_ckpt / "stage2", where / "stage2")
    return where


# --- ways to damage stage2/: each takes the checkpoint directory ---------------------------------------

def _bytes(change):
    def damage(ckpt):
        f = ckpt / TRAINABLE
        f.write_bytes(change(f.read_bytes()))
    return damage


def _header(header: dict, data: bytes = b""):
    """gpt4video.safetensors replaced by a hand-made safetensors file with this header."""
    raw = json.dumps(header).encode()
    return _bytes(lambda _: len(raw).to_bytes(8, "little") + raw + data)


def _tensors(change):
    def damage(ckpt):
        state = load_file(str(ckpt / TRAINABLE))
        change(state)
        save_file(state, str(ckpt / TRAINABLE))
    return damage


def _config(change):
    def damage(ckpt):
        meta = json.loads((ckpt / CONFIG).read_text())
        change(meta)
        (ckpt / CONFIG).write_text(json.dumps(meta))
    return damage


def _text(text: str | bytes, name=CONFIG):
    return lambda ckpt: (ckpt / name).write_bytes(text if isinstance(text, bytes) else text.encode())


def _set(path: str, value):
    """Set config.json's value at a dotted path ("config.llama.dim")."""
    *parents, leaf = path.split(".")

    def change(meta):
        for key in parents:
            meta = meta[key]
        meta[leaf] = value
    return _config(change)


def _drop(path: str):
    *parents, leaf = path.split(".")

    def change(meta):
        for key in parents:
            meta = meta[key]
        del meta[leaf]
    return _config(change)


def _replace_by_directory(name):
    def damage(ckpt):
        (ckpt / name).unlink()
        (ckpt / name).mkdir()
    return damage


BIAS = "abstractor.proj.bias"                         # a (64,) tensor of the `test` preset's trainable parts
NOT_A_CHECKPOINT = ("missing (not a GPT4Video checkpoint directory: it needs config.json and "
                    "gpt4video.safetensors, as save_pretrained and train.py --out write)")
SAFETENSORS = "unreadable (Error while deserializing header: "       # the library's words follow

# name: (damage, the file the error names, its problem after "{file}: "; a trailing "…" = the start of it)
BROKEN = {
    # gpt4video.safetensors, the bytes
    "damaged header bytes": (_bytes(lambda b: b[:8] + b"\xff\xfe" + b[10:]), TRAINABLE, SAFETENSORS + "…"),
    "header not JSON": (_bytes(lambda b: b[:8] + b"{" * 20 + b[28:]), TRAINABLE, SAFETENSORS + "…"),
    "header length beyond the file": (_bytes(lambda b: len(b).to_bytes(8, "little") + b[8:]), TRAINABLE,
                                      SAFETENSORS + "…"),
    "header length of a terabyte": (_bytes(lambda b: (2**40).to_bytes(8, "little") + b[8:]), TRAINABLE,
                                    SAFETENSORS + "…"),
    "truncated data": (_bytes(lambda b: b[:-4]), TRAINABLE, SAFETENSORS + "…"),
    "cut in half": (_bytes(lambda b: b[:len(b) // 2]), TRAINABLE, SAFETENSORS + "…"),
    "not a safetensors file": (_text("not a checkpoint at all\n" * 20, TRAINABLE), TRAINABLE, SAFETENSORS + "…"),
    "empty": (_text(b"", TRAINABLE), TRAINABLE, SAFETENSORS + "…"),
    "a malicious pickle": (lambda c: (c / TRAINABLE).write_bytes(pickle.dumps(Evil(c / "pwned"), protocol=2)),
                           TRAINABLE, SAFETENSORS + "…"),
    "a header that claims huge tensors": (_header({BIAS: {"dtype": "F32", "shape": [2**20, 2**20],
                                                          "data_offsets": [0, 2**42]}}, b"\0" * 16),
                                          TRAINABLE, SAFETENSORS + "…"),
    "a shape its bytes do not hold": (_header({BIAS: {"dtype": "F32", "shape": [64], "data_offsets": [0, 8]}},
                                              b"\0" * 8), TRAINABLE, SAFETENSORS + "…"),
    "an unknown dtype": (_header({BIAS: {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
                         TRAINABLE, SAFETENSORS + "…"),
    "a directory": (_replace_by_directory(TRAINABLE), TRAINABLE, NOT_A_CHECKPOINT),
    "missing": (lambda c: (c / TRAINABLE).unlink(), TRAINABLE, NOT_A_CHECKPOINT),
    # gpt4video.safetensors, the tensors
    "an int tensor": (_tensors(lambda s: s.update({BIAS: s[BIAS].to(torch.int32)})), TRAINABLE,
                      f"does not fit the model: wrong dtype: {BIAS} (int32)"),
    "a bool tensor": (_tensors(lambda s: s.update({BIAS: s[BIAS] > 0})), TRAINABLE,
                      f"does not fit the model: wrong dtype: {BIAS} (bool)"),
    "a complex tensor": (_tensors(lambda s: s.update({BIAS: s[BIAS].to(torch.complex64)})), TRAINABLE,
                         f"does not fit the model: wrong dtype: {BIAS} (complex64)"),
    "a wrong shape": (_tensors(lambda s: s.update({BIAS: torch.zeros(3, 3)})), TRAINABLE,
                      f"does not fit the model: wrong shape: {BIAS} (3, 3) != (64,)"),
    "a missing tensor": (_tensors(lambda s: s.pop(BIAS)), TRAINABLE, f"does not fit the model: missing: {BIAS}"),
    "an unexpected tensor": (_tensors(lambda s: s.update({"extra.weight": torch.zeros(2)})), TRAINABLE,
                             "does not fit the model: unexpected: extra.weight"),
    "LoRA tensors but lora false": (_set("lora", False), TRAINABLE,
                                    "does not fit the model: unexpected: llm.layers.0.self_attn.q_proj.lora_A, …"),
    # config.json
    "config not JSON": (_text("{oops"), CONFIG, "not a GPT4Video config (not valid JSON: Expecting property name "
                                                "enclosed in double quotes: line 1 column 2 (char 1))"),
    "config not UTF-8": (_text(b"\xff\xfe{}"), CONFIG, "not a GPT4Video config (not valid JSON: 'utf-8' codec "
                                                       "can't decode byte 0xff in position 0: invalid start byte)"),
    "config empty": (_text(""), CONFIG, "not a GPT4Video config (not valid JSON: Expecting value: line 1 column 1 "
                                        "(char 0))"),
    "config a list": (_text("[1, 2]"), CONFIG, "not a GPT4Video config (a JSON list, not an object)"),
    "config null": (_text("null"), CONFIG, "not a GPT4Video config (a JSON null, not an object)"),
    "config a directory": (_replace_by_directory(CONFIG), CONFIG, NOT_A_CHECKPOINT),
    "no config key": (_drop("config"), CONFIG, "not a GPT4Video config: config: missing"),
    "no lora key": (_drop("lora"), CONFIG, "not a GPT4Video config: lora: missing"),
    "an unknown key": (_set("wat", 1), CONFIG, "not a GPT4Video config: wat: unknown key"),
    "an unknown nested key": (_set("config.llama.wat", 1), CONFIG, "not a GPT4Video config: config.llama.wat: unknown key"),
    "lora a string": (_set("lora", "no"), CONFIG, 'not a GPT4Video config: lora: "no" is not true or false'),
    "config.config a list": (_set("config", [1]), CONFIG, "not a GPT4Video config: config: [1] is not an object"),
    "vision a string": (_set("config.vision", "ViT-L/14"), CONFIG,
                        'not a GPT4Video config: config.vision: "ViT-L/14" is not an object'),
    "no llama section": (_drop("config.llama"), CONFIG, "not a GPT4Video config: config.llama: missing"),
    "no llama.dim": (_drop("config.llama.dim"), CONFIG, "not a GPT4Video config: config.llama.dim: missing"),
    "a string for an int": (_set("config.llama.dim", "64"), CONFIG,
                            'not a GPT4Video config: config.llama.dim: "64" is not an int'),
    "a float for an int": (_set("config.abstractor.num_queries", 4.0), CONFIG,
                           "not a GPT4Video config: config.abstractor.num_queries: 4.0 is not an int"),
    "a bool for an int": (_set("config.llama.n_layers", True), CONFIG,
                          "not a GPT4Video config: config.llama.n_layers: true is not an int"),
    "a string for a float": (_set("config.vision.norm_eps", "1e-5"), CONFIG,
                             'not a GPT4Video config: config.vision.norm_eps: "1e-5" is not a finite number'),
    "NaN for a float": (_set("config.lora.alpha", float("nan")), CONFIG,
                        "not a GPT4Video config: config.lora.alpha: NaN is not a finite number"),
    "a string for a list": (_set("config.lora.targets", "q_proj"), CONFIG,
                            'not a GPT4Video config: config.lora.targets: "q_proj" is not a list of strings'),
    "two problems": (_config(lambda m: (m["config"]["llama"].pop("dim"), m["config"]["vision"].update(dim="48"))),
                     CONFIG, 'not a GPT4Video config: config.vision.dim: "48" is not an int; config.llama.dim: missing'),
    "a config that builds no model": (_set("config.abstractor.variant", "bogus"), CONFIG,
                                      "not a GPT4Video config (abstractor.py: variant must be 'paper' or 'official', "
                                      "got 'bogus')"),
    "zero attention heads": (_set("config.abstractor.n_heads", 0), CONFIG,
                             "not a GPT4Video config (integer modulo by zero)"),
    "llama.dim not the LLaMA's": (_set("config.llama.dim", 32), CONFIG,
                                  "does not match the frozen models: llama.dim 32 != 64 in {ckpt}/llama"),
    "image_size not the ViT's": (_set("config.vision.image_size", 56), CONFIG,
                                 "does not match the frozen models: vision.image_size 56 != 28 in {ckpt}/vision"),
}


def expected_error(ckpt, name) -> tuple[str, bool]:
    """(the message, whether it must be equal rather than only start with it) of BROKEN[name]."""
    _, file, problem = BROKEN[name]
    message = f"{ckpt / file}: {problem.format(ckpt=ckpt)}"
    return message.removesuffix("…"), not message.endswith("…")


def one_error_line(err: str, message: str, exact: bool) -> str:
    """stderr holds exactly one `error:` line, the message (or starting with it), and no traceback."""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in err, err
    assert errors[0] == f"error: {message}" if exact else errors[0].startswith(f"error: {message}"), (errors[0], message)
    return errors[0]


@pytest.mark.parametrize("name", BROKEN)
def test_the_loader_gives_one_line_naming_the_file(tiny_ckpt, tmp_path, name):
    ckpt = checkpoint(tiny_ckpt, tmp_path / "ckpt")
    BROKEN[name][0](ckpt)
    message, exact = expected_error(ckpt, name)
    with pytest.raises(CheckpointError) as e:
        load_gpt4video(ckpt / "stage2", vision_path=ckpt / "vision", llama_path=ckpt / "llama")
    text = str(e.value)
    assert "\n" not in text and (text == message if exact else text.startswith(message)), (text, message)
    assert not (ckpt / "pwned").exists()


CHAT_CASES = ["cut in half", "a header that claims huge tensors", "an int tensor", "a wrong shape", "config not JSON",
              "a string for an int", "no llama section", "llama.dim not the LLaMA's"]


@pytest.mark.parametrize("name", CHAT_CASES)
def test_chat_refuses_a_broken_checkpoint_in_one_line(tiny_ckpt, clips, tmp_path, capsys, name):
    ckpt = checkpoint(tiny_ckpt, tmp_path / "ckpt")
    BROKEN[name][0](ckpt)
    code = CHAT.main(["--preset", "test", "--ckpt", str(ckpt), "--video", str(clips / "toy.mp4"), "--prompt", "hi",
                      "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and not (tmp_path / "o").exists()
    one_error_line(captured.err, *expected_error(ckpt, name))


# --- float tensors of another precision load, converted to the model's dtype ---------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_tensors_of_another_precision_load_as_float32(tiny_ckpt, tmp_path, dtype):
    ckpt = checkpoint(tiny_ckpt, tmp_path / "ckpt")
    saved = load_file(str(ckpt / TRAINABLE))
    save_file({k: v.to(dtype) for k, v in saved.items()}, str(ckpt / TRAINABLE))
    model = load_gpt4video(ckpt / "stage2", vision_path=ckpt / "vision", llama_path=ckpt / "llama")
    loaded = model.trainable_state_dict()
    assert set(loaded) == set(saved)
    for k, v in saved.items():
        assert loaded[k].dtype == torch.float32 and torch.equal(loaded[k], v.to(dtype).float()), k
    frames = torch.zeros(1, model.cfg.num_frames, 3, model.cfg.vision.image_size, model.cfg.vision.image_size)
    assert model.encode_video(frames).dtype == torch.float32


# --- the frozen-weight loaders and the generator: refusals that already held ----------------------------

def test_a_pickle_or_a_huge_header_as_frozen_weights_is_refused_unread(tiny_ckpt, tmp_path):
    llama = tmp_path / "llama"
    shutil.copytree(tiny_ckpt / "llama", llama)
    (llama / "model.safetensors").unlink()
    (llama / "pytorch_model.bin").write_bytes(pickle.dumps(Evil(tmp_path / "pwned"), protocol=2))
    with pytest.raises(CheckpointError) as e:
        load_llama(llama)
    assert str(e.value) == (f"{llama / 'pytorch_model.bin'}: not a PyTorch checkpoint in torch.save's zip format "
                            "(a legacy or other pickle is not read)")
    (tmp_path / "vision.pt").write_bytes(pickle.dumps(Evil(tmp_path / "pwned"), protocol=2))
    with pytest.raises(CheckpointError) as e:
        load_vision(tmp_path / "vision.pt", cfg=load_vision(tiny_ckpt / "vision").cfg)
    assert str(e.value) == f"{tmp_path / 'vision.pt'}: not a .safetensors or .bin file"
    raw = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [2**20, 2**20],
                                                    "data_offsets": [0, 2**42]}}).encode()
    (llama / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 16)
    with pytest.raises(CheckpointError) as e:
        load_llama(llama)
    assert str(e.value).startswith(f"{llama / 'model.safetensors'}: not a readable safetensors file (")
    assert not (tmp_path / "pwned").exists()


def test_a_diffusers_folder_with_custom_code_is_refused_unrun(tmp_path):
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "EvilPipeline", "_diffusers_version": "0.42.1",
                                                       "unet": ["evil_unet", "EvilUNet"]}))
    code = f"import os\nos.makedirs({str(tmp_path / 'pwned')!r})\n"
    (pipe / "pipeline.py").write_text(code)
    (pipe / "unet" / "evil_unet.py").write_text(code)
    (pipe / "unet" / "config.json").write_text("{}")
    with pytest.raises(T2VError) as e:
        load_generator("zeroscope", pipe)
    assert str(e.value).startswith(f"{pipe}: cannot load the pipeline (") and "\n" not in str(e.value)
    assert not (tmp_path / "pwned").exists()
