"""SynthSign's English corpus: the shipped table is the generator's output, and its splits are
new combinations of training signs (what the demo's closed domain needs)."""

from __future__ import annotations

from data_prep.synthsign import english
from data_prep.synthsign.corpus import get_corpus, load_corpus


def test_shipped_table_is_the_generators_output():
    spec = get_corpus("synthsign_en")
    assert spec.lang == "en_XX" and not spec.char_text
    assert spec.table.read_text("utf-8") == english.table_text()


def test_splits_hold_new_sentences_about_training_signs():
    corpus = load_corpus(corpus="synthsign_en")
    assert {s: len(v) for s, v in corpus.items()} == {"train": 2282, "dev": 168, "test": 217}
    texts = {s: {e.translation for e in v} for s, v in corpus.items()}
    assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"]
    train_sets = {frozenset(e.gloss.split()) for e in corpus["train"]}
    for split in ("dev", "test"):
        # Most dev/test sentences paraphrase a training sign set (the closed domain's pool).
        shared = sum(frozenset(e.gloss.split()) in train_sets for e in corpus[split])
        assert shared > 0.8 * len(corpus[split])
    # Paraphrases: most gloss sequences have more than one English sentence.
    per_gloss = {}
    for e in corpus["train"]:
        per_gloss.setdefault(e.gloss, set()).add(e.translation)
    assert sum(len(v) > 1 for v in per_gloss.values()) > len(per_gloss) // 2
