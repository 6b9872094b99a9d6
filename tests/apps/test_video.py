"""Real video in: the crop and resampling rules, mp4 / webm / 30 fps 1280x720 encodes translated
like the PNG frames, bad inputs named in one line, warnings for out-of-distribution clips; the
streaming reader: the same frames as the whole-clip rule, the reading limits, a 10-hour
timestamp gap, memory bounded by the model's input (measured), preprocessing.json ranges."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from hfa_jax.data import video as video_lib
from hfa_jax.errors import DataError
from tests.apps.fixtures import write_with_pts

# One xdist worker runs the application tests: they share the session's trained model.
pytestmark = pytest.mark.xdist_group("apps")

PREP = video_lib.Preprocessing(size=54, crop_size=48, max_frames=32)


# ------------------------------------------------------------------------------------------ rules
def test_crop_box_keeps_the_training_aspect_centred():
    assert video_lib.crop_box(210, 260, 210 / 260) == (0, 0, 210, 260)      # PHOENIX frame: untouched
    assert video_lib.crop_box(1280, 720, 210 / 260) == (349, 0, 931, 720)   # 582 = round(720 * 210/260)
    assert video_lib.crop_box(720, 1280, 1.0) == (0, 280, 720, 1000)        # portrait to square: cut top/bottom


def test_resample_to_the_training_rate_by_nearest_timestamp():
    # 25 fps in: every frame kept
    assert video_lib.resample_indices(np.arange(10) / 25, 25).tolist() == list(range(10))
    # 30 fps in (a 25 fps clip repeated by nearest time): the original frames come back
    src = np.floor(np.arange(13) * 25 / 30 + 0.5).astype(int)   # which 25 fps frame each 30 fps frame shows
    idx = video_lib.resample_indices(np.arange(13) / 30, 25)
    assert src[idx].tolist() == list(range(11))
    # 12.5 fps in: each frame twice; timestamps in any container time base (rounded) are fine
    assert video_lib.resample_indices(np.round(np.arange(5) / 12.5 * 90000) / 90000, 25).tolist() == \
        [0, 0, 1, 1, 2, 2, 3, 3, 4]


def test_frame_folder_is_resized_as_build_dataset_does(clips):
    folder = clips[0][0]
    first = video_lib.frame_files(folder)[0]
    want = np.asarray(Image.open(first).convert("RGB").resize((54, 54), Image.Resampling.BICUBIC))
    clip = video_lib.read_clip(folder, PREP)
    np.testing.assert_array_equal(clip.frames[0], want)
    assert clip.source_fps is None and clip.source_size == (210, 260) and clip.warnings == []


# ------------------------------------------------------------------------- real encodes, same tokens
@pytest.mark.parametrize("ext", ["mp4", "webm"])
def test_encoded_video_translates_like_its_png_frames(translator, clips, encoded, png_tokens, ext):
    # The fixture model was trained to tell these clips apart: the outputs depend on the frames.
    assert len({tuple(t) for t in png_tokens}) >= 3, png_tokens
    got = translator.translate_clips([translator.read(p) for p in encoded[ext]])
    assert [list(map(int, t)) for t in got] == png_tokens
    for p, (folder, _) in zip(encoded[ext], clips):
        a, b = translator.read(p).frames, translator.read(folder).frames
        assert a.shape == b.shape
        assert np.abs(a.astype(int) - b).mean() < 4.0   # codec loss only


def test_30fps_1280x720_encode_translates_like_its_png_frames(translator, clips, encoded, png_tokens):
    clip = translator.read(encoded["hd30"][0])
    ref = translator.read(clips[0][0])
    assert clip.source_size == (1280, 720) and abs(clip.source_fps - 30.0) < 0.01
    assert clip.frames.shape == ref.frames.shape              # back to 25 fps, the same frames
    assert np.abs(clip.frames.astype(int) - ref.frames).mean() < 6.0
    assert clip.warnings == []
    assert list(map(int, translator.translate_clips([clip])[0])) == png_tokens[0]


# ------------------------------------------------------------------------------------- bad inputs
def _one_line_naming(e: pytest.ExceptionInfo, path: str) -> None:
    msg = str(e.value)
    assert path in msg and "\n" not in msg, msg


def test_bad_inputs_raise_one_line_naming_the_file(tmp_path, clips, encoded, monkeypatch):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.mp4"
    data = open(encoded["mp4"][0], "rb").read()
    cut.write_bytes(data[: len(data) // 3])
    no_frames = tmp_path / "nothing"
    no_frames.mkdir()
    (no_frames / "readme.txt").write_text("x")
    broken = tmp_path / "broken"
    shutil.copytree(clips[0][0], broken)
    open(video_lib.frame_files(str(broken))[3], "wb").write(b"\x89PNG garbage")
    cases = {str(text): "not a video", str(empty): "not a video", str(cut): "",
             str(no_frames): "no .png", str(broken / os.path.basename(video_lib.frame_files(str(broken))[3])): "",
             str(tmp_path / "missing.mp4"): "no such file"}
    for path, words in cases.items():
        target = str(broken) if path.startswith(str(broken)) else path
        with pytest.raises(DataError) as e:
            video_lib.read_clip(target, PREP)
        _one_line_naming(e, path)
        assert words in str(e.value), str(e.value)

    real_listdir = os.listdir

    def denied(p):
        if str(p) == str(no_frames):
            raise PermissionError(13, "Permission denied")
        return real_listdir(p)

    monkeypatch.setattr(video_lib.os, "listdir", denied)
    with pytest.raises(DataError, match="cannot read this folder") as e:
        video_lib.read_clip(str(no_frames), PREP)
    _one_line_naming(e, str(no_frames))


def test_video_without_frames_is_refused(tmp_path):
    import av

    path = str(tmp_path / "silent.mp4")
    with av.open(path, "w") as out:   # a video stream that never receives a frame
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
    with pytest.raises(DataError) as e:
        video_lib.read_clip(path, PREP)
    _one_line_naming(e, path)


def test_out_of_distribution_inputs_warn_in_one_line(tmp_path):
    grey = lambda n, h, w: np.full((n, h, w, 3), 128, np.uint8)  # noqa: E731 (fast to encode)
    short = str(tmp_path / "short.mp4")
    video_lib.write_video(short, grey(6, 260, 210), 25)
    long = str(tmp_path / "long.webm")
    video_lib.write_video(long, grey(40, 260, 210), 25)
    wide = str(tmp_path / "wide.mp4")
    video_lib.write_video(wide, grey(20, 120, 720), 25)
    (w_short,) = video_lib.read_clip(short, PREP).warnings
    assert "very short (6 frames" in w_short
    (w_long,) = video_lib.read_clip(long, PREP).warnings
    assert "longer than the model's limit of 32" in w_long and "the first 32 are kept" in w_long
    w_wide = video_lib.read_clip(wide, PREP).warnings
    assert any("extreme aspect 720x120" in w for w in w_wide), w_wide
    for w in [w_short, w_long] + w_wide:
        assert "\n" not in w
    assert len(video_lib.select_frames(np.zeros((40, 1)), PREP)) == 32


def test_list_inputs(tmp_path, clips, encoded):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(encoded["mp4"][0], mixed / "a.mp4")
    shutil.copytree(clips[1][0], mixed / "b_frames")
    (mixed / "notes.txt").write_text("ignored")
    assert [os.path.basename(p) for p in video_lib.list_inputs(str(mixed))] == ["a.mp4", "b_frames"]
    assert video_lib.list_inputs(clips[0][0]) == [clips[0][0]]
    with pytest.raises(DataError, match="no video files"):
        video_lib.list_inputs(str(tmp_path))  # holds only a folder of inputs, not inputs


# ------------------------------------------------------------------------ streaming and the limits
def grey_ramp(n: int, h: int = 260, w: int = 210) -> np.ndarray:
    return np.stack([np.full((h, w, 3), (i * 6) % 256, np.uint8) for i in range(n)])


def test_a_ten_hour_gap_allocates_nothing(tmp_path):
    # 2 frames, 10 hours apart: today's reader asked for 900 001 frames (7.3 GiB at 256 px)
    path = write_with_pts(str(tmp_path / "gap.mkv"), [0, 36_000_000])
    assert os.path.getsize(path) < 4000
    with pytest.raises(DataError) as e:
        video_lib.read_clip(path, PREP)
    _one_line_naming(e, path)
    assert "max_seconds=120" in str(e.value) and "36000 s" in str(e.value)
    # allowed to be that long: the repeated frames are counted, only the model's 32 are kept
    clip = video_lib.read_clip(path, dataclasses.replace(PREP, max_seconds=40_000.0))
    assert clip.num_frames == 900_001 and clip.frames.shape == (32, 54, 54, 3)
    assert (clip.frames == clip.frames[0]).all()          # the first frame, repeated


def test_limits_name_the_limit_and_the_flag(tmp_path, clips):
    path = str(tmp_path / "forty.webm")
    video_lib.write_video(path, grey_ramp(40), 25)
    for change, words in [({"max_seconds": 1.0}, "over the limit max_seconds=1"),
                          ({"max_source_frames": 10}, "more than 10 frames, over the limit max_source_frames=10"),
                          ({"max_pixels": 210 * 260 - 1}, "210x260 frames, over the limit max_pixels=54599")]:
        with pytest.raises(DataError) as e:
            video_lib.read_clip(path, dataclasses.replace(PREP, **change))
        _one_line_naming(e, path)
        assert words in str(e.value) and "--max_" in str(e.value), str(e.value)
    folder = clips[0][0]
    n = len(video_lib.frame_files(folder))
    with pytest.raises(DataError, match=f"{n} frame files, over the limit max_source_frames={n - 1}"):
        video_lib.read_clip(folder, dataclasses.replace(PREP, max_source_frames=n - 1))
    with pytest.raises(DataError, match="210x260 frames, over the limit max_pixels=100"):
        video_lib.read_clip(folder, dataclasses.replace(PREP, max_pixels=100))


def test_frame_selection_while_streaming_matches_the_whole_clip(tmp_path):
    """The frames kept while decoding are the frames the old rule chose from the whole clip: the
    first max_frames, or (two passes) the evenly spaced subset; timestamps out of order dropped."""
    path = str(tmp_path / "forty.webm")
    video_lib.write_video(path, grey_ramp(40), 25)
    whole = video_lib.read_clip(path, dataclasses.replace(PREP, max_frames=1000))
    assert whole.num_frames == 40 and len(whole.frames) == 40
    first = video_lib.read_clip(path, PREP)
    np.testing.assert_array_equal(first.frames, whole.frames[:32])
    even = video_lib.read_clip(path, dataclasses.replace(PREP, frame_selection="random"))
    np.testing.assert_array_equal(even.frames, whole.frames[np.linspace(0, 39, 32).round().astype(int)])
    assert first.num_frames == even.num_frames == 40
    # a frame folder follows the same rule
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(grey_ramp(40)):
        Image.fromarray(f).save(folder / f"{i:03d}.png")
    even = video_lib.read_clip(str(folder), dataclasses.replace(PREP, frame_selection="random"))
    assert even.num_frames == 40 and [int(f[0, 0, 0]) for f in even.frames] == \
        [(i * 6) % 256 for i in np.linspace(0, 39, 32).round().astype(int)]
    # out of order: the frame at 60 ms (after 80 ms) is dropped, as is the second at 120 ms
    path = write_with_pts(str(tmp_path / "order.mkv"), [0, 40, 80, 60, 120, 120, 160])
    clip = video_lib.read_clip(path, PREP)
    assert clip.num_frames == 5 and any("2 frame(s) whose timestamp was not after" in w for w in clip.warnings)


@settings(max_examples=200, deadline=None, database=None)
@given(gaps=st.lists(st.integers(1, 400), min_size=0, max_size=30), start=st.integers(0, 10**6),
       fps=st.sampled_from([25.0, 30.0, 12.5]), tb=st.sampled_from([1000, 90000, 30000, 25]))
def test_the_streaming_rule_is_the_nearest_timestamp_rule(gaps, start, fps, tb):
    """Over the decoded stream, output frame k is the frame nearest to k / fps (ties to the
    earlier frame): :func:`resample_indices` over the whole list of times, as before."""
    pts = np.cumsum([start] + gaps)
    times = [float(Fraction(int(p), tb)) for p in pts]
    rs = video_lib._Resampler(fps, np.arange(10**6), lambda frame: frame)
    for i, t in enumerate(times):
        if rs.push(t):
            rs.take(t, i)
    n = rs.finish()
    want = video_lib.resample_indices(times, fps)
    assert n == len(want) and rs.frames.tolist() == want.tolist()


MEMORY_SCRIPT = """
import resource, sys
from hfa_jax.data import video
prep = video.Preprocessing(size=54, crop_size=48, max_frames=32, frame_selection=sys.argv[3])
video.read_clip(sys.argv[2], prep)   # FFmpeg and the decoder loaded, their pools warm
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
clip = video.read_clip(sys.argv[1], prep)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(clip.num_frames, len(clip.frames), (peak - base) * 1024)
"""


def test_memory_is_bounded_by_the_model_input_not_the_file(tmp_path):
    """A 720p clip in a fresh process: the peak memory of reading it (ru_maxrss over a warm
    baseline) stays far below its full-size frames (what the reader used to hold: 2.8 GB for
    30 s), in both frame-selection modes (the evenly spaced one decodes twice)."""
    import subprocess
    import sys

    n, h, w = 60, 720, 1280
    x = np.arange(w)[None, :]
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):   # moving stripes: every frame differs, fast to encode
        frames[i] = (((x + 9 * i) % 256) // 2 + 40)[..., None].astype(np.uint8)
    big, warm = str(tmp_path / "hd.mp4"), str(tmp_path / "warm.mp4")
    video_lib.write_video(big, frames, 25, preset="ultrafast")
    video_lib.write_video(warm, frames[:3], 25, preset="ultrafast")
    full_size = n * h * w * 3   # 166 MB
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for mode in ("first", "random"):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, big, warm, mode], capture_output=True, text=True,
                             cwd=root, timeout=120, env={**os.environ, "PYTHONPATH": root})
        assert out.returncode == 0, out.stderr[-2000:]
        num, kept, grew = map(int, out.stdout.split()[-3:])
        assert (num, kept) == (n, 32)
        # the bound: 32 kept frames (0.3 MB) + one 720p frame in RGB and YUV (4 MB) + the
        # decoder's buffers; measured 3-4 MB. 32 MiB leaves room for the allocator.
        assert grew < 32 * 2**20 and grew < full_size / 5, (mode, grew)


def test_preprocessing_json_in_sane_ranges(tmp_path):
    good = video_lib.Preprocessing().to_dict()
    old = {k: v for k, v in good.items() if k not in ("max_seconds", "max_source_frames", "max_pixels")}
    assert video_lib.Preprocessing.from_dict(old) == video_lib.Preprocessing()   # folders written before the limits
    for change, words in [({"fps": 1e9}, "fps=1000000000.0 is out of range"), ({"max_frames": 10**9}, "max_frames"),
                          ({"size": 10**6}, "size=1000000 is out of range"), ({"crop_size": 300}, "larger than size"),
                          ({"fps": "25"}, "fps='25' is not a number"), ({"max_frames": True}, "is not a number"),
                          ({"max_frames": 2.5}, "is not a number"), ({"frame_selection": 3}, "is not a string"),
                          ({"max_seconds": -1}, "max_seconds=-1.0 is out of range")]:
        path = tmp_path / "preprocessing.json"
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(DataError) as e:
            video_lib.Preprocessing.load(str(path))
        _one_line_naming(e, str(path))
        assert words in str(e.value), str(e.value)
    path.write_text("[]")
    with pytest.raises(DataError, match="expected a JSON object"):
        video_lib.Preprocessing.load(str(path))


def test_input_keys_keep_apart_what_the_extension_tells_apart(tmp_path):
    assert video_lib.input_key(str(tmp_path / "in" / "a.mp4"), str(tmp_path / "in")) == "a.mp4"
    assert video_lib.input_key(str(tmp_path / "in" / "a"), str(tmp_path / "in") + "/") == "a"
    assert video_lib.input_key(str(tmp_path / "clip.mov"), str(tmp_path / "clip.mov")) == "clip.mov"
    assert video_lib.input_key("frames/", "frames/") == "frames"
