"""``python -m hfa_jax.translate``: many inputs in batches to a TSV keyed by the path relative to
``--input`` (``a/``, ``a.mp4`` and ``a.mov`` stay apart), bad files skipped and counted, one
alignment PNG per input, one input -> the sentence as the last stdout line; bad arguments in one
line; ``--out`` written atomically, and when it fails the finished results are printed and kept;
workdirs with relative paths load from any directory."""

from __future__ import annotations

import csv
import json
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
    shutil.copy(encoded["webm"][1], inputs / "a.mov")        # FFmpeg reads the content, not the name
    shutil.copytree(clips[2][0], inputs / "a")
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
    want = translator([clips[2][0], encoded["webm"][1], encoded["mp4"][0]])
    assert rows[1:] == [["a", want[0]], ["a.mov", want[1]], ["a.mp4", want[2]]]
    assert sorted(os.listdir(explain)) == ["a.mov.png", "a.mp4.png", "a.png"]
    assert Image.open(explain / "a.mp4.png").size[0] > 400
    assert sorted(os.listdir(tmp_path)) == ["explain", "inputs", "out.tsv"]   # the temporary file was renamed


def test_one_input_and_the_older_flags(capsys, workdirs, translator, clips):
    rows = translate.main(["--workdir", workdirs["finetune2"], "--frames", clips[3][0]])
    out = capsys.readouterr().out
    assert out.rstrip("\n").split("\n")[-1] == translator([clips[3][0]])[0] == rows[0][1]


def _one_error_line(capsys, e) -> str:
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_arguments_are_one_line(tmp_path, capsys, workdirs, clips):
    with pytest.raises(SystemExit) as e:
        translate.main(["--model", workdirs["finetune2"], "--input", str(tmp_path / "nothing.mp4")])
    assert "nothing.mp4" in _one_error_line(capsys, e)
    with pytest.raises(SystemExit) as e:
        translate.main(["--model", str(tmp_path), "--input", clips[0][0]])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no config.json" in err[-1]
    model = ["--model", workdirs["finetune2"], "--input", clips[0][0]]
    (tmp_path / "a_file").write_text("x")
    for extra, words in [(["--batch_size", "0"], "--batch_size 0: must be from 1 to 1024"),
                         (["--batch_size", "-1"], "--batch_size -1: must be from 1 to 1024"),
                         (["--batch_size", "many"], "invalid int value: 'many'"),
                         (["--max_seconds", "-5"], "--max_seconds=-5.0 is out of range"),
                         (["--max_pixels", "0"], "--max_pixels=0 is out of range"),
                         (["--out", str(tmp_path)], "is a folder"),
                         (["--out", str(tmp_path / "a_file" / "out.tsv")], "cannot create the folder"),
                         (["--explain", str(tmp_path / "a_file")], "is a file"),
                         (["--no_such_flag"], "unrecognized arguments: --no_such_flag")]:
        with pytest.raises(SystemExit) as e:
            translate.main(model + extra)
        assert words in _one_error_line(capsys, e), extra
    with pytest.raises(SystemExit) as e:
        translate.main(["--input", clips[0][0]])
    assert "the following arguments are required: --model" in _one_error_line(capsys, e)


