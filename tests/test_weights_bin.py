"""PyTorch `.bin` checkpoints: read to exactly the numbers of the safetensors route, and as safely.

transformers 5 writes safetensors only (`save_pretrained(safe_serialization=False)` is ignored), so the `.bin`
files here come from `huggingface_hub.save_torch_state_dict(safe_serialization=False)`: the layout transformers
4.x's `save_pretrained(safe_serialization=False)` wrote and the hub still serves (`pytorch_model.bin`, or
`pytorch_model-0000k-of-0000n.bin` shards + `pytorch_model.bin.index.json`). transformers 5 loads them to the
same logits (checked below), so they are the real format. Hostile or unlucky files: a pickle that needs any
global is refused and its code never runs; a legacy, truncated, or non-state-dict file is refused; each is one
CheckpointError "{file}: {problem}".
"""
import collections
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from huggingface_hub import save_torch_state_dict

import nanog4v.safetensors_io as safetensors_io
from conftest import ROOT, Evil
from nanog4v.safetensors_io import CheckpointError, find_tensors, read_tensors
from nanog4v.weights import load_llama, load_vision

pytestmark = pytest.mark.usefixtures("one_thread")

LLAMA = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=128, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False)
VISION = dict(hidden_size=48, num_attention_heads=3, patch_size=14, image_size=56, num_hidden_layers=2,
              intermediate_size=100, layer_norm_eps=1e-5, hidden_act="quick_gelu")
TOL = 1e-5                                                      # fp32 parity with transformers
TOKENS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))


def save_bin(model, path, **options):
    """`model` as transformers 4.x's save_pretrained(safe_serialization=False) wrote it: config.json and
    pytorch_model.bin, or shards + pytorch_model.bin.index.json beyond `max_shard_size`."""
    path.mkdir()
    model.config.save_pretrained(path)
    save_torch_state_dict(model.state_dict(), path, safe_serialization=False, **options)
    return path


def same(a: dict, b: dict) -> bool:
    """The same keys, and for each the same dtype, shape and values, bit for bit."""
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def perturbed(model):
    """Every weight moved off its init (LayerNorms start at 1/0), so a swapped or skipped tensor shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny random LlamaForCausalLM (GQA) saved three ways: safetensors/, bin/, bin_sharded/."""
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).eval()
    root = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(root / "safetensors")
    save_bin(hf, root / "bin")
    save_bin(hf, root / "bin_sharded", max_shard_size="100KB")
    assert sorted(p.name for p in (root / "bin").iterdir()) == ["config.json", "pytorch_model.bin"]
    shards = sorted(p.name for p in (root / "bin_sharded").glob("pytorch_model-*.bin"))
    assert len(shards) >= 2 and (root / "bin_sharded" / "pytorch_model.bin.index.json").is_file(), shards
    return hf, root


def llama_dir_with(llama, where, payload, **save_options):
    """A LLaMA directory (the tiny model's config.json) whose pytorch_model.bin is torch.save(payload)."""
    where.mkdir()
    shutil.copy(llama[1] / "bin" / "config.json", where)
    torch.save(payload, where / "pytorch_model.bin", **save_options)
    return where / "pytorch_model.bin"


# --- the same numbers as safetensors, and as transformers ---------------------------------------------------

