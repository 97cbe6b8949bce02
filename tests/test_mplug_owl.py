"""mPLUG-Owl's video checkpoint, loaded by our code (`weights.load_mplug_owl`).

No weights can be downloaded, so the test writes a tiny random checkpoint in the released layout itself:
the official state-dict names and a transformers-4.29-era nested config.json, as `pytorch_model.bin` and
as safetensors. Our model's video tokens must equal an independent re-computation of mPLUG-Owl's forward,
written below from the official code's definitions (`mplug_owl_video/modeling_mplug_owl.py`: the temporal
convolution, the fused qkv split per head, the joint queries, the two projections summed, `vit_eos`
appended), and its logits transformers' `LlamaForCausalLM` on the same language-model weights.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import save_file

from conftest import ROOT
from nanog4v.data import GPT4VIDEO, video_pixels
from nanog4v.mplug_owl import TEMPLATE, clean_reply, prompt_for_reply
from nanog4v.safetensors_io import CheckpointError
from nanog4v.video import mplug_owl_frame_indices
from nanog4v.video_out import write_video
from nanog4v.weights import load_mplug_owl, mplug_owl_abstractor_mlp

D, LAYERS, HEADS, S, PATCH = 32, 2, 2, 28, 14          # ViT: 2×2 patches of 14 px, 5 tokens a frame
A_LAYERS, A_HEADS, N = 2, 4, 3                          # abstractor: 2 layers, N = 3 queries a stream
TEXT = dict(model_type="llama", hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=500, max_position_embeddings=256, rms_norm_eps=1e-6,
            bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False, torch_dtype="float32")
CONFIG = {"architectures": ["MplugOwlForConditionalGeneration"], "model_type": "mplug-owl", "num_query_tokens": N,
          "transformers_version": "4.29.1",
          "vision_config": {"model_type": "mplug_owl_vision_model", "hidden_size": D, "intermediate_size": 64,
                            "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "image_size": S,
                            "patch_size": PATCH, "layer_norm_eps": 1e-6, "hidden_act": "quick_gelu"},
          "visual_abstractor_config": {"model_type": "mplug_owl_visual_abstract", "hidden_size": D,
                                       "num_hidden_layers": A_LAYERS, "num_attention_heads": A_HEADS,
                                       "intermediate_size": 96, "encoder_hidden_size": D, "layer_norm_eps": 1e-6},
          "text_config": TEXT}
HIDDEN = mplug_owl_abstractor_mlp(96)                  # 2/3 · 96 = 64, rounded up to 256


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the released checkpoint's names and shapes (norms away from 1 / 0, the temporal
    up-projection non-zero, so that every tensor matters)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, scale=0.1: torch.randn(*shape, generator=g) * scale
    norm = lambda pre, n: {f"{pre}.weight": 1 + r(n), f"{pre}.bias": r(n)}
    lin = lambda pre, i, o: {f"{pre}.weight": r(o, i, scale=i ** -0.5), f"{pre}.bias": r(o)}
    st = {"query_tokens": r(1, N, D, scale=1.0), "temporal_query_tokens": r(1, N, D, scale=1.0),
          "vision_model.embeddings.cls_token": r(1, 1, D), "vision_model.embeddings.position_embedding": r(1, 5, D),
          "vision_model.embeddings.patch_embed.weight": r(D, 3, PATCH, PATCH, scale=0.05),
          **norm("vision_model.embeddings.pre_layernorm", D), **norm("vision_model.post_layernorm", D)}
    for i in range(LAYERS):
        pre = f"vision_model.encoder.layers.{i}"
        st |= {**norm(f"{pre}.input_layernorm", D), **norm(f"{pre}.post_attention_layernorm", D),
               **lin(f"{pre}.self_attn.query_key_value", D, 3 * D), **lin(f"{pre}.self_attn.dense", D, D),
               **lin(f"{pre}.mlp.fc1", D, 64), **lin(f"{pre}.mlp.fc2", 64, D), **norm(f"{pre}.temporal.ln", D),
               f"{pre}.temporal.down_proj.weight": r(D // 2, D, 1, 1, 1, scale=D ** -0.5),
               f"{pre}.temporal.down_proj.bias": r(D // 2),
               f"{pre}.temporal.conv.weight": r(D // 2, 1, 3, 1, 1, scale=0.5), f"{pre}.temporal.conv.bias": r(D // 2),
               f"{pre}.temporal.up_proj.weight": r(D, D // 2, 1, 1, 1, scale=0.3), f"{pre}.temporal.up_proj.bias": r(D)}
    for i in range(A_LAYERS):
        pre = f"abstractor.encoder.layers.{i}.crossattention"
        st |= {**norm(f"{pre}.norm1", D), **norm(f"{pre}.normk", D), **norm(f"{pre}.output.norm2", D),
               **lin(f"{pre}.attention.query", D, D), **lin(f"{pre}.attention.key", D, D),
               **lin(f"{pre}.attention.value", D, D), **lin(f"{pre}.output.out_proj", D, D),
               **lin(f"{pre}.output.mlp.w1", D, HIDDEN), **lin(f"{pre}.output.mlp.w3", D, HIDDEN),
               **lin(f"{pre}.output.mlp.w2", HIDDEN, D), **norm(f"{pre}.output.mlp.ffn_ln", HIDDEN)}
    d, f, v = TEXT["hidden_size"], TEXT["intermediate_size"], TEXT["vocab_size"]
    st |= {**lin("abstractor.visual_fc", D, d), **lin("abstractor.temporal_visual_fc", D, d),
           "abstractor.vit_eos": r(1, 1, d, scale=1.0), "language_model.model.embed_tokens.weight": r(v, d, scale=1.0),
           "language_model.model.norm.weight": 1 + r(d), "language_model.lm_head.weight": r(v, d, scale=d ** -0.5)}
    for i in range(TEXT["num_hidden_layers"]):
        pre = f"language_model.model.layers.{i}"
        st |= {f"{pre}.{name}.weight": r(o, i_, scale=i_ ** -0.5) for name, i_, o in
               [("self_attn.q_proj", d, d), ("self_attn.k_proj", d, d), ("self_attn.v_proj", d, d),
                ("self_attn.o_proj", d, d), ("mlp.gate_proj", d, f), ("mlp.up_proj", d, f), ("mlp.down_proj", f, d)]}
        st |= {f"{pre}.input_layernorm.weight": 1 + r(d), f"{pre}.post_attention_layernorm.weight": 1 + r(d),
               f"{pre}.self_attn.rotary_emb.inv_freq": 1.0 / 10000 ** (torch.arange(0, 12, 2) / 12)}  # (4.31 saved it)
    return st


@pytest.fixture(scope="module")
def owl(tmp_path_factory):
    """The same random checkpoint as pytorch_model.bin and as model.safetensors, and its tensors."""
    state, root = official_state(), tmp_path_factory.mktemp("owl")
    for name in ("bin", "safetensors"):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(CONFIG))
    torch.save(state, root / "bin" / "pytorch_model.bin")
    save_file(state, str(root / "safetensors" / "model.safetensors"))
    return root, state


# --- mPLUG-Owl's forward, re-computed from the official definitions --------------------------------

def ln(x, P, pre, eps):
    return F.layer_norm(x, x.shape[-1:], P[f"{pre}.weight"], P[f"{pre}.bias"], eps)


def fc(x, P, pre):
    return x @ P[f"{pre}.weight"].T + P[f"{pre}.bias"]


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def official_vision(P, pixels):
    """MplugOwlVisionModel: pixels (B, C, T, H, W) -> last_hidden_state (B, T, 1+P, D), post_layernorm on every token."""
    b, _, t = pixels.shape[:3]
    x = F.conv2d(rearrange(pixels, "b c t h w -> (b t) c h w"), P["vision_model.embeddings.patch_embed.weight"],
                 stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([P["vision_model.embeddings.cls_token"].expand(b * t, 1, -1), x], 1)
    x = ln(x + P["vision_model.embeddings.position_embedding"], P, "vision_model.embeddings.pre_layernorm", 1e-6)
    x = rearrange(x, "(b t) n d -> b t n d", b=b)
    for i in range(LAYERS):
        pre = f"vision_model.encoder.layers.{i}"
        if t > 1:                                            # MplugOwlVisionLocalTemporal
            cls, y = x[:, :, :1], x[:, :, 1:]
            y = rearrange(ln(y, P, f"{pre}.temporal.ln", 1e-5), "b t (h w) c -> b c t h w", h=S // PATCH)
            y = F.conv3d(y, P[f"{pre}.temporal.down_proj.weight"], P[f"{pre}.temporal.down_proj.bias"])
            y = F.conv3d(y, P[f"{pre}.temporal.conv.weight"], P[f"{pre}.temporal.conv.bias"], padding=(1, 0, 0),
                         groups=D // 2)
            y = F.conv3d(quick_gelu(y), P[f"{pre}.temporal.up_proj.weight"], P[f"{pre}.temporal.up_proj.bias"])
            x = x + torch.cat([cls, rearrange(y, "b c t h w -> b t (h w) c")], 2)
        h = rearrange(x, "b t n d -> (b t) n d")
        bsz, seq, _ = h.shape
        qkv = fc(ln(h, P, f"{pre}.input_layernorm", 1e-6), P, f"{pre}.self_attn.query_key_value")
        q, k, v = qkv.reshape(bsz, seq, HEADS, 3, D // HEADS).permute(3, 0, 2, 1, 4)   # [3, b, heads, seq, d_h]
        ctx = torch.softmax(q @ k.transpose(-1, -2) * (D // HEADS) ** -0.5, -1) @ v
        h = h + fc(ctx.permute(0, 2, 1, 3).reshape(bsz, seq, D), P, f"{pre}.self_attn.dense")
        h = h + fc(quick_gelu(fc(ln(h, P, f"{pre}.post_attention_layernorm", 1e-6), P, f"{pre}.mlp.fc1")), P,
                   f"{pre}.mlp.fc2")
        x = rearrange(h, "(b t) n d -> b t n d", b=b)
    return ln(x, P, "vision_model.post_layernorm", 1e-6)


def official_abstractor(P, image_embeds, temporal=True):
    """MplugOwlVisualAbstractorModel with query_tokens and temporal_query_tokens: (B, T, 1+P, D) -> (B, N+1, d);
    with temporal=False (an image), the query_tokens alone."""
    b = image_embeds.shape[0]
    x = torch.cat([P["query_tokens"], P["temporal_query_tokens"][:, :N * temporal]], 1).expand(b, -1, -1)
    enc = rearrange(image_embeds, "b t n d -> b (t n) d")
    split = lambda y: rearrange(y, "b n (h d) -> b h n d", h=A_HEADS)
    for i in range(A_LAYERS):
        pre = f"abstractor.encoder.layers.{i}.crossattention"
        q = ln(x, P, f"{pre}.norm1", 1e-5)
        kv = torch.cat([q, ln(enc, P, f"{pre}.normk", 1e-5)], 1)                  # queries first
        Q, K, V = split(fc(q, P, f"{pre}.attention.query")), split(fc(kv, P, f"{pre}.attention.key")), \
            split(fc(kv, P, f"{pre}.attention.value"))
        ctx = torch.softmax(Q @ K.transpose(-1, -2) / math.sqrt(D // A_HEADS), -1) @ V
        x = q + fc(rearrange(ctx, "b h n d -> b n (h d)"), P, f"{pre}.output.out_proj")  # residual from the normed q
        m = ln(x, P, f"{pre}.output.norm2", 1e-5)
        m = F.silu(fc(m, P, f"{pre}.output.mlp.w1")) * fc(m, P, f"{pre}.output.mlp.w3")
        x = x + fc(ln(m, P, f"{pre}.output.mlp.ffn_ln", 1e-6), P, f"{pre}.output.mlp.w2")
    out = fc(x[:, :N], P, "abstractor.visual_fc")
    if temporal:
        out = out + fc(x[:, N:], P, "abstractor.temporal_visual_fc")
    return torch.cat([out, P["abstractor.vit_eos"].repeat(b, 1, 1)], 1)


# --- the tests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["bin", "safetensors"])
def test_video_tokens_and_logits_equal_mplug_owls(owl, layout, one_thread):
    root, state = owl
    model = load_mplug_owl(root / layout)
    pixels = torch.randn(2, 4, 3, S, S)                                    # (B, T, 3, S, S)
    with torch.no_grad():
        ours = model.encode_video(pixels)                                  # (B, N+1, d)
        want = official_abstractor(state, official_vision(state, pixels.transpose(1, 2)))
    assert ours.shape == (2, N + 1, TEXT["hidden_size"]) == want.shape
    assert (ours - want).abs().max() < 1e-5

    from transformers import LlamaConfig, LlamaForCausalLM
    hf = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TEXT.items() if k != "model_type"})).eval()
    hf.load_state_dict({k.removeprefix("language_model."): v for k, v in state.items()
                        if k.startswith("language_model.") and "inv_freq" not in k})
    tokens = torch.randint(3, TEXT["vocab_size"], (2, 17))
    with torch.no_grad():
        assert (model.llm(tokens) - hf(tokens).logits).abs().max() < 1e-5


def test_one_frame_skips_the_temporal_modules_and_queries(owl):
    """An image (T = 1): no temporal module, the spatial queries and visual_fc alone (mPLUG-Owl's T == 1)."""
    root, state = owl
    model = load_mplug_owl(root / "bin")
    pixels = torch.randn(2, 1, 3, S, S)
    with torch.no_grad():
        want = official_abstractor(state, official_vision(state, pixels.transpose(1, 2)), temporal=False)
        assert (model.encode_video(pixels) - want).abs().max() < 1e-5


def test_the_config_and_the_released_quirks(owl):
    root, _ = owl
    model = load_mplug_owl(root / "safetensors")
    cfg = model.cfg
    assert (cfg.name, cfg.frames, cfg.abstractor.variant, cfg.abstractor.num_queries) == ("owl-video", "mplug-owl", "official", N)
    assert cfg.vision.temporal and cfg.vision.fused_qkv and cfg.vision.post_layernorm_all_tokens
    assert model.num_video_tokens == N + 1 and not model.training
    assert (mplug_owl_abstractor_mlp(4096), mplug_owl_abstractor_mlp(2816), mplug_owl_abstractor_mlp(64)) == (2816, 2816, 256)
    assert next(model.abstractor.parameters()).dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("abstractor.vit_eos"), "missing: abstractor.eos"),
    (lambda s: s.update({"vision_model.encoder.layers.0.extra.weight": torch.zeros(2)}),
     "unexpected: vision_model.encoder.layers.0.extra.weight"),
    (lambda s: s.update({"abstractor.visual_fc.weight": torch.zeros(3, 3)}), "wrong shape: abstractor.visual_fc.weight (3, 3)"),
])
def test_a_missing_extra_or_misshaped_key_is_refused_by_name(owl, tmp_path, change, message):
    _, state = owl
    state = dict(state)
    change(state)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        load_mplug_owl(tmp_path)
    assert str(e.value).startswith(f"{tmp_path}: cannot load into GPT4Video")


