"""The text-to-video gallery: tiny random diffusers pipelines saved in the official layouts, the toy renderer."""
import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

from nanog4v.t2v import DiffusersGenerator, T2VError, check_pipeline_dir, frames_to_uint8, load_generator, save
from nanog4v.toy.generator import GALLERY, ToyGenerator
from nanog4v.toy.world import complete, parse_caption, render
from nanog4v.video import sample_frames


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_clip_parts(tmp_path):
    """A CLIP tokenizer from a hand-made vocabulary (no hub) and a 4-wide CLIP text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=4,
                                                intermediate_size=16, num_attention_heads=2, num_hidden_layers=2,
                                                vocab_size=len(vocab), projection_dim=4))
    return tokenizer, text_encoder


def tiny_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))


@pytest.fixture(scope="module")
def zeroscope_dir(tmp_path_factory):
    """A TextToVideoSDPipeline (ZeroScope's class and layout) with tiny random parts (docs/formats.md)."""
    from diffusers import DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    tmp = tmp_path_factory.mktemp("zeroscope")
    torch.manual_seed(0)
    tokenizer, text_encoder = tiny_clip_parts(tmp)
    unet = UNet3DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=4,
                                attention_head_dim=4, norm_num_groups=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    pipe = TextToVideoSDPipeline(unet=unet, vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                                 scheduler=scheduler)
    pipe.save_pretrained(tmp / "pipe")
    return tmp / "pipe"


@pytest.fixture(scope="module")
def animatediff_dir(tmp_path_factory):
    """Another diffusers text-to-video pipeline (AnimateDiff: a 2-D UNet plus a motion adapter)."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    tmp = tmp_path_factory.mktemp("animatediff")
    torch.manual_seed(0)
    tokenizer, text_encoder = tiny_clip_parts(tmp)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=4,
                                norm_num_groups=2)
    adapter = MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=1, motion_norm_num_groups=2,
                            motion_num_attention_heads=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False)
    pipe = AnimateDiffPipeline(unet=unet, motion_adapter=adapter, vae=tiny_vae(), text_encoder=text_encoder,
                               tokenizer=tokenizer, scheduler=scheduler)
    pipe.save_pretrained(tmp / "pipe")
    return tmp / "pipe"


def count_frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# --- frames from every diffusers version ------------------------------------------------------------------

def test_frames_to_uint8_accepts_every_shape_diffusers_returned():
    rng = np.random.default_rng(0)
    want = rng.integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)              # (T, H, W, 3)
    as_float = want.astype(np.float32) / 255
    pil = [Image.fromarray(f) for f in want]

    class Output:                                                           # a pipeline output object
        frames = as_float[None]

    forms = {"np (B,T,H,W,3) float": as_float[None], "np (T,H,W,3) float": as_float, "uint8 list (<=0.24)": list(want),
             "pil list": pil, "pil batch": [pil], "pt (B,T,3,H,W)": torch.from_numpy(as_float).permute(0, 3, 1, 2)[None],
             "output object": Output()}
    for name, form in forms.items():
        got = frames_to_uint8(form)
        assert got.dtype == np.uint8 and got.shape == (3, 8, 10, 3), name
        np.testing.assert_array_equal(got, want, err_msg=name)
    clipped = frames_to_uint8(np.full((1, 2, 4, 4, 3), 1.7, np.float32))   # out-of-range floats are clipped
    assert (clipped == 255).all()
    with pytest.raises(ValueError, match="shape"):
        frames_to_uint8(np.zeros((4, 4, 3)))


# --- zeroscope: a diffusers pipeline directory --------------------------------------------------------

def test_zeroscope_pipeline_writes_an_mp4_with_the_right_frames(zeroscope_dir, tmp_path):
    gen = load_generator("zeroscope", zeroscope_dir, "cpu", width=32, height=32, steps=2)
    assert isinstance(gen, DiffusersGenerator) and gen.dtype == torch.float32       # fp32 on CPU
    frames = gen.generate("a red circle", num_frames=5, seed=0)
    assert frames.dtype == np.uint8 and frames.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(frames, gen.generate("a red circle", num_frames=5, seed=0))   # seeded
    path = save(gen, "a red circle", tmp_path / "out.mp4", num_frames=5, seed=0)
    assert count_frames(path) == 5
    decoded = sample_frames(path, 5)
    assert decoded.shape == (5, 32, 32, 3)
    assert np.abs(decoded.astype(int) - frames).mean() < 25                 # H.264 of noise-like frames
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]       # no temporary file left


def test_a_reply_is_handed_off_to_the_diffusers_pipeline(zeroscope_dir, tmp_path):
    """The hand-off of chat.py (§3.4): the <video> prompt of a reply goes to ZeroScope, the mp4 to --out."""
    from nanog4v.assistant import Assistant, TurnResult
    gen = load_generator("zeroscope", zeroscope_dir, "cpu", width=32, height=32, steps=1)
    bot = Assistant(model=None, tokenizer=None, generator=gen, out_dir=tmp_path / "out", t2v_frames=3)
    result = TurnResult("Here you go: <video> a red circle moving left </video>")
    bot._hand_off(result)
    assert result.prompts == ["a red circle moving left"] and result.errors == [] and not result.refused
    assert result.videos == [str(tmp_path / "out" / "turn000_video1.mp4")]
    assert count_frames(result.videos[0]) == 3 and sample_frames(result.videos[0], 3).shape == (3, 32, 32, 3)


def test_any_diffusers_text_to_video_pipeline_works_through_the_same_entry(animatediff_dir, tmp_path):
    gen = load_generator("zeroscope", animatediff_dir, "cpu", width=16, height=16, steps=2)
    assert type(gen.pipe).__name__ == "AnimateDiffPipeline"
    path = save(gen, "a blue square", tmp_path / "ad.mp4", num_frames=4, seed=1)
    assert count_frames(path) == 4 and sample_frames(path, 4).shape == (4, 16, 16, 3)


def test_broken_pipeline_directories_are_one_line_errors(zeroscope_dir, tmp_path):
    with pytest.raises(T2VError, match="no such directory"):
        load_generator("zeroscope", tmp_path / "absent")
    with pytest.raises(T2VError, match="no model_index.json"):
        load_generator("zeroscope", tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((zeroscope_dir / "model_index.json").read_text())
    with pytest.raises(T2VError, match="sub-folders missing: .*unet"):
        check_pipeline_dir(broken)
    with pytest.raises(T2VError, match="needs a local pipeline directory"):
        load_generator("zeroscope", None)
    with pytest.raises(T2VError, match="unknown generator"):
        load_generator("sora")


# --- toy: the toy world's renderer ------------------------------------------------------------------------

def test_toy_generator_renders_what_the_prompt_says(tmp_path):
    gen = ToyGenerator()
    prompt = "a large red circle on the left moves right on a grey background"
    frames = gen.generate(prompt, 8, seed=3)
    np.testing.assert_array_equal(frames, render(complete(parse_caption(prompt)), 8, 64))   # nothing left unsaid
    path = save(gen, prompt, tmp_path / "toy.mp4", 8, seed=3)
    assert count_frames(path) == 8
    decoded = sample_frames(path, 8).astype(int)
    assert decoded.shape == (8, 64, 64, 3)
    red = (decoded[..., 0] > 170) & (decoded[..., 1] < 90) & (decoded[..., 2] < 90)       # (T, H, W)
    xs = [np.nonzero(m)[1].mean() for m in red]
    assert all(b > a for a, b in zip(xs, xs[1:])) and xs[0] < 32                # starts left, moves right
    unsaid = gen.generate("a circle", 4, seed=None)          # defaults: large, white, on the left, on grey
    assert unsaid[0, 0, 0].tolist() == [115, 115, 115] and unsaid[0, 32, 13].tolist() == [245, 245, 245]


def test_the_toy_renderer_plugs_into_the_gallery_from_the_toy_wing():
    """The paper wing's gallery knows ZeroScope only; the toy wing's adds "toy" without touching it."""
    with pytest.raises(T2VError, match=r"unknown generator; choose one of \['zeroscope'\]"):
        load_generator("toy")
    gen = load_generator("toy", None, "cpu", gallery=GALLERY, size=32)
    assert isinstance(gen, ToyGenerator) and gen.generate("a red circle", 2, seed=0).shape == (2, 32, 32, 3)
    assert GALLERY["zeroscope"] is load_generator.__kwdefaults__["gallery"]["zeroscope"]
