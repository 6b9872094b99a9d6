"""Real video in: the crop and resampling rules, mp4 / webm / 30 fps 1280x720 encodes translated
like the PNG frames, bad inputs named in one line, warnings for out-of-distribution clips."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from hfa_jax.data import video as video_lib
from hfa_jax.errors import DataError

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
