"""LLaMA by hand vs transformers.LlamaForCausalLM; load_llama / save_llama; the KV cache and masks."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from nanog4v import llama, safetensors_io
from nanog4v.config import LlamaConfig
from nanog4v.llama import LLaMA, apply_rope, causal_attention, rope_cos_sin
from nanog4v.weights import CheckpointError, load_llama, save_llama

transformers = pytest.importorskip("transformers")

TOL = 1e-4  # fp32 max |logits difference| (the project's parity target)
TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            vocab_size=128, max_position_embeddings=128, rms_norm_eps=1e-6)
CASES = {  # name: HF config fields beyond TINY
    "mha": dict(num_key_value_heads=4),
    "gqa": dict(num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-5),
    "tied": dict(num_key_value_heads=2, tie_word_embeddings=True),
}


def _randomize_norms(model: torch.nn.Module) -> None:
    """Norm gains are ones at init; make them random so that a skipped gain would show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)


def make_hf(tmp_path, case: str):
    """A random tiny LlamaForCausalLM saved in the official sharded layout; returns (model, dir)."""
    hf_cfg = transformers.LlamaConfig(**{**TINY, **CASES[case]})
    model = transformers.LlamaForCausalLM(hf_cfg).eval()
    _randomize_norms(model)
    path = tmp_path / f"hf-{case}"
    model.save_pretrained(path, max_shard_size="200KB")
    assert (path / safetensors_io.INDEX_NAME).is_file(), "the fixture should be sharded"
    return model, path


def tiny_llama(**kw) -> LLaMA:
    cfg = LlamaConfig(**{**dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96,
                                vocab_size=128, max_seq_len=128), **kw})
    model = LLaMA(cfg).eval()
    _randomize_norms(model)
    return model


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# --- parity with transformers ----------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(tmp_path, case):
    hf, path = make_hf(tmp_path, case)
    ours = load_llama(path)
    assert not ours.training and ours.cfg.n_kv_heads == CASES[case]["num_key_value_heads"]
    assert (ours.lm_head.weight is ours.embed_tokens.weight) == (case == "tied")
    ids = torch.randint(0, 128, (2, 13))
    with torch.no_grad():
        err = max_diff(ours(ids), hf(ids).logits)
    print(f"{case}: max |logits - transformers| = {err:.2e}")
    assert err <= TOL


def test_transformers_4x_config_loads(tmp_path):
    """4.x wrote `rope_theta` at the top level and `torch_dtype`; the theta must be honoured."""
    hf, path = make_hf(tmp_path, "gqa")                 # rope_theta 500000: a default 10000 would show
    cfg = json.loads((path / "config.json").read_text())
    theta = cfg.pop("rope_parameters")["rope_theta"]
    cfg.update(rope_theta=theta, rope_scaling=None, torch_dtype=cfg.pop("dtype"))
    (path / "config.json").write_text(json.dumps(cfg))
    ours = load_llama(path)
    assert ours.cfg.rope_theta == 500000.0 and ours.cfg.norm_eps == 1e-5
    ids = torch.randint(0, 128, (1, 20))
    with torch.no_grad():
        assert max_diff(ours(ids), hf(ids).logits) <= TOL


