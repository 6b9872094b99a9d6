"""The real corpus text shipped with the project (no video, only names/glosses/sentences).

SynthSign renders synthetic videos for exactly these sentences, so its splits, sample names, glosses
and translations are the real ones. Two corpora (`CORPORA`), each one table read from the package
so the demo runs without `../shared` or network (see PROVENANCE.txt beside each table):

* `phoenix14t`: `data_prep/resources/phoenix14t_text/phoenix14t.derived.tsv`, German,
  7096 / 519 / 642 sentences;
* `csl_daily`: `data_prep/resources/csl_daily_text/csl_daily.derived.tsv.gz`, Chinese,
  18400 / 1077 / 1176 sentences (gzip: CSL-Daily repeats each sentence for several signers, so
  the 2.4 MB table packs into 0.45 MB).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import pathlib
from typing import NamedTuple

from hfa_jax.errors import ConfigError, DataError

SPLITS = ("train", "dev", "test")
RESOURCES = pathlib.Path(__file__).resolve().parent.parent / "resources"
_HEADER = ["split", "name", "num_frames", "gloss", "translation"]


@dataclasses.dataclass(frozen=True)
class Corpus:
    """What SynthSign needs to know about a shipped corpus."""

    name: str  # "phoenix14t" | "csl_daily"
    table: pathlib.Path
    lang: str  # mBART language code of the translations
    char_text: bool  # True: a sentence's length is counted in characters (no spaces in the text)


CORPORA: dict[str, Corpus] = {
    "phoenix14t": Corpus("phoenix14t", RESOURCES / "phoenix14t_text" / "phoenix14t.derived.tsv", "de_DE", False),
    "csl_daily": Corpus("csl_daily", RESOURCES / "csl_daily_text" / "csl_daily.derived.tsv.gz", "zh_CN", True),
}


def get_corpus(name: str) -> Corpus:
    """The `Corpus` called `name`; ConfigError naming the choices otherwise."""
    if name not in CORPORA:
        raise ConfigError(f"unknown corpus {name!r}; use one of {', '.join(CORPORA)}")
    return CORPORA[name]


def text_length(text: str, char_text: bool) -> int:
    """Words of a sentence, or for a character-text corpus (Chinese) its non-space characters."""
    return sum(not c.isspace() for c in text) if char_text else len(text.split())


class CorpusEntry(NamedTuple):
    """One real sentence; unpacks as `(name, gloss, translation)` (the interface tuple)."""

    name: str  # official sample id, e.g. "25October_2010_Monday_tagesschau-17" or "S000000_P0000_T00"
    gloss: str  # space-separated glosses (PHOENIX14T train: complex annotation, dev/test: official orth)
    translation: str  # PHOENIX14T: lowercase, tokenised German, no final " ."; CSL-Daily: the Chinese sentence


class CorpusRow(NamedTuple):
    """A full row of the shipped table (adds the split and the real video's frame count)."""

    split: str
    name: str
    num_frames: int
    gloss: str
    translation: str


@functools.lru_cache(maxsize=4)
def load_table(path: str | None = None, corpus: str = "phoenix14t") -> tuple[CorpusRow, ...]:
    """All rows of a corpus table in file order (train, then dev, then test).

    `path` overrides the shipped table of `corpus` (a `.gz` path is decompressed).
    """
    p = pathlib.Path(path) if path is not None else get_corpus(corpus).table
    if not p.is_file():
        raise DataError(f"{p}: corpus table not found; reinstall the package (data_prep/resources is part of it)")
    opener = gzip.open if p.suffix == ".gz" else open
    rows: list[CorpusRow] = []
    with opener(p, "rt", encoding="utf-8", newline="\n") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header != _HEADER:
            raise DataError(f"{p}: header {header} is not {_HEADER}; restore the shipped file")
        for lineno, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 5 or fields[0] not in SPLITS or not fields[2].isdigit():
                raise DataError(f"{p}:{lineno}: malformed row (need split, name, num_frames, gloss, translation)")
            rows.append(CorpusRow(fields[0], fields[1], int(fields[2]), fields[3], fields[4]))
    return tuple(rows)


def load_corpus(path: str | None = None, corpus: str = "phoenix14t") -> dict[str, list[CorpusEntry]]:
    """Real sentences per split: `{split: [(name, gloss, translation), ...]}` in file order.

    Counts: phoenix14t train 7096, dev 519, test 642; csl_daily train 18400, dev 1077, test 1176.
    """
    out: dict[str, list[CorpusEntry]] = {s: [] for s in SPLITS}
    for r in load_table(path, corpus):
        out[r.split].append(CorpusEntry(r.name, r.gloss, r.translation))
    return out
