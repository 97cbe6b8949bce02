"""LoRA: our hand-written adapters against peft on a tiny random transformers LLaMA (fp32)."""
import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from nanog4v.config import LlamaConfig
from nanog4v.llama import LLaMA
from nanog4v.lora import (LoRALinear, add_lora, load_lora, lora_layers, lora_state_dict, merge_lora,
                          save_lora, trainable_parameters, trainable_report, unmerge_lora)
from nanog4v.weights import CheckpointError, load_llama, save_llama

QV = ("q_proj", "v_proj")
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
R, ALPHA = 4, 8.0                                        # scale α/r = 2: a wrong scale shows


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random LlamaForCausalLM (GQA: 4 heads, 2 kv heads) saved by transformers."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                   max_position_embeddings=64, rms_norm_eps=1e-6,
                                   tie_word_embeddings=False)
    d = tmp_path_factory.mktemp("hf_llama")
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.fixture
def tokens():
    return torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(1))


def _hf(hf_dir):
    return transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()


def _peft(hf_dir, targets, r=R, alpha=ALPHA):
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
    return peft.get_peft_model(_hf(hf_dir), cfg).eval()


def _randomise(model, seed=0):
    """Nonzero A and B (B starts at zero, which would hide every bug in the LoRA path)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.2)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.2)
    return model


def _copy_to_peft(ours, peft_model):
    """Copy our A, B into peft's modules (peft keeps them in `lora_A["default"].weight`)."""
    hf = peft_model.base_model.model                     # the LlamaForCausalLM, layers in `.model`
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            theirs = hf.get_submodule("model." + name)
            theirs.lora_A["default"].weight.copy_(layer.lora_A)
            theirs.lora_B["default"].weight.copy_(layer.lora_B)


def _logits_hf(model, tokens):
    with torch.no_grad():
        return model(tokens).logits.float()


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


def _err(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("targets", [QV, ALL], ids=["q_v", "all_linear"])
def test_matches_peft(hf_dir, tokens, targets):
    ours = add_lora(load_llama(hf_dir), targets, r=R, alpha=ALPHA, dropout=0.0)
    base = _logits(load_llama(hf_dir), tokens)
    _randomise(ours)
    theirs = _peft(hf_dir, targets)
    _copy_to_peft(ours, theirs)
    a, b = _logits(ours, tokens), _logits_hf(theirs, tokens)
    err = _err(a, b)
    print(f"LoRA ({'+'.join(targets)}) vs peft: max|Δlogits| = {err:.2e}; LoRA moved logits by "
          f"{_err(a, base):.2e}")
    assert err <= 1e-5
    assert _err(a, base) > 1e-2                          # the adapters really act


def test_init_is_identity_and_kaiming(hf_dir, tokens):
    model = load_llama(hf_dir)
    base = _logits(model, tokens)
    add_lora(model, QV, r=R, alpha=ALPHA, dropout=0.0)
    assert torch.equal(_logits(model, tokens), base)     # B = 0: exactly the base model
    A = model.layers[0].self_attn.q_proj.lora_A          # (r, in)
    bound = 1 / math.sqrt(A.shape[1])                    # Kaiming-uniform, a = √5: U(±1/√in)
    assert A.shape == (R, 64) and A.abs().max() <= bound and A.std() > 0.4 * bound
    assert model.layers[0].self_attn.v_proj.lora_B.shape == (32, R)   # (out = 2 kv heads × 16, r)


def test_only_lora_trains(hf_dir, tokens):
    model = add_lora(load_llama(hf_dir), QV, r=R, alpha=ALPHA, dropout=0.1)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"layers.{i}.self_attn.{t}.lora_{ab}"
                               for i in range(2) for t in QV for ab in "AB")
    # keys of the base checkpoint are unchanged; LoRA only adds
    names = set(model.state_dict())
    assert {"layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight"} <= names
    assert set(lora_state_dict(model)) == set(trainable)
    model.train()
    model(tokens).logsumexp(-1).mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == set(trainable)
    t, total, pct = trainable_parameters(model)
    assert t == 2 * (R * 64 + 64 * R) + 2 * (R * 64 + 32 * R)          # q: 64→64, v: 64→32
    assert math.isclose(pct, 100 * t / total)


