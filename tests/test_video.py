"""nanog4v.video: exact frame indices on synthetic clips whose frame number is painted into the
pixels, every container/codec the issue names, rotation, damaged inputs, write_video and the CLI.

A painted frame (64×48) holds its index k in binary: bit b is a 12×16 block (2 rows × 5 columns,
top 32 rows), white when set. Blocks this big survive any codec at any quality. The bottom 16 rows
are a red bar (left) and a blue bar (right), the same in every frame, to check channel order.
"""
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import ROOT, shared_asset
from nanog4v import video
from nanog4v.video import VideoError, display_transform, sample_frame_indices, sample_frames, \
    sample_frames_and_times
from nanog4v.video_out import contact_sheet, write_video

W, H, BITS = 64, 48, 10
RED, BLUE = (220, 20, 20), (20, 20, 220)
NO_SCENECUT = {"x264-params": "scenecut=0"}  # else x264 puts a keyframe at every painted change


def paint(k: int) -> np.ndarray:
    image = np.zeros((H, W, 3), np.uint8)
    for b in range(BITS):
        if k >> b & 1:
            r, c = divmod(b, 5)
            image[16 * r:16 * (r + 1), 12 * c:12 * (c + 1)] = 255
    image[32:, :32], image[32:, 32:] = RED, BLUE
    return image


