"""mPLUG-Owl's video model at its released size on this machine: load, video encoding, one chat turn.

    python bench/mplug_owl.py                    # full size: writes ≈14.3 GB (bf16) to /tmp/owl-full
    python bench/mplug_owl.py --tiny             # smoke test: 2 ViT + 2 LLaMA layers (≈1.5 GB in /tmp/owl-tiny)
    python bench/mplug_owl.py --bin              # also pytorch_model.bin (in DIR-bin) and its load
    python bench/mplug_owl.py DIR                # another directory (delete it yourself afterwards)

No weights can be downloaded, so:

1. Random bf16 weights under the official names and shapes of `MAGAer13/mplug-owl-llama-7b-video` (the
   layout `tests/test_mplug_owl.py::official_state` writes at tiny size: the ViT-L/14 with its temporal
   modules, the joint-query abstractor, LLaMA-7B, RoPE's saved `inv_freq`), with a transformers-4.29-era
   nested config.json, written one tensor at a time (`safetensors_io.write_checkpoint`: little RAM) as
   one model.safetensors, plus the real LLaMA tokenizer (../shared/assets/llama-tokenizer). An existing
   directory with the same config.json is reused. `--bin` also writes pytorch_model.bin (torch.save's
   zip) into DIR-bin, from memory-mapped views of the safetensors file (so it needs no 14 GB of RAM).
2. In a fresh subprocess (so that its memory counts nothing but the load and the turn):
   `assistant.load_owl_chat_model(DIR, dtype=bfloat16)`, whose `weights.load_mplug_owl` call is timed,
   and its peak RSS (VmHWM; ru_maxrss of a child starts at its parent's RSS) against the checkpoint's
   bytes (target ≤ 1.1×); then one chat turn as chat.py runs it, greedy, on `examples/toy_clip.mp4`
   (4 frames): `Assistant.add_video` (frame decoding, ViT + abstractor timed apart) and
   `ask("What is happening in the video?")`: time to first token (from `ask` to the end of the prefill)
   and decode ms/token (the interval between consecutive LLaMA forwards: sampling and detokenizing
   included), against the bandwidth limit: every decode step reads the LLaMA's weights except the
   embedding table once, so s/token ≥ those bytes / the read bandwidth (`x.sum()` over 1 GiB fp32, best
   of 5, `bench/llama7b.py`'s helper).
3. For DIR-bin (with --bin): the load alone, in its own subprocess.

Load times depend on how much of the file the page cache holds (of a checkpoint just written: much of it).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from llama7b import read_bandwidth, rss_bytes  # noqa: E402  (bench/llama7b.py's helpers)
from nanog4v.safetensors_io import write_checkpoint  # noqa: E402
from nanog4v.weights import mplug_owl_abstractor_mlp  # noqa: E402

GB = 1e9
TOKENIZER = ROOT.parent / "shared" / "assets" / "llama-tokenizer" / "tokenizer.model"
CLIP = ROOT / "examples" / "toy_clip.mp4"
QUESTION = "What is happening in the video?"


# --- the checkpoint ------------------------------------------------------------------------------------

def owl_config(vision_layers: int = 24, llm_layers: int = 32) -> dict:
    """The released config.json's sizes (transformers 4.29: nested configs, no num_key_value_heads)."""
    return {
        "architectures": ["MplugOwlForConditionalGeneration"], "model_type": "mplug-owl", "num_query_tokens": 64,
        "torch_dtype": "bfloat16", "transformers_version": "4.29.1",
        "vision_config": {"model_type": "mplug_owl_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                          "num_hidden_layers": vision_layers, "num_attention_heads": 16, "num_channels": 3,
                          "image_size": 224, "patch_size": 14, "layer_norm_eps": 1e-6, "hidden_act": "quick_gelu"},
        "visual_abstractor_config": {"model_type": "mplug_owl_visual_abstract", "hidden_size": 1024,
                                     "num_hidden_layers": 6, "num_attention_heads": 16, "intermediate_size": 4096,
                                     "encoder_hidden_size": 1024, "layer_norm_eps": 1e-6},
        "text_config": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                        "num_hidden_layers": llm_layers, "num_attention_heads": 32, "vocab_size": 32000,
                        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "hidden_act": "silu",
                        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "tie_word_embeddings": False,
                        "torch_dtype": "bfloat16"},
    }