@pytest.mark.parametrize("layout", ["bin", "bin_sharded"])
def test_llama_from_bin_equals_the_safetensors_route_and_transformers(llama, layout):
    hf, root = llama
    ours = load_llama(root / layout)
    assert same(ours.state_dict(), load_llama(root / "safetensors").state_dict())
    assert same(ours.state_dict(), {k.removeprefix("model."): v for k, v in hf.state_dict().items()})
    with torch.no_grad():
        want = hf(TOKENS).logits
        err = (ours(TOKENS) - want).abs().max().item()
        theirs = transformers.LlamaForCausalLM.from_pretrained(root / layout).eval()(TOKENS).logits
    print(f"load_llama({layout}) vs transformers: max|Δlogits| = {err:.2e}")
    assert err <= TOL
    assert torch.equal(theirs, want)                # transformers reads these files as its own


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A tiny random CLIPVisionModel and a full CLIPModel (the layout of openai/clip-vit-*'s
    pytorch_model.bin), each saved as safetensors and as .bin."""
    torch.manual_seed(0)
    text = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=37,
                vocab_size=99, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    models = {"vision": perturbed(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION))),
              "clip": perturbed(transformers.CLIPModel(transformers.CLIPConfig(vision_config=VISION, text_config=text,
                                                                                projection_dim=16)))}
    root = tmp_path_factory.mktemp("clip")
    for name, model in models.items():
        model.save_pretrained(root / f"{name}_safetensors")
        save_bin(model, root / f"{name}_bin")
    return models, root


@pytest.mark.parametrize("kind", ["vision", "clip"])
def test_vision_from_bin_equals_the_safetensors_route_and_transformers(clip, kind):
    models, root = clip
    hf = models[kind]
    want = load_vision(root / f"{kind}_safetensors").state_dict()
    pixels = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = (hf if kind == "vision" else hf.vision_model)(pixel_values=pixels).last_hidden_state
    for path in (root / f"{kind}_bin", root / f"{kind}_bin" / "pytorch_model.bin"):    # a directory or the file
        ours = load_vision(path)
        assert same(ours.state_dict(), want), path
        with torch.no_grad():
            err = (ours(pixels) - reference).abs().max().item()
        print(f"load_vision({path.name}) vs transformers ({kind}): max abs err {err:.2e}")
        assert err <= TOL


def test_safety_checker_from_the_hubs_bin_equals_its_safetensors(tmp_path):
    """CompVis/stable-diffusion-safety-checker is served as pytorch_model.bin with transformers 4.x's keys
    (vision_model.vision_model.*): ConceptChecker reads its tower and concept tensors from it unchanged."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    from nanog4v.safety import ConceptChecker
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(text_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, vocab_size=64, bos_token_id=0,
                                                   eos_token_id=1, pad_token_id=1),
                                  vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, image_size=28, patch_size=14),
                                  projection_dim=8)
    ref = StableDiffusionSafetyChecker(cfg).eval()
    with torch.no_grad():
        ref.concept_embeds.normal_(), ref.special_care_embeds.normal_()
        ref.concept_embeds_weights.uniform_(-0.2, 0.2), ref.special_care_embeds_weights.fill_(2.0)
    ref.save_pretrained(tmp_path / "safetensors")
    (tmp_path / "bin").mkdir()
    ref.config.save_pretrained(tmp_path / "bin")
    state = {("vision_model." + k if k.startswith("vision_model.") and not k.startswith("vision_model.vision_model.")
              else k): v for k, v in ref.state_dict().items()}
    assert any(k.startswith("vision_model.vision_model.") for k in state)
    save_torch_state_dict(state, tmp_path / "bin", safe_serialization=False)
    frames = np.random.default_rng(2).integers(0, 256, (6, 40, 48, 3), dtype=np.uint8)
    a, b = ConceptChecker.from_pretrained(tmp_path / "safetensors"), ConceptChecker.from_pretrained(tmp_path / "bin")
    (flags_a, scores_a), (flags_b, scores_b) = a(frames), b(frames)
    assert torch.equal(a.embed(frames), b.embed(frames))
    assert np.array_equal(np.asarray(flags_a), np.asarray(flags_b))
    assert np.array_equal(np.asarray(scores_a), np.asarray(scores_b)) and np.asarray(scores_a).shape == (6, 17)


def test_safetensors_wins_where_a_directory_has_both(llama, tmp_path):
    """Single files and sharded ones: the .bin beside them (here one that would run code) is never opened."""
    hf, root = llama
    marker = tmp_path / "pwned"
    single = shutil.copytree(root / "safetensors", tmp_path / "single")
    torch.save({"model.norm.weight": torch.zeros(64), "evil": Evil(marker)}, single / "pytorch_model.bin")
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    for f in (root / "bin_sharded").iterdir():
        if f.name != "config.json":
            shutil.copy(f, sharded)
    want = load_llama(root / "safetensors").state_dict()
    for d in (single, sharded):
        assert {f.suffix for f in find_tensors(d).values()} == {".safetensors"}, d
        assert same(load_llama(d).state_dict(), want), d
    assert not marker.exists()


