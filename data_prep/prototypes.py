"""Pseudo-gloss prototypes: one fastText vector per class, plus the zero "blank" row (docs/text.md).

    python -m data_prep.prototypes --vocab FILE.json --fasttext cc.de.300.bin --out protos.npy
    python -m data_prep.prototypes --train_fasttext --root ROOT --fasttext OUT.bin \
        [--vocab FILE.json --out protos.npy] [--dim 300] [--epoch 5] [--bucket 20000]
    python -m data_prep.prototypes --train_fasttext --format csl_daily --labels LABELS_DIR \
        --fasttext OUT.bin [--vocab FILE.json --out protos.npy]

The first form reads the reference vectors (`cc.de.300.bin`, Grave et al. 2018) and writes
`protos.npy`: float32 [V+1, dim], row 0 = zeros (blank class, not trained), row i =
`get_word_vector(vocab[i-1])` (fastText composes subword vectors for lemmas it has not seen, as
the reference does).

The second form trains skipgram vectors on the training translations of ROOT (offline use, no
download) and saves the model to `--fasttext`; with `--vocab/--out` it then writes the
prototypes too. The default fastText bucket count (2,000,000 subword rows) makes GB-size files;
we default to 20,000 buckets and minCount 1, which keeps the 300-d PHOENIX14T model at 29.6 MiB
(7096 training sentences, 5 epochs, ~8 s on 1 CPU thread).

Chinese (`--format csl_daily`): the training sentences are segmented into words with jieba (the
pseudo-gloss tagger, hfa_jax.text.pseudo_glosses.load_jieba) and the subword units are the
characters (`--minn 1 --maxn 2` by default for that format): a word's vector is composed from its
characters and character pairs, which is what lets fastText give vectors to unseen words. The
pretrained alternative for the first form is `cc.zh.300.bin`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Sequence

import numpy as np

from hfa_jax.data import formats
from hfa_jax.text.pseudo_glosses import load_jieba, load_pseudo_glosses
from hfa_jax.errors import ConfigError, DataError, cli_main


def load_fasttext(path: str):
    """fastText model from a `.bin` file (ConfigError if missing or unreadable)."""
    if not os.path.isfile(path):
        raise ConfigError(f"fastText model {path!r} not found; download cc.de.300.bin or train one "
                          "with --train_fasttext --root ROOT")
    import fasttext

    try:
        return fasttext.load_model(path)
    except ValueError as e:
        raise ConfigError(f"{path}: not a fastText .bin model ({e}); pass the .bin, not the .vec") from e


def make_prototypes(vocab: Sequence[str], model) -> np.ndarray:
    """[V+1, dim] float32: row 0 zeros, row i = model.get_word_vector(vocab[i-1])."""
    dim = model.get_dimension()
    out = np.zeros((len(vocab) + 1, dim), np.float32)
    for i, lemma in enumerate(vocab, start=1):
        out[i] = model.get_word_vector(lemma)
    return out


_TRAIN_WORKER = """
import json, sys
import fasttext
a = json.loads(sys.argv[1])
model = fasttext.train_unsupervised(a.pop("corpus"), model="skipgram", verbose=0, **{k: v for k, v in a.items() if k != "out"})
model.save_model(a["out"])
"""


def train_fasttext(sentences: Sequence[str], out_path: str, *, dim: int = 300, epoch: int = 5,
                   bucket: int = 20000, min_count: int = 1, minn: int = 3, maxn: int = 6,
                   threads: int = 1):
    """Trains skipgram vectors on `sentences`, saves them to `out_path` (.bin), returns the model.

    threads=1 keeps training deterministic (fastText seeds its generator per thread id).
    Training runs in a fresh Python process: with fasttext-numpy2 0.10.4, skipgram training in a
    process that has imported `transformers` fails with "Encountered NaN" (reproducible; plain
    interpreters never did in our trials), so we isolate it.
    """
    if not sentences:
        raise DataError("no training sentences for fastText; check --root")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as f:
        f.write("\n".join(s.strip().lower() for s in sentences) + "\n")
        corpus = f.name
    args = {"corpus": corpus, "out": os.path.abspath(out_path), "dim": dim, "epoch": epoch,
            "bucket": bucket, "minCount": min_count, "minn": minn, "maxn": maxn, "thread": threads}
    try:
        r = subprocess.run([sys.executable, "-c", _TRAIN_WORKER, json.dumps(args)],
                           capture_output=True, text=True)
    finally:
        os.unlink(corpus)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"fastText training failed ({last}); try more --bucket (e.g. 20000) "
                          "or more sentences")
    return load_fasttext(out_path)


def segment_zh(sentences: Sequence[str]) -> list[str]:
    """Chinese sentences -> space-separated jieba words (the pseudo-gloss tagger's segmentation)."""
    tagger, _ = load_jieba()
    return [" ".join(p.word for p in tagger.cut(s) if p.word.strip()) for s in sentences]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="fastText prototypes for the pseudo-gloss classes.")
    p.add_argument("--vocab", help="pseudo-gloss JSON (from data_prep.pseudo_glosses)")
    p.add_argument("--fasttext", required=True,
                   help="fastText .bin to read (e.g. cc.de.300.bin), or to write with --train_fasttext")
    p.add_argument("--out", help="output protos.npy")
    p.add_argument("--train_fasttext", action="store_true",
                   help="train skipgram vectors on the training translations of --root first")
    p.add_argument("--root", help="PHOENIX14T/SynthSign tree (with --train_fasttext)")
    p.add_argument("--format", default="phoenix14t", choices=formats.names(),
                   help="with --train_fasttext: the source format (hfa_jax.data.formats); csl_daily reads the "
                        "Chinese sentences of --labels")
    p.add_argument("--labels", help="csl_daily: folder holding labels.{train,dev,test} (default ROOT/labels)")
    p.add_argument("--minn", type=int, default=None, help="shortest subword (default 3; csl_daily: 1)")
    p.add_argument("--maxn", type=int, default=None, help="longest subword (default 6; csl_daily: 2)")
    p.add_argument("--dim", type=int, default=300)
    p.add_argument("--epoch", type=int, default=5)
    p.add_argument("--bucket", type=int, default=20000)
    p.add_argument("--min_count", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.train_fasttext:
        corpus = formats.get(a.format)
        sentences = corpus.sentences(a.root, a.labels, "train")
        # Chinese: words from jieba (the pseudo-gloss tagger), subwords of 1-2 characters.
        zh = corpus.words == "jieba"
        if zh:
            sentences = segment_zh(sentences)
        minn = a.minn if a.minn is not None else (1 if zh else 3)
        maxn = a.maxn if a.maxn is not None else (2 if zh else 6)
        train_fasttext(sentences, a.fasttext, dim=a.dim, epoch=a.epoch, bucket=a.bucket,
                       min_count=a.min_count, threads=a.threads, minn=minn, maxn=maxn)
        print(f"trained {a.dim}-d skipgram vectors on {len(sentences)} sentences -> {a.fasttext} "
              f"({os.path.getsize(a.fasttext) / 2**20:.1f} MiB)")
        if not a.vocab and not a.out:
            return
    if not a.vocab or not a.out:
        raise ConfigError("pass --vocab FILE.json and --out protos.npy to write prototypes")
    pg = load_pseudo_glosses(a.vocab)
    model = load_fasttext(a.fasttext)
    protos = make_prototypes(pg.vocab, model)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    np.save(a.out, protos)
    print(f"prototypes {protos.shape[0]} x {protos.shape[1]} (row 0 = blank, zeros) -> {a.out}")


if __name__ == "__main__":
    cli_main(main)()
