"""Talk to GPT4Video about videos, and get videos back (paper §3.4–3.5).

    python chat.py --video examples/toy_clip.mp4                        # interactive, streams the reply
    python chat.py --video clip.mp4 --prompt "..." [--prompt "..."] [--json]   # one-shot, one turn each
        [--preset nano|7b|owl-video] [--ckpt DIR] [--t2v toy|zeroscope|none] [--t2v-path DIR] [--out DIR]
        [--frames T] [--max-new-tokens N] [--temperature X] [--top-p P] [--seed S] [--device cpu|cuda|mps]
        [--dtype auto|float32|bfloat16|float16] [--fast-decode]
    python chat.py --preset owl-video --ckpt weights/mplug-owl-llama-7b-video --video clip.mp4 [--adapter RUN]

In the interactive session: `/video PATH` attaches another video, `/reset` forgets the conversation,
`/quit` (or end of input, or a closed stdin) leaves. Input is read as bytes: a line that is not UTF-8 is
one `error: stdin line N: not UTF-8 text` and the session goes on. Every `<video> … </video>` prompt in
a reply is checked and handed to the text-to-video generator; the mp4 goes to --out (created when the
first video is written). After the reply come its notes, one `note: …` line each: the videos written,
and what history trimming did that changes the answer (a video dropped from the context, a reply held
to fewer than --max-new-tokens tokens).

`--json` prints one object per turn: {"reply", "videos", "refused", "refusal_stage", "prompts", "errors",
"notes"}. Then stdout holds nothing but those lines: the session's status lines (greeting, `(attached
…)`, `(conversation forgotten)`, `you> ` prompts, unknown commands) go to stderr, with the log.

The checkpoint (--ckpt, default weights/<preset>) has one layout for every preset (nanog4v/assistant.py):
tokenizer.model, vision/ (CLIP, transformers layout), llama/ (Hugging Face layout), stage2/ (or stage1/)
as train.py writes them, and optionally safety_checker/ (a Stable Diffusion safety checker). For 7b,
link the official weights in: vision -> clip-vit-large-patch14, llama -> llama-7b, tokenizer.model ->
llama-7b/tokenizer.model (see weights/README.md). The generator defaults to the toy renderer for nano
and to ZeroScope (--t2v-path, default weights/zeroscope_v2_576w) for 7b and owl-video.

--preset owl-video starts where the official code starts: --ckpt is mPLUG-Owl's released video checkpoint
directory as downloaded (config.json, pytorch_model.bin or model.safetensors, tokenizer.model), talked to
in mPLUG-Owl's own template; --adapter RUN adds the LoRA of a GPT4Video stage-2 run on it (train.py
--preset owl-video --stage 2 --init CKPT --out RUN), and then GPT4Video's template. --dtype: bfloat16 on a
GPU by default, float32 on a CPU; bfloat16 halves the memory (a 7B model fits 24 GB of RAM in it).

Safety (nanog4v/safety.py): the input-text lexicon pre-check (off with --no-lexicon), the model's own
refusals, the input-video concept check (off with --no-video-check) and the output-prompt check.
Flagged checks are logged on stderr with their stage; --verbose logs every check and the timing.

Bad input (a number flag out of its range or not finite, an --out that is a file, a --prompt that is
not UTF-8, a missing or broken video, a wrong checkpoint directory, missing generator weights, a
--max-new-tokens that fills the model's whole context) prints `error: <file or flag>: <problem>` and
exits with status 2 before anything is written. A message the assistant cannot take (not encodable,
too long for the context) is `error: chat: …`; the conversation stays as it was. A generator failure
during a turn keeps the text reply, reports `error: ...`; either makes a one-shot run exit with status 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_T2V = {"nano": "toy", "test": "toy", "7b": "zeroscope", "owl-video": "zeroscope"}
TOY_PRESETS = ("nano", "test")               # trained on the toy world (nanog4v/toy/)
NUMBER_FLAGS = {                             # flag: (lowest, highest or None, whether the lowest is allowed)
    "frames": (1, 256, True), "max_new_tokens": (1, None, True), "temperature": (0, None, True),
    "top_p": (0, 1, False), "seed": (0, 2**31 - 1, True), "t2v_frames": (1, 256, True), "t2v_steps": (1, None, True)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="chat.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--video", action="append", default=[], help="a video to talk about (repeatable)")
    p.add_argument("--prompt", action="append", default=[], help="one-shot: a user turn (repeatable); no REPL")
    p.add_argument("--json", action="store_true",
                   help="stdout: one JSON object per turn and nothing else (status lines go to stderr)")
    p.add_argument("--preset", default="nano", choices=sorted(DEFAULT_T2V), help="nano (default), 7b or owl-video")
    p.add_argument("--ckpt", type=Path, help="checkpoint directory (default weights/<preset>; owl-video: "
                   "weights/mplug-owl-llama-7b-video)")
    p.add_argument("--adapter", type=Path, help="owl-video: a GPT4Video stage-2 run to put on the checkpoint")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="weights' dtype (auto: bfloat16 on cuda, else float32)")
    p.add_argument("--frames", type=int, help="T, frames per input video (default: the checkpoint's)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, with --temperature > 0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda", "mps"], help="default: cuda, else mps, else cpu")
    p.add_argument("--fast-decode", action="store_true", help="decode with a static-shape step under torch.compile "
                   "(CUDA graphs on cuda; nanog4v/fast_decode.py): same replies; the first one waits for the compile")
    p.add_argument("--t2v", choices=["toy", "zeroscope", "none"], help="video generator (default: by preset)")
    p.add_argument("--t2v-path", type=Path, help="diffusers pipeline directory for --t2v zeroscope")
    p.add_argument("--t2v-frames", type=int, help="frames per generated video (toy 8, zeroscope 24)")
    p.add_argument("--t2v-steps", type=int, default=40, help="zeroscope denoising steps")
    p.add_argument("--t2v-size", default="576x320", help="zeroscope WIDTHxHEIGHT")
    p.add_argument("--cpu-offload", action="store_true", help="zeroscope: model CPU offload (saves GPU memory)")
    p.add_argument("--vae-slicing", action="store_true", help="zeroscope: decode frame by frame")
    p.add_argument("--out", type=Path, default=Path("chat_videos"), help="where generated mp4s go")
    p.add_argument("--safety-checker", type=Path, help="a StableDiffusionSafetyChecker directory")
    p.add_argument("--no-lexicon", action="store_true", help="turn the input-text lexicon pre-check off")
    p.add_argument("--no-video-check", action="store_true", help="turn the input-video check off")
    p.add_argument("--verbose", action="store_true", help="log every safety check and the timing on stderr")
    return p.parse_args(argv)


class Fail(Exception):
    """Bad input: main prints "error: {message}" and exits with status 2."""


def check_numbers(args) -> None:
    """Every number flag finite and in its range (NUMBER_FLAGS), --t2v-size two positive numbers."""
    from nanog4v.cli import number_flag_problem
    problem = number_flag_problem(args, NUMBER_FLAGS)
    if problem:
        raise Fail(problem)
    try:
        args.t2v_width, args.t2v_height = (int(v) for v in args.t2v_size.lower().split("x"))
    except ValueError:
        args.t2v_width = 0
    if args.t2v_width < 1 or args.t2v_height < 1:
        raise Fail(f"--t2v-size: expected WIDTHxHEIGHT, e.g. 576x320, not {args.t2v_size!r}")


def check_args(args) -> None:
    """Everything that can be checked before torch is imported: numbers, text, files, directories."""
    from nanog4v.cli import file_in_the_way
    from nanog4v.t2v import T2VError, check_pipeline_dir
    from nanog4v.video import VideoError, sample_frames
    check_numbers(args)
    in_the_way = file_in_the_way(args.out)
    if in_the_way:
        raise Fail(f"--out: {in_the_way} is a file, not a directory")
    for i, text in enumerate(args.prompt, start=1):
        if not is_utf8(text):
            raise Fail(f"--prompt {i}: not UTF-8 text")
    for path in args.video:
        try:
            sample_frames(path, 1)
        except VideoError as e:
            raise Fail(str(e)) from None
    args.ckpt = args.ckpt or ROOT / "weights" / ("mplug-owl-llama-7b-video" if args.preset == "owl-video" else args.preset)
    if not args.ckpt.is_dir():
        hint = " (the nano checkpoint is made by python train.py --preset nano --stage all)" if args.preset == "nano" else ""
        raise Fail(f"{args.ckpt}: no such checkpoint directory{hint}")
    args.t2v = args.t2v or DEFAULT_T2V[args.preset]
    if args.t2v == "zeroscope":
        args.t2v_path = args.t2v_path or ROOT / "weights" / "zeroscope_v2_576w"
        try:
            check_pipeline_dir(args.t2v_path)
        except T2VError as e:
            raise Fail(str(e)) from None
    if args.adapter is not None and (args.preset != "owl-video" or not args.adapter.is_dir()):
        raise Fail(f"--adapter: {args.adapter}: " + ("no such directory" if args.preset == "owl-video" else
                                                     "only --preset owl-video takes an adapter"))
    if args.safety_checker is not None and not args.safety_checker.is_dir():
        raise Fail(f"{args.safety_checker}: no such safety-checker directory")


def is_utf8(text: str) -> bool:
    """False for a string holding lone surrogates: how Python keeps undecodable command-line bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def pick_device(requested: str | None) -> str:
    import torch
    if requested == "cuda" and not torch.cuda.is_available() or requested == "mps" and not torch.backends.mps.is_available():
        raise Fail(f"chat.py: --device {requested}: not available on this machine")
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def build(args, log):
    """Model, tokenizer, safety checks and generator → an Assistant; raises Fail on bad input."""
    import dataclasses

    import torch

    from nanog4v.assistant import Assistant, ChatError, load_chat_model, load_owl_chat_model
    from nanog4v.data import GPT4VIDEO
    from nanog4v.generate import SamplingConfig
    from nanog4v.safety import ConceptChecker, Lexicon, Safety, VideoChecker, is_refusal
    from nanog4v.t2v import T2VError, load_generator
    from nanog4v.tokenizer import TokenizerError
    from nanog4v.toy import datasets as toy_data
    from nanog4v.toy import generator as toy_generator
    from nanog4v.toy import hazard as toy_hazard
    from nanog4v.weights import CheckpointError

    device = pick_device(args.device)
    if args.fast_decode:
        from nanog4v.fast_decode import compile_problem
        if problem := compile_problem(device):
            raise Fail(f"--fast-decode: {problem}")
    auto = torch.bfloat16 if device == "cuda" else torch.float32
    dtype = auto if args.dtype == "auto" else getattr(torch, args.dtype)
    try:
        if args.preset == "owl-video":
            model, tokenizer, template = load_owl_chat_model(args.ckpt, args.adapter, device, dtype)
        else:
            (model, tokenizer), template = load_chat_model(args.ckpt, device, dtype, log=log), GPT4VIDEO
        if args.max_new_tokens >= model.llm.cfg.max_seq_len:
            raise ChatError(f"--max-new-tokens: must be less than the context of {args.ckpt}, "
                            f"{model.llm.cfg.max_seq_len} tokens, not {args.max_new_tokens}")
        if args.frames and args.frames != model.cfg.num_frames:
            if model.cfg.abstractor.variant == "paper":       # its temporal embeddings are per frame
                raise ChatError(f"{args.ckpt}: trained with {model.cfg.num_frames} frames per video; "
                                f"--frames {args.frames} needs the official abstractor variant")
            model.cfg = dataclasses.replace(model.cfg, num_frames=args.frames)
        checker_dir = args.safety_checker or (args.ckpt / "safety_checker")
        video_check, note = None, "off (--no-video-check)"
        if not args.no_video_check:
            if checker_dir.is_dir():
                frame_checker, note = ConceptChecker.from_pretrained(checker_dir, device, dtype), f"{checker_dir}"
            elif args.preset not in TOY_PRESETS:
                frame_checker, note = None, f"off: no safety checker at {checker_dir}"
                print(f"warning: the input-video check is {note} (see weights/README.md)", file=sys.stderr)
            else:
                frame_checker, note = toy_hazard.toy_hazard_checker(model.vision, device)
            video_check = VideoChecker(frame_checker) if frame_checker is not None else None
        log(f"input-video check: {note}")
        options = {}
        if args.t2v == "zeroscope":
            options = dict(width=args.t2v_width, height=args.t2v_height, steps=args.t2v_steps,
                           cpu_offload=args.cpu_offload, vae_slicing=args.vae_slicing)
        generator = None if args.t2v == "none" else load_generator(args.t2v, args.t2v_path, device,
                                                                   gallery=toy_generator.GALLERY, **options)
    except (ChatError, CheckpointError, TokenizerError, T2VError) as e:
        raise Fail(str(e)) from None
    safety = Safety(lexicon=None if args.no_lexicon else Lexicon(), video=video_check,
                    prompt_concepts=toy_hazard.hazard_prompt if args.t2v == "toy" else None)
    toy_model = args.preset in TOY_PRESETS                # it refuses with the toy world's words
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              seed=args.seed)
    return Assistant(model, tokenizer, sampling=sampling, safety=safety, generator=generator, out_dir=args.out,
                     t2v_frames=args.t2v_frames, device=device, log=log, template=template,
                     refusal=toy_data.is_refusal if toy_model else is_refusal,
                     decode="compile" if args.fast_decode else "dynamic")


