"""Fuzzing the video reader (Hypothesis): random container bytes, real files with bytes flipped,
cut or repeated, and Matroska files whose frames claim random timestamps (out of order, equal,
negative, hours or years apart). Whatever the bytes, :func:`hfa_jax.data.video.read_clip`
returns a clip within the model's frame limit or raises the one-line DataError naming the file,
in bounded time, and the process' peak memory grows by a bounded amount over all examples."""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hfa_jax.data import video as video_lib
from hfa_jax.errors import DataError

pytestmark = pytest.mark.xdist_group("apps")

# Small frames and limits: every example is cheap, and a day of timestamps is still in range.
PREP = video_lib.Preprocessing(size=16, crop_size=16, max_frames=8, max_seconds=30.0, max_source_frames=400,
                               max_pixels=640 * 480)
LONG = dataclasses.replace(PREP, max_seconds=24 * 3600.0)
SECONDS_PER_EXAMPLE = 20.0   # generous: the machine is shared; a typical example takes milliseconds
MEMORY_GROWTH = 256 * 2**20  # peak RSS growth over all examples of one test
FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def read_or_one_line(path: str, prep: video_lib.Preprocessing = PREP) -> video_lib.Clip | None:
    """The property every example must have."""
    t0 = time.monotonic()
    try:
        clip = video_lib.read_clip(path, prep)
    except DataError as e:
        msg = str(e)
        assert msg and "\n" not in msg and path in msg, msg
        return None
    finally:
        assert time.monotonic() - t0 < SECONDS_PER_EXAMPLE
    assert clip.frames.dtype == np.uint8 and clip.frames.shape[1:] == (16, 16, 3)
    assert 1 <= len(clip.frames) == min(clip.num_frames, prep.max_frames)
    assert all("\n" not in w for w in clip.warnings)
    return clip


_SEEDS: dict[str, bytes] = {}


def seed(kind: str, folder) -> bytes:
    """A small real file of each kind the page and the CLI see, as bytes to mutate (made once)."""
    if kind not in _SEEDS:
        frames = np.stack([np.full((48, 64, 3), 20 * i, np.uint8) for i in range(10)])
        path = os.path.join(str(folder), f"seed.{kind}")
        video_lib.write_video(path, frames, 25)
        _SEEDS[kind] = open(path, "rb").read()
    return _SEEDS[kind]


@pytest.fixture(scope="module")
def peak_before():
    before = _peak()
    yield
    assert _peak() - before < MEMORY_GROWTH


@FUZZ
@given(data=st.binary(max_size=4096), ext=st.sampled_from(video_lib.VIDEO_EXTS))
def test_random_bytes(tmp_path, peak_before, data, ext):
    path = str(tmp_path / f"upload{ext}")
    with open(path, "wb") as f:
        f.write(data)
    read_or_one_line(path)


@FUZZ
@given(kind=st.sampled_from(["mp4", "webm", "avi", "mkv"]),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=24),
       cut=st.one_of(st.none(), st.floats(0, 1)),
       repeat=st.one_of(st.none(), st.tuples(st.floats(0, 1), st.floats(0, 1), st.integers(1, 4))))
def test_mutated_real_files(tmp_path, peak_before, kind, flips, cut, repeat):
    data = bytearray(seed(kind, tmp_path))
    for where, value in flips:
        data[int(where * len(data))] = value
    if repeat is not None:  # a chunk repeated: boxes and clusters claiming the wrong sizes
        a, b = sorted(int(x * len(data)) for x in repeat[:2])
        data = data[:b] + data[a:b] * repeat[2] + data[b:]
    if cut is not None:
        data = data[: int(cut * len(data))]
    path = str(tmp_path / f"mutated.{kind}")
    with open(path, "wb") as f:
        f.write(bytes(data))
    read_or_one_line(path)


def write_claimed_times(path: str, pts: list[int], tb: Fraction) -> None:
    """MJPEG frames in Matroska whose packets claim ``pts`` (in ``tb`` units), in any order."""
    import av

    with av.open(path, "w") as out:
        s = out.add_stream("mjpeg", rate=25)
        s.width, s.height, s.pix_fmt, s.time_base = 32, 24, "yuvj420p", tb
        for i, p in enumerate(pts):
            f = av.VideoFrame.from_ndarray(np.full((24, 32, 3), (i * 37) % 256, np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 25)
            for packet in s.encode(f):
                # decoding times far below any claimed time, increasing: the muxer accepts any pts
                packet.time_base, packet.pts, packet.dts = tb, int(p), -(2**40) + i
                out.mux(packet)


@FUZZ
@given(pts=st.lists(st.one_of(st.integers(0, 4000), st.integers(-(2**31), 2**45)), min_size=1, max_size=40),
       tb=st.sampled_from([Fraction(1, 1000), Fraction(1, 90000), Fraction(1001, 30000), Fraction(1, 1)]),
       long=st.booleans())
def test_random_timestamps(tmp_path, peak_before, pts, tb, long):
    path = str(tmp_path / "claims.mkv")
    try:
        write_claimed_times(path, pts, tb)
    except ValueError:  # the muxer refused these times (e.g. below its range): nothing to read
        return
    clip = read_or_one_line(path, LONG if long else PREP)
    if clip is not None:  # a day of claimed time at most: counted, never allocated
        assert clip.num_frames <= LONG.max_seconds * LONG.fps + 1
