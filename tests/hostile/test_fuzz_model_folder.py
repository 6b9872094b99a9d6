"""The JSON files of an exported model folder and of a workdir (hfa_jax.model_folder): `{}`,
`[]`, wrong types, missing keys and absurd numbers give one line naming the file and the key;
Hypothesis replaces whole files, single keys, or the bytes, and a folder that still loads must
hold what the checks promise."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save_file

from hfa_jax import model_folder
from hfa_jax.errors import CheckpointError, ConfigError
from tests.hostile.fuzz import FUZZ, value_or_one_line

GOOD = {
    "config.json": {"name": "t", "data": {"buckets": [32], "lang": "de_DE"},
                    "eval": {"num_beams": 2, "max_new_tokens": 16, "length_penalty": 1.0}},
    "hfa_export.json": {"format": 1, "model": {}, "step": 3},
    "preprocessing.json": {"fps": 25.0, "source_width": 210, "source_height": 260, "size": 256, "crop_size": 224,
                           "max_frames": 300, "frame_selection": "first"},
    "pseudo_glosses.json": {"vocab": ["<blank>", "a", "b", "c"], "exact": True},
}


def _folder(root: str, files: dict) -> str:
    """An exported model folder with these JSON files (dicts are dumped, bytes written as they
    are), tiny weights with a pretraining head of 3 prototypes, and a placeholder tokenizer."""
    os.makedirs(os.path.join(root, "tokenizer"), exist_ok=True)
    open(os.path.join(root, "tokenizer", "sentencepiece.bpe.model"), "wb").close()
    save_file({"params/x": np.zeros(2, np.float32), "pretrain_head/pg_head/w": np.ones(2, np.float32),
               "pretrain_head/prototypes": np.zeros((3, 4), np.float32)}, os.path.join(root, "model.safetensors"))
    for name, content in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(content if isinstance(content, bytes) else json.dumps(content).encode())
    return root


def test_a_good_folder_loads(tmp_path):
    b = model_folder.load_export(_folder(str(tmp_path), GOOD))
    assert b.step == 3 and list(b.config.data.buckets) == [32] and b.preprocessing.fps == 25.0
    assert b.pg_head.vocab == GOOD["pseudo_glosses.json"]["vocab"] and b.pg_head.prototypes.shape == (3, 4)


def _with(name, key, value):
    files = copy.deepcopy(GOOD)
    node = files[name]
    *parents, last = key.split(".")
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return files


_DELETE = object()

CASES = [  # (file, content or (key, value)), fragment of the message after the file name
    ("config.json", {}, "key 'data' is missing"),
    ("config.json", [], "holds a list, not a JSON object"),
    ("config.json", "x", 'holds "x", not a JSON object'),
    ("config.json", b"{nope", "not valid JSON"),
    ("config.json", b"\xff\xfe", "not valid JSON"),
    ("config.json", ("data", []), "key 'data' is a list, expected an object"),
    ("config.json", ("data.buckets", [0]), "key 'data.buckets' is a list, expected a non-empty list of positive"),
    ("config.json", ("eval.num_beams", _DELETE), "key 'eval.num_beams' is missing"),
    ("config.json", ("eval.num_beams", "4"), "key 'eval.num_beams' is \"4\", expected an integer in [1, 64]"),
    ("config.json", ("name", {"a.b": 1}), "cannot be a config (ConfigDict does not accept dots"),
    ("config.json", ("data.x", {"__init__": 1}), "cannot be a config ('__init__ cannot be overridden"),
    ("hfa_export.json", [], "holds a list, not a JSON object"),
    ("hfa_export.json", ("format", "1"), "key 'format' is \"1\", expected an integer"),
    ("hfa_export.json", ("format", 2), "model folder format 2 is not 1"),
    ("hfa_export.json", ("model", {"vit": {"width": "wide"}}),
     "key 'model.vit.width' is \"wide\", expected an integer"),
    ("hfa_export.json", ("model", {"vit": 5}), "key 'model' is not a model config"),
    ("preprocessing.json", ("fps", 1e9), "key 'fps' is 1000000000.0, expected a number in [1, 240]"),
    ("preprocessing.json", ("fps", True), "key 'fps' is true, expected a number"),
    ("preprocessing.json", ("size", 100000), "key 'size' is 100000, expected an integer in [8, 1024]"),
    ("preprocessing.json", ("max_frames", -1), "key 'max_frames' is -1"),
    ("preprocessing.json", ("crop_size", 512), "key 'crop_size' is 512, larger than key 'size' (256)"),
    ("preprocessing.json", ("frame_selection", "middle"), "key 'frame_selection' is \"middle\", expected one of"),
    ("preprocessing.json", {}, "key 'fps' is missing"),
    ("pseudo_glosses.json", ("vocab", ["a"]), "key 'vocab' has 1 names for 3 prototypes"),
    ("pseudo_glosses.json", ("exact", "yes"), "key 'exact' is \"yes\", expected true or false"),
]


@pytest.mark.parametrize("name,change,fragment", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_broken_file_is_one_line_naming_file_and_key(tmp_path, name, change, fragment):
    files = _with(name, *change) if isinstance(change, tuple) else {**GOOD, name: change}
    folder = _folder(str(tmp_path), files)
    with pytest.raises(CheckpointError) as e:
        model_folder.load_export(folder)
    msg = str(e.value)
    assert "\n" not in msg and fragment in msg, msg
    if "format" not in fragment:
        assert msg.startswith(os.path.join(folder, name)), msg


def test_a_workdir_config_json_of_the_wrong_shape_is_one_line(tmp_path):
    for content, fragment in (({}, "key 'data' is missing"), ([], "holds a list"),
                              ({**GOOD["config.json"], "model": {}, "train": {"stage": "finetune2"}},
                               "key 'data.tokenizer_dir' is missing")):
        (tmp_path / "config.json").write_text(json.dumps(content))
        with pytest.raises(ConfigError, match=fragment) as e:
            model_folder.read_config(str(tmp_path))
        assert str(e.value).startswith(str(tmp_path / "config.json")) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- property-based
_json = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
                         st.text(max_size=6) | st.sampled_from(["a.b", "__init__", "keys", "", "lock", "data"]),
                         kids, max_size=4),
                     max_leaves=10)


def _keys(d, prefix=""):
    for k, v in d.items():
        yield prefix + k
        if isinstance(v, dict):
            yield from _keys(v, prefix + k + ".")


@st.composite
def _changes(draw):
    name = draw(st.sampled_from(sorted(GOOD)))
    kind = draw(st.sampled_from(["key", "key", "key", "file", "bytes"]))
    if kind == "file":
        return {**GOOD, name: draw(_json)}
    if kind == "bytes":
        return {**GOOD, name: draw(st.binary(max_size=40))}
    key = draw(st.sampled_from(sorted(_keys(GOOD[name]))))
    return _with(name, key, _DELETE if draw(st.integers(0, 5)) == 0 else draw(_json))


_ROOT = tempfile.mkdtemp(prefix="hfa_fuzz_folder_")


@FUZZ
@given(_changes())
def test_any_model_folder_json_gives_a_bundle_or_one_line(files):
    folder = os.path.join(_ROOT, "m")
    shutil.rmtree(folder, ignore_errors=True)
    _folder(folder, files)
    b, msg = value_or_one_line(lambda: model_folder.load_export(folder), max_bytes=16 << 20, names=(folder,))
    if b is not None:  # what loaded is within what the checks promise (ranges written out again here)
        p = b.preprocessing
        assert 1 <= p.fps <= 240 and 8 <= p.crop_size <= p.size <= 1024 and 1 <= p.max_frames <= 10_000
        assert 1 <= p.source_width <= 16384 and 1 <= p.source_height <= 16384
        assert p.frame_selection in ("first", "random")
        assert all(type(x) is int and x > 0 for x in b.config.data.buckets) and b.config.data.buckets
        assert type(b.config.eval.num_beams) is int and 1 <= b.config.eval.num_beams <= 64
        assert type(b.config.eval.max_new_tokens) is int and 1 <= b.config.eval.max_new_tokens <= 4096
        assert isinstance(b.config.data.get("lang", "de_DE"), str)
        assert b.step is None or type(b.step) is int
        assert len(b.pg_head.vocab) == 4 and all(isinstance(v, str) for v in b.pg_head.vocab)


@FUZZ
@given(st.one_of(_json, st.binary(max_size=40)))
def test_any_workdir_config_json_gives_a_config_or_one_line(content):
    path = os.path.join(_ROOT, "w")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "wb") as f:
        f.write(content if isinstance(content, bytes) else json.dumps(content).encode())
    value_or_one_line(lambda: model_folder.read_config(path), max_bytes=16 << 20, names=(path,))