def official_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Official key -> shape, in the order of tests/test_mplug_owl.py::official_state, for any config."""
    v, a, t = config["vision_config"], config["visual_abstractor_config"], config["text_config"]
    D, F, P, S = v["hidden_size"], v["intermediate_size"], v["patch_size"], v["image_size"]
    N = config["num_query_tokens"]
    H = mplug_owl_abstractor_mlp(a["intermediate_size"])
    d, f, vocab = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    st: dict[str, tuple[int, ...]] = {}
    norm = lambda pre, n: st.update({f"{pre}.weight": (n,), f"{pre}.bias": (n,)})           # noqa: E731
    lin = lambda pre, i, o: st.update({f"{pre}.weight": (o, i), f"{pre}.bias": (o,)})       # noqa: E731
    st |= {"query_tokens": (1, N, D), "temporal_query_tokens": (1, N, D),
           "vision_model.embeddings.cls_token": (1, 1, D),
           "vision_model.embeddings.position_embedding": (1, 1 + (S // P) ** 2, D),
           "vision_model.embeddings.patch_embed.weight": (D, v.get("num_channels", 3), P, P)}
    norm("vision_model.embeddings.pre_layernorm", D)
    norm("vision_model.post_layernorm", D)
    for i in range(v["num_hidden_layers"]):
        pre = f"vision_model.encoder.layers.{i}"
        norm(f"{pre}.input_layernorm", D), norm(f"{pre}.post_attention_layernorm", D)
        lin(f"{pre}.self_attn.query_key_value", D, 3 * D), lin(f"{pre}.self_attn.dense", D, D)
        lin(f"{pre}.mlp.fc1", D, F), lin(f"{pre}.mlp.fc2", F, D), norm(f"{pre}.temporal.ln", D)
        st |= {f"{pre}.temporal.down_proj.weight": (D // 2, D, 1, 1, 1), f"{pre}.temporal.down_proj.bias": (D // 2,),
               f"{pre}.temporal.conv.weight": (D // 2, 1, 3, 1, 1), f"{pre}.temporal.conv.bias": (D // 2,),
               f"{pre}.temporal.up_proj.weight": (D, D // 2, 1, 1, 1), f"{pre}.temporal.up_proj.bias": (D,)}
    for i in range(a["num_hidden_layers"]):
        pre = f"abstractor.encoder.layers.{i}.crossattention"
        norm(f"{pre}.norm1", D), norm(f"{pre}.normk", D), norm(f"{pre}.output.norm2", D)
        for name in ("attention.query", "attention.key", "attention.value", "output.out_proj"):
            lin(f"{pre}.{name}", D, D)
        lin(f"{pre}.output.mlp.w1", D, H), lin(f"{pre}.output.mlp.w3", D, H), lin(f"{pre}.output.mlp.w2", H, D)
        norm(f"{pre}.output.mlp.ffn_ln", H)
    lin("abstractor.visual_fc", D, d), lin("abstractor.temporal_visual_fc", D, d)
    st |= {"abstractor.vit_eos": (1, 1, d), "language_model.model.embed_tokens.weight": (vocab, d),
           "language_model.model.norm.weight": (d,), "language_model.lm_head.weight": (vocab, d)}
    for i in range(t["num_hidden_layers"]):
        pre = f"language_model.model.layers.{i}"
        st |= {f"{pre}.{name}.weight": (o, i_) for name, i_, o in
               [("self_attn.q_proj", d, d), ("self_attn.k_proj", d, d), ("self_attn.v_proj", d, d),
                ("self_attn.o_proj", d, d), ("mlp.gate_proj", d, f), ("mlp.up_proj", d, f), ("mlp.down_proj", f, d)]}
        st |= {f"{pre}.input_layernorm.weight": (d,), f"{pre}.post_attention_layernorm.weight": (d,),
               f"{pre}.self_attn.rotary_emb.inv_freq": (d // t["num_attention_heads"] // 2,)}
    return st


def random_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """bf16, seeded by the key: norm gains 1 + N(0, 0.02), everything else N(0, 0.02); inv_freq RoPE's own."""
    if key.endswith("rotary_emb.inv_freq"):
        return (1.0 / 10000 ** (torch.arange(0, 2 * shape[0], 2) / (2 * shape[0]))).to(torch.bfloat16)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    x = torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=g)
    module = key.rpartition(".")[0].rpartition(".")[2]                 # "…layers.3.input_layernorm.weight"
    if key.endswith(".weight") and ("norm" in module or module == "ln" or module.endswith("_ln")):
        x += 1
    return x