def test_read_bin_copies_every_kind_of_tensor_exactly_through_many_mappings(tmp_path, monkeypatch):
    """`_read_bin` copies in row slices and reopens the memory map every REMAP_BYTES (tiny here): scalars,
    empty, wide-row, strided, offset, shared-storage and bfloat16 tensors come out equal to torch.load's,
    contiguous, each in memory of its own."""
    g = torch.Generator().manual_seed(0)
    big, shared = torch.randn(10, 6, generator=g), torch.randn(40, 3, generator=g)
    state = {"scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4), "wide_rows": torch.randn(2, 300, generator=g),
             "transposed": torch.randn(16, 8, generator=g).t(), "offset": big[3:7], "tied_a": shared,
             "tied_b": shared, "bf16": torch.randn(33, 5, generator=g).bfloat16(),
             "int": torch.arange(70, dtype=torch.int64)}
    file = tmp_path / "pytorch_model.bin"
    torch.save(state, file)
    opened = []
    real = safetensors_io._bin_state
    monkeypatch.setattr(safetensors_io, "_bin_state", lambda f: opened.append(f) or real(f))
    monkeypatch.setattr(safetensors_io, "REMAP_BYTES", 256)
    sources = find_tensors(file)
    assert sources == {k: file for k in state}
    opened.clear()
    got = read_tensors(sources, state)
    assert len(opened) >= sum(t.nbytes for t in state.values()) // 256 // 2      # reopened all along the way
    reference = torch.load(file, weights_only=True)
    for k, t in got.items():
        assert t.dtype == reference[k].dtype and torch.equal(t, reference[k]) and t.is_contiguous(), k
    pointers = [t.untyped_storage().data_ptr() for t in got.values() if t.numel()]
    assert len(set(pointers)) == len(pointers)                                   # tied_a, tied_b: two copies


# --- hostile and unlucky .bin files ---------------------------------------------------------------------------

class Custom:
    """A class the unpickler would have to import to rebuild the file's object."""


NEEDS_MORE = ("refused: its pickle needs more than tensors and plain containers ({}), and .bin files are only read "
              "with torch.load(weights_only=True)")
