"""SynthSign on CSL-Daily: the shipped Chinese corpus, the CSL-Daily release layout read by the real
reader, the "signers" subset, the command line."""

from __future__ import annotations

import collections
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from data_prep.synthsign import corpus, lexicon, writer
from data_prep.synthsign.__main__ import main as cli
from data_prep.synthsign.corpus import load_corpus, load_table
from hfa_jax.data.annotations import read_csl_daily
from hfa_jax.data.safe_pickle import load_gzip_pickle
from hfa_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[2]
REAL_LABELS = REPO / "tests" / "resources" / "csl-daily"  # the HFA authors' CSL-Daily label files


def test_shipped_table_is_the_real_csl_daily_labels():
    """Every row of the shipped table equals the real label file entry, in file order."""
    table = load_table(corpus="csl_daily")
    for split in corpus.SPLITS:
        real = load_gzip_pickle(str(REAL_LABELS / f"labels.{split}"))
        rows = [r for r in table if r.split == split]
        assert [(r.name, r.gloss, r.translation, r.num_frames) for r in rows] == [
            (k, v["gloss"], v["text"], v["length"]) for k, v in real.items()]
    c = load_corpus(corpus="csl_daily")
    assert {s: len(v) for s, v in c.items()} == {"train": 18400, "dev": 1077, "test": 1176}
    assert corpus.get_corpus("csl_daily").lang == "zh_CN"
    with pytest.raises(ConfigError, match="unknown corpus"):
        load_corpus(corpus="csl")


def _keys(e) -> frozenset:
    return frozenset(lexicon.lexical_keys(e.gloss))


def test_signers_subset_holds_out_recordings_of_training_sentences():
    c = load_corpus(corpus="csl_daily")
    # The reason for the domain: the official dev/test sentences and sign sets (almost) never occur in train.
    train_sets, train_texts = {_keys(e) for e in c["train"]}, {e.translation for e in c["train"]}
    for s in ("dev", "test"):
        assert sum(_keys(e) in train_sets for e in c[s]) == 1 and sum(e.translation in train_texts for e in c[s]) == 2
    caps = {"train": 480, "dev": 25, "test": 50}
    sel = writer.select_sentences(c, max_per_split=caps, max_glosses=5, max_words=12, domain="signers",
                                  char_text=True)
    assert (len(sel["dev"]), len(sel["test"])) == (25, 50) and 100 <= len(sel["train"]) <= 480
    train_names = {e.name for e in c["train"]}
    chosen = {s: {e.name for e in sel[s]} for s in corpus.SPLITS}
    assert chosen["dev"] <= train_names and chosen["test"] <= train_names  # real training recordings
    assert not (chosen["train"] & chosen["dev"]) and not (chosen["train"] & chosen["test"])
    sentences = {s: {e.translation for e in sel[s]} for s in ("dev", "test")}
    assert not sentences["dev"] & sentences["test"]
    trained = collections.Counter(e.translation for e in sel["train"])
    eval_signs = set()
    for s in ("dev", "test"):
        assert all(trained[e.translation] >= 1 for e in sel[s])  # another signer's recording is in train
        assert all(len(e.translation) <= 12 and 1 <= len(_keys(e)) <= 5 for e in sel[s])
        eval_signs |= {k for e in sel[s] for k in _keys(e)}
    assert all(_keys(e) <= eval_signs for e in sel["train"])
    assert max(collections.Counter(_keys(e) for e in sel["train"]).values()) <= writer.CLOSED_MAX_PER_SIGN_SET
    # the same subset whichever splits are written
    again = writer.select_sentences(c, max_per_split=caps, max_glosses=5, max_words=12, domain="signers",
                                    char_text=True, splits=("train",))
    assert again["train"] == sel["train"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("csl") / "t"
    caps = {"train": 3, "dev": 1, "test": 1}
    summary = writer.generate(out, seed=2, corpus="csl_daily", max_per_split=caps, max_glosses=3,
                              max_words=8, domain="signers", workers=1, progress=False)
    return out, summary


def test_tree_has_the_csl_daily_layout_and_the_real_reader_reads_it(tree):
    out, summary = tree
    real = {e.name: e for e in load_corpus(corpus="csl_daily")["train"]}
    frames_root, labels = out / "sentence" / "frames_512x512", out / "labels"
    for split in corpus.SPLITS:
        recs = read_csl_daily(str(labels), str(frames_root), split)  # checks frame counts == length
        assert len(recs) == summary["splits"][split]["videos"] >= 1
        raw = load_gzip_pickle(str(labels / f"labels.{split}"))
        for r in recs:
            assert set(raw[r.name]) == {"name", "gloss", "text", "length"}
            assert (r.gloss, r.translation) == (real[r.name].gloss, real[r.name].translation)
            assert [pathlib.Path(p).name for p in r.frame_paths] == [f"{i:06d}.jpg" for i in range(r.num_frames)]
            with Image.open(r.frame_paths[0]) as im:
                assert im.format == "JPEG" and im.size == (210, 260)
            ex = json.loads((out / "extras" / split / f"{r.name}.json").read_text("utf-8"))
            assert np.asarray(ex["hand_traj"]).shape == (r.num_frames, 2, 2)
            assert [t for t, _, _ in ex["segments"]] == r.gloss.split()
    meta = json.loads((out / "synthsign.json").read_text())
    assert (meta["corpus"], meta["lang"], meta["domain"]) == ("csl_daily", "zh_CN", "signers")


def test_same_seed_same_bytes_and_gloss_to_sign_is_deterministic(tree, tmp_path):
    out, _ = tree
    again = tmp_path / "again"
    writer.generate(again, seed=2, corpus="csl_daily", max_per_split={"train": 3, "dev": 1, "test": 1},
                    max_glosses=3, max_words=8, domain="signers", workers=2, progress=False)
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}  # noqa: E731
    assert files(out) == files(again)
    # the same Chinese gloss is the same sign wherever it occurs
    assert lexicon.sign_for("喜欢") == lexicon.sign_for("喜欢") and lexicon.sign_for("喜欢") != lexicon.sign_for("买")


def test_command_line_and_the_empty_closed_domain(tmp_path, capsys):
    summary = cli(["--corpus", "csl_daily", "--out", str(tmp_path / "t"), "--seed", "0", "--splits", "dev",
                   "--max_per_split", "train=2,dev=1,test=1", "--domain", "signers", "--max_glosses", "3",
                   "--workers", "1"])
    assert summary["corpus"] == "csl_daily" and summary["videos"] == 1
    assert (tmp_path / "t/labels/labels.dev").is_file() and not (tmp_path / "t/labels/labels.train").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli(["--corpus", "csl_daily", "--out", str(tmp_path / "u"), "--seed", "0", "--max_per_split", "5",
             "--domain", "closed", "--max_glosses", "5", "--max_words", "12", "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--domain signers" in err[0]
