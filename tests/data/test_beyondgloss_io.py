"""BeyondGloss side-data formats (hfa_jax/data/beyondgloss_io.py) and the converter
(data_prep/beyondgloss.py): restricted loading of the authors' pickle formats, description JSONs,
bad-input rules, and the ArrayRecord round trip."""

from __future__ import annotations

import json
import lzma
import os
import pathlib
import pickle

import numpy as np
import pytest

from data_prep import beyondgloss as conv
from data_prep import build_dataset as bd
from hfa_jax.data import beyondgloss_io as bgio
from hfa_jax.data import hand_targets, pipeline
from hfa_jax.errors import ConfigError, DataError


class _Touch:
    """A foreign object: unpickling it with plain pickle would create the marker file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _write_lzma(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with lzma.open(path, "wb") as f:  # as the authors' read_hamer_features expects (lzma.open)
        pickle.dump(obj, f)


# ----------------------------------------------------------------------------- readers
def test_lzma_numpy_loads_and_foreign_object_refused(tmp_path):
    feats = np.random.default_rng(0).standard_normal((5, 288)).astype(np.float32)
    good = tmp_path / "train" / "v" / "v.lzma"
    _write_lzma(str(good), {"features": feats})
    np.testing.assert_array_equal(bgio.load_hand_pose_file(str(good)), feats)
    # A bare array (protocol 2 and 5) and float64 data also load.
    for proto in (2, 5):
        p = tmp_path / f"bare{proto}.pkl"
        p.write_bytes(pickle.dumps(feats.astype(np.float64), protocol=proto))
        np.testing.assert_allclose(bgio.load_hand_pose_file(str(p)), feats, rtol=1e-6)

    marker = tmp_path / "ran"
    bad = tmp_path / "evil.lzma"
    _write_lzma(str(bad), {"features": feats, "x": _Touch(str(marker))})
    with pytest.raises(DataError, match="refused to unpickle global 'pathlib"):
        bgio.load_hand_pose_file(str(bad))
    assert not marker.exists()
    corrupt = tmp_path / "corrupt.lzma"
    corrupt.write_bytes(b"\xfd7zXZ\x00garbage")
    with pytest.raises(DataError, match="corrupt compressed stream"):
        bgio.load_hand_pose_file(str(corrupt))


def test_lmdb_vectors(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    vec = np.random.default_rng(1).standard_normal((1, 1024)).astype(np.float32)
    path = tmp_path / "train" / "v.lmdb"
    path.parent.mkdir()
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:  # the authors' layout: key b"data", pickled [1, 1024]
        txn.put(b"data", pickle.dumps(vec))
    env.close()
    got = bgio.check_vector(bgio.load_vector_file(str(path)), 1024, where=str(path))
    np.testing.assert_array_equal(got, vec[0])
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.lmdb"
    env = lmdb.open(str(evil), map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"data", pickle.dumps([vec, _Touch(str(marker))]))
    env.close()
    with pytest.raises(DataError, match="refused"):
        bgio.load_vector_file(str(evil))
    assert not marker.exists()


def test_check_hand_pose_and_vector_errors():
    ok = np.zeros((4, 288), np.float64)
    assert bgio.check_hand_pose(ok, 4, where="f").dtype == np.float32
    with pytest.raises(DataError, match="f: hand-pose targets have 3 frames but the video has 4"):
        bgio.check_hand_pose(np.zeros((3, 288)), 4, where="f")
    with pytest.raises(DataError, match=r"shape \[4, 144\], expected \[T, 288\]"):
        bgio.check_hand_pose(np.zeros((4, 144)), 4, where="f")
    bad = ok.copy()
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        bgio.check_hand_pose(bad, 4, where="f")
    with pytest.raises(DataError, match="expected \\[1024\\]"):
        bgio.check_vector(np.ones((1, 512)), 1024, where="v")
    assert bgio.check_vector(np.ones((1, 8)), 8).shape == (8,)


def test_description_json(tmp_path):
    p = tmp_path / "v.json"
    p.write_text(json.dumps({"directory": "x", "chunk_0": "The right hand  rises.", "chunk_10": "Last.",
                             "chunk_1": "Both hands meet.", **{f"chunk_{i}": f"c{i}." for i in range(2, 10)},
                             "refined": " The right hand rises and meets the left. "}))
    assert bgio.read_description_json(str(p)) == "The right hand rises and meets the left."
    chunks = bgio.read_description_json(str(p), key="chunks")
    assert chunks.startswith("The right hand rises. Both hands meet. c2.") and chunks.endswith("c9. Last.")
    q = tmp_path / "w.json"
    q.write_text(json.dumps({"chunk_0": "a", "refined": None}))
    with pytest.raises(DataError, match="no non-empty 'refined'"):
        bgio.read_description_json(str(q))
    q.write_text(json.dumps({"chunk_0": "a", "chunk_2": "b"}))
    with pytest.raises(DataError, match="not chunk_0..chunk_1"):
        bgio.read_description_json(str(q), key="chunks")
    with pytest.raises(DataError, match="missing"):
        bgio.read_description_json(str(tmp_path / "none.json"))
    with pytest.raises(ConfigError):
        bgio.read_description_json(str(p), key="merged")


def test_description_fields_and_synthsign_descriptions(tmp_path):
    class _Tok:
        pad_id = 1

        def encode_source(self, texts, max_len):
            ids = np.full((len(texts), max_len), 1, np.int32)
            for i, t in enumerate(texts):
                ids[i, : len(t.split())] = 7
            return ids, ids != 1

    f = bgio.description_fields(["a b", "c"], tokenizer=_Tok(), max_len=4)
    assert f["desc_ids"].shape == (2, 4) and f["desc_mask"].sum() == 3 and f["desc_ids"].dtype == np.int32
    with pytest.raises(DataError, match="row 1 .* no `description`"):
        bgio.description_fields(["a", None], tokenizer=_Tok())
    v = bgio.description_fields([np.ones((1, 3)), np.full(3, 2.0)], vectors=True, dim=3)
    assert v["desc_vec"].shape == (2, 3)
    with pytest.raises(DataError, match="expected \\[4\\]"):
        bgio.description_fields([np.ones(3)], vectors=True, dim=4)
    e = tmp_path / "extras" / "train"
    e.mkdir(parents=True)
    (e / "b.json").write_text(json.dumps({"description": "second"}))
    (e / "a.json").write_text(json.dumps({"description": "first"}))
    assert bgio.load_synthsign_descriptions(str(tmp_path), "train") == ["first", "second"]
    with pytest.raises(DataError, match="no SynthSign extras"):
        bgio.load_synthsign_descriptions(str(tmp_path), "dev")


def test_hand_pose_field_pads_and_follows_the_kept_frames():
    fn = bgio.HandPoseField(length=6)
    ex = {"name": "a", "hand_pose": np.arange(4 * 288, dtype=np.float32).reshape(4, 288)}
    out = pickle.loads(pickle.dumps(fn))(ex)  # picklable for grain workers
    assert out["hand_pose"].shape == (6, 288)
    np.testing.assert_array_equal(out["hand_pose"][:4], ex["hand_pose"])
    assert np.all(out["hand_pose"][4:] == 0)
    long = {"hand_pose": np.ones((9, 288), np.float32)}
    assert bgio.HandPoseField(length=6)(long)["hand_pose"].shape == (6, 288)
    with pytest.raises(DataError, match="no 'hand_pose' feature"):
        fn({"name": "a"})
    picked = fn({**ex, "frame_indices": np.array([0, 2, 3])})["hand_pose"]  # random selection
    np.testing.assert_array_equal(picked[:3], ex["hand_pose"][[0, 2, 3]])
    assert np.all(picked[3:] == 0)
    with pytest.raises(DataError, match="frame 7 was kept"):
        fn({**ex, "frame_indices": np.array([1, 7])})
    both = bgio.CombinedExampleFn((fn, lambda e: {"x": np.int32(1)}))
    assert set(both(ex)) == {"hand_pose", "x"}
    with pytest.raises(ConfigError, match="twice"):
        bgio.CombinedExampleFn((fn, fn))(ex)


# ----------------------------------------------------------------------------- converter
VIDEOS = {"train": [("a", 3), ("b", 2), ("c", 4)], "dev": [("d", 2)]}


def _source(tmp_path, extras=False):
    rng = np.random.default_rng(5)
    for split, vids in VIDEOS.items():
        exs = []
        for name, t in vids:
            ex = dict(name=name, frames=rng.integers(0, 256, (t, 16, 16, 3), dtype=np.uint8), text=f"satz {name}")
            if extras:
                ex.update(hand_traj=rng.random((t, 2, 2)).astype(np.float32), description=f"old {name}")
            exs.append(ex)
        ds = bd.write_examples(str(tmp_path / "src"), split, exs, size=16, name="tiny", image_format="png")
    return ds


def _side_data(tmp_path, skip=()):
    hp, desc = tmp_path / "hamer", tmp_path / "desc"
    want = {}
    for split, vids in VIDEOS.items():
        for name, t in vids:
            feats = np.random.default_rng(hash(name) % 2**32).standard_normal((t, 288)).astype(np.float32)
            want[name] = feats
            if name in skip:
                continue
            _write_lzma(str(hp / split / name / f"{name}.lzma"), {"features": feats})
            (desc / split).mkdir(parents=True, exist_ok=True)
            (desc / split / f"{name}.json").write_text(json.dumps({"chunk_0": "x", "refined": f"hands of {name}"}))
    return str(hp), str(desc), want


def _rows(ds_dir, split):
    src = pipeline.open_split(ds_dir, split)
    return {src[i]["name"]: src[i] for i in range(len(src))}


def test_convert_round_trip(tmp_path):
    src_dir = _source(tmp_path)
    hp, desc, want = _side_data(tmp_path)
    res = conv.convert(src_dir, str(tmp_path / "out"), conv.Inputs(descriptions=desc, hand_pose=hp), progress=False)
    assert res["counts"] == {"dev": 1, "train": 3} and not res["bad"]
    for split in VIDEOS:
        old, new = _rows(src_dir, split), _rows(res["dataset_dir"], split)
        assert set(old) == set(new)
        for name, row in new.items():
            assert row["frames"] == old[name]["frames"]  # stored bytes copied, not re-encoded
            assert row["text"] == old[name]["text"] and row["num_frames"] == old[name]["num_frames"]
            assert row["description"] == f"hands of {name}"
            np.testing.assert_array_equal(row["hand_pose"], want[name])
            assert row["hand_pose"].shape == (row["num_frames"], 288)
    # The training pipeline reads the new field through the example_fn, aligned with the frames.
    src = pipeline.open_split(res["dataset_dir"], "train")
    loader = pipeline.make_loader(src, batch_size=3, seed=0, shuffle=False, num_epochs=1, buckets=(4, 8),
                                  max_frames=8, drop_remainder=False, example_fn=bgio.HandPoseField(length=8),
                                  shard_index=0, shard_count=1)
    batch = next(iter(loader))
    for r, i in enumerate(batch["index"]):
        n = int(batch["frame_mask"][r].sum())
        np.testing.assert_array_equal(batch["hand_pose"][r, :n], want[src[int(i)]["name"]])
    # Random frame subsampling (GFSLT switch): the targets follow the kept frames.
    loader = pipeline.make_loader(src, batch_size=3, seed=4, shuffle=False, num_epochs=1, buckets=(2, 4),
                                  max_frames=2, frame_selection="random", drop_remainder=False,
                                  example_fn=bgio.HandPoseField(length=4), shard_index=0, shard_count=1)
    batch = next(iter(loader))
    for r, i in enumerate(batch["index"]):
        full = want[src[int(i)]["name"]]
        rows = [int(np.flatnonzero((full == h).all(1))[0]) for h in batch["hand_pose"][r, :2]]
        assert rows == sorted(rows) and len(set(rows)) == 2  # two distinct kept frames, in order
    with pytest.raises(DataError, match="already exists"):
        conv.convert(src_dir, str(tmp_path / "out"), conv.Inputs(hand_pose=hp), progress=False)


def test_convert_synthsign_targets(tmp_path):
    src_dir = _source(tmp_path, extras=True)
    tree = tmp_path / "synth"
    want = {}
    for split, vids in VIDEOS.items():
        (tree / "extras" / split).mkdir(parents=True)
        for k, (name, t) in enumerate(vids):
            rng = np.random.default_rng(k)
            e = {"description": "d", "hand_traj": rng.random((t, 2, 2)).tolist(),
                 "handshape": rng.integers(0, 8, (t, 2)).tolist(), "hand_orient": (rng.random((t, 2)) * 90).tolist()}
            (tree / "extras" / split / f"{name}.json").write_text(json.dumps(e))
            want[name] = hand_targets.synthsign_hand_pose(e["hand_traj"], e["handshape"], e["hand_orient"])
    res = conv.convert(src_dir, str(tmp_path / "out"), conv.Inputs(synthsign=str(tree)), splits=["train"],
                       progress=False)
    rows = _rows(res["dataset_dir"], "train")
    for name, row in rows.items():
        np.testing.assert_array_equal(row["hand_pose"], want[name])
        assert row["description"] == f"old {name}" and row["hand_traj"].shape == (row["num_frames"], 2, 2)


def _cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        conv.main(args)
    err = capsys.readouterr().err
    return e.value.code, err


@pytest.mark.parametrize("kind", ["missing", "length", "width", "foreign"])
def test_bad_input_stops_or_is_skipped(tmp_path, capsys, kind):
    src_dir = _source(tmp_path)
    hp, _, want = _side_data(tmp_path, skip=("b",) if kind == "missing" else ())
    target = os.path.join(hp, "train", "b", "b.lzma")
    if kind == "length":
        _write_lzma(target, {"features": np.zeros((5, 288), np.float32)})
    elif kind == "width":
        _write_lzma(target, {"features": np.zeros((2, 250), np.float32)})
    elif kind == "foreign":
        _write_lzma(target, {"features": _Touch(str(tmp_path / "ran"))})
    out = str(tmp_path / "out")
    code, err = _cli(["--dataset", src_dir, "--out", out, "--hand_pose", hp, "--no_progress"], capsys)
    assert code == 2 and err.count("\n") == 1 and "b" in err
    expect = {"missing": "no hand-pose file for train/b", "length": "5 frames but the video has 2",
              "width": "expected [T, 288]", "foreign": "refused to unpickle"}[kind]
    assert expect in err and "--skip_bad" in err
    assert not (tmp_path / "ran").exists()

    out2 = str(tmp_path / "out2")
    res = conv.main(["--dataset", src_dir, "--out", out2, "--hand_pose", hp, "--skip_bad", "--no_progress"])
    assert res["counts"] == {"dev": 1, "train": 2}
    rows = _rows(res["dataset_dir"], "train")
    assert set(rows) == {"a", "c"}
    report = pathlib.Path(out2, "beyondgloss_bad.tsv").read_text().splitlines()
    assert report[0] == "split\tname\tfile\treason" and len(report) == 2
    assert report[1].startswith("train\tb\t")


def test_cli_config_errors(tmp_path, capsys):
    src_dir = _source(tmp_path)
    code, err = _cli(["--dataset", src_dir, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "nothing to add" in err
    code, err = _cli(["--dataset", src_dir, "--out", str(tmp_path / "o"), "--hand_pose", str(tmp_path / "none")], capsys)
    assert code == 2 and "is not a folder" in err