def read_index(image: np.ndarray) -> int:
    """The painted index, read from the centre of each bit block (robust to codec blur)."""
    return sum(1 << b for b in range(BITS)
               if image[16 * (b // 5) + 4:16 * (b // 5) + 12, 12 * (b % 5) + 3:12 * (b % 5) + 9].mean() > 128)


def encode(path, n, codec="libx264", fps=25, pix_fmt="yuv420p", options=None, pts_ms=None, fmt=None, rotation=None):
    """n painted frames; `pts_ms` gives variable frame rate timestamps in milliseconds."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        stream.codec_context.options = {**NO_SCENECUT, **(options or {})} if codec == "libx264" else (options or {})
        if rotation is not None:
            stream.set_display_rotation(*rotation)
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for k in range(n):
            frame = av.VideoFrame.from_ndarray(paint(k), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[k], Fraction(1, 1000)
                frame.duration = pts_ms[k + 1] - pts_ms[k] if k + 1 < n else 40
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return Path(path)


def indices(path, num_frames):
    return [read_index(image) for image in sample_frames(path, num_frames)]


def keyframes(path):
    with av.open(str(path)) as container:
        return sum(p.is_keyframe for p in container.demux(container.streams.video[0]) if p.size)


# --------------------------------------------------------------------------- the sampling rule

def test_sample_frame_indices_are_segment_centres():
    assert sample_frame_indices(300, 4) == [37, 112, 187, 262]  # ⌊(2i+1)·300/8⌋
    assert sample_frame_indices(8, 4) == [1, 3, 5, 7]           # a centre on a frame boundary → the later frame
    assert sample_frame_indices(2, 4) == [0, 0, 1, 1]           # fewer frames than T: repeat
    assert sample_frame_indices(1, 3) == [0, 0, 0]
    assert sample_frame_indices(5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        sample_frame_indices(0, 4)


# --------------------------------------------------------------------------- containers and codecs

CLIPS = {  # name: (file, codec, pix_fmt)
    "mp4-h264": ("a.mp4", "libx264", "yuv420p"),
    "webm-vp9": ("a.webm", "libvpx-vp9", "yuv420p"),
    "avi-mpeg4": ("a.avi", "mpeg4", "yuv420p"),
    "mkv-mjpeg": ("a.mkv", "mjpeg", "yuvj420p"),
    "mp4-h264-yuv444": ("b.mp4", "libx264", "yuv444p"),
    # these two land *after* the target on a backward seek (MPEG-TS; AVI indexes B-frames by decoding order)
    "ts-h264": ("a.ts", "libx264", "yuv420p"),
    "avi-mpeg4-bframes": ("b.avi", "mpeg4", "yuv420p"),
}
N = 50  # frames, 2 s at 25 fps


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    options = {"libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"}, "mpeg4": {"qscale": "3"},
               "avi-mpeg4-bframes": {"qscale": "3", "bf": "2"}}
    return {name: encode(root / file, N, codec, pix_fmt=pix_fmt, options=options.get(name, options.get(codec)))
            for name, (file, codec, pix_fmt) in CLIPS.items()}


@pytest.mark.parametrize("name", CLIPS)
def test_exact_indices_and_times_in_every_container(clips, name):
    path = clips[name]
    with av.open(str(path)) as container:  # the clip is what the test says it is
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.format.name) == \
            ({"libx264": "h264", "libvpx-vp9": "vp9"}.get(CLIPS[name][1], CLIPS[name][1]), CLIPS[name][2])
    t0 = None  # the first frame's timestamp: 0 in most containers, 1.4 s in MPEG-TS, 1/25 s in AVI with B-frames
    for t in (N, 1, 3, 4, 5, 8):  # T = 5: every centre falls exactly on a frame boundary
        frames, times = sample_frames_and_times(path, t)
        assert frames.shape == (t, H, W, 3) and frames.dtype == np.uint8
        assert [read_index(f) for f in frames] == sample_frame_indices(N, t)
        t0 = times[0] if t0 is None else t0
        assert times == pytest.approx([t0 + k / 25 for k in sample_frame_indices(N, t)], abs=1e-6)
    bars = sample_frames(path, 1)[0, 36:44]  # RGB order and colour survive (yuv444 keeps it exactly)
    tol = 12 if "444" in name else 40
    assert np.abs(bars[:, 4:28].astype(int) - RED).max() <= tol
    assert np.abs(bars[:, 36:60].astype(int) - BLUE).max() <= tol


def test_header_frame_count_is_not_trusted(clips):
    """webm and mkv headers carry no frame count (0): sampling must not depend on it."""
    for name in ("webm-vp9", "mkv-mjpeg"):
        with av.open(str(clips[name])) as container:
            assert container.streams.video[0].frames == 0
        assert indices(clips[name], 4) == sample_frame_indices(N, 4)


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_long_gop_returns_the_target_not_the_keyframe(tmp_path, ext):
    """Keyframes only at 0 and 250: every target lies deep inside a GOP, where a reader that
    returns the frame the seek landed on gives 0 or 250."""
    path = encode(tmp_path / f"gop.{ext}", 300, options={"x264-params": "keyint=250:min-keyint=250:scenecut=0"})
    assert keyframes(path) == 2
    for t in (4, 8, 7):
        assert indices(path, t) == sample_frame_indices(300, t)


def test_cost_does_not_grow_with_clip_length(tmp_path, monkeypatch):
    """Seek, do not decode everything: 1000 frames with a keyframe every 50, T = 8 decodes at most
    one GOP (+ B-frame reordering) per sample, not the whole clip. Counted in frames, not seconds."""
    path = encode(tmp_path / "long.mp4", 1000, options={"x264-params": "keyint=50:min-keyint=50:scenecut=0"})
    decoded = []
    real_decode = video._decode

    def counting_decode(container, stream):
        for frame in real_decode(container, stream):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(video, "_decode", counting_decode)
    assert indices(path, 8) == sample_frame_indices(1000, 8)
    assert len(decoded) <= 8 * (50 + 4) + 1, len(decoded)


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_variable_frame_rate_samples_by_time(tmp_path, ext):
    """Frames held longer on screen are picked proportionally more often: the frame on screen at
    each segment centre, t_i = (i + ½)·1120 ms / T (last frame 1080 ms + 40 ms)."""
    pts_ms = [0, 40, 80, 120, 500, 540, 580, 1000, 1040, 1080]
    path = encode(tmp_path / f"vfr.{ext}", len(pts_ms), pts_ms=pts_ms)
    for t in (4, 8, 16):
        centres = [(i + 0.5) * 1120 / t for i in range(t)]
        expected = [int(np.searchsorted(pts_ms, c, side="right")) - 1 for c in centres]
        frames, times = sample_frames_and_times(path, t)
        assert [read_index(f) for f in frames] == expected
        assert times == pytest.approx([pts_ms[k] / 1000 for k in expected], abs=1e-6)
        if t == 8:  # 120 ms is on screen for 380 ms, 580 ms for 420 ms
            assert expected == [1, 3, 3, 3, 6, 6, 6, 8]


def test_one_and_two_frame_clips_repeat_frames(tmp_path):
    one, two = encode(tmp_path / "one.mp4", 1), encode(tmp_path / "two.mp4", 2)
    assert indices(one, 4) == [0, 0, 0, 0]
    assert indices(two, 4) == [0, 0, 1, 1]
    assert indices(two, 1) == [1]


def test_stream_without_timestamps_falls_back_to_counting(tmp_path):
    """A raw H.264 elementary stream has no timestamps and cannot seek: one decoding pass."""
    path = encode(tmp_path / "raw.h264", 40, fmt="h264")
    for t in (3, 4, 40):
        assert indices(path, t) == sample_frame_indices(40, t)


# --------------------------------------------------------------------------- rotation metadata

@pytest.mark.parametrize("rotation, expected", [
    ((90, False, False), lambda a: np.rot90(a, 1)),      # counter-clockwise, as PyAV's frame.rotation counts
    ((-90, False, False), lambda a: np.rot90(a, -1)),    # phones: "rotate 90° clockwise to display"
    ((180, False, False), lambda a: np.rot90(a, 2)),
    ((0, True, False), lambda a: a[:, ::-1]),            # mirrored (front cameras)
    ((90, True, False), lambda a: np.rot90(a, 1)[:, ::-1]),
])
def test_rotation_metadata_is_honoured(tmp_path, rotation, expected):
    path = encode(tmp_path / "rot.mp4", 3, pix_fmt="yuv444p", rotation=rotation)
    frames = sample_frames(path, 1)  # the middle frame, painted 1
    want = expected(paint(1))
    assert frames.shape == (1, *want.shape)
    assert np.abs(frames[0].astype(int) - want).mean() < 3


def test_display_transform_of_raw_matrices():
    one = 1 << 16
    assert display_transform([one, 0, 0, 0, one, 0, 0, 0, 1 << 30]) == (False, False, False)   # identity
    assert display_transform([0, -one, 0, one, 0, 0, 0, 0, 1 << 30]) == (True, True, False)    # 90° ccw
    c = round(one / 2 ** 0.5)
    assert display_transform([c, -c, 0, c, c, 0, 0, 0, 1 << 30]) == (False, False, False)      # 45°: left alone


# --------------------------------------------------------------------------- real clips

@pytest.mark.parametrize("name, size, n", [
    ("boat.mp4", (336, 592), 181),
    ("dog_barking.mp4", (480, 854), 170),
])
def test_real_clips_exact_indices(name, size, n):
    path = shared_asset(f"videos/{name}")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        interval = 1 / float(stream.average_rate)
    frames, times = sample_frames_and_times(path, 4)
    assert frames.shape == (4, *size, 3) and frames.dtype == np.uint8
    assert times == pytest.approx([k * interval for k in sample_frame_indices(n, 4)], abs=1e-3)


def test_real_clip_whose_header_says_zero_frames():
    """skateboarding_dog.mp4: header frame count 0, 421 frames at 29.97 fps, 576×1024 portrait.
    Its first frame is at 1001/30000 s and its last is held for 6 frame times (pts 425425), so the
    clip spans 425425 ticks and the centres fall on frames 53, 159, 265, 371 (pts (k+1)·1001)."""
    path = shared_asset("videos/skateboarding_dog.mp4")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    frames, times = sample_frames_and_times(path, 4)
    assert frames.shape == (4, 1024, 576, 3)
    assert times == pytest.approx([(k + 1) * 1001 / 30000 for k in (53, 159, 265, 371)], abs=1e-6)
    assert sample_frames(path, 8).shape == (8, 1024, 576, 3)


# --------------------------------------------------------------------------- broken inputs

def _audio_only(path, codec, fmt=None, cover=False):
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=8000)
        sample_format = stream.codec_context.codec.audio_formats[0].name
        if cover:  # cover art: a one-picture video stream marked as an attached picture
            art = container.add_stream("mjpeg", rate=1)
            art.width, art.height, art.pix_fmt = W, H, "yuvj420p"
            art.disposition = av.stream.Disposition.attached_pic
            container.mux(art.encode(av.VideoFrame.from_ndarray(paint(0), format="rgb24")))
            container.mux(art.encode())
        for i in range(4):
            silence = np.zeros((1, 1024), np.float32 if sample_format.startswith("flt") else np.int16)
            frame = av.AudioFrame.from_ndarray(silence, format=sample_format, layout="mono")
            frame.sample_rate, frame.pts = 8000, 1024 * i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _broken(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "nope.mp4"
    if kind == "directory":
        return tmp_path
    if kind == "empty":
        (tmp_path / "empty.mp4").touch()
        return tmp_path / "empty.mp4"
    if kind == "text":
        (tmp_path / "notes.mp4").write_text("not a video, just some text\n" * 20)
        return tmp_path / "notes.mp4"
    if kind == "truncated":  # moov at the end (no faststart): cutting the file loses the index
        data = encode(tmp_path / "full.mp4", 30).read_bytes()
        (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
        return tmp_path / "cut.mp4"
    if kind == "zeroed":  # a valid header, every byte of the video data overwritten
        data = bytearray(write_video(tmp_path / "full.mp4", np.stack([paint(k) for k in range(30)]), 25).read_bytes())
        start = data.index(b"mdat") + 4
        data[start:] = bytes(len(data) - start)
        (tmp_path / "zeroed.mp4").write_bytes(data)
        return tmp_path / "zeroed.mp4"
    return _audio_only(tmp_path / {"wav": "a.wav", "m4a": "a.m4a", "mka": "a.mka", "cover": "c.m4a"}[kind],
                       {"wav": "pcm_s16le", "mka": "pcm_s16le"}.get(kind, "aac"),
                       fmt="mp4" if kind == "cover" else None, cover=kind == "cover")


@pytest.mark.parametrize("kind, problem", [
    ("missing", "no such file"),
    ("directory", "is a directory"),
    ("empty", "empty file"),
    ("text", "not a media file"),
    ("truncated", "not a media file"),
    ("wav", "no video stream (streams: audio)"),
    ("m4a", "no video stream (streams: audio)"),
    ("mka", "no video stream (streams: audio)"),
    ("cover", "no video stream (streams: audio, cover picture)"),
    ("zeroed", "no decodable video frames"),
])
def test_broken_inputs_raise_one_line_video_error(tmp_path, kind, problem):
    path = _broken(tmp_path, kind)
    with pytest.raises(VideoError) as info:
        sample_frames(path, 4)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message
    assert "\n" not in message


def test_damaged_first_gop_samples_what_decodes(tmp_path):
    """The first keyframe zeroed: frames 0–24 cannot be decoded, so the clip is sampled over the
    frames that can (25–99) instead of failing."""
    path = encode(tmp_path / "ok.mp4", 100, options={"x264-params": "keyint=25:min-keyint=25:scenecut=0"})
    with av.open(str(path)) as container:
        first = next(p for p in container.demux(container.streams.video[0]) if p.is_keyframe)
    data = bytearray(path.read_bytes())
    data[first.pos:first.pos + first.size] = bytes(first.size)
    (tmp_path / "hurt.mp4").write_bytes(data)
    assert indices(tmp_path / "hurt.mp4", 8) == [25 + k for k in sample_frame_indices(75, 8)]


def test_num_frames_must_be_positive(clips):
    with pytest.raises(ValueError):
        sample_frames(clips["mp4-h264"], 0)


# --------------------------------------------------------------------------- write_video

def test_write_video_round_trip_pads_odd_sizes(tmp_path):
    frames = np.stack([paint(k)[:47, :63] for k in range(12)])  # (12, 47, 63, 3): odd
    out = write_video(tmp_path / "clip.mp4", frames, fps=12.5)
    assert out == tmp_path / "clip.mp4" and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.format.name) == ("h264", "yuv420p")
        assert (stream.width, stream.height, stream.average_rate) == (64, 48, Fraction(25, 2))
    back, times = sample_frames_and_times(out, 12)
    assert [read_index(f) for f in back] == list(range(12))
    assert times == pytest.approx([k / 12.5 for k in range(12)])
    assert np.abs(back[:, :47, :63].astype(int) - frames).mean() < 4


def test_write_video_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"the previous video")
    real = av.VideoFrame.from_ndarray
    calls = []

    def failing(array, format):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(array, format=format)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_video(target, np.stack([paint(k) for k in range(5)]), 10)
    assert target.read_bytes() == b"the previous video"     # untouched, and no temp file left
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    with pytest.raises(ValueError, match="uint8"):
        write_video(target, np.zeros((2, 8, 8, 3), np.float32), 10)


def test_write_video_bytes_do_not_depend_on_what_the_process_did_before(tmp_path):
    """The same frames give the same file whatever is on the heap: x264's macroblock tree read memory it
    never wrote on clips shorter than its look-ahead, so a toy world rendered twice differed in ~7 % of
    its clips (and the evaluation with it). Each try first fills the heap with random frames."""
    rng = np.random.default_rng(0)
    clips = [np.stack([np.roll(paint(k), 5 * j * k, axis=1) for k in range(8)]) for j in range(3)]
    files: dict[int, set] = {}
    for attempt in range(18):
        junk = [av.VideoFrame.from_ndarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), format="rgb24")
                .reformat(format="yuv420p") for _ in range(20)]
        junk += [rng.bytes(4096 * (1 + attempt % 4)) for _ in range(50)]
        del junk
        path = write_video(tmp_path / f"{attempt}.mp4", clips[attempt % 3], 8)
        files.setdefault(attempt % 3, set()).add(path.read_bytes())
    assert [len(versions) for versions in files.values()] == [1, 1, 1]


# --------------------------------------------------------------------------- contact sheet CLI

def test_cli_writes_a_contact_sheet(clips, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert video.main([str(clips["mp4-h264"]), "--frames", "5", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out


def test_contact_sheet_puts_columns_frames_in_a_row(tmp_path):
    from matplotlib.image import imread
    frames = np.zeros((8, 16, 16, 3), np.uint8)
    one_row = contact_sheet(frames, [0.5 * i for i in range(8)], tmp_path / "row.png", columns=8)
    assert imread(one_row).shape[:2] == (380, 2400)          # 8 × 3 in wide, one row of 3.4 in + 0.4 in, 100 dpi
    grid = contact_sheet(frames, [0.5 * i for i in range(8)], tmp_path / "grid.png")
    assert imread(grid).shape[:2] == (720, 1200)             # the default: 4 per row, two rows


def test_cli_error_is_one_line_exit_2(tmp_path):
    missing = tmp_path / "missing.mp4"
    result = subprocess.run([sys.executable, "-m", "nanog4v.video", str(missing), "--out", str(tmp_path / "s.png")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr == f"error: {missing}: no such file\n"
    assert not (tmp_path / "s.png").exists()
