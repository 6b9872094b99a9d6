"""hfa_jax.metrics and the hfa_jax.evaluate CLI against independent implementations.

References: sacrebleu's own BLEU(max_ngram_order=n) and chrF, pycocoevalcap's Rouge (beta 1.2),
Google's rouge-score (rougeL F1), and a naive corpus BLEU written out below; inputs are real
PHOENIX14T dev references with perturbed hypotheses.
"""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF

from hfa_jax import evaluate
from hfa_jax.errors import ConfigError, DataError, cli_main
from hfa_jax.metrics import METRIC_KEYS, translation_metrics
from tests.text.conftest import load_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def refs():
    return [t for _, t in load_corpus()["dev"]]


def perturb(refs: list[str], seed: int = 0) -> list[str]:
    """Deterministic hypothesis-like corruptions: drops, swaps, substitutions, truncations, empties."""
    rng = np.random.default_rng(seed)
    vocab = sorted({w for r in refs for w in r.split()})
    out = []
    for i, r in enumerate(refs):
        w = r.split()
        kind = i % 7
        if kind == 0 and len(w) > 2:
            del w[int(rng.integers(len(w)))]
        elif kind == 1 and len(w) > 2:
            j = int(rng.integers(len(w) - 1))
            w[j], w[j + 1] = w[j + 1], w[j]
        elif kind == 2:
            for _ in range(3):
                w[int(rng.integers(len(w)))] = vocab[int(rng.integers(len(vocab)))]
        elif kind == 3:
            w = w[: max(1, len(w) // 2)]
        elif kind == 4:
            w = w + w[:3]
        elif kind == 5 and i % 35 == 5:
            w = []
        out.append(" ".join(w))
    return out


def naive_bleu(hyps: list[str], refs: list[str], n: int) -> float:
    """Corpus BLEU-n over whitespace tokens, NIST 'exp' smoothing, from the definition."""
    match, total = np.zeros(n), np.zeros(n)
    hl = rl = 0
    for h, r in zip(hyps, refs):
        h, r = h.split(), r.split()
        hl, rl = hl + len(h), rl + len(r)
        for k in range(1, n + 1):
            hc = collections.Counter(tuple(h[i:i + k]) for i in range(len(h) - k + 1))
            rc = collections.Counter(tuple(r[i:i + k]) for i in range(len(r) - k + 1))
            match[k - 1] += sum((hc & rc).values())
            total[k - 1] += sum(hc.values())
    logp, smooth = 0.0, 1.0
    for m, t in zip(match, total):
        if m == 0:
            smooth *= 2
            logp += math.log(1 / (smooth * t))
        else:
            logp += math.log(m / t)
    bp = 1.0 if hl >= rl else math.exp(1 - rl / hl)
    return 100 * bp * math.exp(logp / n)


def coco_rouge(hyps: list[str], refs: list[str]) -> float:
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    return 100 * Rouge().compute_score(gts, res)[0]


def google_rouge_f1(hyps: list[str], refs: list[str]) -> float:
    from rouge_score import rouge_scorer

    class Whitespace:  # rouge-score's default tokeniser drops non-ASCII letters (ä, ö, ü, ß)
        def tokenize(self, text):
            return text.split()

    sc = rouge_scorer.RougeScorer(["rougeL"], tokenizer=Whitespace())
    return 100 * float(np.mean([sc.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]))


@pytest.mark.parametrize("protocol", ["hfa", "plain", "asl"])
def test_word_protocols_match_references(refs, protocol):
    hyps = perturb(refs)
    got = translation_metrics(hyps, refs, protocol)
    suffix = " ." if protocol == "hfa" else ""
    ph = [(h + suffix).strip() for h in hyps]
    pr = [(r + suffix).strip() for r in refs]
    for n in range(1, 5):
        want = BLEU(max_ngram_order=n).corpus_score(ph, [pr]).score
        assert got[f"bleu{n}"] == pytest.approx(want, abs=1e-9), n
        assert got[f"bleu{n}"] == pytest.approx(naive_bleu(ph, pr, n), abs=1e-9), n
    # The score the HFA code logs: sacrebleu defaults with ' .' appended to both sides.
    if protocol == "hfa":
        hfa_code = BLEU().corpus_score([str(h) + " ." for h in hyps], [[str(r) + " ." for r in refs]])
        assert got["bleu4"] == pytest.approx(hfa_code.score, abs=1e-9)
    assert got["rouge_l"] == pytest.approx(coco_rouge(ph, pr), abs=1e-9)
    assert got["rouge_l_f1"] == pytest.approx(google_rouge_f1(ph, pr), abs=1e-9)
    assert got["chrf"] == pytest.approx(CHRF().corpus_score(ph, [pr]).score, abs=1e-9)
    assert 10 < got["bleu4"] < got["bleu3"] < got["bleu2"] < got["bleu1"] < 100
    assert got["rouge_l"] != got["rouge_l_f1"]


def test_protocols_differ_and_perfect_scores(refs):
    hyps = perturb(refs, seed=1)
    a, b = translation_metrics(hyps, refs, "hfa"), translation_metrics(hyps, refs, "plain")
    assert a["bleu4"] != b["bleu4"]  # the period is part of the protocol, not cosmetic
    perfect = translation_metrics(refs, refs)
    assert all(perfect[k] == pytest.approx(100.0) for k in METRIC_KEYS)
    zero = translation_metrics(["xyz"] * 3, ["a b c d", "e f g", "h i j"], "plain")
    assert zero["bleu1"] == zero["bleu4"] == zero["rouge_l"] == 0.0


def test_char_protocol_matches_sacrebleu_char(refs):
    hyps = perturb(refs[:120], seed=2) + ["今天 天气 很好", "下雨"]
    rr = refs[:120] + ["今天天气很好", "明天下雨"]
    got = translation_metrics(hyps, rr, "char")
    for n in range(1, 5):
        want = BLEU(tokenize="char", max_ngram_order=n).corpus_score(hyps, [rr]).score
        assert got[f"bleu{n}"] == pytest.approx(want, abs=1e-9)
    chars = lambda ts: [" ".join(t.replace(" ", "")) for t in ts]  # noqa: E731
    assert got["rouge_l"] == pytest.approx(coco_rouge(chars(hyps), chars(rr)), abs=1e-9)
    assert got["rouge_l_f1"] == pytest.approx(google_rouge_f1(chars(hyps), chars(rr)), abs=1e-9)


def test_bad_arguments():
    with pytest.raises(DataError, match="2 hypotheses but 1 references"):
        translation_metrics(["a", "b"], ["a"])
    with pytest.raises(DataError, match="no sentences"):
        translation_metrics([], [])
    with pytest.raises(ConfigError, match="unknown metric protocol 'bleu'"):
        translation_metrics(["a"], ["a"], protocol="bleu")
    with pytest.raises(DataError, match="one string"):
        translation_metrics("a b", "a b")
    with pytest.raises(DataError, match="hypothesis 1 is int"):
        translation_metrics(["a", 3], ["a", "b"])


# ----------------------------------------------------------------------------- CLI


def _write(path, text: str | bytes):
    mode = "wb" if isinstance(text, bytes) else "w"
    with open(path, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
        f.write(text)
    return str(path)


def test_cli_json_and_table(tmp_path, refs, capsys):
    hyps = perturb(refs)
    hp = _write(tmp_path / "hyp.txt", "\n".join(hyps) + "\n")
    rp = _write(tmp_path / "ref.txt", "\n".join(refs))  # no final newline: same count
    evaluate.main(["--hyp", hp, "--ref", rp, "--json"])
    got = json.loads(capsys.readouterr().out)
    want = translation_metrics(hyps, refs, "hfa")
    assert got["protocol"] == "hfa" and all(got[k] == pytest.approx(want[k]) for k in METRIC_KEYS)
    evaluate.main(["--hyp", hp, "--ref", rp, "--protocol", "plain"])
    table = capsys.readouterr().out
    assert "BLEU-4" in table and f"{translation_metrics(hyps, refs, 'plain')['bleu4']:7.2f}" in table


@pytest.mark.parametrize("case,pattern", [
    ("missing", "hypothesis file not found"),
    ("empty", "reference file is empty"),
    ("mismatch", "has 2 lines but .* has 3"),
    ("latin1", "line 2: not UTF-8"),
    ("protocol", "unknown metric protocol 'sacre'"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, case, pattern):
    good = _write(tmp_path / "good.txt", "a b c\nd e f\ng h\n")
    args = {"missing": [str(tmp_path / "nope.txt"), good],
            "empty": [good, _write(tmp_path / "empty.txt", "")],
            "mismatch": [_write(tmp_path / "two.txt", "a b\nc d\n"), good],
            "latin1": [_write(tmp_path / "l1.txt", "a b\nstra\xdfe\nc\n".encode("latin-1")), good],
            "protocol": [good, good]}[case]
    argv = ["--hyp", args[0], "--ref", args[1]] + (["--protocol", "sacre"] if case == "protocol" else [])
    with pytest.raises(SystemExit) as e:
        cli_main(evaluate.main)(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    import re

    assert re.search(pattern, err), err


def test_cli_subprocess_exit_code(tmp_path):
    good = _write(tmp_path / "good.txt", "a b c\n")
    r = subprocess.run([sys.executable, "-m", "hfa_jax.evaluate", "--hyp", good, "--ref",
                        str(tmp_path / "missing.txt")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "missing.txt" in r.stderr