@pytest.mark.parametrize("rope", [{"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
                                  {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}])
def test_unknown_rope_type_is_refused(tmp_path, rope):
    _, path = make_hf(tmp_path, "mha")
    cfg = {**json.loads((path / "config.json").read_text()), **rope}
    if "rope_scaling" in rope:                           # a 4.x file: theta at the top level
        cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json.*rope_type='(linear|llama3)'"):
        load_llama(path)


def test_missing_key_and_wrong_shape_are_named(tmp_path):
    hf, _ = make_hf(tmp_path, "mha")
    path = tmp_path / "broken"
    hf.save_pretrained(path)                             # one model.safetensors
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.norm.weight"] = torch.ones(65)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        load_llama(path)
    msg = str(e.value)
    print(msg)
    assert "missing: layers.1.mlp.up_proj.weight" in msg
    assert "wrong shape: model.norm.weight (65,) != (64,)" in msg
    assert str(path) in msg


def test_no_config_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_llama(tmp_path)


# --- save_llama -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_save_llama_round_trip_through_transformers(tmp_path, tied):
    ours = tiny_llama(tie_embeddings=tied)
    # a LoRA-like extra parameter must not be written (save_llama skips names containing "lora_")
    ours.layers[0].self_attn.q_proj.register_parameter("lora_A", torch.nn.Parameter(torch.zeros(2, 64)))
    path = save_llama(ours, tmp_path / "ours", max_shard_size="100KB")
    index = json.loads((path / safetensors_io.INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not any("lora_" in k for k in index["weight_map"])
    assert ("lm_head.weight" in index["weight_map"]) == (not tied)
    assert index["metadata"]["total_size"] == sum((path / s).stat().st_size for s in shards) - sum(
        8 + int.from_bytes((path / s).read_bytes()[:8], "little") for s in shards)
    assert not list(path.glob(".partial-*"))

    hf = transformers.LlamaForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(0, 128, (2, 11))
    with torch.no_grad():
        err = max_diff(ours(ids), hf(ids).logits)
    print(f"save_llama (tied={tied}) -> transformers: max |diff| = {err:.2e}")
    assert err <= TOL
    again = load_llama(path)
    assert all(torch.equal(t, again.state_dict()[k]) for k, t in ours.state_dict().items() if "lora_" not in k)


def test_save_llama_bf16_single_file(tmp_path):
    ours = tiny_llama().to(torch.bfloat16)
    path = save_llama(ours, tmp_path / "bf16")
    assert (path / "model.safetensors").is_file() and not (path / safetensors_io.INDEX_NAME).exists()
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["dtype"] == cfg["torch_dtype"] == "bfloat16" and cfg["architectures"] == ["LlamaForCausalLM"]
    again = load_llama(path, dtype=torch.bfloat16)
    assert all(torch.equal(t, again.state_dict()[k]) for k, t in ours.state_dict().items())


def test_save_llama_failure_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_llama(tiny_llama(), tmp_path / "ckpt", max_shard_size="100KB")
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    calls = []

    def failing_write(file, specs, tensor_of):           # the disk "fills up" on the second shard
        calls.append(file)
        if len(calls) == 2:
            raise OSError("No space left on device")
        real_write(file, specs, tensor_of)
    real_write = safetensors_io._write_safetensors
    monkeypatch.setattr(safetensors_io, "_write_safetensors", failing_write)
    with pytest.raises(OSError):
        save_llama(tiny_llama(), path, max_shard_size="100KB")
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before   # untouched, no temp left


# --- the KV cache, masks and positions ------------------------------------------------------------------

def test_kv_cache_decoding_equals_full_forward():
    model, T = tiny_llama(), 12
    ids = torch.randint(0, 128, (1, T))
    with torch.no_grad():
        full = model(ids)                                                 # (1, T, V), no cache
        model.setup_cache(1, 16)
        steps = torch.cat([model(ids[:, t:t + 1], start_pos=t) for t in range(T)], dim=1)
        model.clear_cache()
        # chunks that start after 0 need the offset causal mask
        model.setup_cache(1, 16)
        chunks = torch.cat([model(ids[:, a:b], start_pos=a) for a, b in [(0, 4), (4, 9), (9, 12)]], 1)
        model.clear_cache()
    err = max(max_diff(steps, full), max_diff(chunks, full))
    print(f"KV cache vs full forward: max |diff| = {err:.2e}")
    assert err <= TOL


def test_bf16_decoding_matches_fp32_and_restores_onednn():
    """bf16 batch-1 decode runs its one-row matmuls outside oneDNN (cpu_linear.linear), then restores it."""
    model, T = tiny_llama(dim=256, n_heads=4, n_kv_heads=4, hidden_dim=512), 6
    ids = torch.randint(0, 128, (1, T))
    with torch.no_grad():
        ref = model(ids)                                                  # fp32, no cache
        model.to(torch.bfloat16).setup_cache(1, T)
        steps = torch.cat([model(ids[:, t:t + 1], start_pos=t) for t in range(T)], dim=1)
    err = max_diff(steps, ref)
    print(f"bf16 KV-cache decode vs fp32: max |diff| = {err:.2e} (logits up to {ref.abs().max():.2f})")
    assert err <= 0.05 and torch.backends.mkldnn.enabled


@pytest.mark.parametrize("L", [320, 350])                    # whole blocks, and a short last one
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])           # MHA and GQA
def test_blocked_causal_attention_equals_sdpa(L, heads, monkeypatch):
    """A long prompt's attention on the CPU runs in query blocks, each over the keys it may see: the
    values of one causal SDPA call (fp32 up to the order of the sums; bf16 within its rounding)."""
    H, Hkv = heads
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, H, L, 16, generator=g), *torch.randn(2, 2, Hkv, L, 16, generator=g)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    ref = sdpa(q, k, v, is_causal=True, enable_gqa=H != Hkv)
    calls = []
    monkeypatch.setattr(llama.F, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(a[0].shape[2]) or sdpa(*a, **kw))
    with torch.no_grad():
        out = causal_attention(q, k, v, H != Hkv)
        half = causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), H != Hkv)
    blocks = [min(llama.PREFILL_BLOCK, L - s) for s in range(0, L, llama.PREFILL_BLOCK)]
    assert calls == blocks * 2                                        # one SDPA call per block of queries
    with torch.enable_grad():                                         # training: one SDPA call, as before
        assert torch.equal(causal_attention(q, k, v, H != Hkv), ref) and calls[len(blocks) * 2:] == [L]
    print(f"blocked vs SDPA: fp32 {max_diff(out, ref):.1e}, bf16 {max_diff(half.float(), ref):.1e}")
    assert L >= llama.BLOCKED_FROM and max_diff(out, ref) <= 1e-5 and max_diff(half.float(), ref) <= 3e-2
    # each block saw no key after its queries: changing the last key moves only the last query's output
    k2 = k.clone()
    k2[:, :, -1] += 1
    with torch.no_grad():
        moved = (causal_attention(q, k2, v, H != Hkv) != out).any(-1)     # (2, H, L)
    assert moved[..., -1].all() and not moved[..., :-1].any()