NOT_FLAT = "not a flat state dict of tensors: {}"
LEGACY = "not a PyTorch checkpoint in torch.save's zip format (a legacy or other pickle is not read)"
NORM = {"model.norm.weight": torch.ones(64)}
HOSTILE = {   # name: (payload given the marker path, torch.save options, the problem after "{file}: ")
    "code": (lambda m: {**NORM, "x": Evil(m)}, {}, NEEDS_MORE.format("os.makedirs")),
    "custom class": (lambda m: {**NORM, "x": Custom()}, {}, NEEDS_MORE.format(f"{__name__}.Custom")),
    "counter": (lambda m: {**NORM, "counts": collections.Counter("aab")}, {}, NOT_FLAT.format("'counts' (Counter)")),
    "int value": (lambda m: {**NORM, "step": 3}, {}, NOT_FLAT.format("'step' (int)")),
    "nested": (lambda m: {"model": NORM}, {}, NOT_FLAT.format("'model' (dict)")),
    "int key": (lambda m: {0: torch.ones(64)}, {}, NOT_FLAT.format("0 (Tensor)")),
    "list": (lambda m: [torch.ones(64)], {}, "not a state dict (a pickled list)"),
    "legacy": (lambda m: NORM, {"_use_new_zipfile_serialization": False}, LEGACY),
    "legacy with code": (lambda m: {**NORM, "x": Evil(m)}, {"_use_new_zipfile_serialization": False}, LEGACY),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_bin_is_refused_naming_the_file_and_its_code_never_runs(llama, tmp_path, name):
    payload, options, problem = HOSTILE[name]
    marker = tmp_path / "pwned"
    file = llama_dir_with(llama, tmp_path / "llama", payload(marker), **options)
    for load in (lambda: load_llama(file.parent), lambda: find_tensors(file)):
        with pytest.raises(CheckpointError) as e:
            load()
        assert str(e.value) == f"{file}: {problem}"
    assert not marker.exists()
    if "code" in name:                                  # the payload is live: an unrestricted load runs it
        torch.load(file, weights_only=False)
        assert marker.is_dir()


def test_a_hostile_shard_is_refused_by_name(llama, tmp_path):
    marker = tmp_path / "pwned"
    d = shutil.copytree(llama[1] / "bin_sharded", tmp_path / "llama")
    shard = sorted(d.glob("pytorch_model-*.bin"))[1]
    torch.save({**torch.load(shard, weights_only=True), "x": Evil(marker)}, shard)
    with pytest.raises(CheckpointError) as e:
        load_llama(d)
    assert str(e.value) == f"{shard}: {NEEDS_MORE.format('os.makedirs')}"
    assert not marker.exists()
    shard.unlink()
    with pytest.raises(CheckpointError) as e:
        load_llama(d)
    assert str(e.value) == f"{d / 'pytorch_model.bin.index.json'}: shard files missing: {shard}"


def test_a_truncated_or_integer_bin_is_refused_by_name(llama, tmp_path):
    d = shutil.copytree(llama[1] / "bin", tmp_path / "llama")
    file = d / "pytorch_model.bin"
    whole = file.read_bytes()
    file.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError) as e:
        load_llama(d)
    assert str(e.value) == f"{file}: truncated or damaged (a zip file without its central directory)"
    state = torch.load(llama[1] / "bin" / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "model.norm.weight": torch.ones(64, dtype=torch.int64)}, file)
    with pytest.raises(CheckpointError) as e:
        load_llama(d)
    assert str(e.value) == f"{d}: cannot load into LLaMA: wrong dtype: model.norm.weight (I64)"


# --- memory: a .bin loads in about its own size, as a safetensors file does -----------------------------------

RSS_SCRIPT = """
import re, sys
import torch
import nanog4v.safetensors_io as safetensors_io
from nanog4v.weights import load_llama

def peak():                                 # VmHWM: this process's peak RSS (ru_maxrss carries the parent's over exec)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

torch.set_num_threads(1)
safetensors_io.REMAP_BYTES = 2 * 2**20
for warm in sys.argv[2:]:                   # torch's lazily loaded kernels and the allocator's first arenas
    load_llama(warm)
before = peak()
model = load_llama(sys.argv[1])
print(peak() - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads VmHWM from /proc/self/status")
def test_peak_memory_of_a_bin_load_stays_near_its_bytes(llama, tmp_path):
    """A ~43 MB LLaMA, REMAP_BYTES 2 MiB: the peak RSS a load adds is within 1.1x of the file's bytes by either
    route (a copy out of a mapping that stayed open would hold the mapped pages too: 2x)."""
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA, "hidden_size": 256, "intermediate_size": 688,
                                                                   "num_hidden_layers": 4, "num_key_value_heads": 4,
                                                                   "vocab_size": 16000}))
    hf.save_pretrained(tmp_path / "safetensors")
    save_bin(hf, tmp_path / "bin")
    del hf
    warm = [str(llama[1] / "safetensors"), str(llama[1] / "bin")]
    for route, weights in (("safetensors", "model.safetensors"), ("bin", "pytorch_model.bin")):
        size = (tmp_path / route / weights).stat().st_size
        done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tmp_path / route), *warm], capture_output=True,
                              text=True, cwd=ROOT, timeout=300)
        assert done.returncode == 0, done.stderr
        ratio = int(done.stdout) / size
        print(f"{route}: {size / 2**20:.1f} MiB, peak RSS added {ratio:.3f}x the bytes")
        assert 0.9 <= ratio <= 1.1, (route, ratio)
