"""train.py on the `test` preset: stages 1 and 2 learn and touch only their own parameters, resume is exact,
two gloo processes match one, cached features match pixels, activation checkpointing changes nothing, and
bad inputs give one-line errors. Everything (clips, data, tokenizer, frozen ViT and LLaMA in their
official layouts) is made in a temporary directory."""
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

import nanog4v.config
import nanog4v.model
from conftest import ROOT, train_args
from nanog4v.abstractor import build_abstractor
from nanog4v.config import LoraConfig, preset
from nanog4v.data import ConversationDataset, collate
from nanog4v.tokenizer import Tokenizer
from nanog4v.inference import prompt_embeddings, reply_accuracy, video_tokens
from nanog4v.readers import read_records
from nanog4v.trainer import BatchPlan, load_checkpoint, lr_at, make_optimizer, save_checkpoint
from nanog4v.weights import load_llama, load_vision

spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
TRAIN = importlib.util.module_from_spec(spec)
spec.loader.exec_module(TRAIN)

CFG = preset("test")
LOG_KEYS = ("step", "epoch", "loss", "lr", "grad_norm", "tokens")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(train_world):
    return train_world


args = train_args


def run(world, out, stage, *extra):
    return TRAIN.run(TRAIN.parse_args(args(world, out, stage, *extra)))


def log_of(out):
    return [{k: row[k] for k in LOG_KEYS} for row in map(json.loads, (out / "log.jsonl").read_text().splitlines())]


def decreasing(losses, by: float) -> bool:
    """Full-batch steps on a fixed set: the loss falls at every step, and by at least `by` in all."""
    return all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - by


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- pieces ------------------------------------------------------------------------------------------

def test_lr_warms_up_linearly_then_decays_by_cosine_to_a_tenth():
    lrs = [lr_at(s, 1.0, warmup=4, total=14) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and lrs[-1] == pytest.approx(0.1, abs=1e-12)
    assert lrs[4 + 9 // 2] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 4 / 9)), abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lr_at(0, 2e-5, warmup=0, total=1) == 2e-5


def test_weight_decay_only_on_matrices():
    abstractor = build_abstractor(CFG.abstractor, CFG.vision.dim, CFG.llama.dim, CFG.num_frames)
    opt = make_optimizer(abstractor.named_parameters(), lr=1e-3, weight_decay=0.1)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(abstractor.parameters()))


def test_batch_plan_visits_each_example_once_per_epoch_and_splits_across_ranks():
    one = BatchPlan(10, batch_size=4, grad_accum=2, seed=3)
    assert one.steps_per_epoch == 2 and one.position(3) == (1, 4)
    for epoch in range(2):
        seen = [i for s in (2 * epoch, 2 * epoch + 1) for mb in one.micro_batches(s) for i in mb]
        assert len(seen) == 8 and len(set(seen)) == 8                        # 2 left over: dropped
    assert one.micro_batches(0) != one.micro_batches(2)                       # a new permutation per epoch
    ranks = [BatchPlan(10, 4, 2, world_size=2, rank=r, seed=3) for r in range(2)]
    for step in range(4):
        assert ranks[0].micro_batches(step) + ranks[1].micro_batches(step) == one.micro_batches(step)
    with pytest.raises(Exception, match="grad_accum"):
        BatchPlan(10, 4, 3)


# --- the two stages ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage1(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    result = run(world, out, 1, "--epochs", "8", "--batch-size", "4", "--lr", "3e-2",
                 "--val", str(world / "stage1_val.json"), "--eval-n", "2")
    return out, result


