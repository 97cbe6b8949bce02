"""The video abstractor (Eq. 1–4 + projection) against a direct, unbatched einsum re-computation."""
import dataclasses

import pytest
import torch

from nanog4v.abstractor import OfficialAbstractor, VideoAbstractor, build_abstractor
from nanog4v.config import preset

CFG = preset("test")
LLM_DIM = CFG.llama.dim
QK_NORM_EPS = 1e-5                                         # mPLUG-Owl: norm1/normk/norm2 = nn.LayerNorm()
T, TOKENS = CFG.num_frames, CFG.vision.num_tokens          # 2 frames of 1 + 4 tokens
N, L, H = CFG.abstractor.num_queries, CFG.abstractor.n_layers, CFG.abstractor.n_heads


def make(variant="paper", vision_dim=CFG.vision.dim):
    cfg = dataclasses.replace(CFG.abstractor, variant=variant)
    model = build_abstractor(cfg, vision_dim, LLM_DIM, T).eval()
    with torch.no_grad():  # move every norm, query and embedding away from its init so that each one matters
        for name, p in model.named_parameters():
            if "norm" in name or "ffn_ln" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            elif name.endswith(("queries", "temporal_embed", "eos")):
                p.copy_(torch.randn_like(p))
    return model


def features(b=2, vision_dim=CFG.vision.dim):
    return torch.randn(b, T, TOKENS, vision_dim)


# --- the reference: one video at a time, every product written out with einsum, in float64 ---------

def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def linear(x, P, name):
    return torch.einsum("nd,ed->ne", x, P[f"{name}.weight"]) + P[f"{name}.bias"]


def cross_attention_layer(P, pre, Q, Fv):
    """Q (N, D) queries, Fv (M, D) frame tokens -> (N, D): Eq. 1 over [F_v; Q] (the paper's order)."""
    eps_ffn = CFG.abstractor.norm_eps
    q = layer_norm(Q, P[f"{pre}.norm1.weight"], P[f"{pre}.norm1.bias"], QK_NORM_EPS)
    f = layer_norm(Fv, P[f"{pre}.normk.weight"], P[f"{pre}.normk.bias"], QK_NORM_EPS)
    kv = torch.cat([f, q])                                                   # [F_v; Q]: (M+N, D)
    heads = lambda x: x.reshape(x.shape[0], H, -1)                           # (n, H, d_h)
    qh = heads(linear(q, P, f"{pre}.query"))                                # (N, H, d_h)
    kh, vh = heads(linear(kv, P, f"{pre}.key")), heads(linear(kv, P, f"{pre}.value"))  # (M+N, H, d_h)
    scores = torch.einsum("nhd,mhd->hnm", qh, kh) / qh.shape[-1] ** 0.5      # (H, N, M+N)
    out = torch.einsum("hnm,mhd->nhd", scores.softmax(-1), vh).reshape(Q.shape[0], -1)  # (N, D)
    x = q + linear(out, P, f"{pre}.out_proj")
    h = layer_norm(x, P[f"{pre}.norm2.weight"], P[f"{pre}.norm2.bias"], QK_NORM_EPS)
    g = torch.nn.functional.silu(linear(h, P, f"{pre}.mlp.w1")) * linear(h, P, f"{pre}.mlp.w3")
    g = layer_norm(g, P[f"{pre}.mlp.ffn_ln.weight"], P[f"{pre}.mlp.ffn_ln.bias"], eps_ffn)
    return x + linear(g, P, f"{pre}.mlp.w2")


def stream(P, name, Fv, queries=None):
    x = P[f"{name}.queries"] if queries is None else queries
    for i in range(L):
        x = cross_attention_layer(P, f"{name}.layers.{i}" if name else f"layers.{i}", x, Fv)
    return x


