"""Peak memory and time of reading a video, by resolution: the bounded reader vs full-size frames.

    python bench/video_memory.py            # the table in bench/RESULTS.md (makes its clips once: ~2 min)
    python bench/video_memory.py --quick    # smoke test: small clips only

A video file's size says little about what decoding it costs: a 500 KB H.264 file can hold 8192×8192
frames. What the model path does with a clip — `sample_frames(path, 8)` then `preprocess` to 224 px,
as `nanog4v.inference.video_tokens` does — is measured here, each case in a fresh subprocess so its
peak RSS (VmHWM) is its own:

- **bounded** (ours): frames are scaled while they are converted (longest side ≤ `MAX_SIDE` = 1024),
  and a frame larger than `MAX_PIXELS` (8192×4320) is refused before it is decoded;
- **full size** (the reference, the reader as it was): `max_side=None, max_pixels=2**31 - 1`, every
  frame converted at full size and preprocessed in float from there.

Target (issue 24): the bounded reader's peak RSS and seconds stay bounded whatever the resolution —
the 8K clip within a few hundred MB and about a second — and the 8192×8192 file is refused quickly.
The same clips then go through `chat.py` end to end (the input-video check and the model, one reply).
Clips are H.264 mp4 (x264 ultrafast), made into bench/scratch/ (gitignored) on the first run; the
10-minute clip is `bench/video.py`'s (320×180, 25 fps, GOP 250).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
SCRATCH = HERE / "scratch"

CLIPS = {  # name: (width, height, frames, fps)
    "tiny (64×64)": (64, 64, 16, 8),
    "4K (3840×2160)": (3840, 2160, 10, 5),
    "8K (7680×4320)": (7680, 4320, 10, 5),
    "4000×4000, two frames": (4000, 4000, 2, 1),
    "8192×8192, two frames": (8192, 8192, 2, 1),
}


def make_clip(width: int, height: int, frames: int, fps: int) -> Path:
    """A gradient with a moving square, `frames` frames: cheap to encode, real work to decode."""
    path = SCRATCH / f"mem_{width}x{height}_{frames}.mp4"
    if path.exists():
        return path
    SCRATCH.mkdir(exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // width), (yy * 255 // height), np.full_like(xx, 128)], -1).astype(np.uint8)
    tmp = path.with_suffix(".tmp")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast"}
        side = max(8, min(width, height) // 4)
        for k in range(frames):
            image = base.copy()                                                   # (H, W, 3)
            x = (k * (width - side)) // max(1, frames - 1)
            image[height // 3:height // 3 + side, x:x + side] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)
    return path


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would carry the parent's over fork + exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def child(path: str, bounded: bool) -> None:
    """One measurement, in this (fresh) process: print a JSON line."""
    from nanog4v.video import VideoError, sample_frames
    from nanog4v.vision import preprocess
    base = peak_rss_mb()
    kwargs = {} if bounded else {"max_side": None, "max_pixels": 2**31 - 1}
    start = time.perf_counter()
    try:
        frames = sample_frames(path, 8, **kwargs)                                 # (8, H, W, 3) uint8
        pixels = preprocess(frames, 224)                                         # (8, 3, 224, 224)
        outcome = f"{frames.shape[2]}×{frames.shape[1]} → {tuple(pixels.shape)}"
    except VideoError as e:
        outcome = f"refused: {e.problem.split(';')[0]}"
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "import_mb": base, "outcome": outcome}))


def chat_child(path: str) -> None:
    """chat.py end to end on the shipped nano model (input-video check, the model, one reply)."""
    import contextlib
    import io
    sys.path.insert(0, str(HERE.parent))
    import chat
    start, out = time.perf_counter(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
        code = chat.main(["--video", path, "--prompt", "What colour is the circle?", "--json", "--out",
                          str(SCRATCH / "chat_videos")])
    seconds = time.perf_counter() - start
    lines = (out.getvalue() or err.getvalue()).strip().splitlines() or ["?"]
    outcome = f"exit {code}: " + (lines[-1] if code else json.loads(lines[-1])["reply"])[:90]
    print(json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb(), "outcome": outcome}))


def measure(path: Path, bounded: bool, timeout: float, chat: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--chat" if chat else "--child", str(path)] + ([] if bounded else ["--full-size"])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "2"})
    except subprocess.TimeoutExpired:
        return {"seconds": timeout, "peak_mb": float("nan"), "outcome": f"killed after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"seconds": float("nan"), "peak_mb": float("nan"), "outcome": f"exit {done.returncode}: "
                + (done.stderr.strip().splitlines() or ["?"])[-1][:80]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch
    x = torch.ones(2**28)                                                         # 1 GiB fp32
    best = min(_timed(x.sum) for _ in range(5))
    return (f"{torch.backends.cpu.get_cpu_capability()}, {2**30 / best / 1e9:.1f} GB/s read "
            f"(x.sum(), 1 GiB fp32), {os.cpu_count()} cores; av {av.__version__}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny clip and a 1280×720 one only")
    parser.add_argument("--timeout", type=float, default=300, help="seconds before a case is killed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--full-size", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chat", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, bounded=not args.full_size)
    if args.chat:
        return chat_child(args.chat)

    clips = {"tiny (64×64)": CLIPS["tiny (64×64)"], "720p (1280×720)": (1280, 720, 10, 5)} if args.quick else CLIPS
    t0 = time.perf_counter()
    paths = {name: make_clip(*spec) for name, spec in clips.items()}
    if not args.quick:
        sys.path.insert(0, str(HERE))
        from video import make_clip as make_long_clip                            # bench/video.py's
        paths["10 min (320×180, 25 fps)"] = make_long_clip(600)
    print(f"clips ready in {time.perf_counter() - t0:.0f} s in {SCRATCH}; {machine()}\n")
    print("| clip | file | bounded: peak RSS | bounded: seconds | full size: peak RSS | full size: seconds "
          "| RSS full / bounded | bounded outcome |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, path in paths.items():
        ours, ref = measure(path, True, args.timeout), measure(path, False, args.timeout)
        print(f"| {name} | {path.stat().st_size / 1e3:,.0f} kB | {ours['peak_mb']:,.0f} MB | {ours['seconds']:.2f} "
              f"| {ref['peak_mb']:,.0f} MB | {ref['seconds']:.2f} | {ref['peak_mb'] / ours['peak_mb']:.1f}× "
              f"| {ours['outcome']} |", flush=True)
    print("\n`python chat.py --video CLIP --prompt 'What colour is the circle?' --json` (nano), end to end:\n")
    print("| clip | peak RSS | seconds | outcome |")
    print("| --- | ---: | ---: | --- |")
    for name, path in paths.items():
        if "10 min" not in name:
            row = measure(path, True, args.timeout, chat=True)
            print(f"| {name} | {row['peak_mb']:,.0f} MB | {row['seconds']:.2f} | {row['outcome']} |", flush=True)


if __name__ == "__main__":
    main()
