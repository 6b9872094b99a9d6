"""Trim an mBART tokenizer to the training sentences, or train a small one for offline use.

Trim (paper runs; the reference tool is hftrim):

    python -m data_prep.trim_vocab --tokenizer MBART_DIR --root ROOT --out OUT_DIR [--lang de_DE]
    python -m data_prep.trim_vocab --tokenizer MBART_DIR --format csl_daily --labels LABELS_DIR \
        --out OUT_DIR --lang zh_CN                  # CSL-Daily: the Chinese training sentences
    python -m data_prep.trim_vocab --tokenizer MBART_DIR --dataset DATASET_DIR --out OUT_DIR \
        [--lang en_XX]                              # any built dataset (How2Sign, OpenASL, ...)

keeps the SentencePiece pieces that the training translations of ROOT use, plus the specials
(`<s> <pad> </s> <unk>`), all 25 language codes and `<mask>` (transformers' MBartTokenizer always
appends them), and writes

* `OUT_DIR/sentencepiece.bpe.model` — a real, smaller SentencePiece model (the original
  ModelProto with the unused pieces removed, order and scores kept),
* `OUT_DIR/tokenizer_config.json`, `special_tokens_map.json` — loads with `load_tokenizer`,
* `OUT_DIR/vocab_map.json` — `{"old_ids": [old id of new id 0, 1, ...], "old_to_new":
  {old: new, ... ordered by new id}, "old_vocab_size", "new_vocab_size", ...}`; the weight
  importer slices embedding rows and `final_logits_bias` with `old_ids`.

Every training sentence is then re-encoded with both tokenizers and must give the mapped ids
(a Unigram segmentation stays optimal when only unused pieces are removed); a mismatch raises.

Train (offline / demo; no mBART download):

    python -m data_prep.trim_vocab --train_sentencepiece --root ROOT --out OUT_DIR [--vocab_size 1000]

trains a Unigram SentencePiece model on the training translations with mBART's piece layout
(`<unk>`, `<s>`, `</s>` at SentencePiece ids 0..2, `nmt_nfkc` normalisation; `--lang zh_CN`
(also ja_XX, ko_KR) uses SentencePiece's setting for CJK text, character coverage 0.9995 instead
of 1.0, so the rarest characters become `<unk>` rather than one piece each) and writes the same
tokenizer files, so `hfa_jax.text.tokenizer.load_tokenizer` serves both (fairseq ids: `<s>`=0,
`<pad>`=1, `</s>`=2, `<unk>`=3, pieces, 25 language codes, `<mask>`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
from typing import Sequence

from hfa_jax.data import formats
from hfa_jax.text.tokenizer import FAIRSEQ_LANGUAGE_CODES, SPM_FILE, load_tokenizer, normalize_text
from hfa_jax.errors import ConfigError, DataError, cli_main

NUM_SPECIAL = 4  # fairseq <s> <pad> </s> <unk>; SentencePiece holds <unk> <s> </s> at 0..2
# SentencePiece's recommended coverage for languages with rich character sets (its README:
# "0.9995 for languages with rich character set like Japanese or Chinese and 1.0 for other
# languages with small character set").
CJK_LANGS = ("zh_CN", "ja_XX", "ko_KR")
CJK_CHARACTER_COVERAGE = 0.9995


def _model_proto():
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2.ModelProto()


def write_tokenizer_folder(out: str, spm_bytes: bytes, lang: str) -> None:
    """Writes an mBART tokenizer folder that `MBartTokenizer.from_pretrained` loads offline."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, SPM_FILE), "wb") as f:
        f.write(spm_bytes)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
    config = dict(specials, tokenizer_class="MBartTokenizer", src_lang=lang, tgt_lang=lang,
                  model_max_length=1024)
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(dict(specials, additional_special_tokens=list(FAIRSEQ_LANGUAGE_CODES)), f, indent=2)


def trim_tokenizer(src: str, sentences: Sequence[str], out: str, lang: str = "de_DE") -> dict:
    """Trims tokenizer folder `src` to the pieces `sentences` use; writes `out` (see module doc).

    Returns the vocab map dict (also written to `out/vocab_map.json`).
    """
    if not sentences:
        raise DataError("no training sentences to trim the vocabulary with; check --root")
    old = load_tokenizer(src, lang)
    old_pieces = old.tokenize(sentences)
    with open(os.path.join(src, SPM_FILE), "rb") as f:
        proto = _model_proto()
        proto.ParseFromString(f.read())
    n_spm = len(proto.pieces)
    if old.vocab_size != n_spm + 1 + len(FAIRSEQ_LANGUAGE_CODES) + 1:
        raise ConfigError(f"{src}: tokenizer has {old.vocab_size} ids, expected {n_spm} pieces + "
                          "<pad> + 25 language codes + <mask>; not an mBART tokenizer folder")
    used_fairseq = {i for ids in old_pieces for i in ids}
    # fairseq id = SentencePiece id + 1 for pieces (SentencePiece ids >= 3).
    keep_spm = sorted({0, 1, 2} | {i - 1 for i in used_fairseq if i >= NUM_SPECIAL})
    new = _model_proto()
    new.CopyFrom(proto)
    del new.pieces[:]
    for i in keep_spm:
        new.pieces.append(proto.pieces[i])
    new.trainer_spec.vocab_size = len(keep_spm)

    old_ids = list(range(NUM_SPECIAL))
    old_ids += [i + 1 for i in keep_spm[3:]]
    old_ids += [n_spm + 1 + k for k in range(len(FAIRSEQ_LANGUAGE_CODES) + 1)]  # codes + <mask>
    write_tokenizer_folder(out, new.SerializeToString(), lang)
    new_tok = load_tokenizer(out, lang)
    if new_tok.vocab_size != len(old_ids):
        raise ConfigError(f"{out}: trimmed tokenizer has {new_tok.vocab_size} ids, expected "
                          f"{len(old_ids)}; report this as a bug")
    old_to_new = {o: n for n, o in enumerate(old_ids)}
    # The promise the weight importer relies on: same segmentation, mapped ids.
    new_pieces = new_tok.tokenize(sentences)
    for k, (a, b) in enumerate(zip(old_pieces, new_pieces)):
        if [old_to_new[i] for i in a] != b:
            raise DataError(f"training sentence {k} ({sentences[k][:60]!r}) tokenises differently "
                            "after trimming; report this as a bug")
    vocab_map = {
        "source": os.path.abspath(src),
        "lang": lang,
        "old_vocab_size": old.vocab_size,
        "new_vocab_size": len(old_ids),
        "num_sentences": len(sentences),
        "old_ids": old_ids,
        "old_to_new": {str(o): n for n, o in enumerate(old_ids)},
    }
    with open(os.path.join(out, "vocab_map.json"), "w", encoding="utf-8") as f:
        json.dump(vocab_map, f)
    return vocab_map


