"""The registry of source formats (hfa_jax/data/formats.py): one entry per corpus, read by every
data_prep tool and by model_folder; a format's text readers on the real sample files."""

from __future__ import annotations

import pathlib

import pytest

from hfa_jax.data import annotations, formats
from hfa_jax.errors import ConfigError

RES = pathlib.Path(__file__).resolve().parents[1] / "resources"
SAMPLE = RES / "phoenix14t" / "sample"
CSL = RES / "csl-daily"


def test_every_tool_offers_the_registry_as_its_format_choices():
    import data_prep.build_dataset as build_dataset

    assert formats.names() == ("csl_daily", "gfslt", "how2sign", "openasl", "phoenix14t", "youtube_asl")
    args, _ = build_dataset._parse_args(["--format", "gfslt", "--root", "r", "--out", "o"])
    assert args.format == "gfslt"
    with pytest.raises(SystemExit):  # argparse: an unknown format is refused with the choices
        build_dataset._parse_args(["--format", "bobsl", "--root", "r", "--out", "o"])
    with pytest.raises(ConfigError, match=r"unknown --format 'bobsl'; use one of csl_daily, gfslt, how2sign"):
        formats.get("bobsl")


def test_sentences_of_each_format_are_its_reader_s():
    phoenix = formats.get("phoenix14t").sentences(str(SAMPLE), None, "dev")
    assert phoenix == [r.translation for r in annotations.read_phoenix14t(str(SAMPLE), "dev", check_frames=False)]
    csl = formats.get("csl_daily").sentences(None, str(CSL), "dev")
    assert len(csl) == 1077 and csl[0] == "他今年四岁。"
    with pytest.raises(ConfigError, match="--format csl_daily needs --labels"):
        formats.get("csl_daily").sentences(None, None, "dev")
    with pytest.raises(ConfigError, match="--format phoenix14t needs --root"):
        formats.get("phoenix14t").sentences(None, None, "dev")


def test_model_folder_reads_the_source_videos_from_the_registry():
    assert (formats.of_dataset("csl_daily").fps, formats.of_dataset("csl_daily").width) == (30.0, 512)
    # a dataset written under another name (build_dataset --name) is taken for PHOENIX14T
    assert formats.of_dataset("my_corpus") is formats.FORMATS["phoenix14t"]
    assert formats.get("csl_daily").lang == "zh_CN" and formats.get("gfslt").lang == "de_DE"
