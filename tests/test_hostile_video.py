"""Hostile and unlucky videos: what a frame may cost is bounded by pixels, not by the file.

A 500 KB H.264 file can hold 8192×8192 frames, and a container header can claim one size while the
bitstream holds another. The reader (nanog4v/video.py) refuses frames larger than `max_pixels` before
they are decoded (by the header) and while they are decoded (FFmpeg's own `max_pixels`, for a header
that lies), and scales every frame to `max_side` while converting it, so what comes back — and what
the model then preprocesses in float — is at most 1024 px on its longest side. Each case is small:
the limits are lowered for the test where a real 8K clip would cost seconds to make (bench/
video_memory.py measures the real ones). The broken-file cases of tests/test_video.py (missing,
directory, empty, text, truncated, audio only, cover art, zeroed) belong to the same corpus.
"""
from __future__ import annotations

import struct
import subprocess
import sys

import av
import numpy as np
import pytest

from conftest import ROOT
from nanog4v.video import MAX_PIXELS, MAX_SIDE, VideoError, output_size, sample_frames, sample_frames_and_times

NO_LIMIT = 2**31 - 1


def gradient(width: int, height: int, k: int = 0) -> np.ndarray:
    """A smooth picture (so scaling has a right answer) with a bright square that moves with k."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 96)], -1).astype(np.uint8)
    s = min(width, height) // 4
    image[s:2 * s, (k * s) % (width - s):(k * s) % (width - s) + s] = 255
    return image                                                                  # (H, W, 3)


def encode(path, width, height, n=4, fmt=None, codec="libx264", rotation=None, pix_fmt="yuv420p"):
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast", "crf": "12"}
        if rotation is not None:
            stream.set_display_rotation(*rotation)
        for k in range(n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(gradient(width, height, k), format="rgb24")))
        container.mux(stream.encode())
    return path


def lying_avi(tmp_path):
    """An MJPEG AVI of 512×512 frames whose container header (avih, strh, strf) says 32×32."""
    data = bytearray(encode(tmp_path / "real.avi", 512, 512, codec="mjpeg", pix_fmt="yuvj420p").read_bytes())
    for chunk, offset, fmt, small in (("avih", 40, "<II", (32, 32)), ("strf", 12, "<ii", (32, 32)),
                                      ("strh", 56, "<hhhh", (0, 0, 32, 32))):
        i = data.index(chunk.encode()) + offset
        data[i:i + struct.calcsize(fmt)] = struct.pack(fmt, *small)
    (tmp_path / "lying.avi").write_bytes(data)
    return tmp_path / "lying.avi"


def one_line(info, path, *needles):
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)


# --- the pixel limit -----------------------------------------------------------------------------------

def test_the_default_limit_is_dci_8k_and_the_side_1024():
    assert MAX_PIXELS == 8192 * 4320 and MAX_SIDE == 1024


def test_frames_larger_than_the_limit_are_refused_by_the_header(tmp_path):
    path = encode(tmp_path / "big.mp4", 512, 512)
    with pytest.raises(VideoError) as info:
        sample_frames(path, 4, max_pixels=128 * 128)
    one_line(info, path, "512x512 frames: larger than the limit of 16,384 pixels per frame", "scale the video down")
    assert sample_frames(path, 4, max_pixels=512 * 512).shape == (4, 512, 512, 3)   # the limit itself is allowed


def test_a_header_that_lies_is_caught_by_the_decoder(tmp_path):
    """The container says 32×32, the JPEGs are 512×512, the limit is 128×128: the header check
    passes, the decoder (told the limit) refuses every frame, nothing that big is decoded."""
    path = lying_avi(tmp_path)
    with pytest.raises(VideoError) as info:
        sample_frames(path, 4, max_pixels=128 * 128)
    one_line(info, path, "no decodable video frames", "frames larger than 16,384 pixels")
    assert sample_frames(path, 4, max_pixels=NO_LIMIT).shape == (4, 512, 512, 3)    # the limit is what stopped it


def test_a_stream_that_grows_mid_way_is_refused(tmp_path):
    """Raw H.264 (no timestamps): 64×64 frames, then a new SPS of 512×512; probing reads the second."""
    small, big = encode(tmp_path / "a.h264", 64, 64, fmt="h264"), encode(tmp_path / "b.h264", 512, 512, fmt="h264")
    path = tmp_path / "grows.h264"
    path.write_bytes(small.read_bytes() + big.read_bytes())
    with pytest.raises(VideoError) as info:
        sample_frames(path, 8, max_pixels=128 * 128)
    one_line(info, path, "512x512 frames: larger than the limit of 16,384 pixels per frame")
    assert sample_frames(path, 8, max_pixels=NO_LIMIT).shape == (8, 64, 64, 3)      # (scaled to the first's size)


def test_the_cli_refuses_jpegs_claiming_8192_squared_in_one_line(tmp_path):
    """The default limit: every JPEG of a small MJPEG AVI rewritten (its SOF0 marker) to claim 8192×8192."""
    data, start = bytearray(encode(tmp_path / "small.avi", 32, 32, codec="mjpeg", pix_fmt="yuvj420p").read_bytes()), 0
    while (i := data.find(b"\xff\xc0", start)) >= 0:       # SOF0: length (2), precision (1), height, width
        if struct.unpack(">HH", data[i + 5:i + 9]) == (32, 32):
            data[i + 5:i + 9] = struct.pack(">HH", 8192, 8192)
        start = i + 2
    path = tmp_path / "claims.avi"
    path.write_bytes(data)
    done = subprocess.run([sys.executable, "-m", "nanog4v.video", str(path), "--out", str(tmp_path / "s.png")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"error: {path}: no decodable video frames") and "35,389,440 pixels" in done.stderr
    assert not (tmp_path / "s.png").exists()


# --- scaling while converting ----------------------------------------------------------------------------

@pytest.mark.parametrize("size, max_side, want", [
    ((1920, 1080), 1024, (1024, 576)), ((576, 1024), 1024, (576, 1024)), ((1024, 576), 1024, (1024, 576)),
    ((7680, 4320), 1024, (1024, 576)), ((8000, 3), 1024, (1024, 1)), ((3, 8000), 100, (1, 100)),
    ((640, 480), None, (640, 480)), ((33, 17), 16, (16, 8)),
])
def test_output_size(size, max_side, want):
    assert output_size(*size, max_side) == want


def test_frames_within_the_bound_come_back_exactly_as_decoded(tmp_path):
    path = encode(tmp_path / "v.mp4", 320, 160)
    full, times = sample_frames_and_times(path, 4, max_side=None)
    same, same_times = sample_frames_and_times(path, 4, max_side=320)
    assert np.array_equal(full, same) and times == same_times


def test_larger_frames_are_area_averaged_down_to_the_bound(tmp_path):
    path = encode(tmp_path / "v.mp4", 512, 256)
    full = sample_frames(path, 4, max_side=None)                                # (4, 256, 512, 3)
    small = sample_frames(path, 4, max_side=128)                                # (4, 64, 128, 3)
    assert small.shape == (4, 64, 128, 3)
    blocks = full.reshape(4, 64, 4, 128, 4, 3).astype(float).mean((2, 4))      # the exact 4×4 area average
    assert np.abs(small - blocks).mean() < 1.5


@pytest.mark.parametrize("rotation, turn", [((90, False, False), 1), ((-90, False, False), -1)])
def test_rotation_is_applied_after_scaling(tmp_path, rotation, turn):
    path = encode(tmp_path / "rot.mp4", 256, 128, pix_fmt="yuv444p", rotation=rotation)
    full = sample_frames(path, 2, max_side=None)                                # (2, 256, 128, 3) displayed
    small = sample_frames(path, 2, max_side=64)                                 # (2, 64, 32, 3)
    assert full.shape == (2, 256, 128, 3) and small.shape == (2, 64, 32, 3)
    blocks = full.reshape(2, 64, 4, 32, 4, 3).astype(float).mean((2, 4))
    assert np.abs(small - blocks).mean() < 1.5
    assert np.abs(np.rot90(full[0], -turn).astype(float) - gradient(256, 128, 1)).mean() < 3


def test_a_bad_max_side_is_a_value_error(tmp_path):
    path = encode(tmp_path / "v.mp4", 64, 64)
    with pytest.raises(ValueError, match="max_side must be >= 1"):
        sample_frames(path, 2, max_side=0)