def test_kv_cache_greedy_tokens_equal_recompute():
    model, prompt, n_new = tiny_llama(), torch.randint(0, 128, (1, 5)), 12
    with torch.no_grad():
        seq = prompt
        for _ in range(n_new):                                            # recompute everything
            seq = torch.cat([seq, model(seq)[:, -1:].argmax(-1)], dim=1)
        model.setup_cache(1, 5 + n_new)
        logits, out = model(prompt, last_only=True), prompt
        for t in range(n_new):
            nxt = logits[:, -1:].argmax(-1)
            out = torch.cat([out, nxt], dim=1)
            logits = model(nxt, start_pos=5 + t)
        model.clear_cache()
    assert out.tolist() == seq.tolist()


def test_left_padded_batch_equals_each_row_alone():
    model = tiny_llama()
    rows = [torch.randint(3, 128, (n,)) for n in (7, 3, 5)]
    T, pad = 7, 0
    batch = torch.full((3, T), pad)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, T - len(r):], mask[i, T - len(r):] = r, 1
    with torch.no_grad():
        model.setup_cache(3, T + 3)
        logits = model(batch, attention_mask=mask)                        # prefill (3, T, V)
        nxt = logits[:, -1:].argmax(-1)                                   # (3, 1)
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
        step = model(nxt, start_pos=T, attention_mask=mask)              # one decode step (3, 1, V)
        model.clear_cache()
        for i, r in enumerate(rows):
            alone = model(torch.cat([r, nxt[i]])[None])                   # (1, len+1, V)
            assert max_diff(logits[i, T - len(r):], alone[0, :-1]) <= TOL
            assert max_diff(step[i, 0], alone[0, -1]) <= TOL


def test_right_padding_in_training_leaves_real_tokens_unchanged():
    model = tiny_llama()
    ids = torch.randint(0, 128, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        padded = model(ids, attention_mask=mask)
        assert not padded.isnan().any()
        assert max_diff(padded[1, :5], model(ids[1:, :5])[0]) <= TOL
        assert max_diff(padded[0], model(ids[:1])[0]) <= TOL


def test_embeds_path_equals_tokens_path_and_last_only():
    model = tiny_llama()
    ids = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        by_ids = model(ids)
        assert torch.equal(model(embeds=model.embed_tokens(ids)), by_ids)
        assert max_diff(model(ids, last_only=True), by_ids[:, -1:]) <= 1e-6
        assert by_ids.dtype == torch.float32 and by_ids.shape == (2, 6, 128)
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, embeds=model.embed_tokens(ids))
    model.setup_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache holds 1 rows × 4 positions"):
        model(ids[:1, :5])


def test_rope_scores_depend_only_on_relative_position():
    """RoPE's point: <R(m)q, R(n)k> is a function of m − n."""
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cq, sq = rope_cos_sin(torch.tensor([[m]]), 16, 10000.0, torch.float32)
        ck, sk = rope_cos_sin(torch.tensor([[n]]), 16, 10000.0, torch.float32)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()
    assert score(7, 3) == pytest.approx(score(104, 100), abs=1e-4)
    assert len({round(score(7, n), 3) for n in range(8)}) == 8            # but it does depend on m − n


