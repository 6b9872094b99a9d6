"""Pseudo-glosses (Sign2GPT recipe, used by HFA; docs/text.md): extraction, vocabulary, targets, file I/O.

A pseudo-gloss is the lowercased lemma of a translation token whose universal POS is one of
NOUN, NUM, ADV, PRON, PROPN, ADJ, VERB. The HFA authors tag with spaCy's German pipeline
(`de_dep_news_trf`); no German spaCy model installs from PyPI, so when none is installed we use
an offline pipeline: spaCy's blank German tokeniser + HanTa (PyPI, bundles a German
tagger/lemmatiser) as a spaCy component, its STTS tags mapped to universal POS.

English (How2Sign, OpenASL, YouTube-ASL): HanTa's English model (``morphmodel_en.pgz``, in the
same PyPI package; trained on the BNC) tags with the CLAWS5 tag set and lemmatises offline; its
tags map to universal POS as UD English annotates them (``CLAWS5_TO_UPOS``): forms of *be*,
*have* and *do* and the modals are AUX (the tagger cannot tell a main-verb *do*/*have* from an
auxiliary, and neither carries a sign's content), possessive determiners PRON, ordinals ADJ.

Chinese (CSL-Daily): jieba's POS tagger (`jieba.posseg`, PyPI, dictionary and HMM model inside the
package), its ICTCLAS-style tags mapped to universal POS as UD Chinese annotates them
(`JIEBA_TO_UPOS`); a Chinese word has no inflection, so its lemma is the word itself.

Pseudo-gloss file (JSON, the contract in notes/INTERFACES.md)::

    {"vocab": [sorted lemmas ...],                 # class id = index + 1 (1..V)
     "targets": {"<split>/<name>": [class ids]},   # sorted, unique; lemmas outside vocab dropped
     "meta": {...}}                                # how it was made

Class 0 is the "blank" class whose prototype is the fixed zero vector; it is never a target.

spaCy is imported lazily inside the extraction functions: it pulls in torch through thinc when
torch is installed, and runtime code must not import torch (`load_pseudo_glosses` and
`multi_hot` stay light).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from hfa_jax.errors import ConfigError, DataError

KEPT_POS = ("NOUN", "NUM", "ADV", "PRON", "PROPN", "ADJ", "VERB")
SPACY_MODELS = ("de_core_news_lg", "de_dep_news_trf")
SPLITS = ("train", "dev", "test")
HANTA_MODEL = "morphmodel_ger.pgz"
HANTA_MODELS = {"de": HANTA_MODEL, "en": "morphmodel_en.pgz"}  # language -> HanTa model file
LANGUAGES = tuple(HANTA_MODELS)

# STTS (as HanTa writes it at taglevel 1, e.g. "VV(FIN)", "ADJ(A)") -> universal POS. Follows the
# UD German / spaCy TIGER conversion: modal and auxiliary verbs are AUX, attributive pronouns DET,
# pronominal adverbs ADV, separable verb particles ADP. HanTa extras: NNA/NNI (nominalised
# adjectives / indeclinable nouns) -> NOUN.
STTS_TO_UPOS: dict[str, str] = {
    "ADJA": "ADJ", "ADJD": "ADJ", "ADJ": "ADJ",
    "ADV": "ADV", "PROAV": "ADV", "PAV": "ADV", "PWAV": "ADV",
    "APPR": "ADP", "APPRART": "ADP", "APPO": "ADP", "APZR": "ADP", "PTKVZ": "ADP",
    "ART": "DET", "PDAT": "DET", "PIAT": "DET", "PIDAT": "DET", "PPOSAT": "DET", "PRELAT": "DET",
    "PWAT": "DET",
    "CARD": "NUM",
    "FM": "X", "XY": "X", "TRUNC": "X",
    "ITJ": "INTJ",
    "KOUI": "SCONJ", "KOUS": "SCONJ",
    "KON": "CCONJ", "KOKOM": "CCONJ",
    "NN": "NOUN", "NNA": "NOUN", "NNI": "NOUN",
    "NE": "PROPN", "NNE": "PROPN",
    "PDS": "PRON", "PIS": "PRON", "PPER": "PRON", "PPOSS": "PRON", "PRELS": "PRON", "PRF": "PRON",
    "PWS": "PRON",
    "PTKA": "PART", "PTKANT": "PART", "PTKNEG": "PART", "PTKZU": "PART",
    "VVFIN": "VERB", "VVIMP": "VERB", "VVINF": "VERB", "VVIZU": "VERB", "VVPP": "VERB",
    "VAFIN": "AUX", "VAIMP": "AUX", "VAINF": "AUX", "VAPP": "AUX",
    "VMFIN": "AUX", "VMINF": "AUX", "VMPP": "AUX",
    "$,": "PUNCT", "$.": "PUNCT", "$(": "PUNCT",
}


# CLAWS5 (the BNC tag set, as HanTa's English model writes it) -> universal POS, following UD
# English: be/have/do and modals are AUX; possessive determiners (DPS: my, your) and existential
# "there" (EX0) PRON; ordinals (ORD) ADJ; adverb particles of phrasal verbs (AVP: up, off) ADP;
# infinitive "to", "not" and the genitive 's PART. Ambiguity tags ("AJ0-NN1") use their first tag.
CLAWS5_TO_UPOS: dict[str, str] = {
    "AJ0": "ADJ", "AJC": "ADJ", "AJS": "ADJ", "ORD": "ADJ",
    "AT0": "DET", "DT0": "DET", "DTQ": "DET",
    "AV0": "ADV", "AVQ": "ADV", "AVP": "ADP",
    "CJC": "CCONJ", "CJS": "SCONJ", "CJT": "SCONJ",
    "CRD": "NUM",
    "DPS": "PRON", "EX0": "PRON", "PNI": "PRON", "PNP": "PRON", "PNQ": "PRON", "PNX": "PRON",
    "ITJ": "INTJ",
    "NN0": "NOUN", "NN1": "NOUN", "NN2": "NOUN",
    "NP0": "PROPN",
    "POS": "PART", "TO0": "PART", "XX0": "PART",
    "PRF": "ADP", "PRP": "ADP",
    "PUL": "PUNCT", "PUN": "PUNCT", "PUQ": "PUNCT", "PUR": "PUNCT",
    "VBB": "AUX", "VBD": "AUX", "VBG": "AUX", "VBI": "AUX", "VBN": "AUX", "VBZ": "AUX",
    "VDB": "AUX", "VDD": "AUX", "VDG": "AUX", "VDI": "AUX", "VDN": "AUX", "VDZ": "AUX",
    "VHB": "AUX", "VHD": "AUX", "VHG": "AUX", "VHI": "AUX", "VHN": "AUX", "VHZ": "AUX",
    "VM0": "AUX",
    "VVB": "VERB", "VVD": "VERB", "VVG": "VERB", "VVI": "VERB", "VVN": "VERB", "VVZ": "VERB",
    "UNC": "X", "ZZ0": "X",
}


def claws5_to_upos(tag: str) -> str:
    """'VVG' -> 'VERB'; 'AJ0-NN1' -> 'ADJ'; unknown tags -> 'X'."""
    return CLAWS5_TO_UPOS.get(tag.split("-")[0], "X")


# jieba (ICTCLAS / PKU tag set, as jieba.posseg writes it) -> universal POS, following UD Chinese:
# time words and place words are nouns, localisers (方位词: 上, 里, 附近) adpositions, classifiers
# nouns (UD: NOUN with the `clf` relation), distinguishing and status words adjectives, structural
# and modal particles (的, 了, 吗) particles; jieba's `x` is what it does not know (punctuation).
JIEBA_TO_UPOS: dict[str, str] = {
    "n": "NOUN", "ng": "NOUN", "nl": "NOUN", "s": "NOUN", "t": "NOUN", "tg": "NOUN", "q": "NOUN",
    "vn": "NOUN", "an": "NOUN",
    "nr": "PROPN", "nrfg": "PROPN", "nrt": "PROPN", "ns": "PROPN", "nt": "PROPN", "nz": "PROPN", "j": "PROPN",
    "v": "VERB", "vd": "VERB", "vg": "VERB", "vi": "VERB", "vq": "VERB", "i": "VERB", "l": "VERB",
    "a": "ADJ", "ag": "ADJ", "b": "ADJ", "z": "ADJ", "zg": "ADJ",
    "ad": "ADV", "d": "ADV", "df": "ADV", "dg": "ADV",
    "m": "NUM", "mg": "NUM", "mq": "NUM",
    "r": "PRON", "rg": "PRON", "rr": "PRON", "rz": "PRON",
    "f": "ADP", "p": "ADP",
    "c": "CCONJ",
    "u": "PART", "ud": "PART", "ug": "PART", "uj": "PART", "ul": "PART", "uv": "PART", "uz": "PART",
    "y": "PART", "yg": "PART", "h": "PART", "k": "PART",
    "e": "INTJ", "o": "INTJ",
    "eng": "X", "x": "PUNCT", "w": "PUNCT",
}


def jieba_to_upos(tag: str) -> str:
    """'vn' -> 'NOUN'; unknown tags -> 'X'."""
    return JIEBA_TO_UPOS.get(tag, "X")


def stts_to_upos(tag: str) -> str:
    """'VV(FIN)' -> 'VERB'; unknown tags -> 'X'."""
    return STTS_TO_UPOS.get(tag.replace("(", "").replace(")", ""), "X")


# ------------------------------------------------------------------------------------------------
# Corpus text
# ------------------------------------------------------------------------------------------------


def read_corpus_text(root: str, splits: Sequence[str] = SPLITS) -> dict[str, str]:
    """{"split/name": translation} of a PHOENIX14T or SynthSign tree (official layout), text only.

    Splits whose annotation CSV is missing raise DataError (name the splits you have).
    """
    from hfa_jax.data.annotations import read_phoenix14t

    out: dict[str, str] = {}
    for split in splits:
        for rec in read_phoenix14t(root, split, check_frames=False):
            out[f"{split}/{rec.name}"] = rec.translation
    return out


def parse_splits(text: str) -> tuple[str, ...]:
    """'train,dev' -> ('train', 'dev'); ConfigError on an unknown split."""
    splits = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in splits if s not in SPLITS]
    if not splits or bad:
        raise ConfigError(f"--splits {text!r}: use a comma-separated subset of {','.join(SPLITS)}")
    return splits


# ------------------------------------------------------------------------------------------------
# Extraction
# ------------------------------------------------------------------------------------------------


def _hanta_component_factory():
    """Registers the `hanta_tagger` spaCy component once (lazy: imports spaCy and HanTa)."""
    from spacy.language import Language

    if "hanta_tagger" in Language.factories:
        return

    @Language.factory("hanta_tagger", default_config={"model": HANTA_MODEL})
    def create_hanta(nlp, name, model):
        # HanTa ships its model as a gzip pickle inside the installed package (trusted as much as
        # the package itself); nothing user-supplied is unpickled here.
        from HanTa import HanoverTagger

        tagger = HanoverTagger.HanoverTagger(model)
        to_upos = claws5_to_upos if model == HANTA_MODELS["en"] else stts_to_upos

        def component(doc):
            words = [t.text for t in doc]
            if not words:
                return doc
            for tok, (_, lemma, tag) in zip(doc, tagger.tag_sent(words, taglevel=1)):
                tok.tag_ = tag
                tok.pos_ = to_upos(tag)
                tok.lemma_ = lemma
            return doc

        return component


def load_pipeline(name: str = "auto", language: str = "de"):
    """Returns (nlp, description). `name`: "auto" (German: the first installed of
    `de_core_news_lg`, `de_dep_news_trf`, else HanTa; English: HanTa), "hanta", or an installed
    spaCy pipeline name. `language`: "de" or "en" (the HanTa model and spaCy's tokeniser)."""
    import spacy

    if language not in HANTA_MODELS:
        raise ConfigError(f"no offline pseudo-gloss pipeline for language {language!r}; use one "
                          f"of {', '.join(LANGUAGES)} or pass an installed spaCy pipeline name")
    if language == "en" and name in ("auto", "hanta"):
        _hanta_component_factory()
        nlp = spacy.blank("en")
        nlp.add_pipe("hanta_tagger", config={"model": HANTA_MODELS["en"]})
        from importlib.metadata import version

        return nlp, f"hanta-{version('HanTa')}-en+spacy-{version('spacy')}-blank-en"

    if name not in ("auto", "hanta"):
        try:
            return spacy.load(name), f"spacy:{name}"
        except OSError as e:
            raise ConfigError(f"spaCy pipeline {name!r} is not installed; install it or use "
                              "--pipeline hanta (offline)") from e
    if name == "auto":
        for model in SPACY_MODELS:
            try:
                return spacy.load(model), f"spacy:{model}"
            except OSError:
                continue
    _hanta_component_factory()
    nlp = spacy.blank("de")
    nlp.add_pipe("hanta_tagger")
    from importlib.metadata import version

    return nlp, f"hanta-{version('HanTa')}+spacy-{version('spacy')}-blank-de"


def load_jieba(cache_dir: str | None = None):
    """A jieba POS tagger (``jieba.posseg.POSTokenizer``) and its description.

    jieba caches its prefix dictionary as a `marshal` file, by default in the shared temp folder;
    we keep it in ``cache_dir`` (default ``~/.cache/hfa_jax/jieba``, created private) so no file
    another user could write is ever loaded.
    """
    import logging

    try:
        import jieba
        import jieba.posseg
    except ImportError as e:
        raise ConfigError("Chinese pseudo-glosses need jieba: pip install jieba==0.42.1") from e
    from importlib.metadata import version

    jieba.setLogLevel(logging.WARNING)
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "hfa_jax", "jieba")
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    tok = jieba.Tokenizer()
    tok.tmp_dir = cache_dir
    return jieba.posseg.POSTokenizer(tok), f"jieba-{version('jieba')}-posseg"


