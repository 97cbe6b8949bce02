"""The data set readers: every source becomes the same conversation record (docs/design.md).

- ``read_videochat``: VideoChat-11k JSON (stage 1), ``[{"video": path, "QA": [{"i"?, "q", "a"}]}]``;
- ``read_dialogues``: GPT4Video-50k-style dialogues (stage 2, text only), one record per line or a JSON
  list, ``{"id"?, "conversations": [{"from": "human"|"user"|"gpt"|"ai"|"assistant", "value"}]}`` whose AI
  turns show videos with ``<video> caption </video>`` / ``<videoK> caption </videoK>``;
- ``read_safety``: the same shape plus ``"label": "refuse"|"benign"``;
- ``read_jsonl``: generic ``{"video"?: path | [paths], "conversations": [...], "label"?}``;
- ``read_meta_json``: the official GPT4Video code's ``meta.json``, ``{"train": [{"video"?: path,
  "instruction": "###Human: …###AI: …"}, …], "test": [...]}`` (one split at a time, "train" by default);
- ``read_records``: any mix of these files, each format recognised from its first well-formed record
  (a meta.json by its "train" / "test" lists; ``sniff_format``).

A malformed record is skipped and counted by reason in a ``SkipCounter`` (the first few printed as
``file:line: problem``), or raises ``DataError("file:line: problem")`` with ``strict=True``; a missing
video file is a counted skip, never a crash in the middle of an epoch.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterator

from .data import SYSTEM, VIDEO_TAG, DataError, SkipCounter, check_conversation


def _text(path: Path) -> str:
    """A data file's text (UTF-8, a BOM allowed)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def _json_records(path: Path) -> Iterator[tuple[int, object]]:
    """Yield (line number, record) from a JSON list file or a JSONL file; a bad JSONL line yields a
    DataError in place of its record. A JSON list that does not parse is one error for the file."""
    text = _text(path)
    if text.lstrip().startswith("["):
        yield from _json_list(path, text)
        return
    for line, row in enumerate(text.split("\n"), 1):     # not splitlines(): JSON strings may hold U+2028
        if row.strip():
            try:
                yield line, json.loads(row)
            except (json.JSONDecodeError, RecursionError) as e:
                yield line, DataError(f"invalid JSON ({getattr(e, 'msg', 'nested too deeply')})", "invalid JSON")


