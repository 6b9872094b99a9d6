"""Chinese pseudo-glosses (jieba, tags mapped to universal POS) on real CSL-Daily text."""

from __future__ import annotations

import gzip
import os
import pickle

import pytest

from data_prep import pseudo_glosses as pg_tool
from data_prep.prototypes import segment_zh
from hfa_jax.data.safe_pickle import load_gzip_pickle
from hfa_jax.text import pseudo_glosses as pg

pytest.importorskip("jieba")

LABELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources", "csl-daily")


@pytest.fixture(scope="module")
def tagger():
    return pg.load_jieba()[0]


@pytest.fixture(scope="module")
def labels():
    return {s: load_gzip_pickle(os.path.join(LABELS, f"labels.{s}")) for s in ("train", "dev", "test")}


def test_kept_words_of_real_sentences(tagger):
    # real CSL-Daily test sentences; pronouns, time nouns, verbs, nouns, numerals and adverbs are
    # kept; particles (的 了 吗), localisers / prepositions (上 在 被) and punctuation are not
    got = pg.extract_words_zh(tagger, ["我今天想吃面条。", "我的手机在地铁上被偷了。", "你们喜欢看弹幕吗？",
                                       "附近有很多好吃的饭店。"], progress=False)
    assert got == [["我", "今天", "想", "吃", "面条"], ["我", "手机", "地铁", "偷"], ["你们", "喜欢", "看", "弹幕"],
                   ["有", "很多", "好吃", "饭店"]]
    assert set(pg.KEPT_POS) <= set(pg.JIEBA_TO_UPOS.values())


def test_every_tag_jieba_writes_on_csl_daily_dev_is_mapped(tagger, labels):
    flags = {p.flag for v in labels["dev"].values() for p in tagger.cut(v["text"])}
    assert flags and flags <= set(pg.JIEBA_TO_UPOS), sorted(flags - set(pg.JIEBA_TO_UPOS))


def test_pseudo_gloss_file_for_csl_daily(tmp_path, labels, tagger, monkeypatch):
    # a 300-video sample of each split, written as CSL-Daily label files
    sample = tmp_path / "labels"
    sample.mkdir()
    for split, d in labels.items():
        part = dict(list(d.items())[:300])
        (sample / f"labels.{split}").write_bytes(gzip.compress(pickle.dumps(part)))
    monkeypatch.setattr(pg, "load_jieba", lambda *a, **k: (tagger, "jieba-test"))
    out = tmp_path / "pg.json"
    pg_tool.main(["--format", "csl_daily", "--labels", str(sample), "--out", str(out), "--compare_glosses",
                  "--no_progress"])
    f = pg.load_pseudo_glosses(str(out))
    keys = [f"{s}/{n}" for s, d in labels.items() for n in list(d)[:300]]
    f.check_keys(keys)
    assert len(f.targets) == 900 and list(f.vocab) == sorted(f.vocab)
    first = labels["train"]["S000000_P0000_T00"]["text"]  # 你们好！
    assert [f.vocab[i - 1] for i in f.targets["train/S000000_P0000_T00"]] == ["你们好"] and first == "你们好！"
    ag = f.meta["agreement_with_glosses"]  # measured: token F1 0.42 on all 20,653 sentences
    assert 0.3 < ag["micro_f1"] < 0.6
    # the prototype corpus uses the same segmentation
    assert segment_zh(["我今天想吃面条。"]) == ["我 今天 想 吃 面条 。"]