def extract_words_zh(tagger, texts: Sequence[str], *, progress: bool = True) -> list[list[str]]:
    """Lowercased words of the KEPT_POS tokens of each Chinese text, in order (repeats kept).

    ``tagger``: from :func:`load_jieba`. HMM on (jieba's default), so new words are found too.
    """
    from tqdm import tqdm

    out = []
    for t in tqdm(texts, desc="pseudo-glosses", unit="sent", mininterval=2.0,
                  disable=not progress or len(texts) < 500):
        out.append([p.word.lower() for p in tagger.cut(t)
                    if jieba_to_upos(p.flag) in KEPT_POS and p.word.strip()])
    return out


def extract_lemmas(nlp, texts: Sequence[str], *, progress: bool = True) -> list[list[str]]:
    """Lowercased lemmas of the KEPT_POS tokens of each text, in order (repeats kept)."""
    from tqdm import tqdm

    out = []
    docs = nlp.pipe(texts, batch_size=256)
    for doc in tqdm(docs, total=len(texts), desc="pseudo-glosses", unit="sent", mininterval=2.0,
                    disable=not progress or len(texts) < 500):
        out.append([t.lemma_.lower() for t in doc if t.pos_ in KEPT_POS and t.lemma_.strip()])
    return out


def read_reference_csv(csv_dir: str, splits: Sequence[str] = SPLITS) -> dict[str, list[str]]:
    """The HFA authors' pseudo-glosses: `csv_dir/pseudo_gloss_{split}.csv` (name,text,pseudo_gloss;
    name = "split/<sample>"), lowercased as their loader does -> {"split/name": lemmas}."""
    out: dict[str, list[str]] = {}
    for split in splits:
        path = os.path.join(csv_dir, f"pseudo_gloss_{split}.csv")
        if not os.path.isfile(path):
            raise DataError(f"{path}: reference pseudo-gloss file missing; pass the folder holding "
                            f"pseudo_gloss_{{train,dev,test}}.csv")
        try:
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or not {"name", "pseudo_gloss"} <= set(reader.fieldnames):
                    raise DataError(f"{path}: line 1: header must contain name,text,pseudo_gloss")
                for row in reader:
                    name = row["name"].strip()
                    if "/" not in name:
                        name = f"{split}/{name}"
                    out[name] = (row["pseudo_gloss"] or "").lower().split()
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); re-save as UTF-8") from e
    return out


