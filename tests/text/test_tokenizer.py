"""hfa_jax.text.tokenizer against transformers' MBartTokenizer / shift_tokens_right and raw SentencePiece."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm

from hfa_jax.text.tokenizer import load_tokenizer, shift_right
from hfa_jax.errors import ConfigError, UserError
from tests.text.conftest import GFSLT_TOKENIZER


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(GFSLT_TOKENIZER)


@pytest.fixture(scope="module")
def hf():
    from transformers import MBartTokenizer

    return MBartTokenizer.from_pretrained(GFSLT_TOKENIZER, src_lang="de_DE", tgt_lang="de_DE")


def _spm_fairseq_ids(sp: spm.SentencePieceProcessor, text: str) -> list[int]:
    """fairseq/mBART ids from the raw SentencePiece model: <unk> 0 -> 3, piece i -> i + 1."""
    return [3 if i == sp.unk_id() else i + 1 for i in sp.encode(text)]


def test_special_ids_and_sizes(tok):
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 2454  # 2427 pieces + <pad> + 25 language codes + <mask> (PROVENANCE)
    assert tok.lang_id == 2430 and tok.hf.convert_ids_to_tokens(tok.lang_id) == "de_DE"
    zh = load_tokenizer(GFSLT_TOKENIZER, lang="zh_CN")
    assert zh.hf.convert_ids_to_tokens(zh.lang_id) == "zh_CN"


def test_provenance_example(tok):
    # The ids recorded in the tokenizer's PROVENANCE.txt (checked there with transformers).
    out = tok.encode_targets(["liebe zuschauer guten abend"], max_len=12)
    assert out["labels"][0, :9].tolist() == [1848, 154, 1242, 35, 1412, 5, 1630, 2, 2430]
    assert out["labels"][0, 9:].tolist() == [1, 1, 1]


def test_every_real_sentence_matches_sentencepiece(tok, corpus):
    """Piece ids == SentencePiece's own segmentation + fairseq offset, on all 8257 sentences."""
    sp = spm.SentencePieceProcessor(model_file=os.path.join(GFSLT_TOKENIZER, "sentencepiece.bpe.model"))
    texts = [t for rows in corpus.values() for _, t in rows]
    ours = tok.tokenize(texts)
    bad = [t for t, ids in zip(texts, ours) if ids != _spm_fairseq_ids(sp, t)]
    assert not bad, bad[:3]
    n_train = len(corpus["train"])
    assert sum(3 in ids for ids in ours[:n_train]) == 0  # no <unk> in the training text (PROVENANCE)


def test_nfkc_matches_sentencepiece_normalisation(tok):
    sp = spm.SentencePieceProcessor(model_file=os.path.join(GFSLT_TOKENIZER, "sentencepiece.bpe.model"))
    for text in ["ba\u0308ume und ﬁnden", "guten   abend ", "x² grad"]:  # decomposed ä, ligature
        assert tok.tokenize([text])[0] == _spm_fairseq_ids(sp, text), text


def test_targets_match_transformers(tok, hf, corpus):
    torch = pytest.importorskip("torch")
    from transformers.models.mbart.modeling_mbart import shift_tokens_right

    texts = [t for _, t in corpus["dev"][:64]] + [corpus["train"][0][1] * 6]  # one gets truncated
    L = 24
    out = tok.encode_targets(texts, max_len=L)
    ref = hf(text_target=texts, padding="max_length", truncation=True, max_length=L)["input_ids"]
    ref = np.asarray(ref)
    np.testing.assert_array_equal(out["labels"], ref)
    dec = shift_tokens_right(torch.tensor(ref), hf.pad_token_id).numpy()
    np.testing.assert_array_equal(out["decoder_input_ids"], dec)
    np.testing.assert_array_equal(out["target_mask"], ref != hf.pad_token_id)
    assert out["labels"].dtype == np.int32 and out["target_mask"].dtype == np.bool_
    # mBART convention, spelled out: labels end in </s> de_DE, decoder inputs start with de_DE.
    n = int(out["target_mask"][0].sum())
    assert out["labels"][0, n - 2:n].tolist() == [tok.eos_id, tok.lang_id]
    assert out["decoder_input_ids"][0, 0] == tok.lang_id
    assert out["decoder_input_ids"][0, 1:n].tolist() == out["labels"][0, :n - 1].tolist()
    assert out["labels"][-1, -2:].tolist() == [tok.eos_id, tok.lang_id]  # truncated row keeps specials


def test_source_matches_transformers(tok, hf, corpus):
    texts = [t for _, t in corpus["test"][:16]]
    ids, mask = tok.encode_source(texts, max_len=40)
    ref = np.asarray(hf(texts, padding="max_length", truncation=True, max_length=40)["input_ids"])
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_array_equal(mask, ref != 1)


def test_shift_right_matches_transformers():
    torch = pytest.importorskip("torch")
    from transformers.models.mbart.modeling_mbart import shift_tokens_right

    rng = np.random.default_rng(0)
    labels = rng.integers(4, 50, size=(6, 9))
    for i, n in enumerate([9, 7, 3, 1, 5, 8]):
        labels[i, n:] = 1
    np.testing.assert_array_equal(shift_right(labels, 1), shift_tokens_right(torch.tensor(labels), 1).numpy())


def test_decode_round_trip_and_specials(tok, hf, corpus):
    texts = [t for _, t in corpus["dev"]]
    out = tok.encode_targets(texts, max_len=80)
    assert tok.decode(out["labels"]) == texts
    assert tok.decode(out["decoder_input_ids"]) == texts
    # Generated-style rows: lang start, tokens, </s>, then junk after </s> is ignored.
    row = [tok.lang_id] + tok.tokenize(["guten abend"])[0] + [tok.eos_id, 999, 1, 1]
    assert tok.decode([row]) == ["guten abend"]
    # Same as transformers' batch_decode(skip_special_tokens=True) once language codes are gone.
    assert tok.decode(out["labels"][:5]) == hf.batch_decode(
        np.where(out["labels"][:5] == tok.lang_id, tok.pad_id, out["labels"][:5]),
        skip_special_tokens=True)


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="sentencepiece.bpe.model"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ConfigError, match="language code"):
        load_tokenizer(GFSLT_TOKENIZER, lang="de")
    tok = load_tokenizer(GFSLT_TOKENIZER)
    with pytest.raises(UserError, match="list of sentences"):
        tok.encode_targets("guten abend", max_len=8)
    with pytest.raises(ConfigError, match="max_len"):
        tok.encode_targets(["guten abend"], max_len=2)


def test_runtime_imports_do_not_pull_torch():
    code = ("import sys, hfa_jax.text.tokenizer, hfa_jax.metrics, hfa_jax.evaluate, hfa_jax.text.pseudo_glosses;"
            f"t = hfa_jax.text.tokenizer.load_tokenizer({GFSLT_TOKENIZER!r}); t.encode_targets(['guten abend'], 8);"
            "hfa_jax.metrics.translation_metrics(['a b c'], ['a b d']);"
            "bad = [m for m in ('torch', 'tensorflow', 'spacy', 'thinc') if m in sys.modules];"
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert r.returncode == 0, r.stderr[-2000:]