def test_a_config_that_is_not_mplug_owl_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(CheckpointError, match="not an mPLUG-Owl config"):
        load_mplug_owl(tmp_path)


# --- its processor and template -------------------------------------------------------------------

def get_index(num_frames, num_segments):            # mPLUG-Owl's processing_mplug_owl.get_index, in numpy
    seg_size = float(num_frames - 1) / num_segments
    return [int(seg_size / 2) + int(np.round(seg_size * idx)) for idx in range(num_segments)]


def test_frame_indices_are_mplug_owls():
    for n in (1, 2, 5, 8, 9, 17, 30, 181, 421):
        for t in (1, 2, 4, 8):
            assert mplug_owl_frame_indices(n, t) == get_index(n, t), (n, t)


def test_video_pixels_pick_those_frames_and_squash_them(tmp_path):
    """Each frame painted with its index: the frames picked are get_index's; a 2:1 clip is squashed, not cropped."""
    frames = np.zeros((9, 32, 64, 3), np.uint8)
    for k in range(9):
        frames[k] = 20 * k
    frames[:, :, :4] = 255                                                  # a white band at the left edge
    path = write_video(tmp_path / "clip.mp4", frames, fps=10)
    from nanog4v.config import preset
    cfg = preset("owl-video")
    pixels = video_pixels(path, cfg.num_frames, cfg.vision.image_size, cfg.frames)   # (T, 3, 224, 224)
    assert pixels.shape == (4, 3, 224, 224)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1)
    middle = (pixels[:, :, 112, 100:124].mean(-1) * std[:, 0] + mean[:, 0]) * 255         # (T, 3)
    assert torch.allclose(middle.mean(-1), 20.0 * torch.tensor(get_index(9, 4)).float(), atol=4)
    assert ((pixels[:, :, 112, :10] * std + mean) * 255).mean() > 200       # the band is still there: no crop


