"""Frames out: an H.264 mp4 (`write_video`) and a contact sheet for people (`contact_sheet`).

The other direction of `video.py`: generated videos (the toy renderer's, ZeroScope's) are written with
`write_video`, and so is every clip of the toy world, so that training reads them back through the real
decoder; the contact sheet shows sampled frames with their timestamps (`python -m nanog4v.video CLIP`).
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["write_video", "contact_sheet"]


def write_video(path, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 frames (T, H, W, 3) RGB as an H.264 mp4 (libx264, yuv420p) and return its path.

    yuv420p halves the chroma resolution, so odd widths/heights are padded to even by repeating the
    last row/column. The file is written next to `path` under a temporary name and renamed into
    place, so a failure never leaves a half-written video behind.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"{path}: frames must be uint8 (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
    if not fps > 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # (T, H', W', 3) even
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder, so the rename is atomic
    try:
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.thread_count = 1  # x264's threads make the bytes depend on machine load; one keeps files reproducible
            stream.codec_context.options = {"x264-params": "mbtree=0"}  # its macroblock tree reads memory it never
            # wrote on clips shorter than its look-ahead: the bytes then varied from process to process
            for image in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())  # flush the encoder's delayed frames
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def contact_sheet(frames: np.ndarray, times: list[float], out, title: str = "", columns: int = 4) -> Path:
    """Save the frames in a grid (at most `columns` per row), each titled with its timestamp.

    A bare matplotlib Figure renders with the Agg canvas and leaves pyplot's global backend alone.
    """
    from matplotlib.figure import Figure

    cols = min(len(frames), columns)
    rows = -(-len(frames) // cols)
    h, w = frames.shape[1:3]
    fig = Figure(figsize=(3 * cols, rows * (3 * h / w + 0.4) + 0.4))  # inches; room for titles
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, t in zip(axes.flat, frames, times):
        ax.imshow(image)
        ax.set_title(f"t = {t:.2f} s", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return Path(out)
