"""CLIP ViT and preprocessing: parity with transformers on tiny random models saved in the official layout.

Oracles: `transformers.CLIPVisionModel` / `CLIPModel` (5.23) for the ViT, `CLIPImageProcessorPil` (the
Pillow backend: what `CLIPImageProcessor` is without torchvision, and what transformers 4.x shipped)
for `preprocess`.
"""
import dataclasses
import json

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPVisionConfig,
                          CLIPVisionModel)

from conftest import shared_asset
from nanog4v.config import VisionConfig
from nanog4v.vision import CLIP_MEAN, CLIP_STD, VisionTransformer, preprocess
from nanog4v.weights import CheckpointError, load_vision, rename_clip_vision

# Odd sizes on purpose: 3 heads of 16, an MLP width that is not a multiple of anything, 4×4 patches.
TINY = dict(hidden_size=48, num_attention_heads=3, patch_size=14, image_size=56, num_hidden_layers=2,
            intermediate_size=100, layer_norm_eps=1e-5, hidden_act="quick_gelu")
TOL = 1e-5


def _perturb(model: torch.nn.Module) -> None:
    """Move every weight off its initial value (LayerNorms are 1/0 at init) so a swapped or skipped
    parameter changes the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def hf_vision(tmp_path_factory):
    """A random CLIPVisionModel saved by transformers 5.23 (keys without the `vision_model.` prefix)."""
    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(**TINY)).eval()
    _perturb(model)
    path = tmp_path_factory.mktemp("clip_vision")
    model.save_pretrained(path, safe_serialization=True)
    return model, path


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    """A random full CLIPModel (vision + text towers, projections, logit_scale)."""
    torch.manual_seed(0)
    text = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=37,
                vocab_size=99, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    model = CLIPModel(CLIPConfig(vision_config=TINY, text_config=text, projection_dim=16)).eval()
    _perturb(model)
    path = tmp_path_factory.mktemp("clip_full")
    model.save_pretrained(path, safe_serialization=True)
    return model, path


def _pixels(n=3, size=56):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))


def _max_err(a, b) -> float:
    return (a - b).abs().max().item()


# --- the ViT -------------------------------------------------------------------------------------------

def test_vision_only_checkpoint_matches_hf_last_hidden_state(hf_vision):
    hf, path = hf_vision
    ours = load_vision(path)
    assert not ours.training and ours.cfg.mlp_dim == 100 and ours.cfg.n_heads == 3
    x = _pixels()
    with torch.no_grad():
        want = hf(pixel_values=x).last_hidden_state                  # (3, 17, 48)
        got = ours(x)
    err = _max_err(got, want)
    print(f"CLIPVisionModel parity, fp32: max abs err {err:.2e}")
    assert got.shape == (3, 1 + 16, 48)
    assert err <= TOL


@pytest.mark.parametrize("which", ["directory", "file"])
def test_full_clip_checkpoint_matches_hf(hf_clip, which):
    hf, path = hf_clip
    ours = load_vision(path if which == "directory" else path / "model.safetensors")
    x = _pixels()
    with torch.no_grad():
        want = hf.vision_model(pixel_values=x).last_hidden_state
        got = ours(x)
    err = _max_err(got, want)
    print(f"CLIPModel ({which}) parity, fp32: max abs err {err:.2e}")
    assert err <= TOL


def test_prefixed_vision_only_file_with_position_ids_loads(hf_vision, tmp_path):
    """transformers 4.x wrote `vision_model.*` keys, and old files carry a `position_ids` buffer."""
    hf, path = hf_vision
    tensors = {f"vision_model.{k}": v for k, v in load_file(path / "model.safetensors").items()}
    tensors["vision_model.embeddings.position_ids"] = torch.arange(17)[None].float()
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    x = _pixels()
    with torch.no_grad():
        assert _max_err(load_vision(tmp_path)(x), hf(pixel_values=x).last_hidden_state) <= TOL


def test_post_layernorm_on_every_token_when_flag_is_on(hf_vision):
    hf, path = hf_vision
    ours = load_vision(path)
    ours.cfg = dataclasses.replace(ours.cfg, post_layernorm_all_tokens=True)
    x = _pixels()
    with torch.no_grad():
        out = hf(pixel_values=x)
        want = hf.post_layernorm(out.last_hidden_state)   # every token, not just [CLS]
        got = ours(x)
    assert _max_err(got, want) <= TOL
    assert _max_err(got[:, 0], out.pooler_output) <= TOL
    assert _max_err(got, out.last_hidden_state) > 0.1                 # the flag does change the output


def test_attention_maps_equal_hf_eager_attentions(hf_vision):
    hf, path = hf_vision
    eager = CLIPVisionModel.from_pretrained(path, attn_implementation="eager").eval()
    ours = load_vision(path)
    x = _pixels()
    with torch.no_grad():
        out = eager(pixel_values=x, output_attentions=True)
        for layer in (0, 1, -1):
            hidden, weights = ours(x, return_attention_layer=layer)
            assert weights.shape == (3, 3, 17, 17)                     # (N, H, 1+P, 1+P)
            assert _max_err(weights, out.attentions[layer]) <= TOL
            assert _max_err(hidden, out.last_hidden_state) <= TOL
        with pytest.raises(IndexError, match="index 2 is out of range"):   # the model has blocks 0..1
            ours(x, return_attention_layer=2)


def test_bfloat16_load(hf_vision):
    hf, path = hf_vision
    ours = load_vision(path, dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    x = _pixels()
    with torch.no_grad():
        got = ours(x).float()
        want = hf(pixel_values=x).last_hidden_state
    assert _max_err(got, want) <= 0.1 * want.abs().max().item()


def test_key_table_covers_vit_l14_one_to_one():
    """Every key of HF's ViT-L/14 (built on the meta device: no memory) has a parameter of the same
    shape in ours, and every one of ours is used exactly once."""
    hf_cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, patch_size=14, image_size=224)
    with torch.device("meta"):
        hf = CLIPVisionModel(hf_cfg)
        ours = VisionTransformer(VisionConfig())                       # the 7b preset's ViT-L/14
    theirs = {rename_clip_vision(k): tuple(v.shape) for k, v in hf.state_dict().items()}
    theirs.pop(None, None)                                             # position_ids, if kept
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert theirs == mine
    assert sum(v.numel() for v in ours.parameters()) == 303_179_776


def _resave(path, dst, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors")
    (dst / "config.json").write_text((path / "config.json").read_text())
    return dst


def test_missing_key_is_refused_with_its_name(hf_vision, tmp_path):
    _, path = hf_vision
    bad = _resave(path, tmp_path, lambda t: t.pop("encoder.layers.1.mlp.fc2.bias"))
    with pytest.raises(CheckpointError, match=r"missing: blocks\.1\.mlp\.fc2\.bias"):
        load_vision(bad)


def test_wrong_shape_is_refused_with_its_name(hf_vision, tmp_path):
    _, path = hf_vision
    def edit(t):
        t["encoder.layers.0.self_attn.q_proj.weight"] = torch.zeros(48, 47)
    bad = _resave(path, tmp_path, edit)
    with pytest.raises(CheckpointError, match=r"wrong shape: encoder\.layers\.0\.self_attn\.q_proj\.weight"):
        load_vision(bad)


def test_unknown_key_and_missing_config_are_refused(hf_vision, tmp_path):
    _, path = hf_vision
    bad = _resave(path, tmp_path, lambda t: t.update({"encoder.layers.0.adapter.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected: encoder\.layers\.0\.adapter\.weight"):
        load_vision(bad)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_vision(tmp_path / "model.safetensors")
    cfg = json.loads((path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_act": "swish"}))
    with pytest.raises(CheckpointError, match="unknown act 'swish'"):
        load_vision(tmp_path)


# --- preprocessing ----------------------------------------------------------------------------------

def _hf_preprocess(frames: np.ndarray, size: int) -> np.ndarray:
    processor = CLIPImageProcessorPil(size={"shortest_edge": size},
                                      crop_size={"height": size, "width": size})
    return processor(list(frames), return_tensors="np")["pixel_values"]   # (T, 3, size, size)


def _to_unit_range(x) -> np.ndarray:
    """Undo the normalisation: back to [0, 1] pixel units, where 1/255 is one grey level."""
    x = np.asarray(x, dtype=np.float64)
    return x * np.array(CLIP_STD).reshape(1, 3, 1, 1) + np.array(CLIP_MEAN).reshape(1, 3, 1, 1)


def _compare(frames: np.ndarray, size: int) -> tuple[float, float]:
    got = preprocess(frames, size)
    assert got.shape == (len(frames), 3, size, size) and got.dtype == torch.float32
    diff = np.abs(_to_unit_range(got.numpy()) - _to_unit_range(_hf_preprocess(frames, size)))
    return diff.max(), (diff > 1e-4).mean()


def _decode(path, indices=(0, 20)) -> np.ndarray:
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in indices:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == len(indices):
                break
    return np.stack(frames)


@pytest.mark.parametrize("clip", ["boat.mp4", "dog_barking.mp4", "skateboarding_dog.mp4"])
def test_preprocess_matches_clip_image_processor_on_real_frames(clip):
    frames = _decode(shared_asset(f"videos/{clip}"))
    worst, fraction = _compare(frames, 224)
    print(f"{clip} {frames.shape}: max |ours - HF| = {worst * 255:.2f}/255, "
          f"{fraction:.4%} of values differ")
    assert worst <= 1 / 255 + 1e-6
    assert fraction < 0.01


@pytest.mark.parametrize("hw,size", [((90, 160), 56), ((160, 90), 56), ((20, 30), 56), ((64, 64), 56),
                                     ((56, 81), 56), ((37, 333), 28)])
def test_preprocess_matches_clip_image_processor_on_synthetic_frames(hw, size):
    """Noise (the worst case for bicubic overshoot: Pillow clips between its two passes), down- and
    upsampling, portrait and landscape, odd crops."""
    frames = np.random.default_rng(0).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    worst, fraction = _compare(frames, size)
    assert worst <= 1 / 255 + 1e-6
    assert fraction < 0.01


def test_preprocess_accepts_torch_and_refuses_bad_frames():
    frames = np.random.default_rng(0).integers(0, 256, (2, 40, 50, 3), dtype=np.uint8)
    assert torch.equal(preprocess(torch.from_numpy(frames), 28), preprocess(frames, 28))
    for bad in (frames.astype(np.float32), frames[0], frames[..., :2], frames[:, :0]):
        with pytest.raises(ValueError, match=r"expected uint8 frames \(T, H, W, 3\)"):
            preprocess(bad, 28)


def test_a_missing_path_is_named(tmp_path):
    from nanog4v.weights import CheckpointError, load_llama, load_vision
    for load in (load_vision, load_llama):
        with pytest.raises(CheckpointError, match=r"absent: no such file or directory"):
            load(tmp_path / "absent")
