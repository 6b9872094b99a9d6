"""The --config flag's errors (hfa_jax.config_cli): a misspelt field, a missing or broken config
file, a bad value give one line and exit status 2; Hypothesis drives the override parser with
misspelt and random field paths and values."""

from __future__ import annotations

import contextlib
import io
import sys
from unittest import mock

import pytest
from absl import flags
from hypothesis import given
from hypothesis import strategies as st
from ml_collections import config_flags

from hfa_jax import config_cli
from tests.hostile.fuzz import FUZZ, value_or_one_line

_CONFIG = '''
import ml_collections

def get_config(variant=None):
    if variant not in (None, "small"):
        raise ValueError(f"unknown variant {variant!r}; use small")
    c = ml_collections.ConfigDict()
    c.name = "t"
    c.train = ml_collections.ConfigDict(dict(lr=0.1, num_steps=10, init_from="", stage="pretrain"))
    c.data = ml_collections.ConfigDict(dict(max_frames=300, buckets=(16, 32), lang="de_DE"))
    c.eval = ml_collections.ConfigDict(dict(num_beams=4, max_new_tokens=64))
    return c
'''
FIELDS = ["name", "train.lr", "train.num_steps", "train.init_from", "train.stage", "data.max_frames", "data.buckets",
          "data.lang", "eval.num_beams", "eval.max_new_tokens"]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "exp.py"
    path.write_text(_CONFIG)
    return str(path)


def _parse(argv):
    """hfa_jax.main's flags on a fresh FlagValues -> (config, None) or (None, stderr line)."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, lock_config=True)
    flags.DEFINE_string("workdir", None, "output folder", flag_values=fv)
    err = io.StringIO()
    # (config_flags reads the overrides from sys.argv itself)
    with contextlib.redirect_stderr(err), mock.patch.object(sys, "argv", ["prog", *argv]):
        try:
            config_cli.parse_flags(["prog", *argv], fv)
            return fv["config"].value, None
        except SystemExit as e:
            assert e.code == 2
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()
    return None, lines[0]


def test_each_user_error_is_one_line(config_file, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import ml_collections\n\ndef get_config(:\n")
    raising = tmp_path / "raising.py"
    raising.write_text("def get_config():\n    return {}['data']\n")
    none = tmp_path / "none.py"
    none.write_text("def get_config():\n    pass\n")
    cases = {
        (f"--config={config_file}", "--config.train.nonexistent=1"):
            "--config.train.nonexistent: " + config_file + " has no field train.nonexistent; the closest field of "
            "config.train is --config.train.",
        (f"--config={config_file}", "--config.train.num_step=1"): "did you mean --config.train.num_steps?",
        (f"--config={config_file}", "--config.trian.lr=1"): "has no field trian; did you mean --config.train.lr?",
        (f"--config={config_file}", "--config.max_frames=1"): "did you mean --config.data.max_frames?",
        (f"--config={config_file}", "--config.train.lr.x=1"): "config.train.lr is a float, not a group of fields",
        (f"--config={config_file}", "--config.train.lr=fast"): "flag --config.train.lr=fast: could not convert",
        (f"--config={config_file}:large",): "exp.py, line 6: unknown variant 'large'; use small",
        ("--config=nowhere/exp.py",): "--config=nowhere/exp.py: no such file 'nowhere/exp.py'",
        ("--config=nowhere/exp.py", "--config.train.lr=1"): "no such file 'nowhere/exp.py'",
        (f"--config={broken}",): f"{broken}, line 3: invalid syntax",
        (f"--config={raising}",): f"{raising}, line 2: KeyError: 'data'",
        (f"--config={none}",): "get_config() returned None",
        (f"--config={config_file}", "--worksdir=x"): "Unknown command line flag 'worksdir'",
    }
    for argv, fragment in cases.items():
        config, line = _parse(list(argv))
        assert config is None and fragment in line, (argv, line)


def test_valid_overrides_still_apply(config_file):
    config, line = _parse([f"--config={config_file}:small", "--config.train.lr=0.5", "--config.data.lang=zh_CN",
                           "--workdir=/tmp/x"])
    assert line is None and config.train.lr == 0.5 and config.data.lang == "zh_CN" and config.train.num_steps == 10


def _typo(draw, word: str) -> str:
    i = draw(st.integers(0, len(word)))
    kind = draw(st.sampled_from(["drop", "add", "swap", "same"]))
    if kind == "drop" and i < len(word):
        return word[:i] + word[i + 1:]
    if kind == "add":
        return word[:i] + draw(st.sampled_from("aes_.x")) + word[i:]
    if kind == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return word


@st.composite
def _override(draw):
    if draw(st.integers(0, 3)) == 0:
        field = draw(st.text(st.sampled_from("abcdelnrst_.[]0"), min_size=1, max_size=14))
    else:
        field = _typo(draw, draw(st.sampled_from(FIELDS)))
    value = draw(st.one_of(st.sampled_from(["1", "0.5", "-3", "x", "True", "(1, 2)", "[]", "", "None", "1e999"]),
                           st.text(max_size=6)))
    return field, value


@FUZZ
@given(st.lists(_override(), min_size=1, max_size=3))
def test_any_override_gives_a_config_or_one_line(config_file, overrides):
    argv = [f"--config={config_file}"] + [f"--config.{f}={v}" for f, v in overrides]
    (config, line), _ = value_or_one_line(lambda: _parse(argv), max_bytes=64 << 20)
    unknown = [f for f, _ in overrides if f not in FIELDS and "[" not in f and not f.startswith(".")
               and not f.endswith(".") and ".." not in f]
    if config is not None:
        assert not unknown, unknown
    elif unknown and all(f in FIELDS or f in unknown for f, _ in overrides):
        assert "--config." in line or "flag --config" in line, line
