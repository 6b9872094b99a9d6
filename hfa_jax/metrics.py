"""Translation metrics under named protocols (docs/evaluation.md): BLEU-1..4, ROUGE-L, chrF.

Numbers are only comparable under one protocol, so every score is computed on texts prepared
by exactly one of:

* ``hfa`` (default; HFA, BeyondGloss, sltbaselines): " ." is appended to every hypothesis and
  reference (the authors' `Finetune_Model.py` adds `' .'` to both sides before
  `sacrebleu.metrics.BLEU().corpus_score`), word tokens, sacrebleu's default 13a tokeniser.
* ``plain``: the texts as given (no period), 13a.
* ``asl`` (How2Sign, OpenASL, YouTube-ASL): the same preparation as ``plain``: sacrebleu's default
  signature (13a tokenisation, case kept), which is what the ASL baselines report as "BLEU"
  (YouTube-ASL and the How2Sign/OpenASL papers score with SacreBLEU); kept as its own name so a
  results table states the protocol it was scored under.
* ``char`` (CSL-Daily): NFKC-normalised, whitespace removed and every character is a token (as
  sacrebleu's `tokenize="char"` on NFKC text); BLEU with no further tokenisation. NFKC because the
  mBART tokenizer normalises every target that way (`nmt_nfkc`): a model can only write the ASCII
  `, ? ! :` for the full-width `，？！：` of CSL-Daily's references (docs/csl_daily.md).

All metrics of one call see the same prepared texts:

* ``bleu4``: sacrebleu corpus BLEU, defaults (exp smoothing, 13a / none for char): identical
  to `sacrebleu.metrics.BLEU().corpus_score(hyps, [refs]).score`, which is what the HFA code logs.
* ``bleu1..bleu3``: cumulative corpus BLEU-n = BP * exp(mean_{k<=n} log p_k), i.e. sacrebleu's
  `BLEU(max_ngram_order=n)`; the same definition as signjoey's `bleu()` (its sacrebleu fork
  returns the cumulative scores per order), which the SLT literature's BLEU-1..3 columns follow.
  The HFA code itself logs only BLEU-4. We compute all four from one set of sacrebleu n-gram
  statistics (orders <= n are the same whatever the maximum order).
* ``rouge_l``: ROUGE-L F with beta = 1.2, per sentence then averaged over the corpus: the
  coco-caption / nlg-eval variant (`pycocoevalcap.rouge.Rouge`, one reference) used by GFSLT-VLP,
  Sign2GPT and signjoey. Tokens = whitespace-separated words (characters for `char`).
* ``rouge_l_f1``: the same with beta = 1 (Google's `rouge-score` rougeL F-measure on the same
  tokens; its default tokeniser drops non-ASCII letters, so it is not used for German).
* ``chrf``: sacrebleu chrF (character 6-grams, beta 2) on the prepared texts.

All values are percentages (0..100). Pure Python + sacrebleu; no torch.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Sequence

from hfa_jax.errors import ConfigError, DataError

PROTOCOLS = ("hfa", "plain", "char", "asl")
METRIC_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "rouge_l_f1", "chrf")
ROUGE_BETA = 1.2  # coco-caption's Rouge() default


def prepare(texts: Sequence[str], protocol: str) -> list[str]:
    """Applies a protocol's text preparation (see module doc)."""
    if protocol == "hfa":
        return [(t.strip() + " .").lstrip() for t in texts]
    if protocol in ("plain", "asl"):
        return [t.strip() for t in texts]
    if protocol == "char":
        return [" ".join(c for c in unicodedata.normalize("NFKC", t) if not c.isspace()) for t in texts]
    raise ConfigError(f"unknown metric protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")


def _bleu_from_stats(correct: Sequence[int], total: Sequence[int], sys_len: int, ref_len: int,
                     n: int) -> float:
    """Cumulative BLEU-n with sacrebleu's 'exp' (NIST mteval-v13a) smoothing, in percent."""
    correct, total = list(correct[:n]), list(total[:n])
    if not any(correct):
        return 0.0
    bp = 1.0 if sys_len >= ref_len else (math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0)
    log_sum = 0.0
    smooth = 1.0
    for c, t in zip(correct, total):
        if t == 0:
            return 0.0  # no k-grams at all in the hypotheses: BLEU-n is 0 (sacrebleu: log 0)
        if c == 0:
            smooth *= 2  # each zero-match order halves the pseudo-count (mteval-v13a)
            p = 100.0 / (smooth * t)
        else:
            p = 100.0 * c / t
        log_sum += math.log(p)
    return bp * math.exp(log_sum / n)


def bleu_scores(hyps: Sequence[str], refs: Sequence[str], tokenize: str = "13a") -> dict[str, float]:
    """{'bleu1'..'bleu4'} for already prepared texts (corpus level, one reference each)."""
    from sacrebleu.metrics import BLEU

    # force=True only silences sacrebleu's "looks tokenized" warning (the hfa protocol's " .");
    # it does not change the score.
    res = BLEU(tokenize=tokenize, force=True).corpus_score(list(hyps), [list(refs)])
    return {f"bleu{n}": _bleu_from_stats(res.counts, res.totals, res.sys_len, res.ref_len, n)
            for n in range(1, 5)}


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyps: Sequence[str], refs: Sequence[str], beta: float = ROUGE_BETA) -> float:
    """Mean sentence-level ROUGE-L F_beta in percent over whitespace tokens (coco-caption)."""
    total = 0.0
    for h, r in zip(hyps, refs):
        th, tr = h.split(), r.split()
        lcs = _lcs(th, tr)
        if lcs == 0:
            continue
        p, rec = lcs / len(th), lcs / len(tr)
        total += (1 + beta**2) * p * rec / (rec + beta**2 * p)
    return 100.0 * total / len(hyps)


def translation_metrics(hypotheses: Sequence[str], references: Sequence[str],
                        protocol: str = "hfa") -> dict[str, float]:
    """Corpus metrics of hypotheses against one reference each.

    Returns {bleu1, bleu2, bleu3, bleu4, rouge_l, rouge_l_f1, chrf} in percent (see module doc).
    Raises DataError on a count mismatch or an empty corpus, ConfigError on an unknown protocol.
    """
    for what, texts in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(texts, str):
            raise DataError(f"{what} must be a list of sentences, got one string; wrap it in a list")
    hyps, refs = list(hypotheses), list(references)
    if len(hyps) != len(refs):
        raise DataError(f"{len(hyps)} hypotheses but {len(refs)} references; they must be aligned "
                        "one to one (same order, one sentence per line)")
    if not refs:
        raise DataError("no sentences to score; pass at least one hypothesis/reference pair")
    for what, texts in (("hypothesis", hyps), ("reference", refs)):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DataError(f"{what} {i} is {type(t).__name__}, not str; decode ids to text first")
    ph, pr = prepare(hyps, protocol), prepare(refs, protocol)
    from sacrebleu.metrics import CHRF

    out = bleu_scores(ph, pr, tokenize="none" if protocol == "char" else "13a")
    out["rouge_l"] = rouge_l(ph, pr, ROUGE_BETA)
    out["rouge_l_f1"] = rouge_l(ph, pr, 1.0)
    out["chrf"] = CHRF().corpus_score(ph, [pr]).score
    return {k: float(out[k]) for k in METRIC_KEYS}
