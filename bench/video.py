"""Frame sampling cost vs clip length: sample_frames on a 10-second and a 10-minute clip.

    python bench/video.py            # the issue's numbers (generates a 10-min clip once: ~1 min)
    python bench/video.py --quick    # smoke test: the "long" clip is 40 s

Target (the project's): the 10-minute clip costs ≤ 5× the 10-second one, because sample_frames
seeks to each sampled time and decodes at most about one GOP there instead of the whole clip. As
a reference, the same run times a naive reader that decodes every frame.

Clips are H.264 mp4, 320×180, 25 fps, keyframe every 250 frames (x264's default), generated into
bench/scratch/ (gitignored) on the first run and reused after.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nanog4v.video import sample_frames  # noqa: E402

SCRATCH = Path(__file__).resolve().parent / "scratch"
WIDTH, HEIGHT, FPS, GOP = 320, 180, 25, 250


def make_clip(seconds: int) -> Path:
    """A clip with steady motion (a scrolling texture and a sweeping bar), so P-frames carry real
    work, written to a temporary name first so an interrupted run never leaves a clip to reuse."""
    path = SCRATCH / f"clip_{seconds}s.mp4"
    if path.exists():
        return path
    SCRATCH.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (HEIGHT, 2 * WIDTH, 3), dtype=np.uint8)
    texture = ((texture.astype(np.uint16) + np.roll(texture, 1, 1) + np.roll(texture, 1, 0)) // 3).astype(np.uint8)
    tmp = path.with_suffix(".tmp")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast",
                                        "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0"}
        for k in range(seconds * FPS):
            x = (2 * k) % WIDTH
            image = texture[:, x:x + WIDTH].copy()                  # (H, W, 3)
            image[:, (7 * k) % WIDTH:(7 * k) % WIDTH + 8] = 255   # a bar sweeping faster
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)
    return path


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: file cache, codec initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_everything(path: Path) -> int:
    """The naive reader: decode every frame (what sampling would cost without seeking)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 40-second 'long' clip, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per cell (default 5, quick 3)")
    parser.add_argument("--long-seconds", type=int, default=None, help="length of the long clip (default 600, quick 40)")
    args = parser.parse_args()
    long_seconds = args.long_seconds or (40 if args.quick else 600)
    repeats = args.repeats or (3 if args.quick else 5)

    t0 = time.perf_counter()
    long_name = f"{long_seconds / 60:g} min" if long_seconds >= 60 else f"{long_seconds} s"
    clips = {"10 s": make_clip(10), long_name: make_clip(long_seconds)}
    print(f"clips ready in {time.perf_counter() - t0:.1f} s ({WIDTH}x{HEIGHT}, {FPS} fps, GOP {GOP}): "
          + ", ".join(p.name for p in clips.values()) + f" in {SCRATCH}")

    rows = {}
    for name, path in clips.items():
        rows[name] = {t: median_seconds(lambda: sample_frames(path, t), repeats) for t in (4, 8)}
        start = time.perf_counter()
        decode_everything(path)
        rows[name]["all"] = time.perf_counter() - start

    short, long_ = rows
    print(f"\nsample_frames, median of {repeats} (ms); av {av.__version__}\n")
    print("| clip | T = 4 | T = 8 | decode every frame (naive reader, once) |")
    print("| --- | ---: | ---: | ---: |")
    for name, row in rows.items():
        print(f"| {name} | {1e3 * row[4]:.1f} | {1e3 * row[8]:.1f} | {1e3 * row['all']:.0f} |")
    ratios = {t: rows[long_][t] / rows[short][t] for t in (4, 8)}
    print(f"| **{long_} / {short}** | **{ratios[4]:.2f}×** | **{ratios[8]:.2f}×** | "
          f"{rows[long_]['all'] / rows[short]['all']:.1f}× |")
    verdict = "met" if max(ratios.values()) <= 5 else "MISSED"
    print(f"\ntarget ≤ 5×: {verdict}; clip length ratio {long_seconds / 10:.0f}×")


if __name__ == "__main__":
    main()