def _json_list(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """The records of a JSON list, decoded one by one so that each keeps its line number."""
    decoder, space = json.JSONDecoder(), re.compile(r"\s*")
    i = space.match(text, text.index("[") + 1).end()
    line, counted = 1, 0                                      # line number of offset `counted`
    while i >= len(text) or text[i] != "]":
        try:
            record, end = decoder.raw_decode(text, i)
        except (json.JSONDecodeError, RecursionError) as e:
            where = e.lineno if isinstance(e, json.JSONDecodeError) else line + text.count("\n", counted, i)
            raise DataError(f"{path}:{where}: invalid JSON ({getattr(e, 'msg', 'nested too deeply')})",
                            "invalid JSON") from None
        line, counted = line + text.count("\n", counted, i), i
        yield line, record
        i = space.match(text, end).end()
        if i < len(text) and text[i] == ",":
            i = space.match(text, i + 1).end()
        elif i >= len(text) or text[i] != "]":
            line += text.count("\n", counted, i)
            raise DataError(f"{path}:{line}: invalid JSON (expected ',' or ']')", "invalid JSON")
    rest = space.match(text, i + 1).end()
    if rest < len(text):
        line += text.count("\n", counted, rest)
        raise DataError(f"{path}:{line}: invalid JSON (extra data after ']')", "invalid JSON")


def _read(path, parse: Callable[[object], dict], strict: bool, skips: SkipCounter | None,
          records: Callable[[Path], Iterator[tuple[int, object]]] = _json_records) -> Iterator[dict]:
    """Parse every record; a bad one is counted in `skips` (or raised as "file:line: problem")."""
    path, skips = Path(path), skips if skips is not None else SkipCounter()
    _check_file(path)
    for line, obj in records(path):
        where = f"{path}:{line}"
        try:
            if isinstance(obj, DataError):
                raise obj
            record = parse(obj)
            check_conversation(record)
        except DataError as e:
            if strict:
                raise DataError(f"{where}: {e}", e.reason) from None
            skips.skip(where, e)
            continue
        record["source"] = where
        yield record


_ROLES = {"human": "human", "user": "human", "ai": "ai", "gpt": "ai", "assistant": "ai"}


def _turns(conversations) -> list[dict]:
    """[{"from": "human"|"user"|"gpt"|"ai"|"assistant", "value": str}, ...] → our text turns."""
    if not isinstance(conversations, list) or not conversations:
        raise DataError("'conversations' must be a non-empty list", "no turns")
    turns = []
    for i, turn in enumerate(conversations):
        role = _ROLES.get(turn.get("from")) if isinstance(turn, dict) and isinstance(turn.get("from"), str) else None
        if role is None:
            raise DataError(f"turn {i}: unknown speaker {str(turn)[:60]}", "bad turn")
        if not isinstance(turn.get("value"), str) or not turn["value"].strip():
            raise DataError(f"turn {i}: empty or missing text", "empty turn")
        if role == "ai":
            _check_video_tags(turn["value"], i)
        turns.append({"from": role, "value": turn["value"]})
    if not any(t["from"] == "ai" for t in turns):
        raise DataError("no AI turn", "no AI turn")
    return turns


def _check_video_tags(text: str, i: int) -> None:
    """An AI turn's <video> / <videoK> captions must be closed, not nested, and not empty."""
    open_tag = None
    for m in VIDEO_TAG.finditer(text):
        closing, name = m.group(1) == "/", m.group(2).lower()
        if not closing and open_tag is None:
            open_tag = (name, m.end())
        elif closing and open_tag is not None and open_tag[0] == name and text[open_tag[1]:m.start()].strip():
            open_tag = None
        else:
            raise DataError(f"turn {i}: bad video caption near {text[max(0, m.start() - 20):m.end()]!r}",
                            "bad video tags")
    if open_tag is not None:
        raise DataError(f"turn {i}: <{open_tag[0]}> is never closed", "bad video tags")


def _video_paths(value, root: Path, check: bool) -> list[str]:
    """A record's video path(s), resolved against `root`; a missing file is a DataError."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise DataError(f"'video' must be a path or a list of paths, not {str(value)[:60]}", "bad video field")
    paths = [root / v for v in values]
    for p in paths:
        if check and not p.is_file():
            raise DataError(f"video file not found: {p}", "video file not found")
    return [str(p) for p in paths]


def read_videochat(path, *, video_root=None, check_videos: bool = True, strict: bool = False,
                   skips: SkipCounter | None = None) -> Iterator[dict]:
    """Stage 1, VideoChat-11k: a JSON list of {"video": path, "QA": [{"i"?, "q", "a"}, ...]}.

    Each record becomes a video turn then, per QA, a human turn ("i" and "q" joined by a space) and an
    AI turn ("a"). Video paths are resolved against `video_root` (default: the JSON file's folder).
    """
    root = Path(video_root) if video_root is not None else Path(path).parent

    def parse(obj) -> dict:
        if not isinstance(obj, dict) or "video" not in obj or not isinstance(obj.get("QA"), list) or not obj["QA"]:
            raise DataError("expected {\"video\": path, \"QA\": [...]} with a non-empty QA list", "bad record")
        return {"videos": _video_paths(obj["video"], root, check_videos), "turns": videochat_turns(obj["QA"])}

    return _read(path, parse, strict, skips)


def videochat_turns(qa_list: list) -> list[dict]:
    """A VideoChat record's "QA" list → our turns: the video, then per QA a human turn ("i" and "q"
    joined by a space) and an AI turn ("a")."""
    turns: list[dict] = [{"from": "human", "video": 0}]
    for j, qa in enumerate(qa_list):
        if not isinstance(qa, dict) or not all(isinstance(qa.get(f, ""), str) for f in "iqa"):
            raise DataError(f"QA[{j}] is not {{\"i\", \"q\", \"a\"}} strings", "bad record")
        question = " ".join(s for s in (qa.get("i", "").strip(), qa.get("q", "").strip()) if s)
        if not question or not qa.get("a", "").strip():
            raise DataError(f"QA[{j}] has an empty question or answer", "empty turn")
        turns += [{"from": "human", "value": question}, {"from": "ai", "value": qa["a"]}]
    return turns


def read_dialogues(path, *, strict: bool = False, skips: SkipCounter | None = None) -> Iterator[dict]:
    """Stage 2, GPT4Video-50k style, text only: a JSON list or JSONL of
    {"id"?: str, "conversations": [{"from": "human"|"user"|"gpt"|"ai"|"assistant", "value": str}, ...]}.

    AI turns show videos by writing "<video> caption </video>" (or "<video1> … </video1>", ... with
    several); tags must be closed and captions non-empty. At least one AI turn.
    """
    def parse(obj) -> dict:
        if not isinstance(obj, dict):
            raise DataError("expected {\"conversations\": [...]}", "bad record")
        record = {"videos": [], "turns": _turns(obj.get("conversations"))}
        if "id" in obj:
            record["id"] = obj["id"]
        return record

    return _read(path, parse, strict, skips)


def read_safety(path, *, strict: bool = False, skips: SkipCounter | None = None) -> Iterator[dict]:
    """Safety dialogues: the shape of `read_dialogues` plus "label": "refuse" (the AI turns are polite
    refusals) or "benign" (a near-topic request answered helpfully: it measures over-refusal)."""
    def parse(obj) -> dict:
        if not isinstance(obj, dict) or obj.get("label") not in ("refuse", "benign"):
            raise DataError("'label' must be \"refuse\" or \"benign\"", "bad label")
        record = {"videos": [], "turns": _turns(obj.get("conversations")), "label": obj["label"]}
        if "id" in obj:
            record["id"] = obj["id"]
        return record

    return _read(path, parse, strict, skips)


def read_jsonl(path, *, video_root=None, check_videos: bool = True, strict: bool = False,
               skips: SkipCounter | None = None) -> Iterator[dict]:
    """Generic JSONL (or JSON list): {"video"?: path | [paths], "conversations": [...]}, speakers as in
    `read_dialogues`. The video(s) come first, one video turn each, as in the paper's template."""
    root = Path(video_root) if video_root is not None else Path(path).parent

    def parse(obj) -> dict:
        if not isinstance(obj, dict):
            raise DataError("expected {\"video\"?, \"conversations\": [...]}", "bad record")
        turns = _turns(obj.get("conversations"))
        videos = _video_paths(obj["video"], root, check_videos) if obj.get("video") is not None else []
        record = {"videos": videos, "turns": [{"from": "human", "video": k} for k in range(len(videos))] + turns}
        for key in ("id", "label"):                  # "label": e.g. refuse|benign in video safety data
            if key in obj:
                record[key] = obj[key]
        return record

    return _read(path, parse, strict, skips)


# --- the official code's meta.json ---------------------------------------------------------------------

SPLITS = ("train", "test")       # the official loader reads meta["train"], and meta["test"] for val and test
MAX_LINES = 10                   # the official loader keeps an instruction's first 10 lines
_MARKER = re.compile(r"(?:###|^)[ \t]*(Human|AI)[ \t]*:", re.MULTILINE)   # "###Human:", or "AI:" at a line start


def read_meta_json(path, *, split: str = "train", video_root=None, check_videos: bool = True,
                   max_lines: int | None = MAX_LINES, strict: bool = False,
                   skips: SkipCounter | None = None) -> Iterator[dict]:
    """The official GPT4Video code's data file: {"train": [item, ...], "test": [item, ...]}, one split
    read, each item {"video"?: path, "instruction": "###Human: …###AI: …", "id"?}.

    The instruction is the dialogue in the template of nanog4v/data.py without its system text (the
    official loader puts SYSTEM in front; a copy already there is dropped). It is cut to its first
    `max_lines` lines as the official loader does (None: keep it whole), then split into turns at each
    "###Human:" / "###AI:" (or "Human:" / "AI:" at the start of a line); "</s>" is removed. With a
    "video", the record starts with its video turn (the official model reads it first, after "Human:").
    Video paths are resolved against `video_root` (default: the JSON file's folder).
    """
    if split not in SPLITS:
        raise ValueError(f"read_meta_json: split must be one of {SPLITS}, not {split!r}")
    root = Path(video_root) if video_root is not None else Path(path).parent

    def parse(obj) -> dict:
        if not isinstance(obj, dict) or not isinstance(obj.get("instruction"), str):
            raise DataError("expected {\"video\"?, \"instruction\": \"###Human: …###AI: …\"}", "bad record")
        videos = _video_paths(obj["video"], root, check_videos) if obj.get("video") is not None else []
        turns = instruction_turns(obj["instruction"], max_lines)
        record = {"videos": videos, "turns": [{"from": "human", "video": k} for k in range(len(videos))] + turns}
        if "id" in obj:
            record["id"] = obj["id"]
        return record

    return _read(path, parse, strict, skips, lambda p: _meta_items(p, split))


def instruction_turns(instruction: str, max_lines: int | None = MAX_LINES) -> list[dict]:
    """An official "instruction" ("###Human: Hi\n###AI: Hello\n…") → our text turns (see read_meta_json)."""
    text = "\n".join(instruction.split("\n")[:max_lines]).strip()
    text = text.removeprefix(SYSTEM.strip())
    marks = list(_MARKER.finditer(text))
    if not marks:
        raise DataError("no '###Human:' or '###AI:' turn in the instruction", "no turns")
    if text[:marks[0].start()].strip():
        raise DataError(f"text before the first turn: {text[:marks[0].start()].strip()[:60]!r}", "bad instruction")
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return _turns([{"from": m.group(1).lower(), "value": text[m.end():end].replace("</s>", "").strip()}
                   for m, end in zip(marks, ends)])


def _is_meta(obj) -> bool:
    return isinstance(obj, dict) and any(isinstance(obj.get(s), list) for s in SPLITS)


def _meta_items(path: Path, split: str) -> Iterator[tuple[int, object]]:
    """(line number, item) for every item of meta.json's `split` list."""
    text = _text(path)
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        where = f"{path}:{e.lineno}" if isinstance(e, json.JSONDecodeError) else str(path)
        raise DataError(f"{where}: invalid JSON ({getattr(e, 'msg', 'nested too deeply')})", "invalid JSON") from None
    if not _is_meta(meta) or not isinstance(meta.get(split), list):
        found = [s for s in SPLITS if isinstance(meta, dict) and isinstance(meta.get(s), list)]
        raise DataError(f"{path}: no {split!r} list (a meta.json has \"train\" and \"test\" lists; found {found})")
    start, end = _value_span(text, split)
    before = text.count("\n", 0, start)                  # the list's first line is line before + 1
    for line, item in _json_list(path, text[start:end]):
        yield before + line, item


def _value_span(text: str, key: str) -> tuple[int, int]:
    """Where the value of `key` is in the text of a valid JSON object (the last one, as json.loads keeps)."""
    decoder, space = json.JSONDecoder(), re.compile(r"\s*")
    i, span = space.match(text, text.index("{") + 1).end(), (0, 0)
    while text[i] != "}":
        name, i = decoder.raw_decode(text, i)                              # the key
        start = space.match(text, space.match(text, i).end() + 1).end()   # past ":"
        _, i = decoder.raw_decode(text, start)                             # the value
        span = (start, i) if name == key else span
        i = space.match(text, i).end()
        i = space.match(text, i + 1).end() if text[i] == "," else i
    return span


# --- any data file ------------------------------------------------------------------------------------

def _check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path}: a directory, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")


