"""SynthSign: synthetic sign-language videos for the real PHOENIX14T or CSL-Daily sentences.

`python -m data_prep.synthsign [--corpus phoenix14t|csl_daily] --out DIR --seed S [--max_per_split N]
[--max_glosses K]` writes a release-layout tree (PHOENIX14T: CSV + 210x260 PNG frames; CSL-Daily:
JPEG frame folders + GFSLT-style label files) plus per-video extras (hand trajectories, handshape
ids, a hand-motion description). See `writer.py` for the layout and the subset selection,
`lexicon.py` for how a gloss becomes a sign, `renderer.py` for the drawing.
"""

from data_prep.synthsign.corpus import load_corpus
from data_prep.synthsign.writer import generate, select_sentences

__all__ = ["generate", "load_corpus", "select_sentences"]
