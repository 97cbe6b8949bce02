"""Hostile and unlucky input to the evaluation (issue 24): a table of cases, each with its exact outcome.

`python -m nanog4v.eval` refuses a broken checkpoint (every case of test_hostile_checkpoints.BROKEN),
bad flags, output paths it cannot write and held-out files that do not parse in one line `error: {file or
flag}: {problem}`, exit status 2, before any model work (the checks run before a missing --ckpt would be
noticed), leaving earlier results byte for byte as they were. A held-out clip that cannot be decoded is
skipped, counted and named in one `note:` line. Inputs are made from the session's tiny checkpoint and a
ten-clip toy world; all in process.
"""
import json
import shutil

import pytest

from nanog4v.eval import tables
from nanog4v.toy.worlddir import write_world
from test_hostile_checkpoints import BROKEN, checkpoint, expected_error, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A complete toy world of ten clips, with its held-out split."""
    out = tmp_path_factory.mktemp("hostile_world") / "world"
    write_world(out, n=10, seed=0, progress=False)
    return out


# --- eval: flags, output paths and held-out files, refused before any model work -------------------------

EARLIER = {"results.json": b'{"qa_accuracy": 0.5}\n', "predictions.jsonl": b'{"reply": "earlier"}\n'}


def earlier_results(tmp_path):
    """A directory holding an earlier run's results.json and predictions.jsonl (EARLIER)."""
    out = tmp_path / "earlier"
    out.mkdir()
    for name, data in EARLIER.items():
        (out / name).write_bytes(data)
    return out


def snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def refused(capsys, argv, message: str) -> None:
    """`python -m nanog4v.eval` on argv: exit 2, the one error line `error: {message}`, nothing on stdout."""
    code = tables.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    one_error_line(captured.err, message, exact=True)


@pytest.mark.parametrize("name", BROKEN)
def test_eval_refuses_a_broken_checkpoint_in_one_line(tiny_ckpt, world, tmp_path, capsys, name):
    ckpt = checkpoint(tiny_ckpt, tmp_path / "ckpt")
    BROKEN[name][0](ckpt)
    out = earlier_results(tmp_path)
    code = tables.main(["--ckpt", str(ckpt), "--data", str(world), "--limit", "1", "--json", str(out / "results.json")])
    assert code == 2
    one_error_line(capsys.readouterr().err, *expected_error(ckpt, name))
    assert snapshot(out) == EARLIER and not (ckpt / "pwned").exists()


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_a_limit_below_one_is_refused_first(tmp_path, capsys, limit):
    refused(capsys, ["--ckpt", tmp_path / "absent", "--data", tmp_path / "absent", "--limit", limit],
            f"--limit: must be an int >= 1, not {limit}")


def _under_a_file(*parts):
    """--json somewhere under a user's file f."""
    def make(t):
        (t / "f").write_text("a user's file\n")
        return t.joinpath("f", *parts)
    return make


def _directory(name, json_name):
    """A directory `name`, and --json `json_name` beside or at it."""
    def make(t):
        (t / name).mkdir()
        return t / json_name
    return make


# name: (make the path under tmp_path, the error after "error: ")
OUTPUTS = {
    "--json is a directory": (_directory("d", "d"), "--json: {t}/d is a directory, not a file"),
    "--json under a file": (_under_a_file("results.json"), "--json: {t}/f is a file, not a directory"),
    "--json two levels under a file": (_under_a_file("a", "r.json"), "--json: {t}/f is a file, not a directory"),
    "predictions.jsonl beside it is a directory": (_directory("predictions.jsonl", "r.json"),
                                                   "--json: {t}/predictions.jsonl is a directory, not a file"),
    "--json named predictions.jsonl": (lambda t: t / "predictions.jsonl",
                                       "--json: {t}/predictions.jsonl would be overwritten by the predictions.jsonl "
                                       "written beside it"),
}


