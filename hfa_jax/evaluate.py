"""Score a hypothesis file against a reference file.

    python -m hfa_jax.evaluate --hyp FILE --ref FILE [--protocol hfa|plain|char] [--json]

Both files: UTF-8, one sentence per line, aligned line by line (a final newline is optional).
Prints a table of BLEU-1..4, ROUGE-L (F, beta 1.2), ROUGE-L F1 and chrF (percent), or one JSON
object with `--json`. The protocols are documented in `hfa_jax.metrics`.
"""

from __future__ import annotations

import argparse
import json
import os

from hfa_jax.errors import ConfigError, DataError, cli_main
from hfa_jax.metrics import METRIC_KEYS, PROTOCOLS, translation_metrics

_LABELS = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4",
           "rouge_l": "ROUGE-L (F, beta=1.2)", "rouge_l_f1": "ROUGE-L F1", "chrf": "chrF"}


def read_lines(path: str, what: str) -> list[str]:
    """Lines of a UTF-8 text file without their line endings; DataError with the fix otherwise."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} file not found; pass an existing file with one sentence per line")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 (byte {data[e.start]:#04x}); "
                        "re-save the file as UTF-8") from e
    if text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark is not part of the first sentence
    lines = text.splitlines()
    if not lines:
        raise DataError(f"{path}: {what} file is empty; write one sentence per line")
    return lines


def evaluate_files(hyp_path: str, ref_path: str, protocol: str = "hfa") -> dict[str, float]:
    """Reads both files and returns `translation_metrics` of them."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown metric protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    hyps = read_lines(hyp_path, "hypothesis")
    refs = read_lines(ref_path, "reference")
    if len(hyps) != len(refs):
        raise DataError(f"{hyp_path} has {len(hyps)} lines but {ref_path} has {len(refs)}; "
                        "the files must be aligned one sentence per line")
    return translation_metrics(hyps, refs, protocol)


def format_table(scores: dict[str, float], protocol: str, n: int) -> str:
    rows = [f"protocol: {protocol}   sentences: {n}"]
    rows += [f"{_LABELS[k]:<22} {scores[k]:7.2f}" for k in METRIC_KEYS]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="BLEU-1..4, ROUGE-L and chrF of a hypothesis file.")
    p.add_argument("--hyp", required=True, help="hypotheses, UTF-8, one sentence per line")
    p.add_argument("--ref", required=True, help="references, UTF-8, aligned with --hyp")
    p.add_argument("--protocol", default="hfa",
                   help="hfa (' .' appended, 13a; default), plain (no period) or char (CSL-Daily)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    a = p.parse_args(argv)
    scores = evaluate_files(a.hyp, a.ref, a.protocol)
    if a.json:
        print(json.dumps({"protocol": a.protocol, **scores}))
    else:
        print(format_table(scores, a.protocol, len(read_lines(a.ref, "reference"))))


if __name__ == "__main__":
    cli_main(main)()