# ------------------------------------------------------------------------------------------------
# Vocabulary and targets
# ------------------------------------------------------------------------------------------------


def build_vocab(lemmas: Iterable[Sequence[str]], max_doc_freq: float | None = None) -> list[str]:
    """Sorted distinct lemmas (deterministic ids, unlike the reference's `set` order).

    max_doc_freq: drop lemmas that occur in at least this fraction of the sentences (Sign2GPT
    drops those in >= 40%); None keeps all.
    """
    docs = [set(ls) for ls in lemmas]
    df = collections.Counter(l for d in docs for l in d)
    if max_doc_freq is not None:
        if not 0.0 < max_doc_freq <= 1.0:
            raise ConfigError(f"max_doc_freq={max_doc_freq}: use a fraction in (0, 1]")
        limit = max_doc_freq * len(docs)
        return sorted(l for l, c in df.items() if c < limit)
    return sorted(df)


def make_targets(lemmas_by_key: Mapping[str, Sequence[str]], vocab: Sequence[str]) -> dict[str, list[int]]:
    """{"split/name": sorted unique class ids (1..V)}; lemmas outside `vocab` are dropped."""
    index = {l: i + 1 for i, l in enumerate(vocab)}
    return {k: sorted({index[l] for l in ls if l in index}) for k, ls in sorted(lemmas_by_key.items())}


