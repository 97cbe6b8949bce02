"""mPLUG-Owl's own prompt template, to talk to its video checkpoint as it was released.

The official GPT4Video code starts from mPLUG-Owl's video model (`weights.load_mplug_owl`) and teaches it
GPT4Video's template (`data.py`) with LoRA. Before that, the checkpoint knows only mPLUG-Owl's template,
the one its README prompts it with::

    <s>The following is a conversation between a curious human and AI assistant. The assistant gives
    helpful, detailed, and polite answers to the user's questions.\n
    Human: {65 video tokens}\n
    Human: What is the woman doing in the video?\n
    AI: {the reply}

Its processor encodes the text between videos chunk by chunk, each as SentencePiece encodes a string on
its own (with the dummy-prefix space), after one <s>, and gives each `<|video|>` 65 positions (N + 1) that
the model fills with the video's tokens: `prompt_for_reply` does the same. A reply ends at </s> (or, as a
fallback, where the model starts a "Human:" turn itself).
"""
from __future__ import annotations

import re

from .data import Template, check_conversation

SYSTEM = ("The following is a conversation between a curious human and AI assistant. The assistant gives "
          "helpful, detailed, and polite answers to the user's questions.\n")
HUMAN, AI, VIDEO = "Human: ", "AI: ", "<|video|>"
STOP_STRINGS = ("Human:",)


def escape(text: str) -> str:
    """User text on one line, with no `<|video|>` that would open a slot."""
    return " ".join(text.split()).replace(VIDEO, "< |video|>")


def render(conversation: dict, for_reply: bool = True) -> list[str | int]:
    """The conversation as text chunks and video indices k (a slot for video k), in order."""
    check_conversation(conversation)
    pieces: list[str | int] = [SYSTEM]
    for turn in conversation["turns"]:
        if "video" in turn:
            pieces += [HUMAN, turn["video"], "\n"]
        elif turn["from"] == "human":
            pieces.append(f"{HUMAN}{escape(turn['value'])}\n")
        else:
            pieces.append(f"{AI}{escape(turn['value'])}\n")
    if for_reply:
        pieces.append(AI)
    text_runs: list[str | int] = []                 # adjacent text joined: chunks end only at videos
    for piece in pieces:
        if isinstance(piece, str) and text_runs and isinstance(text_runs[-1], str):
            text_runs[-1] += piece
        else:
            text_runs.append(piece)
    return text_runs


def prompt_for_reply(tokenizer, conversation: dict, num_video_tokens: int = 65) -> dict:
    """The conversation so far and "AI: " in mPLUG-Owl's template: {"input_ids", "video_slots"} as
    `data.prompt_for_reply` gives them (video k's N + 1 tokens go to positions start..start+N)."""
    ids, slots = [tokenizer.bos_id], []
    for chunk in render(conversation):
        if isinstance(chunk, int):
            slots.append((len(ids), chunk))
            ids += [tokenizer.pad_id] * num_video_tokens
        else:
            ids += tokenizer.encode(chunk)
    return {"input_ids": ids, "video_slots": slots}


def clean_reply(text: str) -> str:
    """A reply cut where the model starts a turn of its own."""
    return re.split(r"\n?(?:Human|AI):", text, maxsplit=1)[0].strip()


TEMPLATE = Template(prompt_for_reply, clean_reply, STOP_STRINGS)
