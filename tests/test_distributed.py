"""nanog4v/distributed.py: DDP holds only the trainable tensors (the frozen ones are neither broadcast nor
averaged), the ranks agree to skip a micro-batch one of them cannot load (counted, no hang), --grad-accum
is derived from the global batch and the world size (or refused before anything loads), and DataLoader
workers change no number (the same losses as none, an exact resume). Two gloo processes on the CPU, as
in tests/test_train.py (`torchrun`: every run is bounded by a subprocess timeout)."""
import dataclasses
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

import nanog4v.config
from conftest import ROOT, train_args
from nanog4v.data import ConversationDataset
from nanog4v.distributed import Dist, DistributedError, PlanSampler, default_num_workers, grad_accum_for
from nanog4v.trainer import BatchPlan
from test_train import torchrun                      # two gloo processes, bounded by a timeout

spec = importlib.util.spec_from_file_location("train_script_distributed", ROOT / "train.py")
TRAIN = importlib.util.module_from_spec(spec)
spec.loader.exec_module(TRAIN)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no gloo")]


def log_of(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# --- DDP holds the trainable tensors, and only them ---------------------------------------------------

WRAP = """
import json, sys, torch, torch.distributed as dist
from nanog4v.config import preset
from nanog4v.distributed import init_distributed, wrap_ddp
from nanog4v.model import GPT4Video

world, cfg, report = init_distributed("cpu"), preset("test"), {}
for stage in (1, 2):
    torch.manual_seed(world.rank)                        # every random tensor differs between the two ranks
    model = GPT4Video(cfg)
    model.set_stage(stage)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    net = wrap_ddp(model, world, "cpu")
    ref = GPT4Video(cfg)                                 # the same weights as this rank's wrapped model ...
    ref.set_stage(stage)
    ref.load_state_dict(model.state_dict())
    n = model.num_video_tokens
    ids = torch.randint(3, cfg.llama.vocab_size, (1, n + 9))           # ... and this rank's own data
    feats = torch.randn(1, cfg.num_frames, cfg.vision.num_tokens, cfg.vision.dim)
    for m in (ref, net):                                 # ref: this rank's gradient; net: DDP's
        m(ids, ids, video_slots=[(0, 1, 0)], features=feats)[1].backward()
    rows = {name: {"sum": p.detach().double().sum().item(), "moved": (p.detach() - before[name]).abs().max().item(),
                   "grad": None if p.grad is None else p.grad.double().flatten()[:50].tolist(),
                   "own_grad": None if r.grad is None else r.grad.double().flatten()[:50].tolist()}
            for (name, p), r in zip(model.named_parameters(), ref.parameters())}
    ranks = [None, None]
    dist.all_gather_object(ranks, rows)
    held = {id(p) for p in net._module_parameters}
    report[stage] = {"ignored": sorted(net.parameters_to_ignore), "buffers": [b for b, _ in model.named_buffers()],
                     "held": sorted(n for n, p in model.named_parameters() if id(p) in held),
                     "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
                     "frozen": sorted(n for n, p in model.named_parameters() if not p.requires_grad), "ranks": ranks}
if world.main:
    json.dump(report, open(sys.argv[1], "w"))
dist.barrier()                                           # as train.py does: no rank tears down while one works
dist.destroy_process_group()
"""


def test_ddp_neither_broadcasts_nor_averages_the_frozen_parameters(tmp_path):
    (tmp_path / "wrap.py").write_text(WRAP)
    done = torchrun(tmp_path / "wrap.py", tmp_path / "report.json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    for stage, r in report.items():
        trainable, frozen, (zero, one) = set(r["trainable"]), set(r["frozen"]), r["ranks"]
        assert trainable and all(("lora_" in n) == (stage == "2") for n in trainable), stage
        assert set(r["ignored"]) == frozen | set(r["buffers"]) and set(r["held"]) == trainable
        for name in frozen:                                   # not broadcast: each rank keeps its own values
            assert zero[name]["moved"] == one[name]["moved"] == 0 and zero[name]["grad"] is None is one[name]["grad"]
        assert zero["llm.embed_tokens.weight"]["sum"] != one["llm.embed_tokens.weight"]["sum"]   # they do differ
        for name in trainable:                                # broadcast from rank 0, gradients averaged
            assert zero[name]["moved"] == 0 and zero[name]["sum"] == one[name]["sum"], name
            np.testing.assert_allclose(zero[name]["grad"], one[name]["grad"], rtol=0, atol=1e-7)
            np.testing.assert_allclose(zero[name]["grad"], (np.array(zero[name]["own_grad"]) +
                                                            one[name]["own_grad"]) / 2, rtol=1e-5, atol=1e-7)
        assert any(one[n]["moved"] > 0 for n in trainable)     # rank 1's own trainable values were replaced
        assert any(zero[n]["own_grad"] != one[n]["own_grad"] for n in trainable)   # the ranks' own gradients differ


# --- the batch plan over processes and workers ----------------------------------------------------------

def test_plan_sampler_names_micro_batches_as_one_process_would():
    one = list(PlanSampler(BatchPlan(12, 4, 4, seed=5), 1, 3))
    two = [list(PlanSampler(BatchPlan(12, 4, 4, world_size=2, rank=r, seed=5), 1, 3)) for r in range(2)]
    assert [b for s in range(2) for b in two[0][2 * s:2 * s + 2] + two[1][2 * s:2 * s + 2]] == one
    assert [[k[:2] for k in b] for b in one] == [[(s, g)] for s in (1, 2) for g in range(4)]


GRAD_ACCUM = [  # batch, --grad-accum (None: the preset's 1), processes: the micro-batches, or the error
    (4, None, 1, 1), (4, None, 2, 2), (16, None, 8, 8), (8, 2, 2, 2), (8, 4, 2, 4), (6, 3, 1, 3),
    (2, None, 8, "--batch-size 2: the global batch does not split into 8 equal micro-batches (one or more for "
                 "each of the 8 processes); pass a multiple of 8"),
    (4, 3, 2, "--grad-accum 3: counts the micro-batches of a step over all 2 processes, so it must be a multiple "
              "of 2 (e.g. 4), or leave it out to derive it"),
    (6, 4, 1, "--batch-size 6: the global batch does not split into 4 equal micro-batches (--grad-accum 4); "
              "pass a multiple of 4")]


@pytest.mark.parametrize("batch,accum,world,want", GRAD_ACCUM, ids=[f"{b}-{a}-{k}" for b, a, k, _ in GRAD_ACCUM])
def test_grad_accum_is_derived_from_the_global_batch_and_the_processes(batch, accum, world, want):
    if isinstance(want, int):
        assert grad_accum_for(batch, accum or 1, world, given=accum is not None) == want
    else:
        with pytest.raises(DistributedError) as e:
            grad_accum_for(batch, accum or 1, world, given=accum is not None)
        assert str(e.value) == want


@pytest.mark.parametrize("extra,want", [(("--grad-accum", "3"), GRAD_ACCUM[7][3]),
                                        (("--batch-size", "3"), "--batch-size 3: the global batch does not split")],
                         ids=["grad-accum", "batch-size"])
def test_a_batch_the_processes_cannot_share_is_one_line_before_anything_loads(train_world, tmp_path, monkeypatch,
                                                                            capsys, extra, want):
    monkeypatch.setenv("WORLD_SIZE", "2")                    # as torchrun --nproc_per_node=2 sets it
    for where, name in [(dist, "init_process_group"), (TRAIN, "resolve_paths"), (TRAIN, "build_model")]:
        monkeypatch.setattr(where, name, lambda *a, **k: pytest.fail(f"{name} ran"))
    assert TRAIN.main(train_args(train_world, tmp_path / "out", 1, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {want}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


# --- a micro-batch one rank cannot load -----------------------------------------------------------------

def test_a_micro_batch_only_one_rank_cannot_load_is_skipped_by_both(train_world, tmp_path):
    """8 examples, the 8th a video that does not decode; batch 4 in 4 micro-batches of 1, so 2 rounds per rank.
    The seed puts the broken one in rank 1's share, after a first step that compares with one process.
    Both ranks skip its round (2 micro-batches); one process skips the broken micro-batch alone."""
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but then nothing")
    videos = [train_world / "videos" / f"c{i % 4}.mp4" for i in range(7)] + [tmp_path / "broken.mp4"]
    colours = ["red", "green", "blue", "yellow"]
    qa = [{"video": str(v), "QA": [{"q": "What colour is the square?", "a": f"It is {colours[i % 4]}."}]}
          for i, v in enumerate(videos)]
    (tmp_path / "data.json").write_text(json.dumps(qa))

    def where(seed):                                          # {step: global micro-batch of the broken example}
        plan = BatchPlan(8, 4, 4, seed=seed)
        return {s: g for s in range(4) for g, mb in enumerate(plan.micro_batches(s)) if 7 in mb}
    seed = next(s for s in range(100) if min(where(s)) >= 1 and where(s)[min(where(s))] >= 2)
    broken = where(seed)
    common = ("--data", tmp_path / "data.json", "--epochs", "2", "--batch-size", "4", "--grad-accum", "4",
              "--lr", "1e-2", "--seed", str(seed))      # default workers: 2 for one process, 1 each for two
    TRAIN.run(TRAIN.parse_args(train_args(train_world, tmp_path / "one", 1, *map(str, common))))
    done = torchrun(ROOT / "train.py", *train_args(train_world, tmp_path / "two", 1, *common), "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = log_of(tmp_path / "one"), log_of(tmp_path / "two")
    assert [r["skipped"] for r in one] == [int(s in broken) for s in range(4)]
    assert [r["skipped"] for r in two] == [2 * (s in broken) for s in range(4)]
    first = min(broken)
    np.testing.assert_allclose([r["loss"] for r in two[:first]], [r["loss"] for r in one[:first]], rtol=0, atol=1e-5)
    assert [r["tokens"] for r in two[:first]] == [r["tokens"] for r in one[:first]]
    assert two[first]["tokens"] < one[first]["tokens"] and all(np.isfinite(r["loss"]) for r in two)
    for step, g in broken.items():
        note = (f"note: step {step + 1}: no example of micro-batch {g} (rank {g // 2}) could be loaded; skipped "
                "with the rest of its round on every rank (2 micro-batches)")
        assert done.stderr.count(note) == 1, done.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["skipped"] == 2 * len(broken)


def test_a_step_of_which_nothing_loads_changes_nothing(train_world, tmp_path):
    """One process, batch 1: the steps that draw the broken video run no forward, log a NaN loss and change
    no weight (the model after them is the model before them); the run goes on."""
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    qa = [{"video": str(v), "QA": [{"q": "What colour is the square?", "a": "It is red."}]}
          for v in (train_world / "videos" / "c0.mp4", tmp_path / "broken.mp4")]
    (tmp_path / "data.json").write_text(json.dumps(qa))
    broken = [s for s in range(4) if BatchPlan(2, 1, 1).micro_batches(s) == [[1]]]            # one per epoch
    first = broken[0]
    assert first >= 1                                                   # (a step to compare with before it)
    common = ("--data", str(tmp_path / "data.json"), "--batch-size", "1", "--epochs", "2")
    for steps in (first, first + 1, 4):
        assert TRAIN.main(train_args(train_world, tmp_path / f"s{steps}", 1, *common, "--max-steps", str(steps))) == 0
    rows = log_of(tmp_path / "s4")
    assert [r["skipped"] for r in rows] == [int(s in broken) for s in range(4)]
    assert [np.isnan(r["loss"]) for r in rows] == [s in broken for s in range(4)] and rows[first]["tokens"] == 0
    before, after = (load_file(str(tmp_path / f"s{n}" / "gpt4video.safetensors")) for n in (first, first + 1))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# --- workers change no number ---------------------------------------------------------------------------

class NoisyDataset(ConversationDataset):
    """Loading that draws random numbers (as a random crop would): pixel noise from torch's global RNG."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        if item is not None and item["videos"] is not None:
            item["videos"] = item["videos"] + 0.5 * torch.rand(item["videos"].shape)
        return item


def test_workers_give_the_losses_of_none_and_resume_exactly(train_world, tmp_path, monkeypatch):
    """Stage 1 with abstractor dropout (the main process's RNG matters) and noisy loading: 0 workers, 2
    workers, and 2 workers stopped after step 1 (an odd number of micro-batches) then resumed."""
    test_preset = nanog4v.config.PRESETS["test"]
    monkeypatch.setitem(nanog4v.config.PRESETS, "test", lambda: dataclasses.replace(
        test_preset(), abstractor=dataclasses.replace(test_preset().abstractor, attn_dropout=0.3)))
    monkeypatch.setattr(TRAIN, "ConversationDataset", NoisyDataset)
    common = ("--epochs", "3", "--batch-size", "2", "--lr", "1e-2")

    def losses(out, *extra):
        TRAIN.run(TRAIN.parse_args(train_args(train_world, tmp_path / out, 1, *common, *extra)))
        return [(r["step"], r["loss"], r["tokens"]) for r in log_of(tmp_path / out)]
    none = losses("none", "--num-workers", "0")
    assert len(none) == 6 and len({loss for _, loss, _ in none}) == 6
    assert losses("two", "--num-workers", "2") == none
    assert len(losses("cut", "--num-workers", "2", "--max-steps", "1")) == 1
    assert losses("cut", "--num-workers", "2", "--resume") == none
    rows = log_of(tmp_path / "two")
    assert all(type(r["data_wait"]) is float and 0 <= r["data_wait"] <= r["elapsed_s"] for r in rows)
    monkeypatch.setattr(TRAIN, "ConversationDataset", ConversationDataset)      # (and the noise does matter)
    assert losses("plain", "--max-steps", "1")[0] != none[0]


@pytest.mark.parametrize("cpus,per_node,decodes,want", [(2, 1, True, 2), (64, 1, True, 8), (24, 4, True, 6),
                                                        (2, 4, True, 0), (64, 1, False, 0)])
def test_the_default_worker_count_is_the_cpus_per_process(monkeypatch, cpus, per_node, decodes, want):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert default_num_workers(decodes, Dist(local_world_size=per_node)) == want


def test_train_py_decodes_in_workers_only_what_needs_decoding(train_world, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)         # one CPU: one worker
    for stage, want in [(1, 1), (2, 0)]:                                                  # videos; text only
        argv = train_args(train_world, tmp_path / f"s{stage}", stage, "--max-steps", "1")
        TRAIN.run(TRAIN.parse_args([a for a in argv if a != "--quiet"]))
        assert f"; {want} data worker(s) per process\n" in capsys.readouterr().out