@dataclasses.dataclass(frozen=True)
class PseudoGlosses:
    """A loaded pseudo-gloss file. `vocab[i]` is class i+1; `targets` maps "split/name" to ids."""

    vocab: tuple[str, ...]
    targets: dict[str, tuple[int, ...]]
    meta: dict
    path: str = ""

    @property
    def num_classes(self) -> int:
        """V (the prototype table has V + 1 rows: row 0 is the blank class)."""
        return len(self.vocab)

    def check_keys(self, keys: Iterable[str], where: str = "the dataset") -> None:
        """DataError unless every dataset key ("split/name") has targets in this file."""
        keys = list(keys)
        missing = [k for k in keys if k not in self.targets]
        if missing:
            raise DataError(
                f"{self.path or 'pseudo-gloss file'}: {len(missing)} of {len(keys)} videos of "
                f"{where} have no pseudo-gloss targets (first: {missing[0]!r}); the file was built "
                "for another corpus: rebuild it with python -m data_prep.pseudo_glosses --root ...")

    def multi_hot(self, keys: Sequence[str]) -> np.ndarray:
        """[N, V+1] float32 BCE targets for `keys`; column 0 (blank) is always 0."""
        self.check_keys(keys)
        return multi_hot([self.targets[k] for k in keys], self.num_classes)


