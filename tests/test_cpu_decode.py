"""nanog4v.cpu_decode: the decode step in C (embedding row, layers, final norm, LM head) gives PyTorch's logits
and KV cache (fp32 up to summation order, bf16 up to a rounding), with either product loop, GQA or not; it
steps aside for everything it does not cover; its rows-per-block choice is measured."""
import pytest
import torch

from nanog4v import cpu_decode, cpu_gemv, cpu_linear
from nanog4v.config import LlamaConfig
from nanog4v.generate import SamplingConfig, generate
from nanog4v.llama import LLaMA, rope_cos_sin
from nanog4v.lora import add_lora

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not cpu_decode.available(), reason=f"no C step here: {cpu_decode.error}")]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}           # max |Δ| / max |logit|


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(cpu_decode, "ENABLED", True)
    monkeypatch.setattr(cpu_decode, "FORCE_ROWS", None)
    monkeypatch.setattr(cpu_linear, "ENABLED", True)
    cpu_decode.reset()
    yield
    cpu_decode.reset()


def tiny(n_kv_heads=2, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, hidden_dim=160, vocab_size=300,
                      max_seq_len=64)
    return LLaMA(cfg).to(dtype).eval()


def step(model, tokens, embeds, start_pos, mask):
    """`cpu_decode.step` as `LLaMA.forward` calls it."""
    return cpu_decode.step(model, tokens, embeds, start_pos, mask, rope_cos_sin)


def spy(monkeypatch) -> list:
    """Count the C step's calls."""
    calls, real = [], cpu_decode._lib.decode
    monkeypatch.setattr(cpu_decode._lib, "decode", lambda *a: calls.append(1) or real(*a))
    return calls


def decode(model, tokens, prefill=7):
    """Logits (1, L - prefill, V) of one-token steps after a prefill, and the first layer's cache."""
    model.setup_cache(1, 40)
    with torch.inference_mode():
        model(tokens[:, :prefill], start_pos=0)
        steps = [model(tokens[:, i:i + 1], start_pos=i) for i in range(prefill, tokens.shape[1])]
    cache = model.layers[0].self_attn.cache
    return torch.cat(steps, 1), cache.k[:, :, :tokens.shape[1]].clone(), cache.v[:, :, :tokens.shape[1]].clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_kv_heads", [4, 2])
