"""The Chinese text path on real CSL-Daily text: the offline tokenizer's CJK settings, zh_CN vocabulary
trimming over the training sentences, and character-level scoring against sacrebleu."""

from __future__ import annotations

import json
import os
import unicodedata

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU

from data_prep import trim_vocab
from hfa_jax.data.safe_pickle import load_gzip_pickle
from hfa_jax.metrics import translation_metrics
from hfa_jax.text.tokenizer import load_tokenizer

LABELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources", "csl-daily")


@pytest.fixture(scope="module")
def sentences() -> dict[str, list[str]]:
    """The real CSL-Daily sentences per split (label-file order)."""
    return {s: [v["text"] for v in load_gzip_pickle(os.path.join(LABELS, f"labels.{s}")).values()]
            for s in ("train", "dev", "test")}


def _nfkc(texts):
    return [unicodedata.normalize("NFKC", t) for t in texts]


def _spm_proto(folder: str):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(os.path.join(folder, "sentencepiece.bpe.model"), "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def test_offline_tokenizer_for_chinese(tmp_path, sentences):
    out = str(tmp_path / "zh")
    trim_vocab.train_tokenizer(sentences["train"][:4000], out, vocab_size=1500, lang="zh_CN")
    proto = _spm_proto(out)
    assert proto.trainer_spec.character_coverage == pytest.approx(0.9995)
    assert proto.normalizer_spec.name == "nmt_nfkc"
    tok = load_tokenizer(out, "zh_CN")
    assert tok.lang_id == tok.hf.convert_tokens_to_ids("zh_CN") and tok.lang == "zh_CN"
    dev = sentences["dev"][:200]
    enc = tok.encode_targets(dev, 40)
    rows = enc["labels"].tolist()
    for row in rows:
        real = [t for t in row if t != tok.pad_id]
        assert real[-2:] == [tok.eos_id, tok.lang_id]
    # Characters round-trip (NFKC: the tokenizer's normalisation) unless SentencePiece left them out.
    pieces = tok.tokenize(dev)
    known = [i for i, p in enumerate(pieces) if tok.unk_id not in p]
    assert len(known) >= 150
    decoded = tok.decode([pieces[i] + [tok.eos_id] for i in known])
    assert decoded == [unicodedata.normalize("NFKC", dev[i]) for i in known]
    # German keeps full coverage.
    trim_vocab.train_tokenizer(["ein kleiner satz", "noch ein satz hier"] * 5, str(tmp_path / "de"), vocab_size=30)
    assert _spm_proto(str(tmp_path / "de")).trainer_spec.character_coverage == 1.0


def test_zh_cn_trimming_reencodes_every_training_sentence_to_the_mapped_ids(tmp_path, sentences):
    """A larger source tokenizer (all CSL-Daily text) trimmed with zh_CN to the training sentences
    through the command line, as for mBART-large-cc25."""
    src = str(tmp_path / "src")
    trim_vocab.train_tokenizer(sentences["train"] + sentences["dev"] + sentences["test"], src, vocab_size=4000,
                               lang="zh_CN")
    out = str(tmp_path / "trimmed")
    trim_vocab.main(["--tokenizer", src, "--format", "csl_daily", "--labels", LABELS, "--out", out])
    with open(os.path.join(out, "vocab_map.json"), encoding="utf-8") as f:
        vm = json.load(f)
    old, new = load_tokenizer(src, "zh_CN"), load_tokenizer(out, "zh_CN")
    assert vm["lang"] == "zh_CN" and vm["num_sentences"] == len(sentences["train"]) == 18400
    assert new.vocab_size == vm["new_vocab_size"] < old.vocab_size
    old_to_new = {int(k): v for k, v in vm["old_to_new"].items()}
    assert [vm["old_ids"][i] for i in range(new.vocab_size)] == sorted(old_to_new, key=old_to_new.get)
    assert old_to_new[old.lang_id] == new.lang_id and old_to_new[old.eos_id] == new.eos_id
    # every training sentence: same segmentation, mapped ids (targets with </s> zh_CN included)
    a, b = old.encode_targets(sentences["train"], 48)["labels"], new.encode_targets(sentences["train"], 48)["labels"]
    mapped = [[old_to_new[int(i)] for i in row] for row in a]
    bad = [k for k, (m, r) in enumerate(zip(mapped, b.tolist())) if m != r]
    assert not bad, f"{len(bad)} training sentences re-encode differently, first {sentences['train'][bad[0]]!r}"
    # a dev sentence may need a piece the trimmed vocabulary lacks: it still encodes
    assert new.tokenize(sentences["dev"][:50])


def test_char_protocol_on_real_csl_daily_references(sentences):
    refs = sentences["dev"][:300]
    hyps = []
    for i, r in enumerate(refs):
        if i % 4 == 0:
            hyps.append(r)  # exact
        elif i % 4 == 1:
            hyps.append(r[:-2] + r[-1:])  # a character dropped
        elif i % 4 == 2:
            hyps.append(" ".join(unicodedata.normalize("NFKC", r)))  # as a model writes it: spaces, ASCII ,?!
        else:
            hyps.append(refs[(i * 7) % len(refs)])  # another sentence
    got = translation_metrics(hyps, refs, "char")
    for n in range(1, 5):
        want = BLEU(tokenize="char", max_ngram_order=n).corpus_score(_nfkc(hyps), [_nfkc(refs)]).score
        assert got[f"bleu{n}"] == pytest.approx(want, abs=1e-9)
    assert 40 < got["bleu4"] < 100
    # spaces never count, and ASCII punctuation matches the full-width form of the reference
    spaced = translation_metrics([" ".join(h) for h in hyps], refs, "char")
    assert spaced == pytest.approx(got, abs=1e-12)
    assert translation_metrics(["你们好!"], ["你们好！"], "char")["bleu4"] == pytest.approx(100.0)
    # without NFKC the same hypotheses lose every n-gram that crosses a ，？！：
    raw = BLEU(tokenize="char").corpus_score(hyps, [refs]).score
    assert raw < got["bleu4"] - 1.0


# The worked example of docs/csl_daily.md (CSL-Daily-style references; hypotheses as the model writes them).
EXAMPLE_HYPS = ["我 想 买 苹果 。", "今天 会 下雨 吗?"]
EXAMPLE_REFS = ["我想吃面条。", "今天会下雨吗？"]
EXAMPLE_BLEU4 = 62.79


def test_worked_example_of_the_docs():
    ours = translation_metrics(EXAMPLE_HYPS, EXAMPLE_REFS, "char")["bleu4"]
    theirs = sacrebleu.corpus_bleu([unicodedata.normalize("NFKC", h) for h in EXAMPLE_HYPS],
                                   [[unicodedata.normalize("NFKC", r) for r in EXAMPLE_REFS]], tokenize="char").score
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert round(ours, 2) == EXAMPLE_BLEU4


def test_csl_daily_configs():
    from configs import demo, finetune, pretrain
    from hfa_jax.train import schema

    pre = pretrain.get_config("csl_daily")
    stages = [pre, finetune.get_config("stage1_csl_daily"), finetune.get_config("stage2_csl_daily"),
              demo.get_config("csl_daily")]
    for c in stages:
        schema.validate(c, check_paths=False)
        assert (c.data.lang, c.eval.protocol) == ("zh_CN", "char")
    # the BeyondGloss authors' CSL-Daily pretraining: no pseudo-gloss term, description 0.5, hand pose 0.3
    assert (pre.train.pg_weight, pre.train.lambda_desc, pre.train.lambda_hand) == (0.0, 0.5, 0.3)
    assert pre.model.beyondgloss.description and pre.model.beyondgloss.hand_pose
    assert all(c.model.beyondgloss.hand_pose for c in stages[1:3])
    assert (stages[1].train.stage, stages[2].train.stage) == ("finetune1", "finetune2")
    assert pretrain.get_config("paper").data.lang == "de_DE"
