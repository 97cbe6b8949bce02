"""`python -m nanog4v.export`: a stage-2 GPT4Video's LLaMA with its LoRA merged, in the Hugging Face layout.

Round trip through the reference library: `transformers.LlamaForCausalLM.from_pretrained(OUT)` gives our
model's logits with the adapter unmerged (fp32, within 1e-5), and `transformers`' LlamaTokenizer built from
OUT gives our Tokenizer's ids. Inputs are the session's tiny chat checkpoint (conftest `tiny_ckpt`) with a
non-zero LoRA, laid out as chat.py reads it and as `train.py --stage 2 --out` writes it. Bad inputs: one line
`error: …`, exit status 2, nothing written.
"""
import copy
import errno
import json
import types

import pytest
import torch
import transformers
from safetensors import safe_open

from nanog4v import export
from nanog4v.config import LlamaConfig
from nanog4v.llama import LLaMA
from nanog4v.data import AI, HUMAN, SYSTEM
from nanog4v.lora import lora_layers, merge_lora, save_lora
from nanog4v.model import GPT4Video
from nanog4v.tokenizer import Tokenizer
from nanog4v.weights import load_gpt4video, load_llama, save_llama

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5                                                         # fp32 logits, merged vs unmerged
FILES = ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.model",
         "tokenizer_config.json"]
TEXTS = [SYSTEM + f"{HUMAN} <video></video> What colour is the circle?\n{AI} <video> a red circle </video>",
         "a red circle moves left on a grey background.", "I'm sorry, I can't help.", "héllo ✓ 🙂 naïve\ttab"]


@pytest.fixture(scope="module")
def trained(tiny_ckpt, tmp_path_factory):
    """The tiny checkpoint's model with random LoRA A and B (B starts at zero, which would hide a merge that
    did nothing), saved as a chat checkpoint (ckpt/: tokenizer.model, vision/, llama/, stage2/) and as a
    train.py stage-2 run (run/: config.json, gpt4video.safetensors, adapter/ naming its base LLaMA)."""
    root = tmp_path_factory.mktemp("export")
    model = load_gpt4video(tiny_ckpt / "stage2", vision_path=tiny_ckpt / "vision", llama_path=tiny_ckpt / "llama")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(model.llm).values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.3)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)
    ckpt = root / "ckpt"
    ckpt.mkdir()
    for name in ("tokenizer.model", "vision", "llama"):
        (ckpt / name).symlink_to(tiny_ckpt / name)
    model.save_pretrained(ckpt / "stage2")
    run = model.save_pretrained(root / "run")
    save_lora(model.llm, run / "adapter", base_model=str(tiny_ckpt / "llama"))
    tokenizer = Tokenizer(tiny_ckpt / "tokenizer.model")
    return types.SimpleNamespace(model=model, ckpt=ckpt, run=run, llama=tiny_ckpt / "llama", tokenizer=tokenizer,
                                 tokenizer_file=tiny_ckpt / "tokenizer.model", root=root)


def ids_of(trained, text=TEXTS[0]):
    return torch.tensor([trained.tokenizer.encode(text, bos=True)])


def hf_logits(out, ids):
    with torch.no_grad():
        return transformers.LlamaForCausalLM.from_pretrained(out).eval()(ids).logits


def our_logits(llm, ids):
    with torch.no_grad():
        return llm.eval()(ids)


def tensors(out):
    """{key: tensor} of every safetensors file in `out`."""
    found = {}
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            found.update({k: st.get_tensor(k) for k in st.keys()})
    return found


# --- the round trip ---------------------------------------------------------------------------------------