@pytest.mark.parametrize("name", OUTPUTS)
def test_an_output_path_that_cannot_be_written_is_refused_first(tmp_path, capsys, name):
    make, message = OUTPUTS[name]
    out = make(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    refused(capsys, ["--ckpt", tmp_path / "absent", "--data", tmp_path / "absent", "--json", out],
            message.format(t=tmp_path))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def _write(name, text):
    return lambda w: (w / name).write_text(text)


def _edit_line(name, n, change):
    """Change line n (1-based) of a JSONL file of the world."""
    def damage(w):
        lines = (w / name).read_text().splitlines()
        row = json.loads(lines[n - 1])
        change(row)
        lines[n - 1] = json.dumps(row)
        (w / name).write_text("\n".join(lines) + "\n")
    return damage


def _stage1_as_jsonl(w):
    f = w / "stage1_heldout.json"
    f.write_text("".join(json.dumps(r) + "\n" for r in json.loads(f.read_text())))


def _stage1_type(w):
    f = w / "stage1_heldout.json"
    raw = json.loads(f.read_text())
    raw[0]["QA"][0]["type"] = 5
    f.write_text(json.dumps(raw, indent=1))


# name: (damage to a copy of the world, the error after "error: ", with {w} for the world; whether it comes
# before the checkpoint is read — the run gets a --ckpt that does not exist to show it)
HELD_OUT = {
    "stage1 not JSON": (_write("stage1_heldout.json", "{oops\n"), "{w}/stage1_heldout.json:1: invalid JSON "
                        "(Expecting property name enclosed in double quotes)", True),
    "stage1 a bad record": (_write("stage1_heldout.json", '[{"video": "videos/00000.mp4", "QA": []}]'),
                            '{w}/stage1_heldout.json:1: expected {{"video": path, "QA": [...]}} with a non-empty QA list', True),
    "stage1 an unclosed list": (_write("stage1_heldout.json", '[{"video": "videos/00000.mp4", "QA": [{"q": "a?", "a": "b"}]}'),
                                "{w}/stage1_heldout.json:1: invalid JSON (expected ',' or ']')", True),
    "stage2 not JSON": (_write("stage2_heldout.jsonl", "{oops\n"),
                        "{w}/stage2_heldout.jsonl:1: invalid JSON (Expecting property name enclosed in double quotes)", True),
    "safety a bad label": (_edit_line("safety_heldout.jsonl", 2, lambda r: r.update(label="maybe")),
                           "{w}/safety_heldout.jsonl:2: 'label' must be \"refuse\" or \"benign\"", True),
    "video safety a missing clip": (_edit_line("safety_video_heldout.jsonl", 1, lambda r: r.update(video="nope.mp4")),
                                    "{w}/safety_video_heldout.jsonl:1: video file not found: {w}/nope.mp4", True),
    "a held-out file missing": (lambda w: (w / "stage2_heldout.jsonl").unlink(),
                                "{w}/stage2_heldout.jsonl: missing (not a toy world with a held-out split; write one "
                                "with python -m nanog4v.toy --out DIR)", True),
    "a held-out file a directory": (lambda w: ((w / "safety_heldout.jsonl").unlink(), (w / "safety_heldout.jsonl").mkdir()),
                                    "{w}/safety_heldout.jsonl: missing (not a toy world with a held-out split; write "
                                    "one with python -m nanog4v.toy --out DIR)", True),
    "stage1 one record a line": (_stage1_as_jsonl, "{w}/stage1_heldout.json: not one JSON list (the layout python -m "
                                 "nanog4v.toy writes)", False),
    "stage1 a type that is a number": (_stage1_type, "{w}/stage1_heldout.json:2: QA[0]: 'type' and 'phrasing' must be "
                                       "strings", False),
    "a scenes.jsonl row without id": (_edit_line("scenes.jsonl", 2, lambda r: r.pop("id")),
                                      "{w}/scenes.jsonl: unreadable (line 2: no 'id')", False),
    "a scenes.jsonl row without objects": (_edit_line("scenes.jsonl", 3, lambda r: r["scene"].pop("objects")),
                                           "{w}/scenes.jsonl: unreadable (line 3: 'id' is not a string or 'scene' has "
                                           "no 'objects' list)", False),
    "a scenes.jsonl row a list": (_write("scenes.jsonl", "[1, 2]\n"),
                                  "{w}/scenes.jsonl: unreadable (line 1: not a JSON object)", False),
    "scenes.jsonl not JSON": (_write("scenes.jsonl", "{not json\n"), "{w}/scenes.jsonl: unreadable (line 1: not valid "
                              "JSON: Expecting property name enclosed in double quotes)", False),
    "scenes.jsonl missing": (lambda w: (w / "scenes.jsonl").unlink(),
                             "{w}/scenes.jsonl: unreadable ([Errno 2] No such file or directory: '{w}/scenes.jsonl')", False),
    "world.json not JSON": (_write("world.json", "{oops"), "{w}/world.json: unreadable (Expecting property name "
                            "enclosed in double quotes: line 1 column 2 (char 1))", False),
    "world.json a list": (_write("world.json", "[]"), "{w}/world.json: unreadable (not a JSON object)", False),
}


@pytest.mark.parametrize("name", HELD_OUT)
def test_a_bad_held_out_file_is_one_line_naming_it(tiny_ckpt, world, tmp_path, capsys, name):
    damage, message, early = HELD_OUT[name]
    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    damage(copy)
    out = earlier_results(tmp_path)
    ckpt = tmp_path / "absent" if early else tiny_ckpt
    code = tables.main(["--ckpt", str(ckpt), "--data", str(copy), "--json", str(out / "results.json")])
    assert code == 2
    one_error_line(capsys.readouterr().err, message.format(w=copy), exact=True)
    assert snapshot(out) == EARLIER


def test_a_broken_stage0_summary_is_named_before_a_world_is_rendered(tiny_ckpt, tmp_path, capsys):
    ckpt = checkpoint(tiny_ckpt, tmp_path / "ckpt")
    (ckpt / "stage0.json").write_text('{"seed": "zero"}')
    refused(capsys, ["--ckpt", ckpt], f"{ckpt / 'stage0.json'}: not a stage-0 summary with a seed (an int >= 0)")
    (ckpt / "stage0.json").write_text("{oops")
    refused(capsys, ["--ckpt", ckpt], f"{ckpt / 'stage0.json'}: not valid JSON (Expecting property name enclosed in "
                                      "double quotes: line 1 column 2 (char 1))")
    assert not (ckpt / "toyworld").exists()


# --- eval: a held-out clip that cannot be decoded is skipped and counted -------------------------------

@pytest.fixture(scope="module")
def clean_run(tiny_ckpt, world, tmp_path_factory):
    """The whole evaluation of the tiny checkpoint on the intact world: (results, predictions)."""
    out = tmp_path_factory.mktemp("clean") / "results.json"
    assert tables.main(["--ckpt", str(tiny_ckpt), "--data", str(world), "--json", str(out)]) == 0
    return json.loads(out.read_text()), (out.parent / "predictions.jsonl").read_text().splitlines()


CORRUPT_CLIPS = {"empty": lambda b: b"", "not a video": lambda b: b"not a video\n" * 40,
                 "truncated": lambda b: b[:300]}


@pytest.mark.parametrize("how", CORRUPT_CLIPS)
def test_a_clip_that_cannot_be_read_is_skipped_counted_and_noted(tiny_ckpt, world, clean_run, tmp_path, capsys, how):
    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    stage1 = json.loads((copy / "stage1_heldout.json").read_text())
    vu = [json.loads(line) for line in (copy / "safety_video_heldout.jsonl").read_text().splitlines()]
    clip = stage1[0]["video"]
    (copy / clip).write_bytes(CORRUPT_CLIPS[how]((copy / clip).read_bytes()))
    asked = [item.get("type") for r in stage1 if r["video"] == clip for item in r["QA"]]
    captions = sum(t in ("description", "caption") for t in asked)
    in_vu = sum(r["video"] == clip for r in vu)
    out = tmp_path / "out" / "results.json"
    capsys.readouterr()
    assert tables.main(["--ckpt", str(tiny_ckpt), "--data", str(copy), "--json", str(out)]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    n = len(asked) + in_vu
    assert len(notes) == 1 and "error:" not in err and "Traceback" not in err, err
    assert notes[0].startswith(f"note: skipped {n} held-out items whose clip cannot be read (the first: {copy / clip}: ")
    results, earlier = json.loads(out.read_text()), clean_run[0]
    assert results["skipped"] == n and "skipped" not in earlier
    assert results["qa_n"] == earlier["qa_n"] - (len(asked) - captions)
    assert results["caption_n"] == earlier["caption_n"] - captions
    assert results["safety"]["vu"]["n"] == earlier["safety"]["vu"]["n"] - in_vu
    assert results["show_n"] == earlier["show_n"] and results["safety"]["vg"] == earlier["safety"]["vg"]
    predictions = (out.parent / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == len(clean_run[1]) - n
