"""Readers on real files (PHOENIX14T sample tree, GFSLT-VLP labels, CSL-Daily labels) and bad input."""

from __future__ import annotations

import gzip
import os
import pathlib
import pickle

import numpy as np
import pytest
from PIL import Image

from hfa_jax.data import annotations as records
from hfa_jax.data.annotations import BadVideo, VideoRecord
from hfa_jax.errors import DataError

RES = pathlib.Path(__file__).resolve().parents[1] / "resources"
SAMPLE = RES / "phoenix14t" / "sample"
GFSLT = RES / "phoenix14t" / "gfslt-labels"
NSLT = RES / "phoenix14t" / "nslt"
CSL = RES / "csl-daily"
SAMPLE_NAME = "25October_2010_Monday_tagesschau-17"
HEADER = "name|video|start|end|speaker|orth|translation"


# ---------------------------------------------------------------------------------- real files


@pytest.mark.parametrize("split", records.SPLITS)
def test_phoenix14t_real_sample_tree(split):
    (rec,) = records.read_phoenix14t(str(SAMPLE), split)  # release parent folder is accepted
    assert rec == VideoRecord(
        name=SAMPLE_NAME, split=split, frame_paths=rec.frame_paths, num_frames=2,
        translation="regen und schnee lassen an den alpen in der nacht nach im norden und nordosten "
                    "fallen hier und da schauer sonst ist das klar",
        gloss="REGEN SCHNEE REGION VERSCHWINDEN NORD REGEN KOENNEN REGION STERN KOENNEN SEHEN",
        signer="Signer01")
    assert [os.path.basename(p) for p in rec.frame_paths] == ["images0001.png", "images0002.png"]
    for p in rec.frame_paths:
        assert os.path.isabs(p) and f"fullFrame-210x260px/{split}/{SAMPLE_NAME}" in p
        with Image.open(p) as img:
            assert img.size == (210, 260) and img.mode == "RGB"  # 210 wide, 260 high


def test_phoenix14t_root_forms_agree():
    inner = SAMPLE / "PHOENIX-2014-T-release-v3" / "PHOENIX-2014-T"
    a = records.read_phoenix14t(str(inner), "dev")
    b = records.read_phoenix14t(str(SAMPLE / "PHOENIX-2014-T-release-v3"), "dev")
    assert a == b


def _de_lines(split):
    lines = (NSLT / f"phoenix2014T.{split}.de").read_text(encoding="utf-8").split("\n")
    return [line for line in lines if line]


@pytest.mark.parametrize("split,count", [("train", 7096), ("dev", 519), ("test", 642)])
def test_gfslt_labels_real(split, count):
    recs = records.read_gfslt_labels(str(GFSLT), "/frames", split, check_frames=False)
    assert len(recs) == count == len({r.name for r in recs})
    de = _de_lines(split)
    assert len(de) == count and all(line.endswith(" .") for line in de)
    # Same sentences as the nslt .de file without the final " ." (the label files use another order).
    assert sorted(r.translation for r in recs) == sorted(line[:-2] for line in de)
    r0 = recs[0]
    assert "/" not in r0.name and r0.split == split and r0.signer is None
    assert r0.frame_paths[0] == f"/frames/{split}/{r0.name}/images0001.png"
    assert r0.num_frames == len(r0.frame_paths) and 16 <= r0.num_frames <= 475


def test_gfslt_labels_real_with_sample_frames():
    # The sample tree holds 2 of the 181 frames of one test video and no other video: every test
    # video is reported, none silently dropped.
    frames_root = SAMPLE / "PHOENIX-2014-T-release-v3/PHOENIX-2014-T/features/fullFrame-210x260px"
    bad: list[BadVideo] = []
    recs = records.read_gfslt_labels(str(GFSLT / "labels.test"), str(frames_root), "test", bad=bad)
    assert recs == [] and len(bad) == 642
    (partial,) = [b for b in bad if b.name == SAMPLE_NAME]
    assert "179 of 181 listed frames missing" in partial.reason
    assert sum("frame folder missing" in b.reason for b in bad) == 641


