"""Hostile and unlucky data files (issue 24): how `nanog4v.readers` takes each one, as a table of cases.

A malformed record — the first one too — is skipped and counted by reason, or with `strict=True` is the
error `file:line: problem`; a file with no usable record, a directory or a missing file is one
DataError naming it; a byte-order mark is fine. train.py on such files: tests/test_hostile_train.py.
"""
import json

import pytest

from nanog4v.data import DataError, SkipCounter
from nanog4v.readers import read_records, sniff_format

DIALOGUE = {"conversations": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."}]}
SAFETY = {**DIALOGUE, "label": "refuse"}
QA = {"video": "v.mp4", "QA": [{"q": "What is it?", "a": "A square."}]}


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def json_list(*rows) -> str:
    """A JSON list with one record a line, the first on line 1."""
    return "[" + ",\n".join(json.dumps(r) for r in rows) + "]\n"


# name: (file text, format, records kept, {skip reason: count}, the --strict error); the skip, and the
# strict error, are always on line 1: the malformed record comes first, the format is sniffed past it
FIRST_BAD = {
    "invalid JSON": (jsonl("{oops", DIALOGUE, DIALOGUE), "dialogues", 2, {"invalid JSON": 1}, "invalid JSON"),
    "no known shape": (jsonl({"id": 7}, DIALOGUE), "dialogues", 1, {"no turns": 1}, "'conversations' must be"),
    "a string": (jsonl('"just text"', DIALOGUE), "dialogues", 1, {"bad record": 1}, "expected"),
    "null": (jsonl("null", SAFETY), "safety", 1, {"bad label": 1}, "'label' must be"),
    "speaker is a list": (jsonl({"conversations": [{"from": ["human"], "value": "Hi."}]}, DIALOGUE),
                          "dialogues", 1, {"bad turn": 1}, "unknown speaker"),
    "speaker is a dict": (jsonl({"conversations": [{"from": {"a": 1}, "value": "Hi."}]}, DIALOGUE),
                          "dialogues", 1, {"bad turn": 1}, "unknown speaker"),
    "text is a number": (jsonl({"conversations": [{"from": "human", "value": 5}]}, DIALOGUE),
                         "dialogues", 1, {"empty turn": 1}, "empty or missing text"),
    "text is NaN": (jsonl('{"conversations": [{"from": "human", "value": NaN}]}', DIALOGUE),
                    "dialogues", 1, {"empty turn": 1}, "empty or missing text"),
    "a lone surrogate": (jsonl('{"conversations": [{"from": "human", "value": "Hi \\ud800"}, '
                               '{"from": "gpt", "value": "Hello."}]}', DIALOGUE),
                         "dialogues", 1, {"bad text": 1}, "turn 0: text that is not valid Unicode"),
    "conversations is a string": (jsonl({"conversations": "Hi."}, DIALOGUE), "dialogues", 1, {"no turns": 1},
                                  "'conversations' must be"),
    "label is a list": (jsonl({**DIALOGUE, "label": ["refuse"]}, SAFETY), "safety", 1, {"bad label": 1}, "'label'"),
    "nested too deeply": (jsonl('{"a": ' + "[" * 100_000, DIALOGUE), "dialogues", 1, {"invalid JSON": 1},
                          "nested too deeply"),
    "QA is a string": (json_list({"video": "v.mp4", "QA": "What?"}, QA), "videochat", 1, {"bad record": 1},
                       "non-empty QA list"),
    "video is a number": (json_list({"video": 5, "QA": QA["QA"]}, QA), "videochat", 1, {"bad video field": 1},
                          "'video' must be a path"),
    "no QA": (json_list({"video": "v.mp4"}, QA), "videochat", 1, {"bad record": 1}, "non-empty QA list"),
}


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"not decoded by the readers")
    return tmp_path


@pytest.mark.parametrize("name", FIRST_BAD)
def test_a_malformed_first_record_is_skipped_and_counted_or_the_strict_error(data_dir, name, capsys):
    text, kind, kept, counts, problem = FIRST_BAD[name]
    path = data_dir / ("data.json" if kind == "videochat" else "data.jsonl")
    path.write_text(text)
    assert sniff_format(path) == kind
    said = []
    records = read_records([path], log=said.append)
    assert len(records) == kept and said == [f"{path}: {kept} records in {kind} format ({_counter(counts)})"]
    assert all(r["source"] != f"{path}:1" for r in records)
    assert f"skipped {path}:1: " in capsys.readouterr().err
    with pytest.raises(DataError) as e:
        read_records([path], strict=True, log=lambda *a: None)
    assert str(e.value).startswith(f"{path}:1: ") and problem in str(e.value), e.value


def _counter(counts: dict) -> SkipCounter:
    skips = SkipCounter()
    skips.counts.update(counts)
    return skips


# name: (file bytes, the error after "FILE: "), in both modes
UNREADABLE = {
    "empty file": (b"", "no records"),
    "only blank lines": (b"\n  \n\t\n", "no records"),
    "empty list": (b"[]\n", "no records"),
    "empty list with a BOM": ("\ufeff[ ]".encode(), "no records"),
    "only a [": (b"[\n", "2: invalid JSON (Expecting value)"),
    "list cut after a record": (("[\n" + json.dumps(QA) + ",\n").encode(), "3: invalid JSON (Expecting value)"),
    "garbage after the list": (json.dumps([QA]).encode() + b"\nextra", "2: invalid JSON (extra data after ']')"),
    "every record malformed": (b"{oops\n[1]\n", "no record in a known format (the first bad one: line 1: invalid JSON"),
    "objects of no known shape": (jsonl({"id": 1}, {"text": "hi"}).encode(),
                                  "no record in a known format (the first bad one: line 1: not a record"),
    "not UTF-8": (b'{"conversations": "\xff\xfe"}\n', "cannot read"),
}


@pytest.mark.parametrize("name", UNREADABLE)
@pytest.mark.parametrize("strict", [False, True])
def test_a_file_without_a_usable_record_is_one_error_naming_it(data_dir, name, strict):
    content, problem = UNREADABLE[name]
    path = data_dir / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_records([path], strict=strict, log=lambda *a: None)
    assert str(e.value).startswith(f"{path}:" + ("" if problem[0].isdigit() else " ") + problem), e.value
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name,content,kind,lines", [
    ("JSONL with a BOM", "\ufeff" + jsonl(DIALOGUE, SAFETY), "dialogues", [1, 2]),
    ("JSON list with a BOM", "\ufeff" + json_list(QA, QA), "videochat", [1, 2]),
    ("JSON list with a BOM, CRLF lines", "\ufeff[\r\n" + ",\r\n".join([json.dumps(QA)] * 2) + "\r\n]\r\n",
     "videochat", [2, 3]),
])
def test_a_byte_order_mark_is_accepted(data_dir, name, content, kind, lines):
    path = data_dir / "data.json"
    path.write_bytes(content.encode("utf-8"))
    records = read_records([path], strict=True, log=lambda *a: None)
    assert sniff_format(path) == kind and [r["source"] for r in records] == [f"{path}:{n}" for n in lines]


@pytest.mark.parametrize("what", ["a directory", "a missing file"])
def test_data_that_is_not_a_file(data_dir, what):
    path = data_dir / "folder.jsonl"
    if what == "a directory":
        path.mkdir()
    with pytest.raises(DataError, match="a directory, not a data file" if what == "a directory" else "no such file"):
        read_records([path], log=lambda *a: None)