def multi_hot(ids: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """ids per row (1..V) -> [N, V+1] float32 multi-hot; column 0 (blank) stays 0."""
    out = np.zeros((len(ids), num_classes + 1), np.float32)
    for i, row in enumerate(ids):
        out[i, list(row)] = 1.0
    out[:, 0] = 0.0
    return out


def save_pseudo_glosses(path: str, vocab: Sequence[str], targets: Mapping[str, Sequence[int]],
                        meta: Mapping) -> None:
    """Writes the JSON file (UTF-8, lemmas unescaped)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"vocab": list(vocab), "targets": {k: list(v) for k, v in targets.items()},
                   "meta": dict(meta)}, f, ensure_ascii=False)
        f.write("\n")


def load_pseudo_glosses(path: str, expected_keys: Iterable[str] | None = None) -> PseudoGlosses:
    """Loads and validates a pseudo-gloss JSON file; with `expected_keys` ("split/name" of the
    dataset) also checks that it belongs to that dataset. Raises DataError with the fix."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: pseudo-gloss file missing; build it with "
                        "python -m data_prep.pseudo_glosses --root ROOT --out FILE.json")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); rebuild the file") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: not valid JSON ({e.msg}); rebuild the file") from e
    if not isinstance(d, dict) or not {"vocab", "targets"} <= set(d):
        raise DataError(f"{path}: not a pseudo-gloss file (needs keys 'vocab' and 'targets'); "
                        "rebuild it with python -m data_prep.pseudo_glosses")
    vocab = d["vocab"]
    if not isinstance(vocab, list) or not all(isinstance(v, str) for v in vocab):
        raise DataError(f"{path}: 'vocab' must be a list of lemmas; rebuild the file")
    if vocab != sorted(set(vocab)):
        raise DataError(f"{path}: 'vocab' is not sorted and unique, so class ids are not the "
                        "deterministic ones; rebuild the file")
    v = len(vocab)
    targets: dict[str, tuple[int, ...]] = {}
    for k, ids in d["targets"].items():
        if not isinstance(ids, list) or not all(isinstance(i, int) and 1 <= i <= v for i in ids):
            raise DataError(f"{path}: targets[{k!r}] must be class ids in 1..{v}; rebuild the file")
        targets[k] = tuple(ids)
    pg = PseudoGlosses(tuple(vocab), targets, dict(d.get("meta", {})), path)
    if expected_keys is not None:
        pg.check_keys(expected_keys)
    return pg


