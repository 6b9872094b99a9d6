"""The real PHOENIX14T corpus text shipped with the project (no video, only names/glosses/sentences).

SynthSign renders synthetic videos for exactly these sentences, so its splits, sample names, glosses
and translations are the real PHOENIX14T ones. The table lives in
`data_prep/resources/phoenix14t_text/phoenix14t.derived.tsv` (see PROVENANCE.txt there); it is read
from the package so the demo runs without `../shared` or network.
"""

from __future__ import annotations

import functools
import pathlib
from typing import NamedTuple

from hfa_jax.errors import DataError

SPLITS = ("train", "dev", "test")
RESOURCE_DIR = pathlib.Path(__file__).resolve().parent.parent / "resources" / "phoenix14t_text"
CORPUS_FILE = RESOURCE_DIR / "phoenix14t.derived.tsv"
_HEADER = ["split", "name", "num_frames", "gloss", "translation"]


class CorpusEntry(NamedTuple):
    """One real PHOENIX14T sentence; unpacks as `(name, gloss, translation)` (the interface tuple)."""

    name: str  # official sample id, e.g. "25October_2010_Monday_tagesschau-17"
    gloss: str  # space-separated glosses (train: complex annotation, dev/test: official orth)
    translation: str  # lowercase, tokenised German, no final " ."


class CorpusRow(NamedTuple):
    """A full row of the shipped table (adds the split and the real video's frame count)."""

    split: str
    name: str
    num_frames: int
    gloss: str
    translation: str


@functools.lru_cache(maxsize=4)
def load_table(path: str | None = None) -> tuple[CorpusRow, ...]:
    """All rows of the corpus table in file order (train, then dev, then test)."""
    p = pathlib.Path(path) if path is not None else CORPUS_FILE
    if not p.is_file():
        raise DataError(f"{p}: corpus table not found; reinstall the package (data_prep/resources is part of it)")
    rows: list[CorpusRow] = []
    with open(p, encoding="utf-8", newline="\n") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header != _HEADER:
            raise DataError(f"{p}: header {header} is not {_HEADER}; restore the shipped file")
        for lineno, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 5 or fields[0] not in SPLITS or not fields[2].isdigit():
                raise DataError(f"{p}:{lineno}: malformed row (need split, name, num_frames, gloss, translation)")
            rows.append(CorpusRow(fields[0], fields[1], int(fields[2]), fields[3], fields[4]))
    return tuple(rows)


def load_corpus(path: str | None = None) -> dict[str, list[CorpusEntry]]:
    """Real PHOENIX14T sentences per split: `{split: [(name, gloss, translation), ...]}` in file order.

    Counts: train 7096, dev 519, test 642.
    """
    out: dict[str, list[CorpusEntry]] = {s: [] for s in SPLITS}
    for r in load_table(path):
        out[r.split].append(CorpusEntry(r.name, r.gloss, r.translation))
    return out
