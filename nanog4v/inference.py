"""Inference helpers shared by training, evaluation and chat: a video's N soft tokens, the prompt
embeddings with the video spliced in, and greedy exact-answer accuracy (the end-of-stage check of
`train.py`, reused by `nanog4v.eval`).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .data import STOP_STRINGS, DataError, clean_reply, feature_file, normalize_answer, prompt_for_reply, video_pixels
from .generate import SamplingConfig, generate
from .model import splice_video
from .video import VideoError


def video_tokens(model, videos: list[str], features_dir=None, device="cpu") -> torch.Tensor:
    """F_video (V, N, d) of each video: from cached ViT features (`features_dir`, when all are there) or
    decoded frames."""
    cfg = model.cfg
    if features_dir is not None and all(feature_file(features_dir, v).is_file() for v in videos):
        feats = torch.stack([load_file(str(feature_file(features_dir, v)))["features"] for v in videos])
        return model.abstractor(feats.to(device).float())                    # (V, N, d)
    pixels = torch.stack([video_pixels(v, cfg.num_frames, cfg.vision.image_size, cfg.frames)
                          for v in videos])                                  # (V, T, 3, S, S)
    return model.encode_video(pixels.to(device))                             # (V, N, d)


def prompt_embeddings(model, tokenizer, conversation: dict, video_tokens: torch.Tensor | None,
                      prompt_for_reply=prompt_for_reply) -> torch.Tensor:
    """The conversation so far and "###AI:" as LLM input (L, d): token embeddings with video k's N tokens
    (`video_tokens[k]`, (V, N, d)) at its slot — the same sequence training saw before the reply.
    (`prompt_for_reply`: another template's, e.g. `mplug_owl.prompt_for_reply`.)"""
    prompt = prompt_for_reply(tokenizer, conversation, model.num_video_tokens)
    ids = torch.tensor([prompt["input_ids"]], device=model.llm.embed_tokens.weight.device)
    embeds = model.llm.embed_tokens(ids)                                     # (1, L, d)
    if prompt["video_slots"]:
        embeds = splice_video(embeds, video_tokens, [(0, start, k) for start, k in prompt["video_slots"]])
    return embeds[0]                                                         # (L, d)


@torch.no_grad()
def reply_accuracy(model, tokenizer, records: list[dict], *, features_dir=None, limit: int | None = 64,
                   batch_size: int = 16, device="cpu", bf16: bool = False, examples: int = 5) -> dict:
    """Exact-answer accuracy of greedy replies: every AI turn of `records`, in order, up to `limit`,
    is asked with the true conversation before it (videos included) and compared with
    `normalize_answer`. Generation stops at </s> or after len(answer) + 2 tokens (any longer reply
    is wrong anyway). Returns {"accuracy", "n", "skipped", "examples": [{"prompt", "answer", "reply"}]}.
    """
    was_training = model.training
    model.eval()
    items, skipped = [], 0                                       # (prompt embeddings (L, d), answer, question)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    with autocast:
        for record in records:
            if limit is not None and len(items) >= limit:
                break
            try:
                videos = video_tokens(model, record["videos"], features_dir, device) if record["videos"] else None
            except (VideoError, DataError, SafetensorError, OSError, KeyError, ValueError):
                skipped += 1
                continue
            turns = record["turns"]
            for j, turn in enumerate(turns):
                if turn["from"] != "ai" or j == 0 or limit is not None and len(items) >= limit:
                    continue
                embeds = prompt_embeddings(model, tokenizer, {"videos": record["videos"], "turns": turns[:j]}, videos)
                if len(embeds) >= model.cfg.llama.max_seq_len:
                    skipped += 1
                    continue
                question = next((t["value"] for t in reversed(turns[:j]) if "value" in t), "<video>")
                items.append((embeds, turn["value"], question))
        replies = []
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            longest = max(len(tokenizer.encode(answer)) for _, answer, _ in chunk)
            out = generate(model.llm, embeds=[e for e, _, _ in chunk], eos_id=tokenizer.eos_id,
                           pad_id=tokenizer.pad_id, tokenizer=tokenizer,
                           cfg=SamplingConfig(max_new_tokens=longest + 2, stop=STOP_STRINGS))
            replies += [clean_reply(tokenizer.decode(ids)) for ids in out]
    model.train(was_training)
    right = [normalize_answer(r) == normalize_answer(a) for r, (_, a, _) in zip(replies, items)]
    shown = [{"prompt": q, "answer": a, "reply": r} for r, (_, a, q) in zip(replies, items)][:examples]
    return {"accuracy": sum(right) / len(right) if right else 0.0, "n": len(right), "skipped": skipped,
            "examples": shown}
