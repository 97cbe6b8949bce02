"""python -m nanog4v.features: the cached F_v is exactly the frozen ViT's output on the frames the pixel path
samples; re-runs skip what is cached; a broken video is counted, not fatal; clashing names are an error;
torchrun shares the clips out over its processes.
(That training on the cache gives the losses of training on pixels is in test_train.py.)"""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nanog4v.config import preset
from nanog4v.data import feature_file
from nanog4v.features import cache_features, main
from nanog4v.video import sample_frames
from nanog4v.video_out import write_video
from nanog4v.vision import preprocess
from nanog4v.weights import load_vision
from test_train import torchrun                      # two gloo processes, bounded by a timeout

CFG = preset("test")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two clips and a broken one in generic JSONL, and a tiny CLIP ViT saved by transformers."""
    d = tmp_path_factory.mktemp("features")
    (d / "videos").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_video(d / "videos" / f"{name}.mp4", rng.integers(0, 256, (6, 40, 48, 3), dtype=np.uint8), fps=6)
    (d / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but then nothing")
    rows = [{"video": f"videos/{n}.mp4", "conversations": [{"from": "human", "value": "What is it?"},
                                                             {"from": "gpt", "value": "Noise."}]}
            for n in ("a", "b", "broken", "a")]
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import transformers
    v = CFG.vision
    torch.manual_seed(0)
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=v.dim, num_hidden_layers=v.n_layers, num_attention_heads=v.n_heads, intermediate_size=v.mlp_dim,
        image_size=v.image_size, patch_size=v.patch_size, hidden_act="quick_gelu")).save_pretrained(d / "vit")
    return d


def cli(world, out, *extra):
    return main(["--vision", str(world / "vit"), "--data", str(world / "data.jsonl"), "--out", str(out),
                 "--preset", "test", "--quiet", *extra])


def test_cached_features_are_the_vits_output_on_the_sampled_frames(world, tmp_path, capsys):
    assert cli(world, tmp_path, "--frames", "3", "--batch-size", "2") == 0
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]  # broken: skipped
    assert "broken.mp4" in capsys.readouterr().err
    vision = load_vision(world / "vit")
    for name in ("a", "b"):
        cached = load_file(str(feature_file(tmp_path, f"videos/{name}.mp4")))["features"]
        with torch.no_grad():
            direct = vision(preprocess(sample_frames(world / "videos" / f"{name}.mp4", 3), CFG.vision.image_size))
        assert cached.shape == (3, CFG.vision.num_tokens, CFG.vision.dim)
        torch.testing.assert_close(cached, direct, rtol=0, atol=1e-6)


def test_a_rerun_skips_what_is_cached_and_force_recomputes(world, tmp_path):
    vision = load_vision(world / "vit")
    videos = [str(world / "videos" / f"{n}.mp4") for n in ("a", "b", "broken")]
    first = cache_features(vision, videos, tmp_path, 2, progress=False)
    assert first == {"written": 2, "cached": 0, "failed": 1}
    stamp = feature_file(tmp_path, "a.mp4").stat().st_mtime_ns
    assert cache_features(vision, videos, tmp_path, 2, progress=False) == {"written": 0, "cached": 2, "failed": 1}
    assert feature_file(tmp_path, "a.mp4").stat().st_mtime_ns == stamp
    again = cache_features(vision, videos, tmp_path, 2, progress=False, force=True)
    assert again == {"written": 2, "cached": 0, "failed": 1}


def test_two_videos_with_one_name_are_an_error(world, tmp_path, capsys):
    (tmp_path / "other").mkdir()
    shutil.copy(world / "videos" / "a.mp4", tmp_path / "other" / "a.mp4")
    rows = [{"video": str(p), "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
            for p in (world / "videos" / "a.mp4", tmp_path / "other" / "a.mp4")]
    (tmp_path / "clash.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["--vision", str(world / "vit"), "--data", str(tmp_path / "clash.jsonl"),
                 "--out", str(tmp_path / "f"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'other' / 'a.mp4'}: has the same file name stem") and err.count("\n") == 1


def test_missing_inputs_are_one_line_errors(world, tmp_path, capsys):
    assert main(["--vision", str(tmp_path / "nope"), "--data", str(world / "data.jsonl"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: no such file or directory\n"
    assert cli(world, tmp_path, "--data", str(tmp_path / "none.jsonl")) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.jsonl'}: no such file\n"


def test_two_processes_share_the_clips_out_and_write_the_serial_features(world, tmp_path, one_thread):
    """torchrun: rank 0 takes a.mp4 and broken.mp4, rank 1 b.mp4 (every 2nd clip), each decoding in its own
    worker; the files are the serial run's bit for bit (one video per ViT forward and one thread in both), the
    counts summed."""
    assert cli(world, tmp_path / "serial", "--batch-size", "1", "--num-workers", "0") == 0
    argv = ["--vision", world / "vit", "--data", world / "data.jsonl", "--out", tmp_path / "shared", "--preset", "test",
            "--batch-size", "1", "--device", "cpu"]
    done = torchrun("-m", "nanog4v.features", *argv)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{tmp_path / 'shared'}: 2 written, 0 already cached, 1 failed (2 frames per video)\n" in done.stdout
    assert done.stdout.count("written") == 1 and done.stderr.count("broken.mp4") == 1, done.stdout
    assert sorted(f.name for f in (tmp_path / "shared").iterdir()) == ["a.safetensors", "b.safetensors"]
    for name in ("a", "b"):
        serial, shared = (load_file(str(tmp_path / d / f"{name}.safetensors")) for d in ("serial", "shared"))
        assert torch.equal(serial["features"], shared["features"]), name


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--frames", "-1"), ("--num-workers", "-2")])
def test_a_bad_number_flag_is_one_line(world, tmp_path, capsys, flag, value):
    assert cli(world, tmp_path, flag, value) == 2
    err = capsys.readouterr().err
    assert err == f"error: {flag}: must be a finite number >= {int(flag != '--num-workers')}, not {value}\n"
    assert not tmp_path.joinpath("a.safetensors").exists()