# ------------------------------------------------------------------------------------------------
# Agreement with a reference extraction
# ------------------------------------------------------------------------------------------------


def agreement(hyp: Mapping[str, Sequence[str]], ref: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Token agreement of two extractions over their common keys.

    Returns `micro_f1` (multiset overlap summed over sentences), `mean_sentence_f1` (mean of the
    per-sentence multiset F1; two empty sentences count as 1), `vocab_jaccard` (|A∩B|/|A∪B| of
    the distinct lemma sets), `hyp_vocab`, `ref_vocab`, `sentences`.
    """
    keys = sorted(set(hyp) & set(ref))
    if not keys:
        raise DataError("the two pseudo-gloss extractions share no sentence keys; compare the same corpus")
    tp = n_h = n_r = 0
    f1s = []
    for k in keys:
        h, r = collections.Counter(hyp[k]), collections.Counter(ref[k])
        ov = sum((h & r).values())
        lh, lr = sum(h.values()), sum(r.values())
        tp, n_h, n_r = tp + ov, n_h + lh, n_r + lr
        f1s.append(1.0 if lh == lr == 0 else 2 * ov / (lh + lr))
    hv = {l for k in keys for l in hyp[k]}
    rv = {l for k in keys for l in ref[k]}
    return {
        "micro_f1": 2 * tp / (n_h + n_r) if n_h + n_r else 1.0,
        "mean_sentence_f1": float(np.mean(f1s)),
        "vocab_jaccard": len(hv & rv) / len(hv | rv) if hv | rv else 1.0,
        "hyp_vocab": float(len(hv)),
        "ref_vocab": float(len(rv)),
        "sentences": float(len(keys)),
    }