def write_random_checkpoint(path: Path, config: dict) -> int:
    """config.json + model.safetensors (one file, as the release's one file) + tokenizer.model; bytes."""
    if not ((path / "config.json").is_file() and json.loads((path / "config.json").read_text()) == config
            and (path / "model.safetensors").is_file()):
        shapes = official_shapes(config)
        t0 = time.perf_counter()
        write_checkpoint(path, config, {k: (s, torch.bfloat16) for k, s in shapes.items()},
                         lambda key: random_tensor(key, shapes[key]), max_shard_size="100GB")
        print(f"wrote {path}: {len(shapes)} tensors, {(path / 'model.safetensors').stat().st_size / GB:.2f} GB "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
    else:
        print(f"reusing {path}", flush=True)
    if not (path / "tokenizer.model").is_file():
        shutil.copyfile(TOKENIZER, path / "tokenizer.model")
    return (path / "model.safetensors").stat().st_size


def write_bin(src: Path, dst: Path) -> None:
    """dst/pytorch_model.bin (torch.save's zip) holding src's safetensors tensors, read through a memory map
    (file pages, not anonymous memory: the 14 GB need not fit in RAM twice). Runs in its own process."""
    import mmap
    import struct
    config = (src / "config.json").read_text()
    if (dst / "pytorch_model.bin").is_file() and (dst / "config.json").read_text() == config:
        print(f"reusing {dst}", flush=True)
        return
    dst.mkdir(parents=True, exist_ok=True)
    t0, file = time.perf_counter(), src / "model.safetensors"
    with open(file, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)     # private: nothing is written back
    state = {}
    for key, info in header.items():
        if key != "__metadata__":
            start, end = info["data_offsets"]
            state[key] = torch.frombuffer(mm, dtype=torch.bfloat16, count=(end - start) // 2,
                                          offset=8 + n + start).view(info["shape"])
    torch.save(state, dst / "pytorch_model.bin.partial")
    os.replace(dst / "pytorch_model.bin.partial", dst / "pytorch_model.bin")
    shutil.copyfile(src / "tokenizer.model", dst / "tokenizer.model")
    (dst / "config.json").write_text(config)
    print(f"wrote {dst / 'pytorch_model.bin'}: {(dst / 'pytorch_model.bin').stat().st_size / GB:.2f} GB "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)


# --- the measurement (a fresh process) -------------------------------------------------------------------

def vm_hwm() -> int:
    """This process's peak RSS (VmHWM: its own address space's, unlike ru_maxrss after fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(path: Path, threads: int, new_tokens: int, chat: bool) -> dict:
    torch.set_num_threads(threads)
    from nanog4v import assistant
    from nanog4v.generate import SamplingConfig
    from nanog4v.safety import Lexicon, Safety
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    rec = {"files": [f.name for f in files], "bytes": sum(f.stat().st_size for f in files),
           "rss_before": rss_bytes(), "hwm_before": vm_hwm(), "threads": torch.get_num_threads()}
    real_load = assistant.load_mplug_owl

    def timed_load(where, dtype):
        t0 = time.perf_counter()
        model = real_load(where, dtype)
        rec["load_s"] = time.perf_counter() - t0
        rec["hwm_load"] = vm_hwm()
        rec["ru_maxrss_load"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return model

    assistant.load_mplug_owl = timed_load
    try:
        model, tokenizer, template = assistant.load_owl_chat_model(path, dtype=torch.bfloat16)
    finally:
        assistant.load_mplug_owl = real_load
    if not chat:
        return rec
    llm = model.llm
    rec["llm_step_bytes"] = sum(p.numel() * p.element_size() for n, p in llm.named_parameters()
                                if n != "embed_tokens.weight")
    rec["video_tokens"] = model.num_video_tokens

    marks: dict[str, list] = {"vision": [], "abstractor": [], "llm": []}   # (start, end, input length)

    def pre(name):
        def hook(module, args, kwargs):
            x = kwargs.get("embeds") if kwargs.get("embeds") is not None else (args[0] if args else None)
            marks[name].append([time.perf_counter(), None, tuple(x.shape) if x is not None else None])
        return hook

    def post(name):
        def hook(module, args, output):
            marks[name][-1][1] = time.perf_counter()
        return hook

    for name, module in (("vision", model.vision), ("abstractor", model.abstractor), ("llm", llm)):
        module.register_forward_pre_hook(pre(name), with_kwargs=True)
        module.register_forward_hook(post(name))

    bot = assistant.Assistant(model, tokenizer, template=template, sampling=SamplingConfig(max_new_tokens=new_tokens),
                              safety=Safety(lexicon=Lexicon(), video=None), generator=None)
    t0 = time.perf_counter()
    attached = bot.add_video(CLIP)
    rec["add_video_s"] = time.perf_counter() - t0
    (vs, ve, vshape), (as_, ae, _) = marks["vision"][0], marks["abstractor"][0]
    rec |= {"attached": attached, "pixels": vshape, "vit_s": ve - vs, "abstractor_s": ae - as_,
            "encode_s": ae - vs, "frames_s": vs - t0}
    t0 = time.perf_counter()
    result = bot.ask(QUESTION)
    ask_s = time.perf_counter() - t0
    steps = marks["llm"]
    ends = [e for _, e, _ in steps]
    rec |= {"reply": result.reply, "new_tokens": result.new_tokens, "errors": result.errors,
            "prompt_tokens": steps[0][2][1], "ttft_s": ends[0] - t0, "prefill_s": ends[0] - steps[0][0],
            "ask_s": ask_s, "decode_steps": len(steps) - 1,
            "decode_s_per_token": statistics.median(b - a for a, b in zip(ends, ends[1:])) if len(steps) > 2 else None,
            "decode_forward_s": statistics.median(e - s for s, e, _ in steps[1:]) if len(steps) > 2 else None,
            "hwm_turn": vm_hwm()}
    read_bw, copy_bw = read_bandwidth("cpu")
    rec |= {"read_bw": read_bw, "copy_bw": copy_bw}
    return rec


def child(path: Path, args, chat: bool) -> dict:
    cmd = [sys.executable, __file__, str(path), "--measure", "chat" if chat else "load", "--threads", str(args.threads),
           "--tokens", str(args.tokens)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if done.returncode != 0:
        sys.exit(f"measurement of {path} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:")) * 1024
    return (f"{datetime.date.today()}; {cpu}, {os.cpu_count()} cores, {mem / 2**30:.0f} GiB RAM; "
            f"torch {torch.__version__}, `get_cpu_capability()` = {torch.backends.cpu.get_cpu_capability()}; "
            f"Python {platform.python_version()}")


def load_rows(label: str, r: dict) -> list[tuple[str, str]]:
    rss = r["hwm_load"]
    return [(f"{label}: checkpoint", f"{r['bytes'] / GB:.2f} GB ({', '.join(r['files'])})"),
            (f"{label}: `load_mplug_owl(dir, bfloat16)` time",
             f"{r['load_s']:.1f} s ({r['bytes'] / GB / r['load_s']:.2f} GB/s; page cache as the write left it)"),
            (f"{label}: peak RSS of the load / checkpoint bytes",
             f"**{(rss - r['rss_before']) / r['bytes']:.3f}** without the {r['rss_before'] / GB:.2f} GB of the "
             f"interpreter + imports ({rss / r['bytes']:.3f} with them; peak {rss / GB:.2f} GB; "
             f"ru_maxrss {r['ru_maxrss_load'] / GB:.2f} GB)")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", type=Path,
                    help="checkpoint directory (default /tmp/owl-full; --tiny: /tmp/owl-tiny)")
    ap.add_argument("--tiny", action="store_true", help="2 ViT layers and 2 LLaMA layers: a smoke test")
    ap.add_argument("--vision-layers", type=int, help="ViT layers (default 24; --tiny 2)")
    ap.add_argument("--llm-layers", type=int, help="LLaMA layers (default 32; --tiny 2)")
    ap.add_argument("--bin", action="store_true", help="also write DIR-bin/pytorch_model.bin and time its load")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=16, help="max new tokens of the reply")
    ap.add_argument("--measure", choices=["chat", "load"], help=argparse.SUPPRESS)      # internal: the fresh process
    ap.add_argument("--write-bin", type=Path, help=argparse.SUPPRESS)                   # internal: DIR-bin
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.dir, args.threads, args.tokens, args.measure == "chat")))
        return
    if args.write_bin:
        return write_bin(args.dir, args.write_bin)
    vl = args.vision_layers or (2 if args.tiny else 24)
    ll = args.llm_layers or (2 if args.tiny else 32)
    path = args.dir or Path("/tmp/owl-tiny" if args.tiny else "/tmp/owl-full")
    config = owl_config(vl, ll)
    print(f"machine: {machine()}", flush=True)
    write_random_checkpoint(path, config)
    r = child(path, args, chat=True)
    rows = [("config", f"ViT {vl} layers (1024, 16 heads, 257 tokens/frame, temporal modules), abstractor 6 layers "
                       f"(64 + 64 queries), LLaMA {ll} layers (4096, 32 heads, MLP 11008, vocab 32000); bf16 "
                       f"(abstractor fp32 once loaded); {r['threads']} threads")]
    rows += load_rows("safetensors", r)
    limit = r["llm_step_bytes"] / r["read_bw"]
    dec, fwd = r["decode_s_per_token"], r["decode_forward_s"]
    rows += [
        ("video: `add_video` (4 frames of examples/toy_clip.mp4)",
         f"{r['add_video_s']:.2f} s: frames {r['frames_s']:.2f} s, ViT {r['vit_s']:.2f} s on {r['pixels']}, "
         f"abstractor {r['abstractor_s']:.2f} s"),
        ("**video encoding (ViT + abstractor)**", f"**{r['encode_s']:.2f} s**"),
        ("prompt", f"{r['prompt_tokens']} tokens ({r['video_tokens']} video + "
                   f"{r['prompt_tokens'] - r['video_tokens']} text), "
                    "mPLUG-Owl's template"),
        ("**time to first token** (`ask` → end of the prefill)",
         f"**{r['ttft_s']:.2f} s** (prefill forward {r['prefill_s']:.2f} s, "
         f"{r['prompt_tokens'] / r['prefill_s']:.0f} tokens/s)"),
        ("read bandwidth (x.sum(), 1 GiB fp32)", f"{r['read_bw'] / GB:.1f} GB/s (copy: {r['copy_bw'] / GB:.1f} GB/s)"),
        ("bandwidth limit: LLaMA weights read per step / read bandwidth",
         f"{r['llm_step_bytes'] / GB:.2f} GB / {r['read_bw'] / GB:.1f} GB/s = {limit * 1e3:.1f} ms/token"),
    ]
    if dec is not None:
        rows += [("**decode** (median interval between steps)",
                  f"**{dec * 1e3:.1f} ms/token** ({1 / dec:.2f} tok/s, weights streamed at "
                  f"{r['llm_step_bytes'] / dec / GB:.1f} GB/s; the forward alone {fwd * 1e3:.1f} ms)"),
                 ("**% of the bandwidth limit**", f"**{100 * limit / dec:.0f}%**")]
    rows += [("reply", f"{r['new_tokens']} tokens in {r['ask_s']:.1f} s: {r['reply'][:80]!r}"
                       + (f"; errors {r['errors']}" if r["errors"] else "")),
             ("peak RSS of the whole turn", f"{r['hwm_turn'] / GB:.2f} GB")]
    print(f"\n{machine()}\n\n| what | measured |\n| --- | --- |")
    for what, value in rows:
        print(f"| {what} | {value} |", flush=True)
    if args.bin:                                             # after the table: a failure here loses nothing
        bin_dir = path.with_name(path.name + "-bin")
        subprocess.run([sys.executable, __file__, str(path), "--write-bin", str(bin_dir)], check=True)
        for what, value in load_rows("pytorch_model.bin", child(bin_dir, args, chat=False)):
            print(f"| {what} | {value} |", flush=True)


if __name__ == "__main__":
    main()
