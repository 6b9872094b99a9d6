"""Shared fixtures for the text-side tests: real PHOENIX14T text copied into tests/resources/text."""

from __future__ import annotations

import csv
import os

import pytest

RES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources", "text")
GFSLT_TOKENIZER = os.path.join(RES, "mbart-trimmed-gfslt")
PSEUDO_GLOSS_HFA = os.path.join(RES, "pseudo-gloss-hfa")
HEADER = "name|video|start|end|speaker|orth|translation"


def load_corpus() -> dict[str, list[tuple[str, str]]]:
    """{split: [(name, translation), ...]} of all PHOENIX14T sentences, in file order."""
    out: dict[str, list[tuple[str, str]]] = {"train": [], "dev": [], "test": []}
    with open(os.path.join(RES, "phoenix14t_text.tsv"), encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            out[row["split"]].append((row["name"], row["translation"]))
    return out


def write_tree(root: str, corpus: dict[str, list[tuple[str, str]]]) -> str:
    """Official PHOENIX14T annotation layout (text only, no frames) under `root`."""
    d = os.path.join(root, "annotations", "manual")
    os.makedirs(d, exist_ok=True)
    for split, rows in corpus.items():
        with open(os.path.join(d, f"PHOENIX-2014-T.{split}.corpus.csv"), "w", encoding="utf-8") as f:
            f.write(HEADER + "\n")
            for name, text in rows:
                f.write(f"{name}|{name}/1/*.png|-1|-1|Signer01|X|{text}\n")
    return root


@pytest.fixture(scope="session")
def corpus():
    return load_corpus()


@pytest.fixture(scope="session")
def phoenix_root(tmp_path_factory, corpus):
    """The whole real PHOENIX14T text (7096/519/642) as an official-layout tree."""
    return write_tree(str(tmp_path_factory.mktemp("phoenix14t")), corpus)