@pytest.mark.parametrize("split,count", [("train", 18400), ("dev", 1077), ("test", 1176)])
def test_csl_daily_labels_real(split, count):
    recs = records.read_csl_daily(str(CSL), "/frames", split, check_frames=False)
    assert len(recs) == count == len({r.name for r in recs})
    assert all(r.translation and r.num_frames > 0 and r.frame_paths == () for r in recs)
    if split == "dev":
        assert recs[0] == VideoRecord(name="S000020_P0000_T00", split="dev", frame_paths=(),
                                      num_frames=54, translation="他今年四岁。",
                                      gloss="他 今天 年龄 4", signer=None)


def test_csl_daily_frames_layout(tmp_path):
    """frames_512x512/{name}/*.jpg, natural frame order; the label's length must match."""
    labels = {"S1": {"name": "S1", "gloss": "你 好", "text": "你好。", "length": 11},
              "S2": {"name": "S2", "gloss": "好", "text": "好。", "length": 5}}
    lab = tmp_path / "labels"
    lab.mkdir()
    with gzip.open(lab / "labels.dev", "wb") as f:
        pickle.dump(labels, f)
    root = tmp_path / "frames_512x512"
    for name, n in (("S1", 11), ("S2", 4)):  # S2: an incomplete extraction
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(root / name / f"{i}.jpg")
    bad: list[BadVideo] = []
    (rec,) = records.read_csl_daily(str(lab), str(root), "dev", bad=bad)
    assert [os.path.basename(p) for p in rec.frame_paths] == [f"{i}.jpg" for i in range(11)]
    assert rec.num_frames == 11 and rec.translation == "你好。"
    assert [b.name for b in bad] == ["S2"] and "label says 5 frames, folder has 4" in bad[0].reason
    with pytest.raises(DataError, match="S2.*label says 5"):
        records.read_csl_daily(str(lab), str(root), "dev")


# ---------------------------------------------------------------------------------- bad input


def _tree(tmp_path, rows, header=HEADER, frames=None, split="train"):
    """A tiny official-layout tree; `frames`: name -> number of 4x4 PNG frames (default 2)."""
    man = tmp_path / "annotations" / "manual"
    man.mkdir(parents=True, exist_ok=True)
    (man / f"PHOENIX-2014-T.{split}.corpus.csv").write_text(
        "\n".join([header] + rows) + "\n", encoding="utf-8")
    for row in rows:
        name = row.split("|")[0]
        n = (frames or {}).get(name, 2)
        if n is None:
            continue
        d = tmp_path / "features" / "fullFrame-210x260px" / split / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(d / f"images{i + 1:04d}.png")
    return str(tmp_path)


def _row(name, text="hallo welt", orth="HALLO", speaker="Signer02"):
    return f"{name}|{name}/1/*.png|-1|-1|{speaker}|{orth}|{text}"


def _one_line_error(fn, *match):
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for m in match:
        assert m in msg, (m, msg)
    return msg


def test_frames_sorted_naturally_and_final_period_stripped(tmp_path):
    root = _tree(tmp_path, [_row("v1", text="es regnet .")], frames={"v1": 12})
    (rec,) = records.read_phoenix14t(root, "train")
    assert rec.translation == "es regnet" and rec.num_frames == 12 and rec.signer == "Signer02"
    assert [os.path.basename(p) for p in rec.frame_paths] == [f"images{i:04d}.png" for i in range(1, 13)]


def test_missing_frame_folder(tmp_path):
    root = _tree(tmp_path, [_row("v1"), _row("gone")], frames={"gone": None})
    _one_line_error(lambda: records.read_phoenix14t(root, "train"),
                    "gone", "frame folder missing", "PHOENIX-2014-T.train.corpus.csv:3", "--skip_bad")
    bad: list[BadVideo] = []
    recs = records.read_phoenix14t(root, "train", bad=bad)
    assert [r.name for r in recs] == ["v1"] and [b.name for b in bad] == ["gone"]


def test_empty_frame_folder(tmp_path):
    root = _tree(tmp_path, [_row("v1"), _row("empty")], frames={"empty": 0})
    _one_line_error(lambda: records.read_phoenix14t(root, "train"), "empty", "no .png frames")