def test_a_chat_checkpoint_exports_a_llama_transformers_runs_to_our_logits(trained, tmp_path, capsys):
    out = tmp_path / "out"
    assert export.main(["--ckpt", str(trained.ckpt), "--out", str(out)]) == 0
    assert capsys.readouterr().out == (f"wrote {out}: LLaMA with the LoRA of {trained.ckpt / 'stage2'} merged "
                                       "(Hugging Face layout) and the tokenizer\n")
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert [p.name for p in tmp_path.iterdir()] == ["out"]                    # no temporary directory left
    ids = ids_of(trained)
    want, got = our_logits(trained.model.llm, ids), hf_logits(out, ids)      # ours with the adapter unmerged
    err = (got - want).abs().max().item()
    moved = (want - our_logits(load_llama(trained.llama), ids)).abs().max().item()
    print(f"export → transformers vs our unmerged LoRA model: max|Δlogits| = {err:.2e} (LoRA moved them {moved:.2f})")
    assert err <= TOL and moved > 0.1
    config = json.loads((out / "config.json").read_text())
    assert (config["architectures"], config["torch_dtype"], config["vocab_size"]) == (
        ["LlamaForCausalLM"], "float32", trained.model.llm.cfg.vocab_size)
    generation = transformers.GenerationConfig.from_pretrained(out)
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, 0)
    assert (out / "tokenizer.model").read_bytes() == trained.tokenizer_file.read_bytes()


@pytest.mark.parametrize("cls", ["AutoTokenizer", "LlamaTokenizer"])
def test_the_exported_tokenizer_gives_our_ids(trained, tmp_path, cls):
    out = tmp_path / "out"
    assert export.main(["--ckpt", str(trained.ckpt), "--out", str(out)]) == 0
    theirs = getattr(transformers, cls).from_pretrained(out)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.unk_token_id) == (1, 2, 0)
    assert len(theirs) == trained.tokenizer.vocab_size
    for text in TEXTS:
        ids = trained.tokenizer.encode(text, bos=True)
        assert theirs(text)["input_ids"] == ids, text
        assert theirs.decode(ids, skip_special_tokens=True) == trained.tokenizer.decode(ids) == text