def _format_of(record) -> str | None:
    """The format a record's keys say, or None for a record of no known shape."""
    if not isinstance(record, dict):
        return None
    if "QA" in record:
        return "videochat"
    if "conversations" not in record:
        return None
    if record.get("video") is not None:
        return "jsonl"
    return "safety" if "label" in record else "dialogues"


def sniff_format(path: Path) -> str:
    """Which reader a data file needs: "meta" (one JSON object with a "train" or "test" list: the official
    meta.json), else from its first well-formed record: "videochat" ({"video", "QA"}), "jsonl"
    ("conversations" and a "video"), "safety" (and a "label") or "dialogues" (text only).
    Malformed records before it are left to the reader (a counted skip, or the error with --strict)."""
    path, first_problem = Path(path), None
    _check_file(path)
    whole = _whole_object(_text(path))
    if _is_meta(whole):
        return "meta"
    for line, record in _json_records(path):
        kind = None if isinstance(record, DataError) else _format_of(record)
        if kind is not None:
            return kind
        first_problem = first_problem or f"line {line}: " + (str(record) if isinstance(record, DataError)
                                                               else "not a record of a known format")
    if first_problem is None:
        raise DataError(f"{path}: no records")
    if isinstance(whole, json.JSONDecodeError) and whole.lineno > 1 and whole.msg != "Extra data":  # a typo
        first_problem += f"; read as one JSON object, line {whole.lineno}: invalid JSON ({whole.msg})"
    raise DataError(f"{path}: no record in a known format (the first bad one: {first_problem})")


def _whole_object(text: str):
    """The file as one JSON object, its JSONDecodeError, or None (a JSON list, nested too deeply)."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return e
    except RecursionError:
        return None


def read_records(paths, video_root=None, strict: bool = False, log=print, split: str = "train") -> list[dict]:
    """Every data file's conversation records, in file order; the reader is chosen by `sniff_format`.
    `split`: which list of a meta.json to read ("train" or "test")."""
    records = []
    for path in map(Path, paths):
        kind, skips = sniff_format(path), SkipCounter()
        if kind == "videochat":
            found = read_videochat(path, video_root=video_root, strict=strict, skips=skips)
        elif kind == "jsonl":
            found = read_jsonl(path, video_root=video_root, strict=strict, skips=skips)
        elif kind == "meta":
            found = read_meta_json(path, split=split, video_root=video_root, strict=strict, skips=skips)
            kind = f"meta.json ({split})"
        else:
            found = (read_safety if kind == "safety" else read_dialogues)(path, strict=strict, skips=skips)
        found = list(found)
        log(f"{path}: {len(found)} records in {kind} format ({skips})")
        records += found
    return records