def test_wrong_header(tmp_path):
    root = _tree(tmp_path, [_row("v1")], header="name|video|start|end|speaker|gloss|translation")
    bad: list[BadVideo] = []
    # A wrong header is a file-level problem: it raises even when collecting bad videos.
    _one_line_error(lambda: records.read_phoenix14t(root, "train", bad=bad),
                    "PHOENIX-2014-T.train.corpus.csv", "line 1", "header")


def test_row_with_wrong_field_count(tmp_path):
    root = _tree(tmp_path, [_row("v1"), "v2|v2/1/*.png|-1|-1|Signer01|HALLO"])
    _one_line_error(lambda: records.read_phoenix14t(root, "train"),
                    "corpus.csv:3", "6 '|'-separated fields, expected 7")
    bad: list[BadVideo] = []
    assert [r.name for r in records.read_phoenix14t(root, "train", bad=bad)] == ["v1"]
    assert bad[0].name == "v2" and bad[0].file.endswith(":3")


def test_duplicate_names(tmp_path):
    root = _tree(tmp_path, [_row("v1"), _row("v2"), _row("v1", text="anders")])
    _one_line_error(lambda: records.read_phoenix14t(root, "train"), "v1", "duplicate", "line 2", ":4")
    bad: list[BadVideo] = []
    recs = records.read_phoenix14t(root, "train", bad=bad)
    assert [r.translation for r in recs] == ["hallo welt", "hallo welt"] and len(bad) == 1


def test_missing_csv_and_root(tmp_path):
    root = _tree(tmp_path, [_row("v1")])
    _one_line_error(lambda: records.read_phoenix14t(root, "dev"), "PHOENIX-2014-T.dev.corpus.csv")
    _one_line_error(lambda: records.read_phoenix14t(str(tmp_path / "nothing"), "dev"), "nothing")
    _one_line_error(lambda: records.read_phoenix14t(root, "val"), "unknown split")


def test_label_pickle_with_foreign_objects(tmp_path):
    marker = tmp_path / "ran"
    evil = {"train/a": {"name": "train/a", "text": "x", "imgs_path": ["train/a/1.png"],
                        "gloss": _Touch(str(marker))}}
    with gzip.open(tmp_path / "labels.train", "wb") as f:
        pickle.dump(evil, f)
    for reader in (records.read_gfslt_labels, records.read_csl_daily):
        _one_line_error(lambda: reader(str(tmp_path), str(tmp_path), "train"),
                        str(tmp_path / "labels.train"), "refused")
    assert not marker.exists()


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_gfslt_bad_entries(tmp_path):
    labels = {
        "train/ok": {"name": "train/ok", "text": "gut .", "gloss": "G", "length": 2,
                     "imgs_path": ["train/ok/images0001.png", "train/ok/images0002.png"]},
        "train/notext": {"name": "train/notext", "imgs_path": ["train/notext/images0001.png"]},
        "train/nofolder": {"name": "train/nofolder", "text": "x", "imgs_path": ["train/nofolder/1.png"]},
        "dup": {"name": "train/ok", "text": "again", "imgs_path": ["train/ok/images0001.png"]},
    }
    with gzip.open(tmp_path / "labels.train", "wb") as f:
        pickle.dump(labels, f)
    d = tmp_path / "frames" / "train" / "ok"
    d.mkdir(parents=True)
    for i in (1, 2):
        Image.new("RGB", (4, 4)).save(d / f"images{i:04d}.png")
    bad: list[BadVideo] = []
    (rec,) = records.read_gfslt_labels(str(tmp_path / "labels.train"), str(tmp_path / "frames"),
                                       "train", bad=bad)
    assert rec.name == "ok" and rec.translation == "gut" and rec.num_frames == 2 and rec.gloss == "G"
    reasons = {b.name: b.reason for b in bad}
    assert set(reasons) == {"notext", "nofolder", "ok"}
    assert "duplicate" in reasons["ok"] and "frame folder missing" in reasons["nofolder"]
    _one_line_error(lambda: records.read_gfslt_labels(str(tmp_path), str(tmp_path / "frames"), "train"),
                    "labels.train", "notext")


def test_label_file_not_a_dict(tmp_path):
    with gzip.open(tmp_path / "labels.dev", "wb") as f:
        pickle.dump(["a", "b"], f)
    _one_line_error(lambda: records.read_csl_daily(str(tmp_path), str(tmp_path), "dev"),
                    "labels.dev", "dict")