def test_a_train_run_exports_from_the_base_its_adapter_names(trained, tmp_path):
    """The same model as a train.py run: the base LLaMA comes from adapter/adapter_config.json, and the export
    equals the chat checkpoint's, tensor for tensor (here sharded, and again in bfloat16)."""
    adapter = json.loads((trained.run / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(trained.llama)
    assert export.main(["--ckpt", str(trained.ckpt), "--out", str(tmp_path / "chat")]) == 0
    assert export.main(["--ckpt", str(trained.run), "--tokenizer", str(trained.tokenizer_file),
                        "--out", str(tmp_path / "run"), "--max-shard-size", "100KB"]) == 0
    shards = sorted(p.name for p in (tmp_path / "run").glob("model-*.safetensors"))
    assert len(shards) >= 2 and (tmp_path / "run" / "model.safetensors.index.json").is_file()
    a, b = tensors(tmp_path / "chat"), tensors(tmp_path / "run")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = ids_of(trained)
    assert (hf_logits(tmp_path / "run", ids) - our_logits(trained.model.llm, ids)).abs().max().item() <= TOL

    assert export.main(["--ckpt", str(trained.run), "--llama", str(trained.llama), "--tokenizer",
                        str(trained.tokenizer_file), "--dtype", "bfloat16", "--out", str(tmp_path / "bf16")]) == 0
    half = tensors(tmp_path / "bf16")
    assert half.keys() == a.keys() and {t.dtype for t in half.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    # merged in bf16 (W + ΔW rounded twice): within a few bf16 ulps of the fp32 merge
    assert all(torch.allclose(half[k].float(), a[k], rtol=2 ** -6, atol=1e-3) for k in a)


# --- refusals: one line, exit status 2, nothing written ---------------------------------------------------------

def _error(capsys, argv) -> str:
    assert export.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured
    return captured.err


def test_an_existing_out_is_refused_and_left_untouched(trained, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    err = _error(capsys, ["--ckpt", str(trained.ckpt), "--out", str(out)])
    assert err == f"error: {out}: already exists (--out must be a new directory)\n"
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_stage1_model_has_nothing_to_merge(trained, tmp_path, capsys):
    cfg, _ = GPT4Video.read_config(trained.ckpt / "stage2")
    stage1 = GPT4Video(cfg).save_pretrained(tmp_path / "stage1")                 # no LoRA
    out = tmp_path / "out"
    err = _error(capsys, ["--ckpt", str(stage1), "--llama", str(trained.llama), "--tokenizer",
                          str(trained.tokenizer_file), "--out", str(out)])
    assert err == (f"error: {stage1 / 'config.json'}: a stage-1 model (no LoRA): its LLaMA is {trained.llama} "
                   "unchanged, nothing to merge\n")
    chat = tmp_path / "chat"                                                     # a chat checkpoint with stage1/ only
    chat.mkdir()
    (chat / "stage1").symlink_to(stage1)
    err = _error(capsys, ["--ckpt", str(chat), "--out", str(out)])
    assert err == (f"error: {chat}: not a chat checkpoint directory (no stage2/) nor a stage-2 run (no "
                   "gpt4video.safetensors, as train.py --stage 2 --out writes)\n")
    assert not out.exists()


def test_a_run_without_a_known_base_asks_for_llama(trained, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "gpt4video.safetensors"):
        (run / name).symlink_to(trained.run / name)
    out, common = tmp_path / "out", ["--tokenizer", str(trained.tokenizer_file), "--out", str(tmp_path / "out")]
    ask = f"error: {run}: a train.py run does not hold its frozen LLaMA; pass --llama DIR\n"
    assert _error(capsys, ["--ckpt", str(run), *common]) == ask                             # no adapter/
    save_lora(copy.deepcopy(trained.model.llm), run / "adapter")                          # base_model None
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    assert _error(capsys, ["--ckpt", str(run), *common]) == ask
    save_lora(copy.deepcopy(trained.model.llm), run / "adapter", base_model="huggyllama/llama-7b")  # a hub id
    assert _error(capsys, ["--ckpt", str(run), *common]) == (
        f"error: {run / 'adapter' / 'adapter_config.json'}: its base_model_name_or_path, huggyllama/llama-7b, is not "
        "a directory here; pass --llama DIR\n")
    assert _error(capsys, ["--ckpt", str(run), "--llama", str(trained.llama), "--out", str(out)]) == (
        f"error: {run / 'tokenizer.model'}: no such tokenizer file (pass --tokenizer FILE)\n")
    other = save_llama(LLaMA(LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                                         vocab_size=trained.tokenizer.vocab_size)), tmp_path / "other")
    assert _error(capsys, ["--ckpt", str(run), "--llama", str(other), *common]) == (
        f"error: {run / 'config.json'}: was not trained on the LLaMA in {other}: dim 64 != 32\n")
    assert _error(capsys, ["--ckpt", str(trained.ckpt), "--out", str(out), "--max-shard-size", "5 GB"]) == (
        "error: --max-shard-size: '5 GB' is not a size such as 5GB, 200MB or bytes\n")
    assert not out.exists()


def test_a_failure_midway_leaves_no_partial_directory(trained, tmp_path, capsys, monkeypatch):
    """The disk fills up after the weights are written: OUT does not appear, and neither does the temp dir."""
    def save_then_fill_the_disk(*args, **kwargs):
        written = real_save(*args, **kwargs)
        assert (written / "model.safetensors").is_file()                        # the weights were on disk
        raise OSError(errno.ENOSPC, "No space left on device")

    real_save = export.save_llama
    monkeypatch.setattr(export, "save_llama", save_then_fill_the_disk)
    out = tmp_path / "nested" / "out"
    err = _error(capsys, ["--ckpt", str(trained.ckpt), "--out", str(out)])
    assert err == f"error: {out}: No space left on device\n"
    assert list((tmp_path / "nested").iterdir()) == []


# --- save_llama and LoRA ------------------------------------------------------------------------------------------

def test_save_llama_refuses_an_unmerged_lora_and_saves_it_merged(trained, tmp_path):
    llm = copy.deepcopy(trained.model.llm)
    with pytest.raises(ValueError) as e:
        save_llama(llm, tmp_path / "llama")
    n = len(lora_layers(llm))
    assert n == 2 * llm.cfg.n_layers
    assert str(e.value).startswith(f"save_llama: {n} LoRA layers are not merged (layers.0.self_attn.q_proj, "
                                   "layers.0.self_attn.v_proj, ")
    assert "call lora.merge_lora(model) first" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "llama").exists()
    ids = ids_of(trained)
    want = our_logits(llm, ids)
    save_llama(merge_lora(llm), tmp_path / "llama")
    err = (our_logits(load_llama(tmp_path / "llama"), ids) - want).abs().max().item()
    assert err <= TOL, err
