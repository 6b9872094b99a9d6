"""Build the pseudo-gloss file (vocabulary + per-video targets) for a PHOENIX14T/SynthSign tree
or CSL-Daily label files.

    python -m data_prep.pseudo_glosses --root ROOT --out FILE.json \
        [--splits train,dev,test] [--max_doc_freq 0.4] [--pipeline auto|hanta|NAME] \
        [--compare CSV_DIR]
    python -m data_prep.pseudo_glosses --from_reference CSV_DIR [--root ROOT] --out FILE.json
    python -m data_prep.pseudo_glosses --format csl_daily --labels LABELS_DIR --out FILE.json \
        [--compare_glosses]
    python -m data_prep.pseudo_glosses --dataset DATASET_DIR --language en --out FILE.json

The last form reads the sentences of a dataset written by `data_prep.build_dataset` (any format:
How2Sign, OpenASL, YouTube-ASL, ...), keyed `split/name`, and tags them in `--language` (`en`:
HanTa's English model, offline; see hfa_jax.text.pseudo_glosses).

CSL-Daily (Chinese) is tagged with jieba (`--pipeline jieba`, the default for that format; see
hfa_jax.text.pseudo_glosses); `--compare_glosses` prints the agreement of the pseudo-glosses with
CSL-Daily's own sign glosses (which the pseudo-glosses never read).

The first form tags every translation (spaCy German pipeline when installed, else the offline
HanTa pipeline; see hfa_jax.text.pseudo_glosses), builds the sorted vocabulary over `--splits`
(reference: train+dev+test) and writes targets for every video of the tree. `--compare` also
prints agreement with the HFA authors' CSVs (token F1, vocabulary Jaccard).

The second form reads the HFA authors' own pseudo-glosses (`pseudo_gloss_{split}.csv`,
lowercased as their loader does): for PHOENIX14T this gives exactly the paper's 2322 classes.
With `--root`, the CSV keys must match the tree's videos.

Prints the class count.
"""

from __future__ import annotations

import argparse
import os
import sys

from data_prep.dataset_text import dataset_text
from hfa_jax.data import formats
from hfa_jax.text import pseudo_glosses as pg
from hfa_jax.errors import ConfigError, cli_main


def corpus_text(corpus: formats.DatasetFormat, root: str | None, labels: str | None,
                splits=pg.SPLITS) -> tuple[dict[str, str], dict[str, list[str]]]:
    """({"split/name": sentence}, {"split/name": sign glosses}) of a source, text only."""
    texts, glosses = {}, {}
    for split in splits:
        for r in corpus.records(root, labels, split, check_frames=False):
            texts[f"{split}/{r.name}"] = r.translation
            glosses[f"{split}/{r.name}"] = (r.gloss or "").lower().split()
    return texts, glosses


def build(root: str | None, out: str, *, splits=pg.SPLITS, max_doc_freq: float | None = None,
          pipeline: str = "auto", from_reference: str | None = None, compare: str | None = None,
          progress: bool = True, fmt: str = "phoenix14t", labels: str | None = None,
          compare_glosses: bool = False, dataset: str | None = None,
          language: str = "de") -> dict:
    """Builds and writes the file; returns its meta (with `num_classes` and, when compared,
    the agreement numbers). The format (:mod:`hfa_jax.data.formats`) says where the sentences are
    and how they split into words: a Chinese one (`csl_daily`) reads the label files in `labels`
    (default `root/labels`, where SynthSign writes them) and tags with jieba. `dataset` reads the
    sentences of a built dataset instead (any format) and tags them in `language`."""
    if dataset is not None:
        texts = dataset_text(dataset)
        nlp, source = pg.load_pipeline(pipeline, language)
        keys = sorted(texts)
        print(f"tagging {len(keys)} sentences with {source}", file=sys.stderr)
        lemmas = dict(zip(keys, pg.extract_lemmas(nlp, [texts[k] for k in keys], progress=progress)))
        present = tuple(sp for sp in splits if any(k.startswith(sp + "/") for k in keys))
        return _write(out, lemmas, present, max_doc_freq, source, dataset)
    corpus = formats.get(fmt)
    if corpus.words == "jieba":
        labels = corpus.labels_dir(root, labels)
        if pipeline not in ("auto", "jieba"):
            raise ConfigError(f"--pipeline {pipeline} tags German; --format {fmt} is tagged with jieba "
                              "(--pipeline jieba)")
        if from_reference is not None or compare is not None:
            raise ConfigError("--from_reference/--compare read the HFA authors' PHOENIX14T CSVs; "
                              f"for --format {fmt} use --compare_glosses")
        texts, glosses = corpus_text(corpus, root, labels)
        tagger, src_name = pg.load_jieba()
        keys = sorted(texts)
        print(f"tagging {len(keys)} sentences with {src_name}", file=sys.stderr)
        lemmas = dict(zip(keys, pg.extract_words_zh(tagger, [texts[k] for k in keys], progress=progress)))
        meta = _write(out, lemmas, splits, max_doc_freq, src_name, labels)
        if compare_glosses:
            meta["agreement_with_glosses"] = pg.agreement(lemmas, glosses)
            pg.save_pseudo_glosses(out, *_vocab_targets(lemmas, splits, max_doc_freq), meta)
        return meta
    have_text = root is not None or (corpus.labels and labels is not None)
    if from_reference is None and not have_text:
        raise ConfigError("pass --root ROOT (a PHOENIX14T/SynthSign tree) or --from_reference CSV_DIR")
    texts = corpus.texts(root, labels, pg.SPLITS) if have_text else None
    if from_reference is not None:
        lemmas = pg.read_reference_csv(from_reference, pg.SPLITS)
        if texts is not None:
            missing = sorted(set(texts) - set(lemmas))
            if missing:
                raise ConfigError(
                    f"{from_reference}: no reference pseudo-glosses for {len(missing)} videos of "
                    f"{root} (first: {missing[0]!r}); the CSVs belong to another corpus: drop "
                    "--from_reference and extract with --root")
            lemmas = {k: lemmas[k] for k in texts}
        source = f"reference:{os.path.abspath(from_reference)}"
    else:
        nlp, source = pg.load_pipeline(pipeline)
        keys = sorted(texts)
        print(f"tagging {len(keys)} sentences with {source}", file=sys.stderr)
        extracted = pg.extract_lemmas(nlp, [texts[k] for k in keys], progress=progress)
        lemmas = dict(zip(keys, extracted))
    if compare is None:
        return _write(out, lemmas, splits, max_doc_freq, source, root)
    ref = pg.read_reference_csv(compare, pg.SPLITS)
    meta = _meta(lemmas, splits, max_doc_freq, source, root)
    meta["agreement_with_reference"] = pg.agreement(lemmas, ref)
    pg.save_pseudo_glosses(out, *_vocab_targets(lemmas, splits, max_doc_freq), meta)
    return meta