def train_tokenizer(sentences: Sequence[str], out: str, vocab_size: int = 1000,
                    lang: str = "de_DE") -> int:
    """Trains a Unigram SentencePiece model on `sentences` and writes an mBART tokenizer folder.

    `vocab_size` is an upper bound (a small corpus may support fewer pieces). CJK languages
    (`CJK_LANGS`) get character coverage 0.9995, others 1.0. Returns the tokenizer's total id
    count (pieces + <pad> + 25 language codes + <mask>).
    """
    import sentencepiece as spm

    if not sentences:
        raise DataError("no training sentences to train a tokenizer on; check --root")
    if vocab_size < 8:
        raise ConfigError(f"--vocab_size {vocab_size} is too small; use at least 8")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([normalize_text(s) for s in sentences]), model_writer=buf,
        model_type="unigram", vocab_size=vocab_size, hard_vocab_limit=False,
        # mBART's SentencePiece layout: <unk> <s> </s> at 0..2, no <pad> piece (fairseq adds it).
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="nmt_nfkc",
        character_coverage=CJK_CHARACTER_COVERAGE if lang in CJK_LANGS else 1.0,
        num_threads=1, shuffle_input_sentence=False, minloglevel=2,
    )
    write_tokenizer_folder(out, buf.getvalue(), lang)
    return load_tokenizer(out, lang).vocab_size


def training_sentences(root: str | None, split: str = "train", fmt: str = "phoenix14t",
                       labels: str | None = None) -> list[str]:
    """Translations of one split, text only (no frames are read), of a source in format ``fmt``
    (:mod:`hfa_jax.data.formats`): e.g. the official PHOENIX14T (or SynthSign) tree at ``root``,
    or CSL-Daily's label files in ``labels`` (default ``root/labels``, where SynthSign writes them).
    """
    return formats.get(fmt).sentences(root, labels, split)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Trim an mBART tokenizer to the training sentences, "
                                "or train a small one (--train_sentencepiece).")
    p.add_argument("--tokenizer", help="source mBART tokenizer folder (e.g. facebook/mbart-large-cc25)")
    p.add_argument("--format", default="phoenix14t", choices=formats.names(),
                   help="phoenix14t: --root is an official-layout tree; gfslt, csl_daily: --labels holds the "
                        "GFSLT-style label files (default ROOT/labels, as SynthSign writes them)")
    p.add_argument("--root", help="PHOENIX14T or SynthSign tree")
    p.add_argument("--dataset", help="instead of --format/--root: a dataset written by "
                                     "data_prep.build_dataset (How2Sign, OpenASL, YouTube-ASL, ...)")
    p.add_argument("--labels", help="csl_daily: folder holding labels.{train,dev,test}")
    p.add_argument("--out", required=True, help="output tokenizer folder")
    p.add_argument("--split", default="train", help="split whose translations are used (default train)")
    p.add_argument("--lang", default=None,
                   help="mBART language code (default: the format's, e.g. de_DE for phoenix14t, zh_CN for "
                        "csl_daily; en_XX with --dataset)")
    p.add_argument("--train_sentencepiece", action="store_true",
                   help="train a new Unigram SentencePiece model instead of trimming --tokenizer")
    p.add_argument("--vocab_size", type=int, default=1000,
                   help="pieces for --train_sentencepiece (upper bound; default 1000)")
    a = p.parse_args(argv)
    if a.dataset:
        from data_prep.dataset_text import dataset_text

        a.lang = a.lang or "en_XX"
        sentences = list(dataset_text(a.dataset, [a.split]).values())
    else:
        a.lang = a.lang or formats.get(a.format).lang
        sentences = training_sentences(a.root, a.split, a.format, a.labels)
    if a.train_sentencepiece:
        n = train_tokenizer(sentences, a.out, a.vocab_size, a.lang)
        print(f"trained tokenizer: {n} ids ({n - 27} SentencePiece pieces + <pad> + 25 language "
              f"codes + <mask>) from {len(sentences)} sentences -> {a.out}")
        return
    if not a.tokenizer:
        raise ConfigError("pass --tokenizer MBART_DIR to trim, or --train_sentencepiece to train one")
    vm = trim_tokenizer(a.tokenizer, sentences, a.out, a.lang)
    print(f"trimmed tokenizer: {vm['old_vocab_size']} -> {vm['new_vocab_size']} ids "
          f"({len(sentences)} {a.split} sentences re-encode identically) -> {a.out}")


if __name__ == "__main__":
    cli_main(main)()