def test_stage1_lowers_the_loss_and_trains_only_the_abstractor(world, stage1):
    out, result = stage1
    losses = [row["loss"] for row in log_of(out)]
    assert len(losses) == 8 and result["step"] == 8 == result["total_steps"]
    assert decreasing(losses, by=0.02), losses                               # the same 4 examples every step
    model = result["model"]
    assert not model.has_lora
    assert same_tensors(model.vision.state_dict(), load_vision(world / "vit").state_dict())
    assert same_tensors(model.llm.state_dict(), load_llama(world / "llama").state_dict())
    torch.manual_seed(0)                                                     # train.py's init for --seed 0
    fresh = build_abstractor(CFG.abstractor, CFG.vision.dim, CFG.llama.dim, CFG.num_frames).state_dict()
    changed = [k for k, v in model.abstractor.state_dict().items() if not torch.equal(v, fresh[k])]
    assert changed == list(fresh), set(fresh) - set(changed)                  # every abstractor tensor moved
    for name in ("config.json", "gpt4video.safetensors", "last.pt", "loss.png", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["n"] == 2 and 0 <= summary["eval"]["accuracy"] <= 1


def test_stage2_from_stage1_trains_only_lora(world, stage1, tmp_path):
    init = stage1[0]
    result = run(world, tmp_path, 2, "--init", str(init), "--epochs", "6", "--batch-size", "6", "--lr", "1e-2")
    losses = [row["loss"] for row in log_of(tmp_path)]
    assert len(losses) == 6 and decreasing(losses, by=0.1), losses
    model = result["model"]
    trained = model.trainable_state_dict()
    assert any("lora_B" in k for k in trained) and all(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)
    assert same_tensors({k: v for k, v in trained.items() if k.startswith("abstractor.")},
                        load_file(str(init / "gpt4video.safetensors")))
    base = {k: v for k, v in model.llm.state_dict().items() if "lora_" not in k}
    assert same_tensors(base, load_llama(world / "llama").state_dict())
    assert same_tensors(model.vision.state_dict(), load_vision(world / "vit").state_dict())
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_reply_accuracy_gives_full_marks_to_a_model_that_memorised_its_answers(world):
    """The four questions are the same text; only the video tells the colour. So full marks need the eval
    prompts to carry the video exactly where training put it, and greedy replies to stop at </s>."""
    paths = {"vision": world / "vit", "llama": world / "llama", "init": None}
    model = TRAIN.build_model(CFG, paths, stage=1, dtype=torch.float32, seed=0)
    tokenizer = Tokenizer(world / "tokenizer.model")
    records = read_records([world / "stage1.json"], log=lambda *a: None)
    before = reply_accuracy(model, tokenizer, records)
    assert before["n"] == 4 and before["accuracy"] == 0.0
    model.llm.requires_grad_(True)                                           # memorise: train LLM + abstractor
    params = [p for p in model.parameters() if p.requires_grad]
    batch = collate([*ConversationDataset(records, tokenizer, model.cfg, max_seq_len=256)], tokenizer.pad_id)
    opt = torch.optim.Adam(params, lr=3e-3)
    for _ in range(300):
        loss = model(batch["input_ids"], batch["labels"], video_slots=batch["video_slots"], videos=batch["videos"])[1]
        if loss.item() < 0.01:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = reply_accuracy(model, tokenizer, records, batch_size=3)
    with torch.no_grad():                            # the eval prompt is exactly training's prefix, video included
        logits = model(batch["input_ids"], video_slots=batch["video_slots"], videos=batch["videos"])[0]  # (4, L, V)
        prefix = {**records[2], "turns": records[2]["turns"][:2]}
        embeds = prompt_embeddings(model, tokenizer, prefix, video_tokens(model, records[2]["videos"]))  # (L', d)
        torch.testing.assert_close(model.llm(embeds=embeds[None])[0], logits[2, :len(embeds)], rtol=0, atol=1e-5)
    assert loss.item() < 0.01 and after["accuracy"] == 1.0, after
    assert after["examples"][1] == {"prompt": "What colour is the square?", "answer": "It is green.",
                                    "reply": "It is green."}


# --- resume ------------------------------------------------------------------------------------------

def test_resume_after_a_stop_or_a_nan_continues_exactly(world, tmp_path, monkeypatch, capsys):
    """LoRA dropout on, so the RNG state matters; 6 examples, batch 2 in 2 micro-batches, 3 epochs."""
    test_preset = nanog4v.config.PRESETS["test"]
    monkeypatch.setitem(nanog4v.config.PRESETS, "test",
                        lambda: dataclasses.replace(test_preset(), lora=LoraConfig(r=4, alpha=8.0, dropout=0.5)))
    common = ("--epochs", "3", "--batch-size", "2", "--grad-accum", "2", "--save-every", "2", "--lr", "5e-3")
    run(world, tmp_path / "whole", 2, *common)
    whole = log_of(tmp_path / "whole")
    assert len(whole) == 9 and len({row["loss"] for row in whole}) == 9

    run(world, tmp_path / "cut", 2, *common, "--max-steps", "3")             # a stop after step 3 ...
    assert len(log_of(tmp_path / "cut")) == 3
    run(world, tmp_path / "cut", 2, *common, "--resume")                      # ... and the rest
    assert log_of(tmp_path / "cut") == whole
    assert same_tensors(*(load_file(str(tmp_path / d / "gpt4video.safetensors")) for d in ("cut", "whole")))

    real, calls = nanog4v.model.lm_loss, []                                  # a NaN in step 5's 2nd micro-batch
    def lm_loss(logits, labels):
        calls.append(1)
        return real(logits, labels) * (float("nan") if len(calls) == 10 else 1.0)
    monkeypatch.setattr(nanog4v.model, "lm_loss", lm_loss)
    assert TRAIN.main(args(world, tmp_path / "nan", 2, *common)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "at step 5" in err and "(step 4)" in err and "\n" not in err, err
    assert len(log_of(tmp_path / "nan")) == 4
    monkeypatch.setattr(nanog4v.model, "lm_loss", real)
    run(world, tmp_path / "nan", 2, *common, "--resume")
    assert log_of(tmp_path / "nan") == whole


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    state = {"version": 1, "step": 1, "epoch": 0, "index": 0, "trainable": {}, "optimizer": {}, "scheduler": {},
             "rng": [], "signature": {}}
    save_checkpoint(path, state)

    def disk_full(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(path, {**state, "step": 2})
    assert load_checkpoint(path)["step"] == 1 and list(tmp_path.iterdir()) == [path]


# --- equivalences ------------------------------------------------------------------------------------

TEARDOWN_ABORT = "terminate called without an active exception"


def torchrun(*argv, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone` (it finds a free port itself) on two CPU processes; a hang
    fails the test after `timeout` s. torch 2.13's gloo now and then aborts a process while the interpreter
    shuts down — after destroy_process_group has returned on every rank, all work done — with TEARDOWN_ABORT
    (seen in ~3 % of runs on a loaded 2-core machine, with or without this repository's code); such a run is
    run once more."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, argv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for attempt in range(2):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        if done.returncode == 0 or TEARDOWN_ABORT not in done.stderr or "[rank" in done.stderr:
            return done
    return done


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed/gloo missing")
@pytest.mark.parametrize("stage", [1, 2])
def test_two_gloo_processes_follow_the_one_process_trajectory(world, tmp_path, stage):
    """Global batch 4 = 2 micro-batches of 2; one process runs both, two processes one each (DDP averages).
    Same micro-batches, so at most the order of float additions differs: losses agree to 1e-5."""
    common = ("--epochs", "3", "--batch-size", "4", "--grad-accum", "2", "--lr", "1e-2")
    run(world, tmp_path / "one", stage, *common)
    done = torchrun(ROOT / "train.py", *args(world, tmp_path / "two", stage, *common), "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = log_of(tmp_path / "one"), log_of(tmp_path / "two")
    assert [r["tokens"] for r in one] == [r["tokens"] for r in two]
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=0, atol=1e-5)
    np.testing.assert_allclose([r["grad_norm"] for r in two], [r["grad_norm"] for r in one], rtol=1e-4)


def test_cached_features_give_the_losses_of_pixels(world, tmp_path):
    from nanog4v.features import main as features_main
    assert features_main(["--vision", str(world / "vit"), "--data", str(world / "stage1.json"),
                          "--out", str(tmp_path / "feat"), "--preset", "test", "--quiet"]) == 0
    files = sorted((tmp_path / "feat").glob("*.safetensors"))
    assert [f.stem for f in files] == ["c0", "c1", "c2", "c3"]
    assert load_file(str(files[0]))["features"].shape == (CFG.num_frames, CFG.vision.num_tokens, CFG.vision.dim)
    common = ("--epochs", "3", "--batch-size", "2", "--lr", "3e-3")
    run(world, tmp_path / "pixels", 1, *common)
    run(world, tmp_path / "cached", 1, *common, "--features-dir", str(tmp_path / "feat"))
    pixels, cached = log_of(tmp_path / "pixels"), log_of(tmp_path / "cached")
    assert len(pixels) == 6
    np.testing.assert_allclose([r["loss"] for r in cached], [r["loss"] for r in pixels], rtol=0, atol=1e-5)


def test_activation_checkpointing_changes_no_number(world, tmp_path):
    common = ("--epochs", "2", "--batch-size", "3", "--lr", "1e-2")
    run(world, tmp_path / "plain", 2, *common)
    run(world, tmp_path / "ckpt", 2, *common, "--activation-checkpointing")
    assert log_of(tmp_path / "ckpt") == log_of(tmp_path / "plain")


# --- errors ------------------------------------------------------------------------------------------

def _error(capsys, argv) -> str:
    assert TRAIN.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_errors_name_the_file_and_say_what_to_do(world, stage1, tmp_path, capsys):
    base = args(world, tmp_path / "out", 1)
    missing = tmp_path / "nope.json"
    assert f"{missing}: no such file" in _error(capsys, [*base, "--data", str(missing)])
    (tmp_path / "empty").mkdir()
    assert "not a GPT4Video checkpoint directory" in _error(capsys, [*base, "--init", str(tmp_path / "empty")])
    assert "last.pt: no checkpoint to resume from" in _error(capsys, [*base, "--resume"])
    assert "a run is already here" in _error(capsys, args(world, stage1[0], 1))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "last.pt").write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in _error(capsys, [*args(world, tmp_path / "bad", 1), "--resume"])
    assert "7b starts from the official" in _error(capsys, ["--stage", "0", "--preset", "7b"])
    assert "run the stages one by one to set --lr" in _error(capsys, ["--stage", "all", "--lr", "1e-3"])
    assert "--quick: stage 0's quick settings; --stage 1 has no stage 0" in _error(capsys, ["--stage", "1", "--quick"])
    assert "--world-n: must be a finite number >= 10, not 5" in _error(capsys, ["--stage", "0", "--preset", "test", "--world-n", "5",
                                               "--out", str(tmp_path / "s0")])
    if not (ROOT / "weights" / "clip-vit-large-patch14").exists():
        err = _error(capsys, ["--stage", "1", "--preset", "7b", "--data", str(world / "stage1.json")])
        assert "clip-vit-large-patch14: missing" in err and "weights/README.md" in err
    if not (ROOT / "weights" / "nano" / "vision").exists():
        assert "made by stage 0" in _error(capsys, ["--stage", "2"])
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--stage", "1", "--preset", "test"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr == "error: train.py: --vision is required with --preset test\n"


NEEDS_INIT = ("error: train.py: --preset test --stage 2 trains LoRA on top of a stage-1 model: pass --init DIR (the --out "
              "of python train.py --preset test --stage 1), or --no-init to train on a fresh, random abstractor\n")


def test_stage2_without_init_is_refused_unless_no_init_says_so(world, tmp_path, capsys):
    assert _error(capsys, ["--stage", "2", "--preset", "test"]) == NEEDS_INIT
    argv = [a for a in args(world, tmp_path / "out", 2) if a != "--no-init"]       # every path given, but no --init
    assert "--init" not in argv and len(argv) == len(args(world, tmp_path / "out", 2)) - 1
    assert _error(capsys, argv) == NEEDS_INIT
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:                                            # one or the other, not both
        TRAIN.parse_args([*argv, "--init", str(tmp_path), "--no-init"])
    assert e.value.code == 2 and "not allowed with argument --init" in capsys.readouterr().err


def test_a_stage2_run_names_its_llama_in_the_adapter_and_exports_from_it(world, tmp_path):
    """--no-init runs; the adapter's base_model_name_or_path is the LLaMA directory, which is all
    `python -m nanog4v.export` needs to write the merged LLaMA that transformers runs to our logits."""
    import transformers

    from nanog4v import export
    result = run(world, tmp_path / "run", 2, "--max-steps", "2", "--lr", "1e-2")
    assert "--no-init" in args(world, tmp_path / "run", 2) and result["step"] == 2
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((world / "llama").resolve())
    assert export.main(["--ckpt", str(tmp_path / "run"), "--tokenizer", str(world / "tokenizer.model"),
                        "--out", str(tmp_path / "exported")]) == 0
    llm = result["model"].llm.eval()
    ids = torch.tensor([Tokenizer(world / "tokenizer.model").encode("Show me a red circle.", bos=True)])
    with torch.no_grad():
        want, base = llm(ids), load_llama(world / "llama")(ids)
        got = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "exported").eval()(ids).logits
    assert (got - want).abs().max().item() <= 1e-5 and (want - base).abs().max().item() > 1e-3