def _vocab_targets(lemmas, splits, max_doc_freq):
    vocab = pg.build_vocab([ls for k, ls in lemmas.items() if k.split("/", 1)[0] in splits], max_doc_freq)
    return vocab, pg.make_targets(lemmas, vocab)


def _meta(lemmas, splits, max_doc_freq, source, root) -> dict:
    vocab, targets = _vocab_targets(lemmas, splits, max_doc_freq)
    return {
        "source": source,
        "root": os.path.abspath(root) if root else None,
        "vocab_splits": list(splits),
        "max_doc_freq": max_doc_freq,
        "num_classes": len(vocab),
        "num_videos": len(targets),
        "kept_pos": list(pg.KEPT_POS),
    }


def _write(out, lemmas, splits, max_doc_freq, source, root) -> dict:
    meta = _meta(lemmas, splits, max_doc_freq, source, root)
    pg.save_pseudo_glosses(out, *_vocab_targets(lemmas, splits, max_doc_freq), meta)
    return meta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--format", default="phoenix14t", choices=formats.names(),
                   help="phoenix14t: --root is an official-layout tree; gfslt, csl_daily: --labels holds the "
                        "GFSLT-style label files (csl_daily is tagged with jieba)")
    p.add_argument("--root", help="PHOENIX14T or SynthSign tree (folder holding annotations/)")
    p.add_argument("--dataset", help="a dataset written by data_prep.build_dataset (any format): "
                                     "tag its sentences (with --language)")
    p.add_argument("--language", default="de", choices=pg.LANGUAGES,
                   help="with --dataset: the language of the sentences (en: HanTa English, offline)")
    p.add_argument("--labels", help="csl_daily: folder holding labels.{train,dev,test} (default ROOT/labels)")
    p.add_argument("--compare_glosses", action="store_true",
                   help="csl_daily: print agreement (token F1, vocabulary Jaccard) with CSL-Daily's sign glosses")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--splits", default="train,dev,test",
                   help="splits whose lemmas form the vocabulary (default: all three, as the reference)")
    p.add_argument("--max_doc_freq", type=float, default=None,
                   help="drop lemmas in >= this fraction of sentences (Sign2GPT: 0.4); default: keep all")
    p.add_argument("--pipeline", default="auto",
                   help="auto (German: installed spaCy German model, else HanTa; csl_daily: jieba), hanta, "
                        "jieba, or a spaCy pipeline name")
    p.add_argument("--from_reference", metavar="CSV_DIR",
                   help="read the HFA authors' pseudo_gloss_{split}.csv instead of tagging")
    p.add_argument("--compare", metavar="CSV_DIR",
                   help="print agreement (token F1, vocabulary Jaccard) with the authors' CSVs")
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    meta = build(a.root, a.out, splits=pg.parse_splits(a.splits), max_doc_freq=a.max_doc_freq,
                 pipeline=a.pipeline, from_reference=a.from_reference, compare=a.compare,
                 progress=not a.no_progress, fmt=a.format, labels=a.labels, compare_glosses=a.compare_glosses,
                 dataset=a.dataset, language=a.language)
    for key, what in (("agreement_with_reference", "reference"), ("agreement_with_glosses", "CSL-Daily glosses")):
        if key not in meta:
            continue
        ag = meta[key]
        print(f"agreement with {what} over {int(ag['sentences'])} sentences: token F1 "
              f"{ag['micro_f1']:.4f} (mean sentence F1 {ag['mean_sentence_f1']:.4f}), vocabulary "
              f"Jaccard {ag['vocab_jaccard']:.4f} ({int(ag['hyp_vocab'])} vs {int(ag['ref_vocab'])} lemmas)")
    print(f"{meta['num_classes']} pseudo-gloss classes ({meta['source']}; vocabulary over "
          f"{','.join(meta['vocab_splits'])}; {meta['num_videos']} videos) -> {a.out}")


if __name__ == "__main__":
    cli_main(main)()