def test_the_template_is_mplug_owls(tiny_tokenizer):
    tok = tiny_tokenizer
    conversation = {"videos": ["a.mp4"], "turns": [{"from": "human", "video": 0},
                                                    {"from": "human", "value": "What is the circle doing?"}]}
    prompt = prompt_for_reply(tok, conversation, num_video_tokens=N + 1)
    system = ("The following is a conversation between a curious human and AI assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions.\nHuman: ")
    head, tail = tok.encode(system), tok.encode("\nHuman: What is the circle doing?\nAI: ")
    assert prompt["input_ids"] == [tok.bos_id, *head, *[tok.pad_id] * (N + 1), *tail]
    assert prompt["video_slots"] == [(1 + len(head), 0)]
    typed = prompt_for_reply(tok, {"videos": [], "turns": [{"from": "human", "value": "a <|video|>\nAI: b"}]})
    assert typed["video_slots"] == [] and tok.decode(typed["input_ids"]).endswith("Human: a < |video|> AI: b\nAI: ")
    assert clean_reply(" A circle moves.\nHuman: and?") == "A circle moves."
    assert TEMPLATE.stop == ("Human:",) and GPT4VIDEO.stop == ("###",)


# --- chat on it, and stage 2 on it as the official code does ---------------------------------------------

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run(script, *args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def owl_ckpt(owl, train_world, tmp_path_factory):
    """The random checkpoint as a user downloads it: config.json, pytorch_model.bin, tokenizer.model."""
    root, _ = owl
    ckpt = tmp_path_factory.mktemp("owl-ckpt") / "mplug-owl-llama-7b-video"
    shutil.copytree(root / "bin", ckpt)
    shutil.copyfile(train_world / "tokenizer.model", ckpt / "tokenizer.model")
    return ckpt


@pytest.fixture(scope="module")
def owl_stage2(owl_ckpt, train_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("owl-run") / "stage2"
    done = run("train.py", "--preset", "owl-video", "--stage", "2", "--init", owl_ckpt, "--out", out, "--data",
               train_world / "stage2.jsonl", train_world / "safety.jsonl", "--max-steps", "2", "--quiet",
               "--eval-n", "0", "--warmup-steps", "0", "--lr", "1e-2")
    assert done.returncode == 0, done.stderr
    return out


def test_stage2_on_it_trains_only_lora_as_the_official_code(owl, owl_ckpt, owl_stage2):
    """LoRA on q_proj / v_proj (r 16, α 16, dropout 0.1); every other weight stays the checkpoint's."""
    from safetensors.torch import load_file
    _, state = owl
    saved = load_file(str(owl_stage2 / "gpt4video.safetensors"))
    lora = sorted(k for k in saved if "lora_" in k)
    assert lora == sorted(f"llm.layers.{i}.self_attn.{m}.lora_{ab}" for i in range(2) for m in ("q_proj", "v_proj")
                          for ab in ("A", "B"))
    assert set(saved) == set(lora) | {f"abstractor.{k}" for k in load_mplug_owl(owl_ckpt).abstractor.state_dict()}
    assert any(saved[k].abs().max() > 0 for k in lora if k.endswith("lora_B"))       # B learned (it starts at 0)
    assert torch.equal(saved["abstractor.eos"], state["abstractor.vit_eos"][0])      # the abstractor is frozen
    assert torch.equal(saved["abstractor.query_tokens"], state["query_tokens"][0])
    adapter = json.loads((owl_stage2 / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"], adapter["target_modules"]) == \
        (16, 16.0, 0.1, ["q_proj", "v_proj"])
    assert adapter["base_model_name_or_path"] == str(owl_ckpt.resolve())


def test_owl_video_needs_its_checkpoint(train_world, tmp_path):
    done = run("train.py", "--preset", "owl-video", "--stage", "2", "--data", train_world / "stage2.jsonl",
               "--out", tmp_path / "run", timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: train.py: --preset owl-video starts from mPLUG-Owl's video checkpoint: pass --init DIR (the "
        "downloaded MAGAer13/mplug-owl-llama-7b-video, see weights/README.md)"]


def test_chat_on_it_as_released_and_with_a_stage2_adapter(owl_ckpt, owl_stage2, train_world):
    from nanog4v.assistant import load_owl_chat_model
    from nanog4v.mplug_owl import TEMPLATE as OWL
    _, _, template = load_owl_chat_model(owl_ckpt)
    model, _, with_adapter = load_owl_chat_model(owl_ckpt, owl_stage2)
    assert template is OWL and with_adapter is GPT4VIDEO and all(l.merged for l in _lora_layers(model.llm))
    for extra in ([], ["--adapter", owl_stage2]):
        done = run("chat.py", "--preset", "owl-video", "--ckpt", owl_ckpt, "--video", train_world / "videos" / "c0.mp4",
                   "--prompt", "What is happening?", "--json", "--t2v", "none", "--max-new-tokens", "4",
                   "--dtype", "bfloat16", *extra)
        assert done.returncode == 0, done.stderr
        turn = json.loads(done.stdout)
        assert set(turn) >= {"reply", "refused", "errors"} and turn["errors"] == []
        assert "input-video check is off: no safety checker" in done.stderr
    done = run("chat.py", "--preset", "nano", "--adapter", owl_stage2, "--prompt", "hi")
    assert done.returncode == 2 and "only --preset owl-video takes an adapter" in done.stderr


def _lora_layers(module):
    from nanog4v.lora import lora_layers
    return lora_layers(module).values()


def test_the_export_of_a_stage2_run_on_it_loads_in_transformers(owl_ckpt, owl_stage2, tmp_path):
    """The run's adapter names the checkpoint as its base; the export merges the LoRA into its LLaMA."""
    from transformers import LlamaForCausalLM
    from nanog4v.assistant import load_owl_chat_model
    from nanog4v.export import main as export
    assert export(["--ckpt", str(owl_stage2), "--out", str(tmp_path / "out")]) == 0
    model, _, _ = load_owl_chat_model(owl_ckpt, owl_stage2)                 # LoRA merged
    plain = load_mplug_owl(owl_ckpt)                                         # no LoRA
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokens = torch.randint(3, TEXT["vocab_size"], (1, 12))
    with torch.no_grad():
        ours, theirs, base = model.llm(tokens), hf(tokens).logits, plain.llm(tokens)
    assert (ours - theirs).abs().max() < 1e-5 < (ours - base).abs().max()
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (owl_ckpt / "tokenizer.model").read_bytes()
