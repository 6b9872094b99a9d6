"""SynthSign's English corpus: the shipped table is the generator's output, and its splits are
new combinations of training signs (what the demo's closed domain needs)."""

from __future__ import annotations

from data_prep.synthsign import english
from data_prep.synthsign.corpus import get_corpus, load_corpus


def test_shipped_table_is_the_generators_output():
    spec = get_corpus("synthsign_en")
    assert spec.lang == "en_XX" and not spec.char_text
    assert spec.table.read_text("utf-8") == english.table_text()


def test_splits_share_signs_not_gloss_sequences():
    corpus = load_corpus(corpus="synthsign_en")
    assert {s: len(v) for s, v in corpus.items()} == {"train": 2257, "dev": 164, "test": 246}
    gloss_sets = {s: {e.gloss for e in v} for s, v in corpus.items()}
    assert not gloss_sets["train"] & gloss_sets["dev"] and not gloss_sets["train"] & gloss_sets["test"]
    train_signs = {g for gl in gloss_sets["train"] for g in gl.split()}
    for split in ("dev", "test"):
        assert all(set(gl.split()) <= train_signs for gl in gloss_sets[split])
    # Paraphrases: most gloss sequences have more than one English sentence.
    per_gloss = {}
    for e in corpus["train"]:
        per_gloss.setdefault(e.gloss, set()).add(e.translation)
    assert sum(len(v) > 1 for v in per_gloss.values()) > len(per_gloss) // 2