def test_llama7b_counts():
    """The notebook's numbers: LLaMA-7B with GPT4Video's LoRA (q, v; r = 16) — shapes only (meta)."""
    with torch.device("meta"):
        model = add_lora(LLaMA(LlamaConfig()), QV, r=16, alpha=16, dropout=0.1)
    trainable, total, pct = trainable_parameters(model)
    assert (trainable, total) == (32 * 2 * 16 * (4096 + 4096), 6_738_415_616 + 8_388_608)
    assert f"{pct:.4f}" == "0.1243"
    report = trainable_report(model)
    print(report)
    assert "64 layers" in report and "8,388,608" in report and "6,746,804,224" in report


def test_merge_unmerge(hf_dir, tokens):
    model = _randomise(add_lora(load_llama(hf_dir), QV, r=R, alpha=ALPHA, dropout=0.1)).eval()
    W = {n: m.weight.clone() for n, m in lora_layers(model).items()}
    unmerged = _logits(model, tokens)
    merge_lora(model)
    merge_lora(model)                                    # idempotent: merging twice adds ΔW once
    assert all(m.merged for m in lora_layers(model).values())
    q = model.layers[0].self_attn.q_proj
    assert torch.allclose(q.weight, W["layers.0.self_attn.q_proj"] + ALPHA / R * q.lora_B @ q.lora_A)
    err_merged = _err(_logits(model, tokens), unmerged)
    unmerge_lora(model)
    err_w = max(_err(m.weight, W[n]) for n, m in lora_layers(model).items())
    err_back = _err(_logits(model, tokens), unmerged)
    print(f"merged vs unmerged logits: {err_merged:.2e}; W after unmerge: {err_w:.2e} "
          f"(float rounding, not bit-exact); logits after unmerge: {err_back:.2e}")
    assert err_merged <= 1e-5 and err_w <= 1e-6 and err_back <= 1e-5
    with pytest.raises(ValueError, match="no LoRA layers"):
        merge_lora(load_llama(hf_dir))


def test_merge_then_export_to_transformers(hf_dir, tmp_path, tokens):
    model = _randomise(add_lora(load_llama(hf_dir), QV, r=R, alpha=ALPHA, dropout=0.0))
    want = _logits(model, tokens)                        # unmerged LoRA model
    save_llama(merge_lora(model), tmp_path / "merged")
    got = _logits_hf(_hf(tmp_path / "merged"), tokens)
    err = _err(got, want)
    print(f"merged + save_llama → transformers vs our LoRA model: max|Δlogits| = {err:.2e}")
    assert err <= 1e-5 and _err(got, _logits_hf(_hf(hf_dir), tokens)) > 1e-2