def show(result, args, streamed: bool) -> None:
    """Print one turn: its JSON object, or the reply (if not streamed already) and its notes."""
    if args.json:
        print(json.dumps(result.to_json()), flush=True)
    else:
        if not streamed:
            print(result.reply, end="")
        print(flush=True)
        for note in result.notes:
            print(f"note: {note}", flush=True)
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr, flush=True)
    if args.verbose and result.new_tokens:
        print(f"timing: {result.new_tokens} tokens in {result.seconds:.2f} s "
              f"({1000 * result.seconds / result.new_tokens:.1f} ms/token)", file=sys.stderr, flush=True)


class Streamer:
    """Prints the reply as it arrives, after `prefix` (printed with the first text, so that safety log
    lines on stderr come before it), holding back trailing white space (the reply's final newline)."""

    def __init__(self, prefix: str = ""):
        self.held, self.prefix = "", prefix

    def __call__(self, piece: str) -> None:
        text = self.held + piece
        body = text.rstrip()
        self.held = text[len(body):]
        if body:
            print(self.prefix + body, end="", flush=True)
            self.prefix = ""


def turn(assistant, text: str, args, echo: bool = False) -> bool:
    """One user message → printed reply; True if it had errors."""
    if echo and not args.json:
        print(f"you> {text}", flush=True)
    on_text = None if args.json else Streamer("gpt4video> ")
    result = assistant.ask(text, on_text=on_text)
    if on_text is not None and on_text.prefix:           # nothing was streamed (an empty reply)
        print(on_text.prefix, end="")
    show(result, args, streamed=on_text is not None)
    return bool(result.errors)