def test_a_limit_flag_refuses_the_clip_in_one_line(capsys, workdirs, encoded):
    with pytest.raises(SystemExit) as e:
        translate.main(["--model", workdirs["finetune2"], "--input", encoded["mp4"][0], "--max_pixels", "1000"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no input could be read (") and "Traceback" not in "".join(err)
    assert "over the limit max_pixels=1000" in err[-1] and encoded["mp4"][0] in err[-1]


def test_when_out_fails_the_translations_are_printed_and_kept(tmp_path, capsys, monkeypatch, workdirs, clips,
                                                              translator):
    out = tmp_path / "out.tsv"
    out.write_text("name\ttranslation\nold\trow\n")
    real = translate.write_tsv

    def disk_full(path, rows):
        if os.path.abspath(path) == str(out):
            raise OSError(28, "No space left on device")
        return real(path, rows)

    monkeypatch.setattr(translate, "write_tsv", disk_full)
    with pytest.raises(SystemExit) as e:
        translate.main(["--model", workdirs["finetune2"], "--input", clips[1][0], "--out", str(out)])
    captured = capsys.readouterr()
    want = translator([clips[1][0]])[0]
    assert captured.out.rstrip("\n").split("\n")[-1] == want        # printed before --out was tried
    assert e.value.code == 2
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write --out {out} (No space left on device); the 1 finished "
                           "translation(s) are printed above (stdout) and saved in ")
    spare = line.rsplit(" ", 1)[-1]
    assert list(csv.reader(open(spare, encoding="utf-8"), delimiter="\t"))[1:] == [[os.path.basename(clips[1][0]), want]]
    os.remove(spare)
    assert out.read_text() == "name\ttranslation\nold\trow\n"      # the old file is untouched


def test_write_tsv_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "t.tsv"
    translate.write_tsv(str(out), [("a.mp4", "hallo")])
    assert out.read_text() == "name\ttranslation\na.mp4\thallo\n"
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)             # not left private by mkstemp

    class Broken(Exception):
        pass

    def broken_writer(*args, **kwargs):
        raise Broken()

    monkeypatch.setattr(translate.csv, "writer", broken_writer)
    with pytest.raises(Broken):
        translate.write_tsv(str(out), [("b.mp4", "tschuess")])
    assert out.read_text() == "name\ttranslation\na.mp4\thallo\n"    # a failed write leaves the old file
    assert os.listdir(tmp_path) == ["t.tsv"]                          # and no temporary file


def test_workdir_with_relative_paths_loads_from_anywhere(tmp_path, monkeypatch, workdirs, clips, png_tokens):
    """A workdir trained as ``runs/...`` from a project folder names its tokenizer, pretraining
    stage and pseudo-glosses relative to that folder; it loads from any directory."""
    from hfa_jax.translator import Translator

    project = tmp_path / "project"
    runs = project / "runs"
    for name in ("finetune2", "pretrain", "tokenizer"):
        shutil.copytree(workdirs[name], runs / name)
    shutil.copy(os.path.join(os.path.dirname(workdirs["pretrain"]), "pseudo_glosses.json"), runs)
    for stage, changes in (("finetune2", {("data", "tokenizer_dir"): "runs/tokenizer",
                                          ("train", "init_from"): "runs/pretrain"}),
                           ("pretrain", {("data", "tokenizer_dir"): "runs/tokenizer",
                                         ("data", "pseudo_glosses"): "runs/pseudo_glosses.json"})):
        path = runs / stage / "config.json"
        config = json.loads(path.read_text())
        for (section, key), value in changes.items():
            config[section][key] = value
        path.write_text(json.dumps(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd, model in ((elsewhere, str(runs / "finetune2")), (runs, "finetune2"), (project, "runs/finetune2")):
        monkeypatch.chdir(cwd)
        t = Translator.from_pretrained(model)
        assert t.has_pseudo_gloss_head, cwd
        assert os.path.isabs(t.bundle.tokenizer_dir) and t.bundle.tokenizer_dir.startswith(str(runs))
        assert [list(map(int, s)) for s in t.translate_clips([t.read(clips[0][0])])] == png_tokens[:1]
    # exported from it (here: the project folder), then loaded by a relative path from elsewhere
    from hfa_jax import export

    export.export("runs/finetune2", "exported")
    monkeypatch.chdir(elsewhere)
    t = Translator.from_pretrained("../project/exported")
    assert t.has_pseudo_gloss_head
    assert [list(map(int, s)) for s in t.translate_clips([t.read(clips[0][0])])] == png_tokens[:1]
