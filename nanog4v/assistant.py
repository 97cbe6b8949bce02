"""The video assistant behind chat.py: checkpoint loading, the conversation, its trimming, the safety
stages and the hand-off of `<video>` prompts to the text-to-video gallery (paper §3.4–3.5).

One turn (`Assistant.ask`):

    user text ──input-text check──▶ (refuse) or ──▶ prompt = template(history + text) with every video's
    N soft tokens spliced in ──LLaMA (+LoRA), streamed──▶ reply ──is it a refusal?──▶ stage "model"
    reply ──extract <video>/<videoK> prompts──▶ each: output-prompt check ──▶ generator ──▶ mp4

Whether a reply *is* a refusal is the `refusal` detector's call (a parameter: by default
`safety.is_refusal`, the phrases instruction-tuned LLaMAs refuse with; chat.py hands the nano model the
toy world's own). An attached video (`add_video`) first passes the input-video check; a flagged one is
*not* attached (the model never sees it) and the next turn is answered with a polite refusal (stage
"input-video").

**History trimming.** The template's prompt (system text, every turn, N placeholder tokens per video,
"###AI:") plus `max_new_tokens` must fit the LLM's `max_seq_len`. When it does not, whole turns are
dropped from the oldest on, except the most recent video turn (a question is usually about the latest
clip) and the new question. If that is still too long, the reply gets fewer new tokens, down to
`MIN_NEW_TOKENS`; only then is the latest video dropped. A dropped video and a shortened reply are
told in the turn's `notes` (chat.py prints them as `note:` lines). A message that does not fit even
alone, or that the tokenizer cannot take, is answered with an error and changes nothing: the
conversation, its videos and their tokens stay exactly as they were.

**Checkpoint layout** (`load_chat_model`, the same for every preset; train.py writes the nano one):

    CKPT/tokenizer.model   SentencePiece model
    CKPT/vision/           CLIP vision tower, transformers layout (official CLIP ViT-L/14 for 7b)
    CKPT/llama/            LLaMA, Hugging Face layout (LLaMA-7B for 7b)
    CKPT/stage2/           GPT4Video.save_pretrained of stage 2 (abstractor + LoRA); CKPT/stage1/ is used
                           when there is no stage2/ (the model then has no instruction tuning)
    CKPT/safety_checker/   optional: a StableDiffusionSafetyChecker directory, the input-video check for
                           real videos (without it: the toy hazard check for nano, none for 7b)

**mPLUG-Owl's video checkpoint** (`load_owl_chat_model`, preset `owl-video`) is one directory as it was
released (config.json, pytorch_model.bin or safetensors, tokenizer.model): alone it is talked to in its
own template (`mplug_owl.TEMPLATE`); with a GPT4Video stage-2 run on top (`adapter`: train.py --preset
owl-video --stage 2 --out), in GPT4Video's, which that run taught it.
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import t2v
from .data import GPT4VIDEO, DataError, Template
from .generate import SamplingConfig, stream
from .inference import prompt_embeddings, video_tokens
from .lora import merge_lora
from .model import GPT4Video
from .mplug_owl import TEMPLATE as OWL_TEMPLATE
from .safety import REFUSALS, Safety, Verdict, is_refusal
from .tokenizer import StreamDecoder, Tokenizer, TokenizerError
from .weights import CheckpointError, load_gpt4video, load_mplug_owl


MIN_NEW_TOKENS = 16     # trimming shortens a reply down to this many tokens before it drops the latest video


class ChatError(ValueError):
    """Input chat.py cannot use; the message is one line, "{file}: {problem}"."""


# --- loading -----------------------------------------------------------------------------------------

def load_chat_model(ckpt_dir: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                    log=lambda message: None) -> tuple[GPT4Video, Tokenizer]:
    """(model in eval mode on `device`, tokenizer) from a checkpoint directory in the layout above."""
    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        raise ChatError(f"{ckpt}: no such checkpoint directory (expected tokenizer.model, vision/, llama/, "
                        "stage2/; see chat.py --help)")
    stage = ckpt / "stage2" if (ckpt / "stage2").is_dir() else ckpt / "stage1"
    for need in (ckpt / "tokenizer.model", ckpt / "vision", ckpt / "llama", stage):
        if not need.exists():
            raise ChatError(f"{need}: missing (not a chat checkpoint directory: {ckpt} needs tokenizer.model, "
                            "vision/, llama/ and stage2/ or stage1/)")
    if stage.name == "stage1":
        log(f"note: {ckpt} has no stage2/; using the stage-1 model (no instruction tuning)")
    tokenizer = Tokenizer(ckpt / "tokenizer.model")
    model = load_gpt4video(stage, vision_path=ckpt / "vision", llama_path=ckpt / "llama", dtype=dtype)
    _check_vocab(tokenizer, model, ckpt / "tokenizer.model", ckpt / "llama")
    if model.has_lora:
        merge_lora(model.llm)        # W ← W + (α/r)·B A: inference pays one matmul per projection, not three
    return model.to(device).eval(), tokenizer


def load_owl_chat_model(ckpt_dir: str | Path, adapter: str | Path | None = None, device: str = "cpu",
                        dtype: torch.dtype = torch.float32) -> tuple[GPT4Video, Tokenizer, Template]:
    """(model, tokenizer, template) from mPLUG-Owl's released video checkpoint, with the LoRA of a GPT4Video
    stage-2 run (`adapter`) merged in when one is given; the template is the one the model was taught."""
    ckpt = Path(ckpt_dir)
    for need in (ckpt / "config.json", ckpt / "tokenizer.model"):
        if not need.is_file():
            raise ChatError(f"{need}: missing (not an mPLUG-Owl checkpoint directory: it needs config.json, "
                            "tokenizer.model and pytorch_model.bin or model.safetensors)")
    tokenizer, model = Tokenizer(ckpt / "tokenizer.model"), load_mplug_owl(ckpt, dtype)
    _check_vocab(tokenizer, model, ckpt / "tokenizer.model", ckpt)
    template = OWL_TEMPLATE
    if adapter is not None:
        cfg, lora = GPT4Video.read_config(adapter)
        if cfg.name != "owl-video" or not lora:
            raise ChatError(f"{Path(adapter) / 'config.json'}: not a stage-2 run of the owl-video preset "
                            f"(preset {cfg.name!r}, {'with' if lora else 'without'} LoRA)")
        model.cfg = dataclasses.replace(model.cfg, lora=cfg.lora)
        model.add_lora()
        model.load_trainable(adapter)
        merge_lora(model.llm)
        template = GPT4VIDEO
    return model.to(device).eval(), tokenizer, template


def _check_vocab(tokenizer: Tokenizer, model: GPT4Video, tokenizer_file: Path, llama_path: Path) -> None:
    if tokenizer.vocab_size > model.llm.cfg.vocab_size:
        raise CheckpointError(f"{tokenizer_file}: {tokenizer.vocab_size} pieces, but the LLaMA in {llama_path} has "
                              f"{model.llm.cfg.vocab_size} embeddings")


# --- the hand-off: <video> prompts in a reply -----------------------------------------------------------

_TAG = re.compile(r"<(/?)video(\d*)>", re.IGNORECASE)


@dataclass
class VideoPrompt:
    """One prompt the model wrote: its text, K of `<videoK>` (None for `<video>`), whether a closing tag
    ended it (False: the end of the reply or the next opening tag did), and its span in the reply."""
    text: str
    k: int | None = None
    closed: bool = True
    span: tuple[int, int] = (0, 0)


def extract_video_prompts(reply: str) -> list[VideoPrompt]:
    """Every `<video> … </video>` / `<videoK> … </videoK>` prompt of a reply, in order.

    Read left to right: an opening tag starts a prompt; any closing tag ends the open one (a mismatched
    number is forgiven); an opening tag while one is open ends that one and starts the next (so nested
    tags give the outer and inner texts as separate prompts, never a tag inside a prompt); a prompt still
    open at the end of the reply runs to the end (`closed=False`: e.g. cut by max_new_tokens). Closing
    tags with nothing open are ignored; empty prompts are dropped; white space is collapsed.
    """
    prompts: list[VideoPrompt] = []
    opened = None                                          # the open tag's match

    def close(end: int, span_end: int, closed: bool) -> None:
        text = " ".join(reply[opened.end():end].split())
        if text:
            k = int(opened.group(2)) if opened.group(2) else None
            prompts.append(VideoPrompt(text, k, closed, (opened.start(), span_end)))

    for m in _TAG.finditer(reply):
        closing = m.group(1) == "/"
        if opened is not None:
            close(m.start(), m.end() if closing else m.start(), closed=closing)
            opened = None
        if not closing:
            opened = m
    if opened is not None:
        close(len(reply), len(reply), closed=False)
    return prompts


def remove_video_prompts(reply: str, prompts: list[VideoPrompt]) -> str:
    """The reply without the given prompts (tags included), white space tidied."""
    for p in sorted(prompts, key=lambda p: p.span[0], reverse=True):
        reply = reply[:p.span[0]] + " " + reply[p.span[1]:]
    return " ".join(reply.split())


# --- the session ----------------------------------------------------------------------------------------

def unused_path(path: Path) -> Path:
    """`path`, or `stem-2.mp4`, `stem-3.mp4`, … if taken: a second conversation writing into the same
    --out never overwrites the videos of the first."""
    k = 1
    while path.with_stem(path.stem + (f"-{k}" if k > 1 else "")).exists():
        k += 1
    return path.with_stem(path.stem + (f"-{k}" if k > 1 else ""))


@dataclass
class TurnResult:
    """What one turn produced; `to_json` is chat.py's --json object (docs/design.md, chat.py's --json)."""
    reply: str
    videos: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    refused: bool = False
    refusal_stage: str | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)     # what to show after the reply: videos written, trimming
    new_tokens: int = 0                                 # generated tokens, and the seconds they took
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"reply": self.reply, "videos": self.videos, "refused": self.refused,
                "refusal_stage": self.refusal_stage, "prompts": self.prompts, "errors": self.errors,
                "notes": self.notes}


class Assistant:
    """A multi-turn conversation with GPT4Video (see the module docstring)."""

    def __init__(self, model: GPT4Video, tokenizer: Tokenizer, *, sampling: SamplingConfig = SamplingConfig(),
                 safety: Safety | None = None, generator=None, out_dir: str | Path = "chat_videos",
                 t2v_frames: int | None = None, device: str = "cpu", refusal=is_refusal, log=lambda item: None,
                 template: Template = GPT4VIDEO, decode: str = "dynamic"):
        self.model, self.tokenizer, self.device, self.log = model, tokenizer, device, log
        self.decode = decode                     # generate.stream's decode path: "dynamic", "static" or "compile"
        self.is_refusal = refusal                # reply -> bool: does it read as the model's refusal?
        self.template = template                 # the prompt layout: GPT4Video's, or mPLUG-Owl's own
        self.sampling = sampling if sampling.stop else dataclasses.replace(sampling, stop=template.stop)
        self.safety, self.generator = safety or Safety(), generator
        self.out_dir, self.t2v_frames = Path(out_dir), t2v_frames
        self.turn_count = 0                      # turns answered since the start (names the mp4 files)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation and its videos (generated files stay)."""
        self.videos: list[str] = []
        self.tokens: list[torch.Tensor] = []     # F_video (N, d) of each attached video
        self.turns: list[dict] = []
        self.pending_refusal: str | None = None

    # --- input --------------------------------------------------------------------------------------
    def add_video(self, path: str | Path) -> bool:
        """Check and attach a video (its N tokens join the next prompt). Raises VideoError for a file
        that cannot be read; returns False when the input-video check flagged it (not attached)."""
        verdict = self.safety.check_video(path)
        self.log(verdict)
        if verdict.flagged:
            self.pending_refusal = "input-video"
            return False
        with torch.no_grad():
            self.tokens.append(video_tokens(self.model, [str(path)], device=self.device)[0])   # (N, d)
        self.videos.append(str(path))
        self.turns.append({"from": "human", "video": len(self.videos) - 1})
        return True

    def ask(self, text: str, on_text=None) -> TurnResult:
        """Answer one user message. `on_text(piece)` receives the reply as it is generated. A message that
        cannot be answered (empty, not encodable, too long) gives a result with `errors` and leaves the
        conversation exactly as it was."""
        self.turn_count += 1
        text = text.strip()
        if not text:
            return TurnResult("", errors=["chat: an empty message"])
        try:                     # before any check: a refused message joins the conversation too
            self.tokenizer.encode(text)                                       # (positions in the message)
            self.prompt_length(self.turns + [{"from": "human", "value": text}])
        except (TokenizerError, DataError) as e:
            return TurnResult("", errors=[f"chat: the message cannot be tokenized: {e}"])
        if self.pending_refusal:                          # a flagged video was just offered
            stage, self.pending_refusal = self.pending_refusal, None
            return self._refuse(text, stage, on_text)
        verdict = self.safety.check_text(text)
        self.log(verdict)
        if verdict.flagged:
            return self._refuse(text, "input-text", on_text)
        saved = (list(self.turns), list(self.videos), list(self.tokens))
        self.turns.append({"from": "human", "value": text})
        notes: list[str] = []
        budget = self._fit_history(notes)
        if budget < 1:
            self.turns, self.videos, self.tokens = saved
            limit, alone = self.model.llm.cfg.max_seq_len, self.prompt_length([{"from": "human", "value": text}])
            return TurnResult("", errors=[f"chat: the message does not fit the context of {limit} tokens "
                                          f"(its prompt alone takes {alone})"])
        started = time.perf_counter()
        try:
            reply, n = self._generate(budget, on_text)
        except TokenizerError as e:           # an id beyond the tokenizer (LLM vocab > tokenizer vocab)
            self.turns, self.videos, self.tokens = saved
            return TurnResult("", errors=[str(e)])
        result = TurnResult(reply, notes=notes, new_tokens=n, seconds=time.perf_counter() - started)
        if self.is_refusal(reply) and not extract_video_prompts(reply):
            result.refused, result.refusal_stage = True, "model"
            self.log(Verdict("model", True, "the reply is a refusal"))
        else:
            self._hand_off(result)
        if result.reply:
            self.turns.append({"from": "ai", "value": result.reply})
        return result

    def _refuse(self, text: str, stage: str, on_text) -> TurnResult:
        reply = REFUSALS[stage]
        if on_text is not None:
            on_text(reply)
        self.turns += [{"from": "human", "value": text}, {"from": "ai", "value": reply}]
        return TurnResult(reply, refused=True, refusal_stage=stage)

    # --- the context --------------------------------------------------------------------------------
    def prompt_length(self, turns: list[dict] | None = None) -> int:
        """Tokens of the prompt for the next reply, N per video slot included."""
        conversation = {"videos": self.videos, "turns": self.turns if turns is None else turns}
        return len(self.template.prompt_for_reply(self.tokenizer, conversation, self.model.num_video_tokens)["input_ids"])

    def _fit_history(self, notes: list[str] | None = None) -> int:
        """Make prompt + reply fit `max_seq_len` (the module docstring's order) and return the new-token
        budget; < 1 when even the question alone does not fit (the caller restores the turns). What the
        user should know (a video dropped, a shorter reply) is appended to `notes`."""
        notes = [] if notes is None else notes
        limit, want = self.model.llm.cfg.max_seq_len, self.sampling.max_new_tokens
        videos = [i for i, t in enumerate(self.turns[:-1]) if "video" in t]
        latest = self.turns[videos[-1]] if videos else None       # the latest video turn, kept longest
        while self.prompt_length() + want > limit:
            drop = next((i for i, t in enumerate(self.turns[:-1]) if t is not latest), None)
            if drop is None:                                      # only the latest video and the question
                break
            self._drop(drop, notes)
        budget = min(want, limit - self.prompt_length())
        if budget < min(want, MIN_NEW_TOKENS) and latest is not None:
            self._drop(next(i for i, t in enumerate(self.turns) if t is latest), notes)
            budget = min(want, limit - self.prompt_length())
        if 1 <= budget < want:
            notes.append(f"context: this reply gets at most {budget} new tokens, not {want} (--max-new-tokens): "
                         f"the conversation fills the context of {limit} tokens")
        return budget

    def _drop(self, i: int, notes: list[str]) -> None:
        """Remove turn i to make room: a video turn is a note, a text turn only a log line."""
        removed = self.turns.pop(i)
        self.log(f"context: dropped the oldest {'video' if 'video' in removed else removed['from']} turn")
        if "video" in removed:
            notes.append(f"context: dropped the video {self.videos[removed['video']]} from the conversation: "
                         f"it no longer fits the context of {self.model.llm.cfg.max_seq_len} tokens")

    # --- generation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _generate(self, max_new_tokens: int, on_text) -> tuple[str, int]:
        """The reply (streamed to `on_text` piece by piece) and how many tokens it took."""
        conversation = {"videos": self.videos, "turns": self.turns}
        tokens = torch.stack(self.tokens) if self.tokens else None                       # (V, N, d)
        embeds = prompt_embeddings(self.model, self.tokenizer, conversation, tokens,
                                   self.template.prompt_for_reply)                       # (L, d)
        seed = None if self.sampling.seed is None else self.sampling.seed + self.turn_count
        cfg = dataclasses.replace(self.sampling, max_new_tokens=max_new_tokens, seed=seed)
        decoder, ids = StreamDecoder(self.tokenizer), []
        for token in stream(self.model.llm, embeds=embeds[None], cfg=cfg, eos_id=self.tokenizer.eos_id,
                            tokenizer=self.tokenizer, decode=self.decode):
            ids.append(token)
            piece = decoder.push(token)
            if piece and on_text is not None:
                on_text(piece)
        tail = decoder.flush()
        if tail and on_text is not None:
            on_text(tail)
        return self.template.clean_reply(self.tokenizer.decode(ids)), len(ids)

    # --- the hand-off -------------------------------------------------------------------------------
    def _hand_off(self, result: TurnResult) -> None:
        """Check and generate every prompt of `result.reply`; a flagged prompt is cut out of the reply and
        replaced by a polite refusal; a generator failure is reported and leaves the text intact."""
        flagged: list[VideoPrompt] = []
        for j, prompt in enumerate(extract_video_prompts(result.reply), start=1):
            result.prompts.append(prompt.text)
            verdict = self.safety.check_prompt(prompt.text)
            self.log(verdict)
            if verdict.flagged:
                flagged.append(prompt)
                continue
            if self.generator is None:
                result.notes.append(f"video {j}: {prompt.text!r} (no generator: --t2v none)")
                continue
            path = unused_path(self.out_dir / f"turn{self.turn_count:03d}_video{j}.mp4")
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                seed = None if self.sampling.seed is None else self.sampling.seed + 1000 * self.turn_count + j
                t2v.save(self.generator, prompt.text, path, self.t2v_frames, seed)
            except (t2v.T2VError, OSError) as e:
                result.errors.append(str(e) if isinstance(e, t2v.T2VError) else f"{path}: {e.strerror or e}")
                continue
            result.videos.append(str(path))
            result.notes.append(f"video {j}: {prompt.text!r} -> {path}")
        if flagged:
            result.refused, result.refusal_stage = True, "output-prompt"
            kept = remove_video_prompts(result.reply, flagged)
            result.reply = f"{kept} {REFUSALS['output-prompt']}".strip()
            result.notes.append("not generated (flagged by the output-prompt check): "
                                + ", ".join(repr(p.text) for p in flagged))
