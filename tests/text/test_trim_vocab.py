"""data_prep.trim_vocab: trimming a real mBART tokenizer and training a demo one."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import sentencepiece as spm

from data_prep import trim_vocab
from hfa_jax.text.tokenizer import FAIRSEQ_LANGUAGE_CODES, load_tokenizer
from hfa_jax.errors import ConfigError
from tests.text.conftest import GFSLT_TOKENIZER


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory, phoenix_root):
    out = str(tmp_path_factory.mktemp("trimmed"))
    trim_vocab.main(["--tokenizer", GFSLT_TOKENIZER, "--root", phoenix_root, "--out", out])
    return out


def test_trimmed_size_is_used_pieces_plus_specials(trimmed, corpus):
    # Independent count: distinct pieces SentencePiece itself uses on the training sentences.
    sp = spm.SentencePieceProcessor(model_file=os.path.join(GFSLT_TOKENIZER, "sentencepiece.bpe.model"))
    used = {i for _, t in corpus["train"] for i in sp.encode(t)} - {0, 1, 2}
    vm = json.load(open(os.path.join(trimmed, "vocab_map.json")))
    assert vm["new_vocab_size"] == len(used) + 4 + len(FAIRSEQ_LANGUAGE_CODES) + 1
    # PHOENIX14T train from this cc25-derived tokenizer: the 2172 entries the paper's counts imply.
    assert vm["new_vocab_size"] == 2172 and vm["old_vocab_size"] == 2454
    assert load_tokenizer(trimmed).vocab_size == 2172
    new_sp = spm.SentencePieceProcessor(model_file=os.path.join(trimmed, "sentencepiece.bpe.model"))
    assert new_sp.get_piece_size() == len(used) + 3  # a real, smaller SentencePiece model


def test_every_training_sentence_maps(trimmed, corpus):
    old, new = load_tokenizer(GFSLT_TOKENIZER), load_tokenizer(trimmed)
    vm = json.load(open(os.path.join(trimmed, "vocab_map.json")))
    old_ids = np.asarray(vm["old_ids"])
    assert list(vm["old_to_new"].values()) == list(range(len(old_ids)))  # ordered by new id
    assert all(int(o) == old_ids[n] for o, n in vm["old_to_new"].items())
    texts = [t for _, t in corpus["train"]]
    a = old.encode_targets(texts, max_len=64)
    b = new.encode_targets(texts, max_len=64)
    # Full label rows (pieces, </s>, de_DE, padding) are the sliced ids of the original ones.
    lut = np.full(old.vocab_size, -1)
    lut[old_ids] = np.arange(len(old_ids))
    np.testing.assert_array_equal(lut[a["labels"]], b["labels"])
    np.testing.assert_array_equal(lut[a["decoder_input_ids"]], b["decoder_input_ids"])
    # Piece strings agree too (the importer slices embeddings with old_ids).
    for n in (5, 100, 2000, new.lang_id, new.vocab_size - 1):
        assert new.hf.convert_ids_to_tokens(n) == old.hf.convert_ids_to_tokens(int(old_ids[n]))
    assert new.decode(b["labels"][:50]) == texts[:50]


def test_train_sentencepiece_is_an_mbart_tokenizer(tmp_path, corpus, phoenix_root):
    out = str(tmp_path / "demo_tok")
    trim_vocab.main(["--train_sentencepiece", "--root", phoenix_root, "--out", out, "--vocab_size", "400"])
    tok = load_tokenizer(out)
    assert tok.vocab_size == 400 + 1 + 25 + 1
    assert [tok.hf.convert_ids_to_tokens(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tok.hf.convert_ids_to_tokens(tok.lang_id) == "de_DE" and tok.lang_id == 400 + 1 + 2
    assert tok.hf.convert_ids_to_tokens(tok.vocab_size - 1) == "<mask>"
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "sentencepiece.bpe.model"))
    texts = [t for _, t in corpus["train"][:500]] + [t for _, t in corpus["dev"][:100]]
    for t, ids in zip(texts, tok.tokenize(texts)):
        assert ids == [3 if i == 0 else i + 1 for i in sp.encode(t)]
    enc = tok.encode_targets(texts, max_len=96)
    assert tok.decode(enc["labels"]) == texts


def test_trim_errors(tmp_path, phoenix_root):
    with pytest.raises(SystemExit) as e:  # cli_main: one line, exit 2
        from hfa_jax.errors import cli_main

        cli_main(trim_vocab.main)(["--root", phoenix_root, "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    with pytest.raises(ConfigError, match="no sentencepiece.bpe.model"):
        trim_vocab.main(["--tokenizer", str(tmp_path), "--root", phoenix_root, "--out", str(tmp_path / "y")])