@pytest.mark.parametrize("rows", [8, 1])
def test_c_step_equals_the_pytorch_layer(dtype, n_kv_heads, rows, monkeypatch):
    model, tokens = tiny(n_kv_heads, dtype), torch.randint(0, 300, (1, 13), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(cpu_decode, "ENABLED", False)
    ref = decode(model, tokens)
    monkeypatch.setattr(cpu_decode, "ENABLED", True)
    monkeypatch.setattr(cpu_decode, "FORCE_ROWS", rows)
    calls = spy(monkeypatch)
    got = decode(model, tokens)
    assert len(calls) == 6                                          # one call a one-token step, both layers
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype and g.shape == r.shape
        assert (g.float() - r.float()).abs().max() <= TOL[dtype] * r.float().abs().max()


def test_greedy_tokens_equal_the_pytorch_path_in_fp32_with_the_measured_choice(monkeypatch):
    model = tiny(seed=3)

    def tokens():
        return generate(model, [[5, 6, 7, 8, 9, 10, 11]], cfg=SamplingConfig(max_new_tokens=24), eos_id=None)
    monkeypatch.setattr(cpu_decode, "ENABLED", False)
    plain = tokens()
    monkeypatch.setattr(cpu_decode, "ENABLED", True)
    calls = spy(monkeypatch)
    assert tokens() == plain and len(calls) == 23
    (choice,) = cpu_decode.choices()                                # trials done: one decision, 8 products
    assert choice["shapes"] == (64, 4, 2, 16, 160, 300) and list(choice["rows"]) == [*cpu_decode.ROLES, "lm_head"]
    assert all(r in (1, 8) and set(us) == {1, 8} for r, us in choice["rows"].values())


def test_rows_per_block_alternate_on_trials_then_each_product_keeps_its_faster():
    kind = ((64, 4, 2, 16, 160, 300), torch.float32, 1)
    eight = [[1, 1], [2, 2], [1, 1], [2, 2], [1, 1], [2, 2], [1, 1], [2]]   # seconds, per product one a layer:
    one = [[2, 2], [1, 1], [2, 2], [1, 1], [2, 2], [1, 1], [2, 2], [1]]     # 8 rows faster for q, v, gate, down
    served = []
    for _ in range(2 * cpu_linear.ROUNDS):
        rows = cpu_decode._rows(kind)
        assert len(set(rows)) == 1 and len(rows) == len(cpu_decode.PRODUCTS)
        served.append(rows[0])
        cpu_decode._record(kind, rows, eight if rows[0] == 8 else one)
    assert served == [8, 1] * cpu_linear.ROUNDS                     # the head's one time a call sets the rounds
    assert cpu_decode._rows(kind) == (8, 1, 8, 1, 8, 1, 8, 1)


def test_steps_aside_for_what_it_does_not_cover(monkeypatch):
    """Batches, masks, autograd, fp16, LoRA-wrapped layers or LM head, a final norm unlike the layers' and the
    switches take the PyTorch layers (same logits as with the C step off); a model converted to bf16 gets new
    arguments (its tensors moved)."""
    model, tokens = tiny(), torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(2))
    calls = spy(monkeypatch)
    x, token = torch.randn(1, 1, 64), torch.tensor([[5]])
    model.setup_cache(2, 16)
    half = tiny().half()
    half.setup_cache(1, 16)
    with torch.inference_mode():
        assert step(model, None, x.expand(2, 1, 64), 3, None) is None                     # two rows
        assert step(model, token, None, 3, torch.ones(1, 4, dtype=torch.long)) is None    # a mask
        assert step(model, None, x, torch.tensor([3]), None) is None                      # static step
        assert step(model, None, x, 16, None) is None                                     # past the cache
        assert step(model, None, x, -1, None) is None                                     # before it
        assert step(half, token, None, 3, None) is None                                   # fp16
        for norm in (model.norm, model.layers[1].post_attention_layernorm):   # an eps unlike the others'
            eps, norm.eps = norm.eps, 1e-3
            assert step(model, token, None, 3, None) is None
            norm.eps = eps
    assert step(model, token, None, 3, None) is None                                      # autograd on
    monkeypatch.setattr(cpu_linear, "ENABLED", False)
    with torch.inference_mode():
        assert step(model, token, None, 3, None) is None
    monkeypatch.setattr(cpu_linear, "ENABLED", True)
    with torch.inference_mode():
        assert step(model, torch.tensor([[300]]), None, 3, None) is None                  # not in the vocabulary
    assert not calls
    with torch.inference_mode():
        assert step(model, token, None, 3, None) is not None and len(calls) == 1
        assert step(model, None, x, 4, None) is not None and len(calls) == 2

    decode(model, tokens)
    model.to(torch.bfloat16)                                        # same modules, new tensors
    bf16 = decode(model, tokens)[0]
    monkeypatch.setattr(cpu_decode, "ENABLED", False)
    ref = decode(model, tokens)[0]
    assert (bf16.float() - ref.float()).abs().max() <= TOL[torch.bfloat16] * ref.float().abs().max()
    monkeypatch.setattr(cpu_decode, "ENABLED", True)
    model.float()                                                   # back to fp32 (weights now bf16-rounded)
    n = len(calls)
    fp32 = decode(model, tokens)[0]
    assert len(calls) == n + 2
    add_lora(model, targets=("q_proj", "v_proj"), r=4)
    lora = decode(model, tokens)[0]
    assert len(calls) == n + 2 and (lora - fp32).abs().max() < 1e-4  # PyTorch's layers; B = 0: the same model
    head = add_lora(tiny(), targets=("lm_head",), r=4)             # a LoRA-wrapped LM head: PyTorch's path
    monkeypatch.setattr(cpu_decode, "ENABLED", False)
    plain = decode(tiny(), tokens)[0]
    monkeypatch.setattr(cpu_decode, "ENABLED", True)
    assert (decode(head, tokens)[0] - plain).abs().max() < 1e-4 and len(calls) == n + 2


def test_without_a_compiler_it_is_unavailable_and_decoding_still_works(monkeypatch):
    model = tiny()
    monkeypatch.setattr(cpu_decode, "ENABLED", False)
    plain = generate(model, [[4, 5, 6]], cfg=SamplingConfig(max_new_tokens=8), eos_id=None)
    monkeypatch.setattr(cpu_decode, "ENABLED", True)
    monkeypatch.setattr(cpu_decode, "_lib", None)
    monkeypatch.setattr(cpu_decode, "error", None)
    monkeypatch.setattr(cpu_gemv.shutil, "which", lambda *a, **k: None)
    cpu_decode._plans.clear()
    assert not cpu_decode.available() and "no C compiler" in cpu_decode.error
    assert generate(model, [[4, 5, 6]], cfg=SamplingConfig(max_new_tokens=8), eos_id=None) == plain


def test_a_new_cache_of_another_length_gets_new_arguments(monkeypatch):
    """The C step writes the cache at (kv head · max_seq + pos) · head_dim: a cache of another length at the
    *same* address (as a new cache reusing a freed one's memory) must be seen as new (the key has shapes)."""
    model, tokens = tiny(), torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(cpu_decode, "ENABLED", False)
    ref = decode(model, tokens)[0]
    monkeypatch.setattr(cpu_decode, "ENABLED", True)
    model.setup_cache(1, 40)
    full = [(layer.self_attn.cache.k, layer.self_attn.cache.v) for layer in model.layers]
    for length in (40, 12, 40, 9):
        for layer, kv in zip(model.layers, full):                    # same memory, another length
            cache = layer.self_attn.cache
            cache.k, cache.v = (t.view(-1)[:t.shape[1] * length * t.shape[3]].view(1, t.shape[1], length, t.shape[3])
                                for t in kv)
        k0 = model.layers[0].self_attn.cache.k
        with torch.inference_mode():
            model(tokens[:, :7], start_pos=0)
            got = torch.cat([model(tokens[:, i:i + 1], start_pos=i) for i in (7, 8)], 1)
        assert k0.data_ptr() == full[0][0].data_ptr() and cpu_decode._plans[model].max_seq == length
        assert (got - ref).abs().max() <= TOL[torch.float32] * ref.abs().max()