def reference(model, video):
    """video (T, 1+P, vision_dim) -> (F_s, F_t, F_video), unbatched."""
    P = {k: v.double() for k, v in model.state_dict().items()}
    frames = [linear(video[t].double(), P, "frame_proj") if "frame_proj.weight" in P else video[t].double()
              for t in range(T)]
    if model.cfg.variant == "paper":
        F_s = stream(P, "spatial", torch.cat(frames))                                    # Eq. 2
        timed = [frames[t] + P["temporal_embed"][t] for t in range(T)]                # + E_t[t] on frame t
        F_t = stream(P, "temporal", torch.cat(timed))                                    # Eq. 3
        return F_s, F_t, linear(F_s + F_t, P, "proj")                                    # Eq. 4, W F̂ + b
    x = stream(P, "", torch.cat(frames), torch.cat([P["query_tokens"], P["temporal_query_tokens"]]))
    F_s, F_t = x[:N], x[N:]
    out = linear(F_s, P, "proj") + linear(F_t, P, "temporal_proj")
    return F_s, F_t, torch.cat([out, P["eos"]])


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("vision_dim", [CFG.vision.dim, 40])
def test_matches_unbatched_einsum(variant, vision_dim):
    model = make(variant, vision_dim)
    x = features(3, vision_dim)
    with torch.no_grad():
        F_s, F_t = model.streams(x)
        out = model(x)
    for b in range(x.shape[0]):
        ref_s, ref_t, ref_out = reference(model, x[b])
        assert (F_s[b].double() - ref_s).abs().max() <= 1e-5
        assert (F_t[b].double() - ref_t).abs().max() <= 1e-5
        assert (out[b].double() - ref_out).abs().max() <= 1e-5
    assert (F_s - F_t).abs().max() > 1e-2  # the two streams are really different


def test_shapes():
    x = features(2)
    paper, official = make("paper"), make("official")
    assert paper(x).shape == (2, N, LLM_DIM) and paper.num_output_tokens == N
    assert official(x).shape == (2, N + 1, LLM_DIM) and official.num_output_tokens == N + 1
    assert torch.equal(official(x)[:, -1], official.eos.expand(2, -1))  # the learned end-of-video token


@pytest.mark.parametrize("frame", range(T))
def test_changing_one_frame_changes_both_streams(frame):
    model = make()
    x = features(2)
    y = x.clone()
    y[0, frame] += torch.randn(TOKENS, CFG.vision.dim)
    with torch.no_grad():
        (s0, t0), (s1, t1) = model.streams(x), model.streams(y)
    assert (s0[0] - s1[0]).abs().max() > 1e-3 and (t0[0] - t1[0]).abs().max() > 1e-3
    assert torch.allclose(s0[1], s1[1], atol=1e-6) and torch.allclose(t0[1], t1[1], atol=1e-6)  # other video


def test_only_the_temporal_stream_sees_frame_order():
    model = make()
    x = features(2)
    with torch.no_grad():
        s0, t0 = model.streams(x)
        s1, t1 = model.streams(x.flip(1))                     # the same frames, reversed
    assert (s0 - s1).abs().max() <= 1e-5                      # spatial: a function of the set of tokens
    assert (t0 - t1).abs().max() > 1e-3                       # temporal: E_t tells the frames apart


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_gradients_reach_the_queries(variant):
    model = make(variant)
    model(features(2)).square().sum().backward()
    if variant == "paper":
        grads = [model.spatial.queries.grad, model.temporal.queries.grad, model.temporal_embed.grad]
    else:
        grads = [model.query_tokens.grad, model.temporal_query_tokens.grad, model.eos.grad]
    for g in grads:
        assert g is not None and g.abs().min(-1).values.gt(0).all()  # every query / frame / eos row


def test_attention_maps():
    model = make()
    x = features(2)
    out, maps = model(x, return_attention=True)
    assert torch.equal(out, model(x))                         # the maps do not change the output
    for name in ("spatial", "temporal"):
        assert len(maps[name]) == L
        for a in maps[name]:
            assert a.shape == (2, H, N, N + T * TOKENS)
            assert torch.allclose(a.sum(-1), torch.ones(2, H, N), atol=1e-6)


