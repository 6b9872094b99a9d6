"""``python -m hfa_jax.translate``: many inputs in batches to a TSV, bad files skipped and counted,
one alignment PNG per input, one input -> the sentence as the last stdout line."""

from __future__ import annotations

import csv
import os
import shutil

import pytest
from PIL import Image

from hfa_jax import translate

# One xdist worker runs the application tests: they share the session's trained model.
pytestmark = pytest.mark.xdist_group("apps")


def test_folder_of_videos_and_frame_folders(tmp_path, capsys, workdirs, translator, clips, encoded):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(encoded["mp4"][0], inputs / "a.mp4")
    shutil.copy(encoded["webm"][1], inputs / "b.webm")
    shutil.copytree(clips[2][0], inputs / "c_frames")
    (inputs / "d.mp4").write_text("not a video")
    out, explain = tmp_path / "out.tsv", tmp_path / "explain"
    with pytest.raises(SystemExit) as e:
        translate.main(["--model", workdirs["finetune2"], "--input", str(inputs), "--out", str(out),
                        "--explain", str(explain), "--no_progress"])
    assert e.value.code == 1                                   # a bad input was skipped
    err = capsys.readouterr().err
    assert "skipped: " in err and "d.mp4" in err and "Traceback" not in err
    assert "translated 3 of 4 input(s)" in err and "skipped 1 bad input(s)" in err
    rows = list(csv.reader(open(out, encoding="utf-8"), delimiter="\t"))
    assert rows[0] == ["name", "translation"]
    want = translator([encoded["mp4"][0], encoded["webm"][1], clips[2][0]])
    assert rows[1:] == [["a", want[0]], ["b", want[1]], ["c_frames", want[2]]]
    pngs = sorted(os.listdir(explain))
    assert pngs == ["a.png", "b.png", "c_frames.png"]
    assert Image.open(explain / "a.png").size[0] > 400


def test_one_input_and_the_older_flags(capsys, workdirs, translator, clips):
    rows = translate.main(["--workdir", workdirs["finetune2"], "--frames", clips[3][0]])
    out = capsys.readouterr().out
    assert out.rstrip("\n").split("\n")[-1] == translator([clips[3][0]])[0] == rows[0][1]


def test_bad_arguments_are_one_line(tmp_path, capsys, workdirs, clips):
    with pytest.raises(SystemExit) as e:
        translate.main(["--model", workdirs["finetune2"], "--input", str(tmp_path / "nothing.mp4")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nothing.mp4" in err[0]
    with pytest.raises(SystemExit) as e:
        translate.main(["--model", str(tmp_path), "--input", clips[0][0]])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no config.json" in err[-1]
