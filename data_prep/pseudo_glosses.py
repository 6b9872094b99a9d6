"""Build the pseudo-gloss file (vocabulary + per-video targets) for a PHOENIX14T/SynthSign tree.

    python -m data_prep.pseudo_glosses --root ROOT --out FILE.json \
        [--splits train,dev,test] [--max_doc_freq 0.4] [--pipeline auto|hanta|NAME] \
        [--compare CSV_DIR]
    python -m data_prep.pseudo_glosses --from_reference CSV_DIR [--root ROOT] --out FILE.json

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

from hfa_jax.text import pseudo_glosses as pg
from hfa_jax.errors import ConfigError, cli_main


def build(root: str | None, out: str, *, splits=pg.SPLITS, max_doc_freq: float | None = None,
          pipeline: str = "auto", from_reference: str | None = None, compare: str | None = None,
          progress: bool = True) -> dict:
    """Builds and writes the file; returns its meta (with `num_classes` and, when compared,
    the agreement numbers)."""
    if from_reference is None and root is None:
        raise ConfigError("pass --root ROOT (a PHOENIX14T/SynthSign tree) or --from_reference CSV_DIR")
    texts = pg.read_corpus_text(root, pg.SPLITS) if root is not None else None
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
    vocab_lemmas = [ls for k, ls in lemmas.items() if k.split("/", 1)[0] in splits]
    vocab = pg.build_vocab(vocab_lemmas, max_doc_freq)
    targets = pg.make_targets(lemmas, vocab)
    meta = {
        "source": source,
        "root": os.path.abspath(root) if root else None,
        "vocab_splits": list(splits),
        "max_doc_freq": max_doc_freq,
        "num_classes": len(vocab),
        "num_videos": len(targets),
        "kept_pos": list(pg.KEPT_POS),
    }
    if compare is not None:
        ref = pg.read_reference_csv(compare, pg.SPLITS)
        agree = pg.agreement(lemmas, ref)
        meta["agreement_with_reference"] = agree
    pg.save_pseudo_glosses(out, vocab, targets, meta)
    return meta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", help="PHOENIX14T or SynthSign tree (folder holding annotations/)")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--splits", default="train,dev,test",
                   help="splits whose lemmas form the vocabulary (default: all three, as the reference)")
    p.add_argument("--max_doc_freq", type=float, default=None,
                   help="drop lemmas in >= this fraction of sentences (Sign2GPT: 0.4); default: keep all")
    p.add_argument("--pipeline", default="auto",
                   help="auto (installed spaCy German model, else HanTa), hanta, or a spaCy pipeline name")
    p.add_argument("--from_reference", metavar="CSV_DIR",
                   help="read the HFA authors' pseudo_gloss_{split}.csv instead of tagging")
    p.add_argument("--compare", metavar="CSV_DIR",
                   help="print agreement (token F1, vocabulary Jaccard) with the authors' CSVs")
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    meta = build(a.root, a.out, splits=pg.parse_splits(a.splits), max_doc_freq=a.max_doc_freq,
                 pipeline=a.pipeline, from_reference=a.from_reference, compare=a.compare,
                 progress=not a.no_progress)
    if "agreement_with_reference" in meta:
        ag = meta["agreement_with_reference"]
        print(f"agreement with reference over {int(ag['sentences'])} sentences: token F1 "
              f"{ag['micro_f1']:.4f} (mean sentence F1 {ag['mean_sentence_f1']:.4f}), vocabulary "
              f"Jaccard {ag['vocab_jaccard']:.4f} ({int(ag['hyp_vocab'])} vs {int(ag['ref_vocab'])} lemmas)")
    print(f"{meta['num_classes']} pseudo-gloss classes ({meta['source']}; vocabulary over "
          f"{','.join(meta['vocab_splits'])}; {meta['num_videos']} videos) -> {a.out}")


if __name__ == "__main__":
    cli_main(main)()
