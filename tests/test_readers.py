"""readers.py: each source format becomes conversation records; malformed records are counted or raise."""
import io
import json
from pathlib import Path

import pytest

from nanog4v.data import SYSTEM, DataError, SkipCounter
from nanog4v.readers import (instruction_turns, read_dialogues, read_jsonl, read_meta_json, read_records,
                             read_safety, read_videochat, sniff_format)

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture
def video_root(tmp_path):
    (tmp_path / "videos").mkdir()
    for name in ("v1.mp4", "v2.mp4"):
        (tmp_path / "videos" / name).write_bytes(b"not decoded by the readers")
    return tmp_path


def test_read_videochat(video_root):
    skips = SkipCounter(stream=io.StringIO())
    records = list(read_videochat(FIXTURES / "videochat.json", video_root=video_root, skips=skips))
    assert [r["source"] for r in records] == [f"{FIXTURES / 'videochat.json'}:{n}" for n in (2, 3, 8)]
    assert records[0] == {"videos": [str(video_root / "videos/v1.mp4")], "source": records[0]["source"],
                          "turns": [{"from": "human", "video": 0},
                                    {"from": "human", "value": "Describe the video in detail."},
                                    {"from": "ai", "value": "A red circle moves to the left on a grey background."}]}
    assert records[1]["turns"][3] == {"from": "human", "value": "Answer briefly. How many objects are there?"}
    assert len(records[1]["turns"]) == 5
    assert skips.counts == {"video file not found": 1, "bad record": 2, "empty turn": 1}
    assert "videochat.json:4: video file not found" in skips.stream.getvalue()
    with pytest.raises(DataError, match=r"videochat\.json:4: video file not found"):
        list(read_videochat(FIXTURES / "videochat.json", video_root=video_root, strict=True))
    unchecked = list(read_videochat(FIXTURES / "videochat.json", video_root=video_root, check_videos=False,
                                    skips=SkipCounter(stream=io.StringIO())))
    assert len(unchecked) == 4


def test_read_dialogues():
    skips = SkipCounter(show=2, stream=io.StringIO())
    records = list(read_dialogues(FIXTURES / "dialogues.jsonl", skips=skips))
    assert [r.get("id") for r in records] == ["d1", "d2", None]
    assert records[0] == {"videos": [], "id": "d1", "source": f"{FIXTURES / 'dialogues.jsonl'}:1",
                          "turns": [{"from": "human", "value": "Show me a red circle."},
                                    {"from": "ai", "value": "Here it is: <video> a red circle moving left </video>"}]}
    assert [t["from"] for t in records[2]["turns"]] == ["human", "ai"]
    assert skips.counts == {"invalid JSON": 1, "bad turn": 1, "no AI turn": 1, "bad video tags": 2,
                            "empty turn": 1, "no turns": 1, "bad record": 1}
    assert str(skips).startswith("skipped 8 records: 2 bad video tags")
    assert len(skips.stream.getvalue().splitlines()) == 2                       # only the first few shown
    with pytest.raises(DataError, match=r"dialogues\.jsonl:3: invalid JSON"):
        list(read_dialogues(FIXTURES / "dialogues.jsonl", strict=True))


def test_read_safety():
    skips = SkipCounter(stream=io.StringIO())
    records = list(read_safety(FIXTURES / "safety.jsonl", skips=skips))
    assert [(r["id"], r["label"]) for r in records] == [("s1", "refuse"), ("s2", "benign")]
    assert skips.counts == {"bad label": 2}
    with pytest.raises(DataError, match=r"safety\.jsonl:3: 'label'"):
        list(read_safety(FIXTURES / "safety.jsonl", strict=True))


