"""The torch-free readers (hfa_jax.weights.torch_io) against what torch and safetensors write:
every dtype (bf16 included), strided and tied tensors, malformed files, and (Hypothesis) crafted
archives against torch.load(weights_only=True)."""

import io
import json
import os
import tempfile

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given
from safetensors.torch import save_file

from hfa_jax.errors import CheckpointError
from hfa_jax.weights.torch_io import load_state_dict, read_safetensors, read_torch_zip
from tests.hostile import craft
from tests.hostile.fuzz import FUZZ
from tests.hostile.test_fuzz_checkpoints import _archives

_TORCH_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                 "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                 "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                 "BoolStorage": torch.bool}


def _tensors():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g)
    return {
        "f32": x,
        "f16": x.half(),
        "bf16": x.bfloat16(),
        "f64": x.double(),
        "i64": torch.arange(-6, 6).reshape(3, 4),
        "i32": torch.arange(4, dtype=torch.int32),
        "u8": torch.arange(7, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def _check(read, tensors):
    assert set(read) == set(tensors)
    for k, t in tensors.items():
        want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        got = read[k]
        assert got.shape == tuple(t.shape), k
        if t.dtype == torch.bfloat16:
            assert got.dtype == ml_dtypes.bfloat16
            got = got.astype(np.float32)
        else:
            assert got.dtype == want.dtype, k
        np.testing.assert_array_equal(got, want, err_msg=k)


def test_safetensors_every_dtype_including_bf16(tmp_path):
    tensors = _tensors()
    path = str(tmp_path / "model.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    _check(read_safetensors(path), tensors)
    _check(load_state_dict(path), tensors)


def test_torch_zip_strided_tied_and_bf16(tmp_path):
    tensors = _tensors()
    base = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    sd = dict(tensors, transposed=base.t(), sliced=base[1:, 2:5], tied=base)  # views of one storage
    path = str(tmp_path / "pytorch_model.bin")
    torch.save(sd, path)
    read = read_torch_zip(path)
    _check(read, {k: v.contiguous() for k, v in sd.items()})
    assert load_state_dict(path).keys() == read.keys()
    torch.save({"model": {"w": base}, "epoch": 3}, str(tmp_path / "wrapped.pth"))
    np.testing.assert_array_equal(read_torch_zip(str(tmp_path / "wrapped.pth"))["w"], base.numpy())


def test_malformed_safetensors_stop_with_one_line(tmp_path):
    good = str(tmp_path / "good.safetensors")
    save_file({"w": torch.ones(4, 4)}, good)
    raw = open(good, "rb").read()
    cases = {
        "truncated": raw[:-8],
        "header_too_long": (10**9).to_bytes(8, "little") + raw[8:],
        "not_json": len(b"{nope").to_bytes(8, "little") + b"{nope" + raw[8:],
    }
    header = json.dumps({"w": {"dtype": "C64", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    cases["unknown_dtype"] = len(header).to_bytes(8, "little") + header + b"\0" * 64
    messages = {"truncated": "truncated or corrupt", "header_too_long": "not a safetensors file",
                "not_json": "not JSON", "unknown_dtype": "dtype 'C64'"}
    for name, data in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=messages[name]) as e:
            read_safetensors(str(path))
        assert str(path) in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------ against torch.load(weights_only=True)
@FUZZ
@given(_archives())
def test_what_the_reader_accepts_torch_accepts_with_the_same_values(case):
    """torch.load(weights_only=True) is the reference: a file it refuses is refused here too,
    and one read here is read identically there. (The reverse does not hold: torch makes views
    without copying, so it also accepts a huge stride-0 tensor that the file-size rule refuses.)"""
    stype, storage, tensors, _ = case
    for t in tensors.values():  # torch sizes the storage from the persistent id's element count
        t.numel = len(storage) // torch.empty(0, dtype=_TORCH_DTYPES[stype]).element_size()
    data = craft.torch_zip(craft.tensor_pickle(tensors), {"0": storage})
    path = os.path.join(tempfile.gettempdir(), f"hfa_torch_ref_{os.getpid()}.pth")
    with open(path, "wb") as f:
        f.write(data)
    try:
        ref = torch.load(io.BytesIO(data), weights_only=True)
    except Exception:
        ref = None
    try:
        got = read_torch_zip(path)
    except CheckpointError:
        got = None
    if got is not None:
        assert ref is not None, "read a file torch refuses"
        assert list(got) == list(ref)
        for k, t in ref.items():
            want = t.contiguous().view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
            assert got[k].shape == tuple(t.shape) and got[k].tobytes() == want.tobytes(), k
