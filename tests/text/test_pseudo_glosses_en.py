"""English pseudo-glosses (HanTa's English model, offline) against hand-checked sentences."""

from __future__ import annotations

import pytest

from hfa_jax.text import pseudo_glosses as pg

# Each expected list was checked by hand against the Sign2GPT rule (lowercased lemmas of NOUN,
# NUM, ADV, PRON, PROPN, ADJ, VERB tokens, in order) with UD English's POS conventions: auxiliaries
# and modals (were, do, 'll, is, 're) dropped, determiners, adpositions, conjunctions and particles
# (the, to, and, not, up) dropped, pronouns kept with their lemma (them -> they), possessive "my"
# kept (UD: PRON).
HAND_CHECKED = [
    ("The children were running quickly to the old houses in 1990.",
     ["child", "run", "quickly", "old", "house", "1990"]),
    ("I do not know what you mean, but my mother says it is the first time.",
     ["i", "know", "you", "mean", "my", "mother", "say", "it", "first", "time"]),
    ("We'll pick it up tomorrow and then we're going to put the cake in the oven.",
     ["we", "pick", "it", "tomorrow", "then", "we", "go", "put", "cake", "oven"]),
    ("Hello, my name is John and I live in Boston.",
     ["my", "name", "john", "i", "live", "boston"]),
    ("Take two cups of flour and mix them gently with the eggs.",
     ["take", "two", "cup", "flour", "mix", "they", "gently", "egg"]),
]


@pytest.fixture(scope="module")
def english():
    nlp, source = pg.load_pipeline("auto", "en")
    assert source.startswith("hanta-") and source.endswith("blank-en")
    return nlp


@pytest.mark.parametrize("text,expected", HAND_CHECKED)
def test_hand_checked_sentences(english, text, expected):
    assert pg.extract_lemmas(english, [text], progress=False) == [expected]


def test_claws5_mapping():
    assert pg.claws5_to_upos("VVG") == "VERB" and pg.claws5_to_upos("VBZ") == "AUX"
    assert pg.claws5_to_upos("AJ0-NN1") == "ADJ" and pg.claws5_to_upos("???") == "X"
    # Every tag maps into the universal POS set, and the kept classes are all reachable.
    upos = set(pg.CLAWS5_TO_UPOS.values())
    assert set(pg.KEPT_POS) <= upos
    with pytest.raises(pg.ConfigError, match="no offline pseudo-gloss pipeline"):
        pg.load_pipeline("auto", "fr")
