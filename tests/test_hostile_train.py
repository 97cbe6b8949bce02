"""Hostile and unlucky input to training (issue 24): a table of cases, each with its exact outcome.

Every refusal is one line `error: <file or --flag>: <problem>`, exit status 2, no traceback, and
nothing lost: a refused resume leaves last.pt and log.jsonl byte for byte as they were. The unlucky
cases (a kill while the log line or the checkpoint was written) continue as if nothing had happened.
Tiny runs of the `test` preset (two optimiser steps), in process; a real subprocess only for the kill.
"""
import importlib.util
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import Evil, ROOT, train_args
from nanog4v.toy import worlddir
from nanog4v.toy.recipe import plot_recipe
from nanog4v.trainer import TrainError, read_log, save_checkpoint

spec = importlib.util.spec_from_file_location("train_script_hostile", ROOT / "train.py")
TRAIN = importlib.util.module_from_spec(spec)
spec.loader.exec_module(TRAIN)

LOG_KEYS = ("step", "epoch", "loss", "lr", "grad_norm", "tokens")
TINY = ("--epochs", "3", "--batch-size", "2", "--lr", "1e-2")               # 2 steps an epoch, 6 in all


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(train_world):
    return train_world


def refused(capsys, argv, *needles) -> str:
    """train.py's main on `argv`: exit 2 and one line on stderr, `error: …` holding every needle."""
    code = TRAIN.main([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = err.splitlines()
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def log_of(out):
    return [{k: row[k] for k in LOG_KEYS} for row in map(json.loads, (out / "log.jsonl").read_text().splitlines())]


def snapshot(d):
    """Every file of a run directory and its bytes (loss.png aside: it is redrawn from the log)."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and p.name != "loss.png"}


# --- number flags and --out: refused before any model is built ---------------------------------------

BAD_NUMBERS = [("--lr", "nan"), ("--lr", "inf"), ("--lr", "-inf"), ("--lr", "0"), ("--lr", "-1e-3"),
               ("--epochs", "0"), ("--epochs", "-1"), ("--batch-size", "0"), ("--grad-accum", "0"),
               ("--warmup-steps", "-1"), ("--weight-decay", "nan"), ("--weight-decay", "-0.1"),
               ("--weight-decay", "inf"), ("--grad-clip", "nan"), ("--grad-clip", "-1"), ("--grad-clip", "inf"),
               ("--max-seq-len", "0"), ("--max-steps", "0"), ("--max-steps", "-3"), ("--frames", "0"),
               ("--lora-r", "0"), ("--seed", "-1"), ("--seed", str(2**31)), ("--save-every", "0"),
               ("--save-every", "-5"), ("--eval-n", "-1"), ("--num-workers", "-1"), ("--world-n", "5")]


@pytest.mark.parametrize("flag,value", BAD_NUMBERS, ids=[f"{f}={v}" for f, v in BAD_NUMBERS])
def test_a_bad_number_flag_is_one_line_before_any_model(world, tmp_path, capsys, monkeypatch, flag, value):
    monkeypatch.setattr(TRAIN, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    monkeypatch.setattr(TRAIN, "resolve_paths", lambda *a, **k: pytest.fail("inputs were looked at"))
    parsed = float(value) if flag in ("--lr", "--weight-decay", "--grad-clip") else int(value)
    err = refused(capsys, [*train_args(world, tmp_path / "out", 1), f"{flag}={value}"], f"error: {flag}: must be a finite number")
    assert err.endswith(f", not {parsed}"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stage", ["1", "0", "all"])
def test_an_int_flag_given_nan_is_argparse_usage_error(stage, capsys):
    with pytest.raises(SystemExit) as e:
        TRAIN.main(["--stage", stage, "--epochs", "nan"] if stage == "1" else ["--stage", stage, "--world-n", "inf"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line][0].endswith("invalid int value: 'nan'"
                                                                               if stage == "1" else "invalid int value: 'inf'")


@pytest.mark.parametrize("where", ["out is a file", "out is under a file"])
@pytest.mark.parametrize("stage", ["1", "0"])
def test_out_that_is_a_file_is_refused(world, tmp_path, capsys, where, stage):
    (tmp_path / "f").write_text("a user's file\n")
    out = tmp_path / "f" if where == "out is a file" else tmp_path / "f" / "run"
    argv = train_args(world, out, 1) if stage == "1" else ["--stage", "0", "--preset", "test", "--out", out]
    refused(capsys, argv, f"error: --out: {tmp_path / 'f'} is a file, not a directory")
    assert (tmp_path / "f").read_text() == "a user's file\n"


@pytest.mark.parametrize("flag", ["--vision", "--llama", "--tokenizer", "--data"])
def test_a_missing_input_file_is_named(world, tmp_path, capsys, flag):
    argv = train_args(world, tmp_path / "out", 1)
    argv[argv.index(flag) + 1] = str(tmp_path / "absent")
    refused(capsys, argv, f"{tmp_path / 'absent'}: no such file or directory", flag)


# --- data files: train.py on them (how the readers take each one: tests/test_hostile_data.py) ----------

@pytest.mark.parametrize("case", ["a directory", "an empty file", "first record malformed, --strict",
                                  "first record malformed"])
def test_train_py_on_hostile_data(world, tmp_path, capsys, case):
    data = tmp_path / "d.jsonl"
    if case == "a directory":
        data.mkdir()
    else:
        good = (world / "stage2.jsonl").read_text()
        data.write_text("" if case == "an empty file" else '{"conversations": 5}\n' + good)
    argv = [*train_args(world, tmp_path / "out", 2), "--max-steps", "1", "--batch-size", "2"]
    argv[argv.index("--data") + 1: argv.index("--out")] = [str(data)]
    if case == "first record malformed":
        assert TRAIN.main(argv) == 0
        assert f"skipped {data}:1: 'conversations' must be" in capsys.readouterr().err
        assert len(log_of(tmp_path / "out")) == 1
        return
    expect = {"a directory": f"{data}: a directory, not a data file", "an empty file": f"{data}: no records",
              "first record malformed, --strict": f"{data}:1: 'conversations' must be a non-empty list"}[case]
    refused(capsys, argv + (["--strict"] if "strict" in case else []), "error: " + expect)


# --- last.pt: refused whole, nothing touched ------------------------------------------------------------

@pytest.fixture(scope="module")
def base_run(world, tmp_path_factory):
    """Stage 1 stopped after step 2 of 6 (last.pt at step 2, two log lines)."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert TRAIN.main(train_args(world, out, 1, *TINY, "--max-steps", "2")) == 0
    return out


@pytest.fixture(scope="module")
def whole_run(world, tmp_path_factory):
    """The same run, uninterrupted to step 4."""
    out = tmp_path_factory.mktemp("whole") / "run"
    assert TRAIN.main(train_args(world, out, 1, *TINY, "--max-steps", "4")) == 0
    return out


def _state(path):
    return torch.load(path, weights_only=True)


def _edit(change):
    def write(path):
        state = _state(path)
        change(state)
        torch.save(state, path)
    return write


def _drop(key):
    return _edit(lambda s: s.pop(key))


def _set(key, value):
    return _edit(lambda s: s.__setitem__(key, value))


# name: (what to do to last.pt, the error's problem after "…/last.pt: ")
CHECKPOINTS = {
    "a malicious pickle": (lambda p: p.write_bytes(pickle.dumps({"version": 1, "x": Evil(p.parent / "pwned")}, protocol=2)),
                           "not a readable checkpoint (it holds more than tensors and plain containers: "
                           "refused by torch.load's weights_only)"),
    "a malicious pickle in torch's zip": (lambda p: torch.save({"version": 1, "x": Evil(p.parent / "pwned")}, p),
                                          "not a readable checkpoint (it holds more than tensors and plain "
                                          "containers: refused by torch.load's weights_only)"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), "not a readable checkpoint"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable checkpoint"),
    "not a zip": (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4),
                  "not a readable checkpoint (PytorchStreamReader failed reading zip archive"),
    "a tensor": (lambda p: torch.save(torch.zeros(3), p), "not a train.py checkpoint (no version 1 header)"),
    "a list": (lambda p: torch.save([1, 2], p), "not a train.py checkpoint"),
    "version 2": (_set("version", 2), "not a train.py checkpoint (no version 1 header)"),
    **{f"no {key}": (_drop(key), f"damaged checkpoint: {key!r} is missing")
       for key in ("step", "epoch", "index", "trainable", "optimizer", "scheduler", "rng", "signature")},
    "step is a string": (_set("step", "2"), "damaged checkpoint: 'step' is not an int"),
    "step is a bool": (_set("step", True), "damaged checkpoint: 'step' is not an int"),
    "rng is a dict": (_set("rng", {}), "damaged checkpoint: 'rng' is not a list"),
    "trainable holds a string": (_edit(lambda s: s["trainable"].update(x="no tensor")),
                                 "damaged checkpoint: 'trainable' is not a dict of tensors"),
    "no RNG state for this rank": (_set("rng", []), "damaged checkpoint: its AdamW or RNG state does not load"),
    "RNG state of the wrong kind": (_edit(lambda s: s["rng"][0].update(python=7)),
                                    "damaged checkpoint: its AdamW or RNG state does not load"),
    "AdamW state of another model": (_set("optimizer", {"state": {}, "param_groups": []}),
                                     "damaged checkpoint: its AdamW or RNG state does not load"),
    "tensors of another shape": (_edit(lambda s: s["trainable"].update({k: v[:1] for k, v in s["trainable"].items()})),
                                 "its tensors do not match this model's trainable parts"),
    "a step the data position contradicts": (_set("step", 3), "data position 1/0 does not match the data"),
    "a directory": (lambda p: (p.unlink(), p.mkdir()), "no checkpoint to resume from"),
    "missing": (lambda p: p.unlink(), "no checkpoint to resume from"),
}


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_a_bad_last_pt_refuses_the_resume_and_changes_nothing(world, base_run, tmp_path, capsys, name):
    change, problem = CHECKPOINTS[name]
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    change(out / "last.pt")
    before = snapshot(out)
    refused(capsys, train_args(world, out, 1, *TINY, "--resume"), f"error: {out / 'last.pt'}: {problem}")
    assert snapshot(out) == before and not (out / "pwned").exists()


def test_a_resume_with_other_settings_is_refused_and_changes_nothing(world, base_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    before = snapshot(out)
    refused(capsys, [*train_args(world, out, 1, *TINY, "--resume"), "--lr", "2e-2"],
            f"error: {out / 'last.pt'}: written with lr=0.01, now 0.02")
    assert snapshot(out) == before


# --- log.jsonl: a torn last line is a kill's, an earlier damaged line is an error --------------------------

@pytest.mark.parametrize("torn", [b'{"step": 3, "epoch": 1, "lo', b'{"step": 3, "epoch": 1, "loss": 2.5, "x": "\xe2',
                                  b'{"step": 3, "epoch": 1, "loss": 2.5, "lr": 0.01, "grad_norm": 1.0}\n\n'],
                         ids=["cut in a key", "cut in a UTF-8 character", "a whole line past last.pt"])
def test_a_torn_last_log_line_is_dropped_and_the_resume_is_exact(world, base_run, whole_run, tmp_path, capsys, torn):
    """Killed while writing step 3's log line (last.pt at step 2), and killed saves' temp files beside it."""
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    with (out / "log.jsonl").open("ab") as f:
        f.write(torn)
    dead, live = out / ".last.pt.99999999.tmp", out / f".last.pt.{os.getppid()}.tmp"
    for tmp in (dead, live):
        tmp.write_bytes(b"half a checkpoint")
    assert TRAIN.main(train_args(world, out, 1, *TINY, "--max-steps", "4", "--resume")) == 0
    err = capsys.readouterr().err
    if torn.endswith(b"\n"):
        assert err == "", err
    else:
        assert err == f"note: {out / 'log.jsonl'}:3: dropped a torn last line (killed while writing it)\n", err
    assert log_of(out) == log_of(whole_run)
    assert not dead.exists() and live.exists()


@pytest.mark.parametrize("damage", ["not JSON", "a list", "a step that is a string"])
def test_a_damaged_earlier_log_line_refuses_the_resume_and_changes_nothing(world, base_run, tmp_path, capsys, damage):
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    lines = (out / "log.jsonl").read_text().splitlines()
    lines[0] = {"not JSON": lines[0][:-5], "a list": "[1, 2]",
                "a step that is a string": lines[0].replace('"step": 1', '"step": "1"')}[damage]
    (out / "log.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(out)
    refused(capsys, train_args(world, out, 1, *TINY, "--resume"),
            f"error: {out / 'log.jsonl'}:1: damaged log line (not a JSON row with a step and a loss)")
    assert snapshot(out) == before


ROW = json.dumps({"step": 1, "loss": 2.0})
LOGS = {  # name: (log text, its rows' steps, the note's line or the error's line or None)
    "none": (None, [], None),
    "whole": (f"{ROW}\n{ROW.replace('1', '2')}\n", [1, 2], None),
    "blank lines between and after": (f"{ROW}\n\n{ROW.replace('1', '2')}\n\n\n", [1, 2], None),
    "torn last": (f"{ROW}\n" + '{"step": 2, "lo', [1], ("note", 2)),
    "torn last, blank lines after": (f"{ROW}\n" + '{"step": 2, "lo\n\n', [1], ("note", 2)),
    "damaged first": ('{"step": 1, "lo\n' + f"{ROW}\n", None, ("error", 1)),
    "a null row": (f"null\n{ROW}\n", None, ("error", 1)),
    "a loss that is a string": (f'{{"step": 1, "loss": "2.0"}}\n{ROW}\n', None, ("error", 1)),
}


@pytest.mark.parametrize("name", LOGS)
def test_read_log(tmp_path, capsys, name):
    text, steps, said = LOGS[name]
    path = tmp_path / "log.jsonl"
    if text is not None:
        path.write_text(text)
    if steps is None:
        with pytest.raises(TrainError) as e:
            read_log(path)
        assert str(e.value) == f"{path}:{said[1]}: damaged log line (not a JSON row with a step and a loss)"
        return
    assert [row["step"] for row in read_log(path)] == steps
    err = capsys.readouterr().err
    assert err == (f"note: {path}:{said[1]}: dropped a torn last line (killed while writing it)\n" if said else "")


def test_the_recipe_plot_reads_a_torn_log(tmp_path):
    (tmp_path / "stage0.json").write_text(json.dumps({"vision": {"losses": [1.0, 0.5]}, "llama": {"losses": [3.0]}}))
    for k in (1, 2):
        (tmp_path / f"stage{k}").mkdir()
        (tmp_path / f"stage{k}" / "log.jsonl").write_text(f"{ROW}\n" + '{"step": 2, "lo')
    assert plot_recipe(tmp_path).is_file()


# --- temp files of killed saves ------------------------------------------------------------------------

def test_temp_files_of_dead_saves_go_and_those_of_live_ones_stay(tmp_path):
    path = tmp_path / "last.pt"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()                                                      # a pid that just died
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])    # one that lives
    names = {"dead (exited)": f".last.pt.{child.pid}.tmp", "dead (no such pid)": ".last.pt.99999999.tmp",
             "live (a running process)": f".last.pt.{alive.pid}.tmp", "live (init, maybe another user's)": ".last.pt.1.tmp",
             "not a pid": ".last.pt.abc.tmp", "a pid too big for os.kill": f".last.pt.{10**30}.tmp",
             "another file's": ".other.pt.99999999.tmp", "a user's": "notes.txt"}
    assert len(set(names.values())) == len(names)     # (the parent's pid was 1 when pytest ran under nohup)
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    try:
        save_checkpoint(path, {"version": 1, "step": 1})
    finally:
        alive.kill()
        alive.wait()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([n for k, n in names.items() if not k.startswith("dead")] + ["last.pt"])


KILLED_SAVE = """
import sys, time, torch
from pathlib import Path
from nanog4v.trainer import save_checkpoint
def slow(obj, f):
    f.write(b"half a checkpoint"); f.flush(); time.sleep(60)
torch.save = slow
save_checkpoint(Path(sys.argv[1]), {"version": 1, "step": 2})
"""


def test_a_save_killed_midway_leaves_a_temp_file_the_next_save_removes(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"version": 1, "step": 1})
    child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)], cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    tmp = tmp_path / f".last.pt.{child.pid}.tmp"
    deadline = time.time() + 60
    while not (tmp.is_file() and tmp.stat().st_size) and time.time() < deadline:
        time.sleep(0.05)
    save_checkpoint(path, {"version": 1, "step": 1})                  # the child is alive: its file stays
    assert tmp.is_file()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert tmp.read_bytes() == b"half a checkpoint" and _state(path)["step"] == 1
    save_checkpoint(path, {"version": 1, "step": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"] and _state(path)["step"] == 3


# --- the toy world's command line ------------------------------------------------------------------------

@pytest.mark.parametrize("fps", ["0", "nan", "-1", "inf", "-inf", "1e9"])
@pytest.mark.parametrize("force", [False, True])
def test_toy_world_fps_is_checked_before_anything_is_written(tmp_path, capsys, fps, force):
    out = tmp_path / "world"
    if force:                                                          # --force must not empty it first
        out.mkdir()
        (out / "world.json").write_text("{}")
    assert worlddir.main(["--out", str(out), "--n", "10", f"--fps={fps}", "--quiet", *(["--force"] if force else [])]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out}: need 0 < --fps <= 1000 (got {float(fps)})\n", err
    if force:
        assert sorted(p.name for p in out.iterdir()) == ["world.json"]
    else:
        assert not out.exists()
