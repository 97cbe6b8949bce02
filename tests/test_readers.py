"""readers.py: each source format becomes conversation records; malformed records are counted or raise."""
import io
from pathlib import Path

import pytest

from nanog4v.data import DataError, SkipCounter
from nanog4v.readers import read_dialogues, read_jsonl, read_safety, read_videochat

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