def test_save_load_round_trip_exact(hf_dir, tmp_path, tokens):
    model = _randomise(add_lora(load_llama(hf_dir), QV, r=R, alpha=ALPHA, dropout=0.1)).eval()
    save_lora(model, tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"], cfg["target_modules"]) == (R, ALPHA, 0.1, list(QV))
    assert cfg["base_model_name_or_path"] is None                   # no base_model given: unknown
    # into a plain model (LoRA layers are added from the config) and into one that has them
    for fresh in (load_llama(hf_dir), add_lora(load_llama(hf_dir), QV, r=R, alpha=ALPHA, dropout=0.1)):
        load_lora(fresh, tmp_path / "adapter")
        mine, theirs = lora_state_dict(model), lora_state_dict(fresh)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert lora_layers(fresh)["layers.1.self_attn.v_proj"].dropout_p == 0.1
        assert torch.equal(_logits(fresh.eval(), tokens), _logits(model, tokens))


def test_peft_loads_ours_and_we_load_peft(hf_dir, tmp_path, tokens):
    model = _randomise(add_lora(load_llama(hf_dir), QV, r=R, alpha=ALPHA, dropout=0.0), seed=3)
    save_lora(model, tmp_path / "ours", base_model=str(hf_dir))
    cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(hf_dir)
    theirs = peft.PeftModel.from_pretrained(_hf(hf_dir), tmp_path / "ours").eval()
    err = _err(_logits_hf(theirs, tokens), _logits(model, tokens))
    print(f"peft PeftModel.from_pretrained(our adapter) vs ours: max|Δlogits| = {err:.2e}")
    assert err <= 1e-5
    # peft finds the base model by itself from base_model_name_or_path
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert _err(_logits_hf(auto, tokens), _logits(model, tokens)) <= 1e-5
    # and the other way: an adapter written by peft's save_pretrained
    p = _peft(hf_dir, ("q_proj", "k_proj"), r=2, alpha=6)
    _randomise_peft(p)
    p.save_pretrained(tmp_path / "peft")
    ours = load_lora(load_llama(hf_dir), tmp_path / "peft")
    assert sorted({n.rsplit(".", 1)[-1] for n in lora_layers(ours)}) == ["k_proj", "q_proj"]
    err = _err(_logits(ours, tokens), _logits_hf(p, tokens))
    print(f"our load_lora(peft's adapter) vs peft: max|Δlogits| = {err:.2e}")
    assert err <= 1e-5
    # older peft wrote adapter_model.bin: the same tensors through torch.load(weights_only=True)
    p.save_pretrained(tmp_path / "peft-bin", safe_serialization=False)
    assert (tmp_path / "peft-bin" / "adapter_model.bin").is_file()
    from_bin = load_lora(load_llama(hf_dir), tmp_path / "peft-bin")
    assert _err(_logits(from_bin, tokens), _logits(ours, tokens)) == 0


def _randomise_peft(peft_model):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_dropout_only_in_train_mode(hf_dir, tokens):
    model = _randomise(add_lora(load_llama(hf_dir), QV, r=R, alpha=ALPHA, dropout=0.5))
    twin = add_lora(load_llama(hf_dir), QV, r=R, alpha=ALPHA, dropout=0.0)
    twin.load_state_dict(model.state_dict())
    model.train()
    a, b = model(tokens).detach(), model(tokens).detach()
    assert _err(a, b) > 1e-3                             # a fresh dropout mask each call
    model.eval()
    assert torch.equal(_logits(model, tokens), _logits(model, tokens))
    assert torch.equal(_logits(model, tokens), _logits(twin.eval(), tokens))


def test_bf16_base_keeps_fp32_adapters(hf_dir, tokens):
    model = _randomise(add_lora(load_llama(hf_dir, dtype=torch.bfloat16), QV, r=R, alpha=ALPHA,
                                dropout=0.0))
    q = model.layers[0].self_attn.q_proj
    assert q.weight.dtype == torch.bfloat16 and q.lora_A.dtype == q.lora_B.dtype == torch.float32
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert q(x).dtype == torch.bfloat16
    ref = LoRALinear(torch.nn.Linear(64, 64, bias=False), R, ALPHA, 0.0)
    with torch.no_grad():
        ref.weight.copy_(q.weight.float()), ref.lora_A.copy_(q.lora_A), ref.lora_B.copy_(q.lora_B)
    assert _err(q(x).float(), ref(x.float())) < 0.05      # bf16 rounding only
    assert torch.isfinite(_logits(model, tokens)).all()


def test_errors(hf_dir, tmp_path):
    with pytest.raises(ValueError, match=r"no nn.Linear named \['wq'\]"):
        add_lora(load_llama(hf_dir), ("wq",))
    model = add_lora(load_llama(hf_dir), QV, r=R, alpha=ALPHA, dropout=0.0)
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model)
    with pytest.raises(CheckpointError, match=r"nope/adapter_config.json: no such file"):
        load_lora(model, tmp_path / "nope")
    save_lora(model, tmp_path / "r4")
    # a different rank: every tensor has the wrong shape and the scale differs
    other = add_lora(load_llama(hf_dir), QV, r=2, alpha=ALPHA, dropout=0.0)
    with pytest.raises(CheckpointError, match=r"adapter_model.safetensors: cannot load .*r=4.*wrong shape"):
        load_lora(other, tmp_path / "r4")
    # different targets: missing and unexpected keys, listed in one message
    other = add_lora(load_llama(hf_dir), ("q_proj", "k_proj"), r=R, alpha=ALPHA, dropout=0.0)
    with pytest.raises(CheckpointError, match=r"missing: base_model.model.model.layers.0.self_attn.k_proj.lora_A.*"
                                              r"unexpected: base_model.model.model.layers.0.self_attn.v_proj"):
        load_lora(other, tmp_path / "r4")
    with pytest.raises(CheckpointError, match="merged"):
        load_lora(merge_lora(model), tmp_path / "r4")
    cfg = tmp_path / "r4" / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "use_rslora": True}))
    with pytest.raises(CheckpointError, match="adapter_config.json: unsupported LoRA settings: use_rslora=True"):
        load_lora(load_llama(hf_dir), tmp_path / "r4")
    cfg.write_text("{not json")
    with pytest.raises(CheckpointError, match="adapter_config.json: not a LoRA adapter config"):
        load_lora(load_llama(hf_dir), tmp_path / "r4")
