"""nanog4v.ablations on a tiny `test`-preset checkpoint: each variant trains through train.py with its
change in the saved config, and is scored."""
import importlib.util
import json
from pathlib import Path

import pytest

from nanog4v.config import preset
from nanog4v.eval import ablations

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    out = tmp_path_factory.mktemp("abl") / "ckpt"
    assert train.main(["--stage", "all", "--preset", "test", "--world-n", "12", "--max-steps", "2", "--eval-n", "2",
                       "--out", str(out), "--quiet"]) == 0
    return out


def test_each_variant_trains_with_its_change_and_is_scored(ckpt, tmp_path):
    names = ["temporal only", "T=8", "official abstractor", "r=4"]
    results = ablations.run_ablations(ckpt, tmp_path, names, epochs=1, limit=3, log=lambda m: None)
    assert list(results) == names and json.loads((tmp_path / "results.json").read_text()) == results
    saved = {n: json.loads((tmp_path / d / "config.json").read_text())
             for n, d in [("temporal only", "temporal_only"), ("T=8", "T8"), ("official abstractor", "official_abstractor"),
                          ("r=4", "r4")]}
    assert saved["temporal only"]["config"]["abstractor"]["streams"] == "temporal"
    assert saved["T=8"]["config"]["num_frames"] == 8
    assert saved["official abstractor"]["config"]["abstractor"]["variant"] == "official"
    assert saved["r=4"]["lora"] and saved["r=4"]["config"]["lora"]["r"] == 4
    for name in names:
        r = results[name]
        assert r["steps"] >= 1 and 0 <= r["qa_accuracy"] <= 1 and r["qa_n"] == 3
        assert sum(r["qa_by_type_n"].values()) == 3 and set(r["qa_by_type_n"]) == set(r["qa_by_type"])
    assert "prompt_fidelity" in results["r=4"] and "prompt_fidelity" not in results["T=8"]
    table = ablations.markdown(results)
    assert table.count("\n") == 1 + len(names)
    p, n = results["T=8"]["qa_accuracy"], results["T=8"]["qa_n"]
    assert f"{100 * p:.1f} ± {100 * (p * (1 - p) / n) ** 0.5:.1f} % (n 3)" in table


def test_a_variant_starts_from_the_presets_abstractor_not_the_shipped_ones(ckpt, tmp_path):
    """Stage 0 may pretrain the shipped abstractor with more queries (VIDEO_VIT: 34); the ablations compare
    fresh abstractors of the preset's shape, on the shipped frozen parts."""
    shipped = json.loads((ckpt / "stage1" / "config.json").read_text())
    shipped["config"]["abstractor"]["num_queries"] = 7
    (tmp_path / "ckpt" / "stage1").mkdir(parents=True)
    (tmp_path / "ckpt" / "stage1" / "config.json").write_text(json.dumps(shipped))
    saved = {}
    for name in ("both, N=16, T=4", "N=32", "T=8"):
        init = ablations.untrained_init(tmp_path / "ckpt", ablations.VARIANTS[name][2], tmp_path / name)
        saved[name] = json.loads((init / "config.json").read_text())["config"]
    assert saved["both, N=16, T=4"]["abstractor"]["num_queries"] == preset("test").abstractor.num_queries == 4
    assert saved["N=32"]["abstractor"]["num_queries"] == 32 and saved["T=8"]["abstractor"]["num_queries"] == 4
    assert saved["T=8"]["num_frames"] == 8 and saved["T=8"]["vision"] == shipped["config"]["vision"]


def test_standard_errors_are_the_binomial_ones_and_old_results_still_print():
    assert ablations.standard_error(0.5, 1111) == pytest.approx(0.015, abs=1e-4)
    assert ablations.standard_error(0.9, 100) == pytest.approx(0.03)
    old = {"T=2": {"family": "frames", "stage": 1, "changes": {"num_frames": 2}, "steps": 9, "final_loss": 0.5,
                   "qa_accuracy": 0.6, "qa_n": 300, "qa_by_type": {"motion": 0.25, "count": 0.9}}}  # no n per type
    row = ablations.markdown(old).splitlines()[-1]
    assert row == "| frames | T=2 | 9 | 0.500 | 60.0 ± 2.8 % (n 300) | 25.0 % | – | 90.0 % | – |"


def test_an_unknown_checkpoint_is_one_error_line(ckpt, tmp_path, capsys):
    assert ablations.main(["--ckpt", str(tmp_path), "--out", str(tmp_path / "o"), "--only", "N=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "stage1_heldout.json: missing" in err and "\n" not in err
    assert ablations.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "o"), "--only", "N=4", "pretrained abstractor"]) == 2
    err = capsys.readouterr().err.strip()     # the test preset's stage 0 pretrains no abstractor: refused before any run
    assert err == (f"error: {ckpt / 'abstractor' / 'config.json'}: missing; this checkpoint's stage 0 pretrained no "
                   "abstractor (Stage0Settings.abstractor_steps), so 'pretrained abstractor' has nothing to start from")
    assert not (tmp_path / "o").exists()
    assert ablations.main(["--ckpt", str(tmp_path), "--out", str(tmp_path / "o"), "--limit", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --limit: must be a finite number >= 1, not 0"


def test_a_world_with_other_held_out_pairs_is_refused(ckpt, tmp_path, capsys):
    """--data must hold out the checkpoint's pairs (a world of another seed holds out pairs it trained on)."""
    other = tmp_path / "other"
    other.mkdir()
    for f in (ckpt / "toyworld").iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    world = json.loads((other / "world.json").read_text())
    world["heldout_pairs"] = [["red", "circle"]]
    (other / "world.json").write_text(json.dumps(world))
    assert ablations.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "o"), "--only", "N=4", "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {other / 'world.json'}: held-out pairs [['red', 'circle']] are not the checkpoint's")
    assert "\n" not in err and not (tmp_path / "o").exists()