def input_lines(stdin, prompt=None):
    """(line number, text) for each line of `stdin`, read as bytes; text is None for a line that is not
    UTF-8 (a byte-order mark before the first line is dropped). `prompt()` runs before each read. Nothing
    when stdin is closed (None); Fail when it cannot be read."""
    source, number = getattr(stdin, "buffer", stdin), 0
    while stdin is not None:
        if prompt is not None:
            prompt()
        try:
            raw = source.readline()
        except OSError as e:                       # e.g. a descriptor opened for writing only
            raise Fail(f"stdin: cannot be read ({e.strerror or e})") from None
        if not raw:
            return
        number += 1
        try:
            text = raw if isinstance(raw, str) else raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            text = None
        yield number, text


def repl(assistant, args) -> int:
    """The interactive session on stdin; see the module docstring. Status lines go to stderr with --json."""
    from nanog4v.video import VideoError
    interactive = sys.stdin is not None and sys.stdin.isatty()
    status = sys.stderr if args.json else sys.stdout

    def say(message: str, end: str = "\n") -> None:
        print(message, end=end, file=status, flush=True)

    say(f"GPT4Video ({args.preset}); videos: {', '.join(assistant.videos) or 'none'}. "
        "Type a message, or /video PATH, /reset, /quit.")
    try:
        for number, line in input_lines(sys.stdin, (lambda: say("you> ", end="")) if interactive else None):
            if line is None:
                print(f"error: stdin line {number}: not UTF-8 text", file=sys.stderr, flush=True)
                continue
            line = line.strip()
            if not line:
                continue
            if not interactive and line.startswith("/"):
                say(f"you> {line}")
            if line in ("/quit", "/exit"):
                break
            command = line.split()[0]
            path = line[len(command):].strip()
            if line == "/reset":
                assistant.reset()
                say("(conversation forgotten)")
            elif command == "/video":
                try:
                    attached = assistant.add_video(path) if path else None
                except VideoError as e:
                    print(f"error: {e}", file=sys.stderr, flush=True)
                    continue
                say("usage: /video PATH" if attached is None else f"(attached {path})" if attached else
                    f"(not attached: {path} was flagged by the input-video check)")
            elif line.startswith("/"):
                say(f"unknown command {command}; use /video PATH, /reset or /quit")
            else:
                turn(assistant, line, args, echo=not interactive)
    except Fail as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)

    def log(item) -> None:
        """Safety verdicts (nanog4v.safety.Verdict) when flagged, notes and warnings always; all with --verbose."""
        if args.verbose or getattr(item, "flagged", False) or str(item).startswith(("note:", "warning:")):
            print(item, file=sys.stderr, flush=True)

    try:
        check_args(args)
        assistant = build(args, log)
        from nanog4v.video import VideoError
        for path in args.video:
            try:
                assistant.add_video(path)
            except VideoError as e:
                raise Fail(str(e)) from None
    except Fail as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if args.prompt:
            errors = [turn(assistant, text, args, echo=True) for text in args.prompt]
            return 1 if any(errors) else 0
        return repl(assistant, args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
