"""A local dialogue writer for §3.4's data construction: a chat LLaMA on this machine instead of GPT-4.

The paper's GPT4Video-50k dialogues were written by GPT-4 and were not released. `LocalLlamaWriter` is a
drop-in `DialogueWriter` for `nanog4v.datagen.build_dialogues` that runs any Hugging Face LLaMA-family
chat model directory (config.json + safetensors or .bin weights + tokenizer.model: LLaMA-2-chat, Vicuna,
...) through our own code — `weights.load_llama`, `tokenizer.Tokenizer`, `generate.generate` — offline:

    chat prompt = template.format(prompt=datagen's instruction)     e.g. "[INST] … [/INST]"
    ids         = <s> + encode(chat prompt)
    reply       = decode(generate(model, [ids], cfg))               stops at </s> or a template stop string

`write` returns the reply text, which `build_dialogues` parses and checks exactly as it does the API
writer's (`datagen.parse_dialogue`). Sampling is seeded per prompt: the same (seed, prompt) always gives
the same dialogue, whatever the order of the calls. Run:

    python -m nanog4v.datagen --captions captions.csv --out dialogues.jsonl --writer local --llm DIR
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .generate import SamplingConfig, generate
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class ChatTemplate:
    """How a chat model expects one user message: `text` with "{prompt}" where the message goes, and the
    strings that mean the model has started a new user turn (generation ends there)."""
    text: str
    stop: tuple[str, ...] = ()


CHAT_TEMPLATES = {
    # LLaMA-2-chat (Touvron et al. 2023, the official `chat_completion`): <s>[INST] message [/INST]
    "llama2": ChatTemplate("[INST] {prompt} [/INST]", stop=("[INST]",)),
    # Vicuna v1.1 (FastChat's "vicuna_v1.1" conversation): its system line, then USER: … ASSISTANT:
    "vicuna": ChatTemplate("A chat between a curious user and an artificial intelligence assistant. The "
                           "assistant gives helpful, detailed, and polite answers to the user's questions. "
                           "USER: {prompt} ASSISTANT:", stop=("USER:",)),
    # a base (not chat) model: the instruction as it is
    "plain": ChatTemplate("{prompt}\n"),
}


def chat_template(template: str | ChatTemplate) -> ChatTemplate:
    """A template by name (CHAT_TEMPLATES) or a format string with "{prompt}" (no stop strings)."""
    if isinstance(template, ChatTemplate):
        return template
    if template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[template]
    if "{prompt}" not in template:
        raise ValueError(f"llm_writer.py: chat template {template!r} is not one of {sorted(CHAT_TEMPLATES)} "
                         "and has no '{prompt}' to fill in")
    return ChatTemplate(template)


class LocalLlamaWriter:
    """A chat LLaMA (ours, `nanog4v.llama.LLaMA`) that writes §3.4's dialogues: `write(prompt) -> str`.

    Defaults: LLaMA-2-chat's template, nucleus sampling (T = 0.7, p = 0.9; temperature=0 is greedy) and up
    to 512 new tokens, cut to what is left of the model's context (`max_seq_len`).
    """

    def __init__(self, model, tokenizer: Tokenizer, template: str | ChatTemplate = "llama2", *,
                 max_new_tokens: int = 512, temperature: float = 0.7, top_p: float = 0.9,
                 repetition_penalty: float = 1.0, seed: int = 0):
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise ValueError(f"llm_writer.py: {tokenizer.path} has {tokenizer.vocab_size} pieces, but the "
                             f"model has only {model.cfg.vocab_size} embeddings")
        self.model, self.tokenizer, self.template = model.eval(), tokenizer, chat_template(template)
        self.seed = seed
        self.cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  repetition_penalty=repetition_penalty, stop=self.template.stop)

    @classmethod
    def from_pretrained(cls, llm_dir: str | Path, tokenizer: str | Path | None = None, *,
                        dtype: torch.dtype = torch.float32, device: str = "cpu", **options) -> "LocalLlamaWriter":
        """Load a Hugging Face LLaMA directory (and its tokenizer.model, unless `tokenizer` names one)."""
        from .weights import load_llama
        model = load_llama(llm_dir, dtype=dtype).to(device)
        return cls(model, Tokenizer(tokenizer or Path(llm_dir) / "tokenizer.model"), **options)

    def chat_ids(self, prompt: str) -> list[int]:
        """<s> + the chat prompt's ids: what the model reads before it writes."""
        return self.tokenizer.encode(self.template.text.format(prompt=prompt.strip()), bos=True)

    def write(self, prompt: str) -> str:
        ids = self.chat_ids(prompt)                                                   # (L,)
        room = self.model.cfg.max_seq_len - len(ids)
        if room <= 0:
            raise ValueError(f"llm_writer.py: the chat prompt is {len(ids)} tokens, the model's context only "
                             f"{self.model.cfg.max_seq_len}")
        seed = zlib.crc32(f"{self.seed}:{prompt}".encode())                          # per prompt, not per call
        cfg = replace(self.cfg, max_new_tokens=min(self.cfg.max_new_tokens, room), seed=seed)
        [out] = generate(self.model, [ids], cfg=cfg, eos_id=self.tokenizer.eos_id,
                         pad_id=self.tokenizer.pad_id, tokenizer=self.tokenizer)       # (T,) new ids
        return self.tokenizer.decode(out).strip()