def test_bad_input_is_one_clear_error():
    model = make()
    with pytest.raises(ValueError, match=r"abstractor\.py: expected frame features \(B, T=2,"):
        model(torch.randn(1, T + 1, TOKENS, CFG.vision.dim))
    with pytest.raises(ValueError, match=r"abstractor\.py: expected frame features"):
        model(torch.randn(1, T, TOKENS, CFG.vision.dim + 1))
    with pytest.raises(ValueError, match=r"abstractor\.py: expected frame features"):
        model(torch.randn(T, TOKENS, CFG.vision.dim))
    with pytest.raises(ValueError, match=r"abstractor\.py: variant"):
        build_abstractor(dataclasses.replace(CFG.abstractor, variant="joint"), 48, LLM_DIM, T)


@pytest.mark.parametrize("kept", ["spatial", "temporal"])
def test_one_stream_ablation_uses_that_stream_alone_in_eq4(kept):
    """streams="spatial"|"temporal": F̂_v is that stream alone; it equals the full model's stream with the
    same weights, and the other stream's parameters do not exist."""
    full = make()
    ablated = VideoAbstractor(dataclasses.replace(CFG.abstractor, streams=kept), CFG.vision.dim, LLM_DIM, T).eval()
    missing = ablated.load_state_dict(full.state_dict(), strict=False)
    assert not missing.missing_keys
    dropped = "temporal" if kept == "spatial" else "spatial"
    assert missing.unexpected_keys and all(k.startswith(dropped) for k in missing.unexpected_keys)
    x = features(2)
    with torch.no_grad():
        F_s, F_t = full.streams(x)
        want = full.proj(F_s if kept == "spatial" else F_t)
        assert (ablated(x) - want).abs().max() <= 1e-6
        streams = ablated.streams(x)
    assert (streams[0] is None) == (kept == "temporal") and (streams[1] is None) == (kept == "spatial")


def test_stream_ablation_is_checked():
    for variant, streams in [("paper", "neither"), ("official", "spatial")]:
        with pytest.raises(ValueError, match="streams must be"):
            build_abstractor(dataclasses.replace(CFG.abstractor, variant=variant, streams=streams),
                             CFG.vision.dim, LLM_DIM, T)


def test_build_abstractor_picks_the_class_and_num_output_tokens_has_one_home():
    """`cfg.variant` picks the class; the modules' `num_output_tokens` is the config's (N, or N + 1)."""
    paper, official = make("paper"), make("official")
    assert type(paper) is VideoAbstractor and type(official) is OfficialAbstractor
    assert paper.num_output_tokens == paper.cfg.num_output_tokens == N
    assert official.num_output_tokens == official.cfg.num_output_tokens == N + 1
    with pytest.raises(ValueError, match="streams must be"):          # each class takes only its variant
        VideoAbstractor(official.cfg, CFG.vision.dim, LLM_DIM, T)
    top = lambda m: {k.split(".")[0] for k in m.state_dict()}      # the state-dict names checkpoints hold
    assert top(paper) == {"spatial", "temporal", "temporal_embed", "proj"}
    assert top(official) == {"query_tokens", "temporal_query_tokens", "layers", "proj", "temporal_proj", "eos"}


def test_the_official_abstractor_on_one_frame_runs_the_spatial_queries_alone():
    """mPLUG-Owl on an image (T = 1): the N spatial queries only, `visual_fc` only, then the end token."""
    model = make("official")
    x = features(2)[:, :1]                                              # (B, 1, 1+P, D)
    P = {k: v.double() for k, v in model.state_dict().items()}
    for b in range(2):
        F_s = stream(P, "", x[b, 0].double(), P["query_tokens"])
        want = torch.cat([linear(F_s, P, "proj"), P["eos"]])
        assert torch.allclose(model(x)[b].double(), want, atol=1e-5)
