"""Video decoding with PyAV: the first box of the data flow, video file → T frames (T, H, W, 3) uint8.

GPT4Video (§3.1) looks at a video through T frames sampled uniformly over the whole clip (T = 4 in
the paper, 8 in the official code). "Uniformly" here means *segment centres in time*: cut the clip's
time span [start, end) into T equal segments and take the frame on screen at the centre of each,

    t_i = start + (i + 1/2) · (end − start) / T,        i = 0 … T−1,

where "on screen at t" is the last frame whose presentation timestamp is ≤ t, and end = the last
frame's timestamp + its duration. For a constant frame rate clip of n frames this is exactly the
frame index  k_i = ⌊(2i + 1) · n / (2T)⌋  (`sample_frame_indices`); for a variable frame rate clip a
frame held on screen longer is proportionally more likely to be picked, as a viewer would see it.
A clip with fewer than T frames repeats frames (n = 2, T = 4 → 0, 0, 1, 1).

Nothing in the container header is trusted blindly: the frame count may be 0 or wrong and the
duration may describe another stream. The start is the first decodable frame's timestamp (a damaged
beginning is skipped, not sampled), the end is checked against the packets of the last GOP (found
by one seek; demuxed, not decoded). Cost does not grow with the clip's
length: for each t_i we seek backward to the keyframe before it and decode forward to the exact frame
(never returning the keyframe the seek landed on: the classic PyAV pitfall), or keep decoding when
the next t_i lies in the same GOP. Streams without timestamps (raw .h264) cannot seek; they fall back
to counting packets and picking k_i in one decoding pass.

Memory and time are bounded by the pixels, not by the file: a 500 KB file can hold 8192×8192 frames.
A video whose frames exceed `MAX_PIXELS` (8192×4320, DCI 8K) is refused before anything is decoded,
and the decoder itself is told the limit (FFmpeg's `max_pixels`) in case the header lies. Frames are
scaled while they are converted to RGB (swscale, area averaging), so their longest side is at most
`max_side` (1024 unless asked otherwise: CLIP looks at 224) and never is a full-size RGB copy held;
a frame within the bound comes back exactly as decoded.

The other direction — frames out to an mp4, and a contact sheet for people — is `video_out.py`; this
module's command line draws one:

    python -m nanog4v.video CLIP --frames 8 --out sheet.png
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

from .video_out import contact_sheet

__all__ = ["MAX_PIXELS", "MAX_SIDE", "VideoError", "sample_frames", "sample_frames_and_times", "sample_frame_indices",
           "mplug_owl_frame_indices", "display_transform"]


MAX_PIXELS = 8192 * 4320  # the largest frame decoded at all (DCI 8K); larger videos are refused
MAX_SIDE = 1024           # frames come back with their longest side scaled down to this


class VideoError(Exception):
    """A video that cannot be read. The message is one line: "{path}: {problem}"."""

    def __init__(self, path, problem: str | None = None):
        self.path, self.problem = path, problem
        message = str(path) if problem is None else f"{path}: {problem}"
        super().__init__(" ".join(message.split()))  # FFmpeg messages may hold newlines


# --------------------------------------------------------------------------- sampling rule

def sample_frame_indices(num_source_frames: int, num_frames: int) -> list[int]:
    """Segment-centre indices k_i = ⌊(2i+1)·n / 2T⌋: what `sample_frames` picks when timestamps are regular."""
    if num_source_frames < 1 or num_frames < 1:
        raise ValueError(f"need at least one source frame and one sample, got {num_source_frames}, {num_frames}")
    return [(2 * i + 1) * num_source_frames // (2 * num_frames) for i in range(num_frames)]


def mplug_owl_frame_indices(num_source_frames: int, num_frames: int) -> list[int]:
    """mPLUG-Owl's processor: k_i = ⌊s/2⌋ + round(s·i), s = (n − 1)/T (round half to even, as numpy's)."""
    if num_source_frames < 1 or num_frames < 1:
        raise ValueError(f"need at least one source frame and one sample, got {num_source_frames}, {num_frames}")
    s = (num_source_frames - 1) / num_frames
    return [int(s / 2) + round(s * i) for i in range(num_frames)]


def _segment_centres(start: Fraction, end: Fraction, num_frames: int) -> list[Fraction]:
    """t_i = start + (2i+1)/(2T) · (end − start), exact (in the stream's time base, so ties are exact too)."""
    return [start + (end - start) * Fraction(2 * i + 1, 2 * num_frames) for i in range(num_frames)]


# --------------------------------------------------------------------------- rotation

def display_transform(matrix) -> tuple[bool, bool, bool]:
    """(transpose, flip_rows, flip_cols) that turn a decoded image into the displayed one.

    `matrix` is FFmpeg's 3×3 display matrix (9 int32, 16.16 fixed point, row-vector convention:
    [x' y' 1] = [x y 1] · M, image y pointing down), as stored with phone videos. Its 2×2 part maps
    x' = m0·x + m3·y, y' = m1·x + m4·y. For the right-angle rotations and mirrors that cameras write,
    each output axis is ± one input axis: if m0 = m4 = 0 the axes swap (transpose) and the signs of
    m1 / m3 say whether rows / columns then run backwards. Any other angle (rare) is left alone.
    """
    m = np.asarray(matrix, dtype=np.float64).reshape(9)[[0, 1, 3, 4]] / 65536.0
    a, b, c, d = np.round(m).astype(int)       # x' = a·x + c·y,  y' = b·x + d·y
    if b == c == 0 and abs(a) == abs(d) == 1:  # rows stay rows
        return False, d < 0, a < 0
    if a == d == 0 and abs(b) == abs(c) == 1:  # rows become columns
        return True, b < 0, c < 0
    return False, False, False


def output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is at most `max_side`, the aspect ratio kept
    (each side at least 1); unchanged when it already fits or when `max_side` is None."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """Decoded frame → displayed RGB image (height, width, 3) uint8: colour conversion and scaling in one
    swscale pass (area averaging when it shrinks), then rotation metadata."""
    same = (frame.width, frame.height) == (width, height)
    image = frame.to_ndarray(format="rgb24", width=width, height=height,
                             interpolation=None if same else "AREA")  # (h, w, 3)
    side = frame.side_data
    if SideDataType.DISPLAYMATRIX not in side:
        return image
    transpose, flip_rows, flip_cols = display_transform(
        np.frombuffer(bytes(side[SideDataType.DISPLAYMATRIX]), dtype=np.int32))
    if transpose:
        image = image.transpose(1, 0, 2)  # (w, h, 3)
    if flip_rows:
        image = image[::-1]
    if flip_cols:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


# --------------------------------------------------------------------------- opening

def _limit(max_pixels: int) -> dict[str, str]:
    """FFmpeg's own per-frame limit (AVCodecContext.max_pixels): a larger frame is not even allocated."""
    return {"max_pixels": str(max_pixels)}


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise VideoError(path, f"{width}x{height} frames: larger than the limit of {max_pixels:,} pixels "
                               "per frame (8192x4320 by default); scale the video down first")


def _open(path: Path, max_pixels: int = MAX_PIXELS):
    """Open a file and pick its video stream, or raise VideoError saying what is wrong with it (frames
    larger than `max_pixels` included: by the header now, by the decoder if the header lies)."""
    if not path.exists():
        raise VideoError(path, "no such file")
    if path.is_dir():
        raise VideoError(path, "is a directory, not a video file")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file")
    try:
        container = av.open(str(path), options=_limit(max_pixels))  # (probing decodes a frame too)
    except PermissionError:
        raise VideoError(path, "permission denied") from None
    except (av.FFmpegError, OSError) as e:
        raise VideoError(path, f"not a media file PyAV can read ({getattr(e, 'strerror', None) or e})") from None
    # Cover art in a music file is a one-picture "video" stream: not a video.
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        kinds = sorted({"cover picture" if s.type == "video" else s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoError(path, f"no video stream (streams: {', '.join(kinds)})")
    stream = videos[0]
    if stream.codec_context is None:
        container.close()
        raise VideoError(path, f"no decoder for the video codec of stream {stream.index}")
    try:
        _check_pixels(path, stream.codec_context.width, stream.codec_context.height, max_pixels)
    except VideoError:
        container.close()
        raise
    stream.codec_context.options = _limit(max_pixels)              # the decoder refuses larger frames itself
    stream.codec_context.thread_type = "AUTO"
    return container, stream


def _decode(container, stream):
    """Frames from the current position on. A packet the decoder rejects is skipped, so a damaged
    file still gives its good frames (from the next keyframe on); a read error ends the stream."""
    try:
        for packet in container.demux(stream):  # ends with an empty packet that flushes the decoder
            try:
                yield from packet.decode()
            except av.FFmpegError:
                continue
    except av.FFmpegError:
        return


# --------------------------------------------------------------------------- seeking reader

class _Cursor:
    """A decoding position in one stream: `shown` is the frame on screen at the last target time and
    `ahead` the first frame after it (None at the end of the stream). Times are in stream.time_base."""

    def __init__(self, container, stream):
        self.container, self.stream = container, stream
        self.frames, self.shown, self.ahead = iter(()), None, None  # nothing decoded yet

    def seek(self, pts: int) -> None:
        """Jump to the keyframe at or before `pts` (seek flushes the decoder) and decode one frame."""
        self.frames, self.shown, self.ahead = iter(()), None, None
        self.container.seek(pts, backward=True, stream=self.stream)
        self.frames = (f for f in _decode(self.container, self.stream) if f.pts is not None)
        self.ahead = next(self.frames, None)

    def _keeps_decoding(self, target: Fraction) -> bool:
        """True when decoding forward from here reaches `target` no slower than a seek would."""
        here = [f for f in (self.shown, self.ahead) if f is not None]
        if not here or here[0].pts > target:
            return False                      # nothing decoded yet, or already past the target
        if self.ahead is None or self.ahead.pts > target:
            return True                       # the answer is already decoded
        index = getattr(self.stream, "index_entries", None)  # keyframe positions, where the container has them
        if not index:
            return False
        k = index.search_timestamp(int(target), backward=True)
        return k < 0 or index[k].timestamp <= here[-1].pts  # no keyframe between here and target

    def seek_before(self, target: Fraction, start: Fraction) -> None:
        """Seek so that decoding starts at or before `target`.

        A backward seek should land on the keyframe before the target, but indexes count decoding
        order and some demuxers (MPEG-TS) land on the keyframe *after* it, or nowhere; then we try
        again further back, doubling the step: down to the first frame's timestamp, then once below.
        """
        step = max(1, round(1 / self.stream.time_base))  # one second
        pts = int(target)
        while True:
            try:
                self.seek(pts)
                if self.ahead is not None and self.ahead.pts <= target:
                    return
            except av.FFmpegError:  # some demuxers refuse timestamps before the first one
                pass
            if pts < start:
                return
            pts = max(pts - step, int(start)) if pts > start else int(start) - step
            step *= 2

    def frame_at(self, target: Fraction, start: Fraction) -> av.VideoFrame | None:
        """The frame on screen at `target`: the last one with pts ≤ target (the first frame if none is)."""
        if not self._keeps_decoding(target):
            self.seek_before(target, start)
        while self.ahead is not None and self.ahead.pts <= target:  # decode forward to the exact frame
            self.shown, self.ahead = self.ahead, next(self.frames, None)
        return self.shown if self.shown is not None else self.ahead


def _clip_end(container, stream, start: Fraction) -> Fraction | None:
    """End of the clip: the last frame's timestamp + its duration, in stream.time_base.

    The last frame is found in the packets of the last GOP (one backward seek from "infinitely
    late"; demuxed, not decoded). Its duration is the one thing packets may get wrong (an mp4 stores
    durations in decoding order), so the header's stream duration wins when it agrees with the
    packets, i.e. ends after the last frame starts; then the packet's own duration; then one frame
    at the nominal rate.
    """
    last = None
    try:
        container.seek(2 ** 62, backward=True, stream=stream)
        tail = [p for p in container.demux(stream) if p.size and p.pts is not None]
        last = max(tail, key=lambda p: p.pts, default=None)
    except av.FFmpegError:
        pass
    if stream.duration:
        header_end = (stream.start_time if stream.start_time is not None else start) + stream.duration
        if last is None or header_end > last.pts:
            return Fraction(header_end)
    rate = stream.average_rate or stream.guessed_rate
    interval = 1 / (rate * stream.time_base) if rate else 0
    if last is not None:
        return Fraction(last.pts + (last.duration or interval))
    if container.duration:  # microseconds, the longest of all streams: the last resort
        return start + Fraction(container.duration, av.time_base) / stream.time_base
    return None


class _Converter:
    """Decoded frames → RGB images, one at a time (no decoded frame is kept): the first frame fixes the
    output size (`output_size` of its size), so a stream that changes size mid-way still stacks."""

    def __init__(self, max_side: int | None):
        self.max_side, self.size = max_side, None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.size is None:
            self.size = output_size(frame.width, frame.height, self.max_side)
        return _to_rgb(frame, *self.size)                                    # (h, w, 3)


def _sample_by_index(path: Path, num_frames: int, max_pixels: int, convert: _Converter,
                     indices=sample_frame_indices):
    """Count packets (n), then decode once and keep frames `indices(n, T)`: the fallback for streams
    without timestamps, and frame sampling by index (`sample_frames(..., by_index=...)`)."""
    with av.open(str(path), options=_limit(max_pixels)) as container:
        n = sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    wanted = indices(max(n, 1), num_frames)
    picked: dict[int, np.ndarray] = {}
    container, stream = _open(path, max_pixels)
    with container:
        for k, frame in enumerate(_decode(container, stream)):
            if k in wanted:
                picked[k] = convert(frame)
            if k >= wanted[-1]:
                break
    if not picked:
        raise VideoError(path, "no decodable video frames")
    last = picked[max(picked)]  # a packet count above the frame count: repeat the last frame
    rate = stream.average_rate or stream.guessed_rate
    times = [k / rate if rate else float("nan") for k in wanted]
    return [picked.get(k, last) for k in wanted], [float(t) for t in times]


# --------------------------------------------------------------------------- public API

def sample_frames_and_times(path, num_frames: int, *, max_side: int | None = MAX_SIDE,
                            max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, list[float]]:
    """`sample_frames`, plus each frame's presentation timestamp in seconds (pts · time_base)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1 or None, got {max_side}")
    path, convert = Path(path), _Converter(max_side)
    container, stream = _open(path, max_pixels)
    with container:
        first = next(_decode(container, stream), None)
        if first is None:
            raise VideoError(path, "no decodable video frames (a damaged stream, or frames larger than "
                                   f"{max_pixels:,} pixels)")
        _check_pixels(path, first.width, first.height, max_pixels)
        if first.pts is None:
            del first
            images, times = _sample_by_index(path, num_frames, max_pixels, convert)
        else:
            start = Fraction(first.pts)
            del first                                     # (a decoded frame is big: keep none longer than needed)
            end = _clip_end(container, stream, start)
            if end is None or end <= start:
                end = start + 1
            cursor, images, times = _Cursor(container, stream), [], []
            for t in _segment_centres(start, end, num_frames):
                frame = cursor.frame_at(t, start)
                if frame is None:
                    raise VideoError(path, "no decodable video frames near the sampled times")
                images.append(convert(frame))
                times.append(float(frame.pts * stream.time_base))
    return np.stack(images), times                        # (T, H, W, 3), seconds


def sample_frames(path, num_frames: int, *, max_side: int | None = MAX_SIDE,
                  max_pixels: int = MAX_PIXELS, by_index=None) -> np.ndarray:
    """T frames sampled uniformly (segment centres in time) over the whole clip: uint8 (T, H, W, 3) RGB,
    rotated as the file says it should be displayed, the longest side scaled down to `max_side` (None:
    full size). Raises VideoError for anything unreadable, and for frames larger than `max_pixels`.
    `by_index`: a rule (n, T) -> frame indices, e.g. `mplug_owl_frame_indices`, to pick frames by their
    index in the stream instead (as decord-based readers do; the clip is decoded up to the last one)."""
    if by_index is None:
        return sample_frames_and_times(path, num_frames, max_side=max_side, max_pixels=max_pixels)[0]
    path = Path(path)
    container, stream = _open(path, max_pixels)                 # checks the file and its header first
    container.close()
    return np.stack(_sample_by_index(path, num_frames, max_pixels, _Converter(max_side), by_index)[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanog4v.video",
                                     description="Sample T frames uniformly from a clip and save a contact sheet.")
    parser.add_argument("clip", help="a video file")
    parser.add_argument("--frames", type=int, default=4, help="T, the number of frames (default 4, the paper's)")
    parser.add_argument("--out", default="sheet.png", help="where to write the sheet (default sheet.png)")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    try:
        frames, times = sample_frames_and_times(args.clip, args.frames)
        title = f"{args.clip}: {args.frames} frames, {frames.shape[2]}x{frames.shape[1]}"
        out = contact_sheet(frames, times, args.out, title=title)
    except VideoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