def test_read_jsonl(video_root):
    skips = SkipCounter(stream=io.StringIO())
    records = list(read_jsonl(FIXTURES / "generic.jsonl", video_root=video_root, skips=skips))
    assert [len(r["videos"]) for r in records] == [1, 2, 0]
    assert records[1]["turns"][:3] == [{"from": "human", "video": 0}, {"from": "human", "video": 1},
                                       {"from": "human", "value": "Compare them."}]
    assert skips.counts == {"video file not found": 1, "bad video field": 1}


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(read_dialogues(tmp_path / "absent.jsonl"))
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"video": "a.mp4", "QA": []},\n  {"video": \n')
    with pytest.raises(DataError, match=r"broken\.json:4: invalid JSON"):
        list(read_videochat(broken, skips=SkipCounter(stream=io.StringIO())))


# --- the official code's meta.json ----------------------------------------------------------------------

META_TRAIN = [                                                             # lines 4-10 of meta.json
    {"video": "videos/v1.mp4", "instruction": "###Human: What is moving?\n###AI: A red circle.\n"
     "###Human: Show me another one.###AI: Here: <video> a blue square moves right </video></s>"},
    {"id": "t2", "instruction": SYSTEM + "Human: Hi.\nAI: Hello! I can list:\n1. shapes\n2. colours"},
    {"instruction": "Show me a cat."},                                     # no turns
    {"video": "videos/missing.mp4", "instruction": "###Human: Hi.###AI: Hello."},
    {"instruction": "###Human: Hi.###AI: <video> a cat"},                  # an unclosed tag
    "just text",
    {"instruction": "Note: ###Human: Hi.###AI: Hello."},                   # text before the first turn
]


def write_meta(path: Path) -> Path:
    """meta.json as the official code reads it, "test" first (line 2), one "train" item a line from line 4."""
    path.write_text('{\n  "test": [{"instruction": "###Human: Is it red?\\n###AI: Yes."}],\n  "train": [\n'
                    + ",\n".join("    " + json.dumps(item) for item in META_TRAIN) + "\n  ]\n}\n")
    return path


def test_read_meta_json(video_root):
    meta = write_meta(video_root / "meta.json")
    skips = SkipCounter(stream=io.StringIO())
    records = list(read_meta_json(meta, skips=skips))
    assert records == [
        {"videos": [str(video_root / "videos/v1.mp4")], "source": f"{meta}:4",
         "turns": [{"from": "human", "video": 0},
                   {"from": "human", "value": "What is moving?"}, {"from": "ai", "value": "A red circle."},
                   {"from": "human", "value": "Show me another one."},
                   {"from": "ai", "value": "Here: <video> a blue square moves right </video>"}]},
        {"videos": [], "id": "t2", "source": f"{meta}:5",
         "turns": [{"from": "human", "value": "Hi."},
                   {"from": "ai", "value": "Hello! I can list:\n1. shapes\n2. colours"}]}]
    assert skips.counts == {"no turns": 1, "video file not found": 1, "bad video tags": 1, "bad record": 1,
                            "bad instruction": 1}
    assert skips.stream.getvalue().splitlines() == [
        f"skipped {meta}:6: no '###Human:' or '###AI:' turn in the instruction",
        f"skipped {meta}:7: video file not found: {video_root / 'videos/missing.mp4'}",
        f"skipped {meta}:8: turn 1: <video> is never closed",
        f"skipped {meta}:9: expected {{\"video\"?, \"instruction\": \"###Human: …###AI: …\"}}",
        f"skipped {meta}:10: text before the first turn: 'Note:'"]
    with pytest.raises(DataError, match=r"meta\.json:6: no '###Human:' or '###AI:' turn"):
        list(read_meta_json(meta, strict=True))
    assert [r["turns"] for r in read_meta_json(meta, split="test")] == [
        [{"from": "human", "value": "Is it red?"}, {"from": "ai", "value": "Yes."}]]
    assert next(read_meta_json(meta, split="test"))["source"] == f"{meta}:2"
    with pytest.raises(ValueError, match="split must be one of"):
        read_meta_json(meta, split="val")


def test_meta_json_instructions_keep_the_official_first_10_lines():
    instruction = "".join(f"###Human: q{i}\n###AI: a{i}\n" for i in range(6))       # 12 lines
    assert [t["value"] for t in instruction_turns(instruction)] == [f"{w}{i}" for i in range(5) for w in "qa"]
    assert len(instruction_turns(instruction, max_lines=None)) == 12
    assert instruction_turns(instruction, max_lines=3) == [{"from": "human", "value": "q0"},
                                                           {"from": "ai", "value": "a0"},
                                                           {"from": "human", "value": "q1"}]
    with pytest.raises(DataError, match="turn 1: empty or missing text"):
        instruction_turns("###Human: Hi.\n###AI: </s>")
    with pytest.raises(DataError, match="no AI turn"):
        instruction_turns("###Human: Hi.")


def test_sniff_and_read_records_meta_json(video_root, tmp_path, capsys):
    meta = write_meta(video_root / "meta.json")
    assert sniff_format(meta) == "meta"
    logs = []
    records = read_records([meta], video_root=video_root, log=logs.append)
    assert records == list(read_meta_json(meta, skips=SkipCounter(stream=io.StringIO())))
    assert logs == [f"{meta}: 2 records in meta.json (train) format (skipped 5 records: 1 no turns, "
                    "1 video file not found, 1 bad video tags, 1 bad record, 1 bad instruction)"]
    assert [r["source"] for r in read_records([meta], split="test", log=logs.append)] == [f"{meta}:2"]
    with pytest.raises(DataError, match=r"meta\.json:6: no '###Human:'"):
        read_records([meta], strict=True, log=logs.append)
    one_line = tmp_path / "one.jsonl"                                       # one object, but not a meta.json
    one_line.write_text('{"conversations": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Yo."}]}')
    assert sniff_format(one_line) == "dialogues"
    only_test = tmp_path / "only_test.json"
    only_test.write_text('{"test": []}')
    assert sniff_format(only_test) == "meta"
    with pytest.raises(DataError, match=r"only_test\.json: no 'train' list \(.*found \['test'\]\)"):
        read_records([only_test], log=logs.append)
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "train": [\n    {"instruction": "###Human: Hi.###AI: Yo."},\n  ]\n}\n')
    with pytest.raises(DataError, match=r"read as one JSON object, line 4: invalid JSON \(Expecting value\)"):
        sniff_format(broken)
    with pytest.raises(DataError, match=r"broken\.json:4: invalid JSON \(Expecting value\)"):
        list(read_meta_json(broken))
