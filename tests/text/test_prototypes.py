"""data_prep.prototypes: fastText vectors per pseudo-gloss class, zero blank row."""

from __future__ import annotations

import os

import numpy as np
import pytest

from data_prep import prototypes
from hfa_jax.text import pseudo_glosses as pg
from hfa_jax.errors import ConfigError
from tests.text.conftest import write_tree


def test_train_fasttext_and_prototypes(tmp_path, corpus, capsys):
    root = write_tree(str(tmp_path / "tree"), {s: rows[:200] for s, rows in corpus.items()})
    vocab = ["abend", "regnen", "sonnig", "zuschauer", "überschwemmung"]
    vocab_file = str(tmp_path / "pg.json")
    pg.save_pseudo_glosses(vocab_file, vocab, {"train/x": [1]}, {})
    model_path, out = str(tmp_path / "ft.bin"), str(tmp_path / "protos.npy")
    # Tiny model for speed (the defaults are 300-d, 5 epochs, 20000 buckets).
    prototypes.main(["--train_fasttext", "--root", root, "--fasttext", model_path, "--vocab", vocab_file,
                     "--out", out, "--dim", "16", "--epoch", "1", "--bucket", "5000"])
    assert "trained 16-d skipgram vectors on 200 sentences" in capsys.readouterr().out
    protos = np.load(out)
    assert protos.shape == (len(vocab) + 1, 16) and protos.dtype == np.float32
    assert not protos[0].any()  # blank class: fixed zero vector
    import fasttext

    model = fasttext.load_model(model_path)
    assert "zuschauer" in model.words and model.get_dimension() == 16
    for i, lemma in enumerate(vocab, start=1):
        np.testing.assert_array_equal(protos[i], model.get_word_vector(lemma))
        assert np.linalg.norm(protos[i]) > 0
    # Reading an existing model gives the same table.
    out2 = str(tmp_path / "protos2.npy")
    prototypes.main(["--vocab", vocab_file, "--fasttext", model_path, "--out", out2])
    np.testing.assert_array_equal(np.load(out2), protos)


def test_errors(tmp_path):
    vocab_file = str(tmp_path / "pg.json")
    pg.save_pseudo_glosses(vocab_file, ["a"], {}, {})
    with pytest.raises(ConfigError, match="not found"):
        prototypes.main(["--vocab", vocab_file, "--fasttext", str(tmp_path / "cc.de.300.bin"),
                         "--out", str(tmp_path / "p.npy")])
    with pytest.raises(ConfigError, match="needs --root"):
        prototypes.main(["--train_fasttext", "--fasttext", str(tmp_path / "m.bin")])
    with pytest.raises(ConfigError, match="--vocab FILE.json and --out"):
        prototypes.main(["--fasttext", str(tmp_path / "m.bin")])
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a fastText"):
        prototypes.main(["--vocab", vocab_file, "--fasttext", str(junk), "--out", str(tmp_path / "p.npy")])
    assert not os.path.exists(tmp_path / "p.npy")
