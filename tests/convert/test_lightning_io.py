"""The torch-free ``torch.save`` writer and the restricted Lightning checkpoint reader."""

from __future__ import annotations

import argparse
import collections
import os

import ml_dtypes
import numpy as np
import pytest
import torch

from hfa_jax.convert import lightning_io
from hfa_jax.convert.__main__ import main
from hfa_jax.errors import CheckpointError
from hfa_jax.weights import torch_save


def test_writer_output_is_read_by_torch_load(tmp_path):
    sd = collections.OrderedDict(
        w=np.arange(6, dtype=np.float32).reshape(2, 3), step=np.array(7, np.int64),
        h=np.ones((2, 2), np.float16), b=np.array([1.5, -2.0], ml_dtypes.bfloat16), m=np.array([True, False]),
        t=np.arange(12, dtype=np.float32).reshape(3, 4).T)  # non-contiguous input
    obj = {"state_dict": sd, "epoch": 2, "global_step": 2**40, "pytorch-lightning_version": "2.4.0",
           "misc": [1.25, None, True, ("a", 3)], "nested": {"x": {}}}
    path = torch_save.save(obj, str(tmp_path / "a.ckpt"))
    got = torch.load(path, weights_only=True)
    assert isinstance(got["state_dict"], collections.OrderedDict) and list(got["state_dict"]) == list(sd)
    for k, v in sd.items():
        t = got["state_dict"][k]
        assert tuple(t.shape) == v.shape, k
        np.testing.assert_array_equal(t.float().numpy() if k == "b" else t.numpy(), np.asarray(v, np.float32)
                                      if k == "b" else v)
    assert got["state_dict"]["b"].dtype == torch.bfloat16 and got["state_dict"]["step"].dtype == torch.int64
    assert got["global_step"] == 2**40 and got["misc"] == [1.25, None, True, ("a", 3)] and got["nested"] == {"x": {}}
    back = lightning_io.read_checkpoint(path)
    np.testing.assert_array_equal(back["state_dict"]["t"], sd["t"])
    with pytest.raises(TypeError, match="cannot write a object"):
        torch_save.save({"x": object()}, str(tmp_path / "b.ckpt"))


def test_reader_admits_lightning_metadata(tmp_path):
    path = str(tmp_path / "meta.ckpt")
    torch.save({"state_dict": {"a.weight": torch.ones(2, 3)}, "epoch": 1, "global_step": 5,
                "hyper_parameters": {"args": argparse.Namespace(lr=0.1, name="x"), "shape": torch.Size([2, 3]),
                                     "dtype": torch.float32, "device": torch.device("cpu"), "tags": {1, 2},
                                     "blob": b"\x00\xff"},
                "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.5)}}}, path)
    got = lightning_io.read_checkpoint(path)
    hp = got["hyper_parameters"]
    assert hp["args"].lr == 0.1 and hp["args"].name == "x"
    assert hp["shape"] == (2, 3) and hp["dtype"] == "torch.float32" and hp["device"] == "cpu"
    assert hp["tags"] == {1, 2} and hp["blob"] == b"\x00\xff"
    np.testing.assert_array_equal(got["state_dict"]["a.weight"], np.ones((2, 3), np.float32))


class _WritesAFile:
    """A pickle payload: unpickling it calls ``open(path, "w")``, creating the file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, capsys):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "evil.ckpt")
    torch.save({"state_dict": {"a": torch.zeros(1)}, "hyper_parameters": {"x": _WritesAFile(marker)}}, path)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle (builtins|io)\.open"):
        lightning_io.read_checkpoint(path)
    assert not os.path.exists(marker)
    with pytest.raises(SystemExit) as e:
        main(["from-lightning", "--ckpt", path, "--stage", "pretrain", "--out", str(tmp_path / "w")])
    assert e.value.code == 2 and "refusing to unpickle" in capsys.readouterr().err
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "w")
    # the payload is live: an unrestricted load runs it (so the checks above can fail)
    torch.load(path, weights_only=False)
    assert os.path.exists(marker)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "x.ckpt"
    p.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a torch zip archive"):
        lightning_io.read_checkpoint(str(p))
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        lightning_io.read_checkpoint(str(tmp_path / "missing.ckpt"))
