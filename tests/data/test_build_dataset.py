"""Conversion to the TFDS ArrayRecord training format: content, no-TF reading, resume, bad input."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_prep import build_dataset as bd
from hfa_jax.errors import DataError

REPO = pathlib.Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "resources" / "phoenix14t" / "sample"
HEADER = "name|video|start|end|speaker|orth|translation"


def _frame(seed: int, w: int = 21, h: int = 26) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_tree(root: pathlib.Path, videos: dict[str, list[tuple[str, int]]], extras: bool = False,
              size: tuple[int, int] = (21, 26)) -> dict[tuple[str, str], list[np.ndarray]]:
    """Official-layout tree with random PNG frames; returns the frames written per (split, name)."""
    written = {}
    for split, vids in videos.items():
        man = root / "annotations" / "manual"
        man.mkdir(parents=True, exist_ok=True)
        rows = [HEADER] + [f"{n}|{n}/1/*.png|-1|-1|Signer0{k % 3}|GLOSS{k} X|satz nummer {k}"
                           for k, (n, _) in enumerate(vids)]
        (man / f"PHOENIX-2014-T.{split}.corpus.csv").write_text("\n".join(rows) + "\n", "utf-8")
        for k, (name, t) in enumerate(vids):
            d = root / "features" / "fullFrame-210x260px" / split / name
            d.mkdir(parents=True)
            frames = [_frame(hash((split, name, i)) % 2**32, *size) for i in range(t)]
            for i, fr in enumerate(frames):
                Image.fromarray(fr).save(d / f"images{i + 1:04d}.png")
            written[(split, name)] = frames
            if extras:
                e = root / "extras" / split
                e.mkdir(parents=True, exist_ok=True)
                traj = np.random.default_rng(k).random((t, 2, 2)).round(3).tolist()
                (e / f"{name}.json").write_text(json.dumps(
                    {"description": f"hands of {name}", "hand_traj": traj,
                     "handshape": [[0, 1]] * t}), "utf-8")
    return written


def _pil_resize(fr: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(fr).resize((size, size), Image.Resampling.BICUBIC))


def _by_name(source) -> dict[str, dict]:
    out = {}
    for i in range(len(source)):
        ex = source[i]
        out[ex["name"].decode()] = ex
    return out


def _cli(args, capsys):
    """Runs main(); returns (exit code, stdout, stderr)."""
    code = 0
    try:
        bd.main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------- content


def test_png_roundtrip_exact(tmp_path):
    written = make_tree(tmp_path / "src", {"train": [("a", 3), ("b", 1), ("c", 2)], "dev": [("d", 2)]})
    summary = bd.convert("phoenix14t", str(tmp_path / "src"), str(tmp_path / "out"),
                         splits=["train", "dev"], size=16, image_format="png", workers=1,
                         videos_per_shard=2, progress=False)
    ds_dir = summary["dataset_dir"]
    assert ds_dir == str(tmp_path / "out" / "phoenix14t" / "1.0.0")
    assert summary["splits"]["train"] == {"videos": 3, "frames": 6, "bad": 0}
    builder = tfds.builder_from_directory(ds_dir)
    assert builder.info.splits["train"].shard_lengths == [2, 1]
    assert builder.info.splits["dev"].num_examples == 1
    assert sorted(os.listdir(ds_dir)) == sorted([
        "dataset_info.json", "features.json", "phoenix14t-dev.array_record-00000-of-00001",
        "phoenix14t-train.array_record-00000-of-00002",
        "phoenix14t-train.array_record-00001-of-00002"])
    train = _by_name(builder.as_data_source("train"))
    assert list(train) == ["a", "b", "c"]  # source order is kept
    for k, name in enumerate("abc"):
        ex = train[name]
        assert ex["num_frames"] == len(written[("train", name)])
        assert ex["text"].decode() == f"satz nummer {k}" and ex["gloss"].decode() == f"GLOSS{k} X"
        assert ex["signer"].decode() == f"Signer0{k}"
        for got, src in zip(ex["frames"], written[("train", name)]):
            # PNG is lossless: exactly Pillow's bicubic resize of the source frame.
            np.testing.assert_array_equal(got, _pil_resize(src, 16))
    assert not (tmp_path / "out" / "bad_videos.tsv").exists()


def test_jpeg_and_real_sample_tree(tmp_path):
    bd.convert("phoenix14t", str(SAMPLE), str(tmp_path), workers=1, progress=False)
    src = tfds.data_source("phoenix14t", data_dir=str(tmp_path))
    assert set(src) == {"train", "dev", "test"}
    (ex,) = [src["test"][0]]
    assert ex["name"] == b"25October_2010_Monday_tagesschau-17" and ex["num_frames"] == 2
    assert ex["signer"] == b"Signer01" and ex["gloss"].startswith(b"REGEN SCHNEE REGION")
    frame_path = (SAMPLE / "PHOENIX-2014-T-release-v3/PHOENIX-2014-T/features/fullFrame-210x260px"
                  / "test/25October_2010_Monday_tagesschau-17/images0001.png")
    ref = _pil_resize(np.asarray(Image.open(frame_path).convert("RGB")), 256)
    got = ex["frames"][0]
    assert got.shape == (256, 256, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 3.0  # JPEG q95
    # Frames can also be read as the stored bytes (for decoding elsewhere): tfds' numpy parser
    # over the raw ArrayRecord entries.
    from array_record.python.array_record_data_source import ArrayRecordDataSource
    from tensorflow_datasets.core.example_parser import ExampleParserNp

    ds_dir = tmp_path / "phoenix14t" / "1.0.0"
    parser = ExampleParserNp(tfds.builder_from_directory(str(ds_dir)).info.features.get_serialized_info())
    raw = parser.parse_example(ArrayRecordDataSource(sorted(map(str, ds_dir.glob("*-test.*"))))[0])
    assert len(raw["frames"]) == 2 and all(b[:2] == b"\xff\xd8" for b in raw["frames"])  # JPEG SOI


def test_extras_copied(tmp_path):
    make_tree(tmp_path / "src", {"train": [("a", 3), ("b", 2)]}, extras=True)
    bd.convert("phoenix14t", str(tmp_path / "src"), str(tmp_path / "out"), splits=["train"],
               size=8, workers=1, progress=False)
    train = _by_name(tfds.data_source("phoenix14t", data_dir=str(tmp_path / "out"))["train"])
    for k, name in enumerate("ab"):
        want = json.loads((tmp_path / "src" / "extras" / "train" / f"{name}.json").read_text())
        np.testing.assert_allclose(train[name]["hand_traj"], np.float32(want["hand_traj"]))
        assert train[name]["hand_traj"].shape == (train[name]["num_frames"], 2, 2)
        assert train[name]["description"].decode() == f"hands of {name}"


def test_no_tensorflow_multiprocess_cli(tmp_path):
    """The CLI with 2 worker processes writes, and tfds reads, with TensorFlow never imported."""
    make_tree(tmp_path / "src", {"train": [(f"v{i}", 2) for i in range(5)]})
    code = (
        "import sys\n"
        "from data_prep.build_dataset import main\n"
        f"main(['--format', 'phoenix14t', '--root', {str(tmp_path / 'src')!r}, '--out',"
        f" {str(tmp_path / 'out')!r}, '--splits', 'train', '--size', '8', '--workers', '2',"
        " '--videos_per_shard', '2'])\n"
        "import tensorflow_datasets as tfds\n"
        f"src = tfds.data_source('phoenix14t', data_dir={str(tmp_path / 'out')!r})['train']\n"
        "assert len(src) == 5 and src[4]['frames'][1].shape == (8, 8, 3)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "print('OK')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK" in res.stdout and "train: 5 videos, 10 frames written" in res.stdout
    # The progress bar (tqdm: count, rate and ETA) went to stderr, and nothing else did.
    assert "converting: 100%" in res.stderr and "5/5" in res.stderr
    assert "apitools" not in res.stderr


# ------------------------------------------------------------------------------- resume


def test_resume_after_interruption(tmp_path, capsys):
    """A run stopped by a bad video resumes: completed shards are kept, not redone."""
    make_tree(tmp_path / "src", {"train": [(f"v{i}", 2) for i in range(6)]})
    bad_png = tmp_path / "src/features/fullFrame-210x260px/train/v4/images0002.png"
    good = bad_png.read_bytes()
    bad_png.write_bytes(good[: len(good) // 2])  # truncated PNG stops the first run at v4
    args = ["--format", "phoenix14t", "--root", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
            "--splits", "train", "--size", "8", "--workers", "1", "--videos_per_shard", "2"]
    code, _, err = _cli(args, capsys)
    assert code == 2 and "v4" in err and "images0002.png" in err
    ds_dir = tmp_path / "out" / "phoenix14t" / "1.0.0"
    done = sorted(p.name for p in ds_dir.glob("*.array_record-*"))
    assert done == ["phoenix14t-train.array_record-00000-of-00003",
                    "phoenix14t-train.array_record-00001-of-00003"]
    stamps = {n: os.stat(ds_dir / n).st_mtime_ns for n in done}
    # The interrupted shard left nothing under its final name (and no dataset_info yet).
    assert not (ds_dir / "dataset_info.json").exists()

    bad_png.write_bytes(good)
    code, out, _ = _cli(args, capsys)
    assert code == 0, out
    assert "converted 4 frames" in out  # only the 2 videos of the last shard were redone
    assert {n: os.stat(ds_dir / n).st_mtime_ns for n in done} == stamps
    src = tfds.builder_from_directory(str(ds_dir)).as_data_source("train")
    assert [src[i]["name"].decode() for i in range(len(src))] == [f"v{i}" for i in range(6)]

    # A completed dataset reruns as a no-op; other settings on the same output are refused.
    code, out, _ = _cli(args, capsys)
    assert code == 0 and "converted 0 frames" in out
    code, _, err = _cli(args[:-5] + ["16"] + args[-4:], capsys)
    assert code == 2 and "size: 8 -> 16" in err and "new --out" in err


# ------------------------------------------------------------------------------- bad input


def _corrupt(kind: str, src: pathlib.Path) -> str:
    """Breaks video `v1` of train in one way; returns text the error must contain."""
    vdir = src / "features/fullFrame-210x260px/train/v1"
    csv = src / "annotations/manual/PHOENIX-2014-T.train.corpus.csv"
    if kind == "missing_folder":
        for p in vdir.iterdir():
            p.unlink()
        vdir.rmdir()
        return "frame folder missing"
    if kind == "empty_folder":
        for p in vdir.iterdir():
            p.unlink()
        return "no .png frames"
    if kind == "truncated_png":
        p = vdir / "images0002.png"
        p.write_bytes(p.read_bytes()[:60])
        return "images0002.png"
    if kind == "unreadable_png":
        (vdir / "images0001.png").write_bytes(b"this is not an image")
        return "unreadable frame"
    if kind == "mixed_sizes":
        Image.fromarray(_frame(0, 30, 26)).save(vdir / "images0002.png")
        return "mixed frame sizes"
    lines = csv.read_text("utf-8").split("\n")
    if kind == "wrong_fields":
        lines[2] = lines[2].rsplit("|", 1)[0]
        csv.write_text("\n".join(lines), "utf-8")
        return "corpus.csv:3"
    if kind == "duplicate":
        lines.insert(3, lines[2])  # v1 twice
        csv.write_text("\n".join(lines), "utf-8")
        return "duplicate"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing_folder", "empty_folder", "truncated_png",
                                  "unreadable_png", "mixed_sizes", "wrong_fields", "duplicate"])
def test_bad_video_stops_or_is_skipped(tmp_path, capsys, kind):
    make_tree(tmp_path / "src", {"train": [("v0", 2), ("v1", 2), ("v2", 2)]})
    must = _corrupt(kind, tmp_path / "src")
    base = ["--format", "phoenix14t", "--root", str(tmp_path / "src"), "--splits", "train",
            "--size", "8", "--workers", "1"]
    code, _, err = _cli(base + ["--out", str(tmp_path / "o1")], capsys)
    assert code == 2
    # The progress bar is cleared (\r, no newline); the error is the only line.
    assert err.count("\n") == 1 and err.split("\r")[-1].startswith("error: ")
    assert "Traceback" not in err
    assert "v1" in err and must in err and "--skip_bad" in err

    code, out, _ = _cli(base + ["--out", str(tmp_path / "o2"), "--skip_bad"], capsys)
    assert code == 0
    kept = 3 if kind == "duplicate" else 2
    assert f"train: {kept} videos, {2 * kept} frames written, 1 bad skipped" in out
    assert "bad videos: 1" in out
    rows = (tmp_path / "o2" / "bad_videos.tsv").read_text("utf-8").strip().split("\n")
    assert rows[0] == "split\tname\tfile\treason" and len(rows) == 2
    split, name, _, reason = rows[1].split("\t")
    assert (split, name) == ("train", "v1") and must in rows[1] and reason
    names = {ex["name"] for ex in tfds.data_source("phoenix14t", data_dir=str(tmp_path / "o2"))["train"]}
    # duplicate: the first v1 row is kept, the repeated row is the skipped one.
    assert names == ({b"v0", b"v1", b"v2"} if kind == "duplicate" else {b"v0", b"v2"})


def test_wrong_header_stops_even_with_skip_bad(tmp_path, capsys):
    make_tree(tmp_path / "src", {"train": [("v0", 1)]})
    csv = tmp_path / "src/annotations/manual/PHOENIX-2014-T.train.corpus.csv"
    csv.write_text(csv.read_text().replace("speaker", "signer"), "utf-8")
    code, _, err = _cli(["--format", "phoenix14t", "--root", str(tmp_path / "src"), "--out",
                         str(tmp_path / "o"), "--splits", "train", "--skip_bad"], capsys)
    assert code == 2 and err.count("\n") == 1 and "corpus.csv: line 1: header" in err


def test_foreign_label_pickle(tmp_path, capsys):
    marker = tmp_path / "ran"
    labels = tmp_path / "labels"
    labels.mkdir()
    with gzip.open(labels / "labels.train", "wb") as f:
        pickle.dump({"train/a": {"name": "train/a", "text": "x", "imgs_path": [],
                                 "x": _Touch(str(marker))}}, f)
    code, _, err = _cli(["--format", "gfslt", "--labels", str(labels), "--root", str(tmp_path),
                         "--out", str(tmp_path / "o"), "--splits", "train", "--skip_bad"], capsys)
    assert code == 2 and err.count("\n") == 1 and "labels.train" in err and "refused" in err
    assert not marker.exists()


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_gfslt_and_csl_formats(tmp_path, capsys):
    fr = tmp_path / "fullFrame-210x260px"
    csl = tmp_path / "frames_512x512"
    gl, cl = tmp_path / "gl", tmp_path / "cl"
    for d in (gl, cl):
        d.mkdir()
    g, c = {}, {}
    for k, name in enumerate(["a", "b"]):
        for i in range(3):
            (fr / "dev" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(_frame(k * 10 + i)).save(fr / "dev" / name / f"images{i + 1:04d}.png")
            (csl / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(_frame(k * 10 + i)).save(csl / name / f"{i:06d}.jpg", quality=95)
        g[f"dev/{name}"] = {"name": f"dev/{name}", "gloss": "G", "text": f"text {name}", "length": 3,
                            "imgs_path": [f"dev/{name}/images{i + 1:04d}.png" for i in range(3)]}
        c[name] = {"name": name, "gloss": "你 好", "text": f"你好{name}。", "length": 3}
    with gzip.open(gl / "labels.dev", "wb") as f:
        pickle.dump(g, f)
    with gzip.open(cl / "labels.dev", "wb") as f:
        pickle.dump(c, f)
    for fmt, lab, root, text in (("gfslt", gl, fr, b"text b"), ("csl_daily", cl, csl, "你好b。".encode())):
        code, out, err = _cli(["--format", fmt, "--labels", str(lab), "--root", str(root), "--out",
                               str(tmp_path / "out"), "--splits", "dev", "--size", "8",
                               "--workers", "1"], capsys)
        assert code == 0, err
        ex = _by_name(tfds.data_source(fmt, data_dir=str(tmp_path / "out"))["dev"])["b"]
        assert ex["text"] == text and ex["num_frames"] == 3 and ex["signer"] == b""


# ------------------------------------------------------------------------------- Python API


def test_write_examples_api(tmp_path):
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    encoded = [bd.encode_image(a, bd.EncodeOptions(size=8, image_format="png")) for a in arrays]
    ds_dir = bd.write_examples(str(tmp_path), "train", [
        {"name": "x", "frames": arrays, "text": "t1", "gloss": "G", "signer": "S1"},
        {"name": "y", "frames": encoded[:2], "text": "t2"},
    ], name="toy", size=8, image_format="png", examples_per_shard=1)
    bd.write_examples(str(tmp_path), "dev", [{"name": "z", "frames": list(arrays[:1]), "text": "t3"}],
                      name="toy", size=8, image_format="png")
    builder = tfds.builder_from_directory(ds_dir)
    assert builder.info.splits["train"].shard_lengths == [1, 1]
    train = builder.as_data_source("train")
    np.testing.assert_array_equal(np.stack(train[0]["frames"]), arrays)
    np.testing.assert_array_equal(np.stack(train[1]["frames"]), arrays[:2])
    assert (train[1]["gloss"], train[1]["signer"], train[0]["signer"]) == (b"", b"", b"S1")
    assert len(builder.as_data_source("dev")) == 1

    # Rewriting a split replaces it; mismatched features or bad examples are refused.
    bd.write_examples(str(tmp_path), "train", [{"name": "w", "frames": arrays, "text": "t"}],
                      name="toy", size=8, image_format="png")
    assert len(tfds.builder_from_directory(ds_dir).as_data_source("train")) == 1
    with pytest.raises(DataError, match="other features"):
        bd.write_examples(str(tmp_path), "test", [{"name": "z", "frames": arrays, "text": "t"}],
                          name="toy", size=16, image_format="png")
    with pytest.raises(DataError, match="duplicate name"):
        bd.write_examples(str(tmp_path), "test", [{"name": "z", "frames": arrays, "text": "t"}] * 2,
                          name="toy", size=8, image_format="png")
    with pytest.raises(DataError, match="PNG 8x8, the dataset stores jpeg 8x8"):
        bd.write_examples(str(tmp_path), "test", [{"name": "z", "frames": encoded, "text": "t"}],
                          name="toy2", size=8, image_format="jpeg")
    assert sorted(tfds.builder_from_directory(ds_dir).info.splits) == ["dev", "train"]


def test_write_examples_extras_and_resize(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (2, 26, 21, 3), dtype=np.uint8)
    traj = np.random.default_rng(2).random((2, 2, 2)).astype(np.float32)
    ds_dir = bd.write_examples(str(tmp_path), "train", [
        {"name": "a", "frames": frames, "text": "t", "hand_traj": traj, "description": "links kreis"}],
        name="synth", size=16, image_format="png")
    (ex,) = list(tfds.builder_from_directory(ds_dir).as_data_source("train"))
    np.testing.assert_array_equal(ex["hand_traj"], traj)
    assert ex["description"] == b"links kreis"
    for got, src in zip(ex["frames"], frames):
        np.testing.assert_array_equal(got, _pil_resize(src, 16))
    with pytest.raises(DataError, match="hand_traj shape"):
        bd.write_examples(str(tmp_path), "dev", [
            {"name": "a", "frames": frames, "text": "t", "hand_traj": traj[:1], "description": ""}],
            name="synth", size=16, image_format="png")
