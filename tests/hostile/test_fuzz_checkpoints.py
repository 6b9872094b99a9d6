"""Property-based tests of the checkpoint readers (hfa_jax.weights.torch_io, and the Lightning
reader of hfa_jax.convert built on it): whatever the bytes, a value (equal, element for element,
to an independent reading of the bytes) or one CheckpointError line, within a memory bound."""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile

import ml_dtypes
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hfa_jax.convert import lightning_io
from hfa_jax.errors import CheckpointError
from hfa_jax.weights import torch_io
from tests.hostile import craft
from tests.hostile.fuzz import FUZZ, value_or_one_line

_DIR = tempfile.mkdtemp(prefix="hfa_fuzz_")

# Storage type -> dtype, written out again here (not imported) so the test checks the table.
_STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
             "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
             "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


def _write(name: str, data: bytes) -> str:
    path = os.path.join(_DIR, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


# Mostly small numbers (so many draws are valid), sometimes negative or far past int64.
_num = st.one_of(st.integers(0, 8), st.integers(0, 8), st.integers(-3, 70),
                 st.sampled_from([2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 + 3, -(2**63)]))


@st.composite
def _archives(draw):
    stype = draw(st.sampled_from(sorted(_STORAGES)))
    storage = draw(st.binary(max_size=96))
    tensors = {}
    for i in range(draw(st.integers(0, 3))):
        ndim = draw(st.integers(0, 4))
        rank = draw(st.sampled_from([ndim] * 6 + [ndim + 1]))  # (now and then a stride too many)
        tensors[f"t{i}"] = craft.Tensor("0", draw(_num), tuple(draw(_num) for _ in range(ndim)),
                                        tuple(draw(_num) for _ in range(rank)), stype)
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    return stype, storage, tensors, craft.torch_zip(craft.tensor_pickle(tensors), {"0": storage}, compression=method)


def _reference(stype: str, storage: bytes, tensors: dict[str, craft.Tensor], budget: int):
    """What the reader must return, worked out independently: ({name: array}, None), or (None,
    the first tensor it must refuse). A tensor is refused for a rank mismatch or a negative
    number, for taking the bytes allocated past ``budget`` (its storage, read once, then each
    tensor), for a storage that is not whole elements, or for an element index past the storage."""
    dtype = np.dtype(_STORAGES[stype])
    n, rest = divmod(len(storage), dtype.itemsize)
    flat = np.frombuffer(storage, dtype, count=n)
    used, out = 0, {}
    for name, t in tensors.items():
        if len(t.size) != len(t.stride) or min((t.offset, *t.size, *t.stride), default=0) < 0:
            return None, name
        used += len(storage) if not out else 0
        used += math.prod(t.size) * dtype.itemsize
        if used > budget or rest:
            return None, name
        if math.prod(t.size) == 0:
            out[name] = np.zeros(t.size, dtype)
            continue
        if t.offset + sum((s - 1) * d for s, d in zip(t.size, t.stride)) >= n:
            return None, name
        # every index is now < n: gather them with fancy indexing (no strided view)
        index = np.full(t.size, t.offset, np.int64)
        for axis, (s, d) in enumerate(zip(t.size, t.stride)):
            shape = [1] * len(t.size)
            shape[axis] = s
            index = index + np.arange(s, dtype=np.int64).reshape(shape) * d
        out[name] = flat[index]
    return out, None


@FUZZ
@given(_archives())
def test_torch_zip_tensors_are_read_exactly_or_refused(case):
    stype, storage, tensors, data = case
    path = _write("t.pth", data)
    got, msg = value_or_one_line(lambda: torch_io.read_torch_zip(path), max_bytes=4 << 20, names=(path,))
    want, bad = _reference(stype, storage, tensors, budget=100 * len(data))
    if bad is None:
        assert msg is None, msg
        assert list(got) == list(tensors)
        for k, w in want.items():
            assert got[k].dtype == w.dtype and got[k].shape == w.shape
            assert got[k].tobytes() == w.tobytes(), k  # bitwise: NaNs compare equal
    else:
        assert got is None and f"tensor '{bad}'" in msg, (bad, msg)


_OPCODES = [b"(", b"t", b"R", b"]", b"}", b")", b"u", b"e", b"a", b"s", b"b", b"Q", b"N", b"\x88", b"\x89",
            b"\x85", b"\x86", b"\x87", b"0", b"2", b"1", b"h\x00", b"h\x01", b"q\x00", b"q\x01", b"J\x01\x00\x00\x00",
            b"J\xff\xff\xff\xff", b"\x8a\x09" + b"\xff" * 9, b"X\x01\x00\x00\x000", b"X\x07\x00\x00\x00storage",
            b"X\x03\x00\x00\x00cpu", b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_parameter\n",
            b"ctorch\nFloatStorage\n", b"ccollections\nOrderedDict\n", b"c__builtin__\nset\n",
            b"ctorch._tensor\n_rebuild_from_type_v2\n", b"cargparse\nNamespace\n", b"ctorch\nSize\n"]


@FUZZ
@given(st.one_of(st.lists(st.sampled_from(_OPCODES), max_size=60).map(lambda ops: b"\x80\x02" + b"".join(ops) + b"."),
                 st.binary(max_size=200)),
       st.binary(max_size=32))
def test_any_pickle_stream_gives_a_value_or_one_line(pickle_bytes, storage):
    path = _write("p.ckpt", craft.torch_zip(pickle_bytes, {"0": storage}))
    value_or_one_line(lambda: torch_io.read_torch_pickle(path), max_bytes=4 << 20, names=(path,))
    value_or_one_line(lambda: lightning_io.read_checkpoint(path), max_bytes=4 << 20, names=(path,))


_VALID = craft.torch_zip(craft.tensor_pickle({"w": craft.Tensor("0", 1, (2, 3), (3, 1))}), {"0": bytes(range(28))},
                         compression=zipfile.ZIP_DEFLATED)


@FUZZ
@given(st.one_of(st.binary(max_size=2000),
                 st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8)
                 .map(lambda edits: _edit(_VALID, edits))))
def test_any_file_bytes_give_a_value_or_one_line(data):
    path = _write("b.pth", data)
    value_or_one_line(lambda: torch_io.load_state_dict(path), max_bytes=4 << 20, names=(path,))


def _edit(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for at, byte in edits:
        out[at] = byte
    return bytes(out)


# ------------------------------------------------------------------------------------ safetensors
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
                     max_leaves=12)


@st.composite
def _headers(draw):
    data = draw(st.binary(max_size=64))
    header = {}
    for i in range(draw(st.integers(0, 3))):
        if draw(st.integers(0, 4)) == 0:
            header[f"w{i}"] = draw(_json)
            continue
        start = draw(st.one_of(st.integers(0, len(data)), _num))
        header[f"w{i}"] = {"dtype": draw(st.sampled_from(sorted(_ST_DTYPES)) | st.text(max_size=4) | _json),
                           "shape": draw(st.lists(_num, max_size=3) | _json),
                           "data_offsets": draw(st.one_of(
                               st.tuples(st.just(start), st.one_of(st.integers(0, len(data)), _num)).map(list), _json))}
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2) | _json)
    return header, data


@FUZZ
@given(_headers(), st.one_of(st.none(), st.integers(-5, 2**64 - 1)))
def test_safetensors_headers_give_exact_tensors_or_one_line(case, header_len):
    header, data = case
    raw = craft.safetensors(header, data)
    if header_len is not None:
        raw = header_len.to_bytes(8, "little") + raw[8:] if header_len >= 0 else raw[:-header_len]
    path = _write("h.safetensors", raw)
    got, msg = value_or_one_line(lambda: torch_io.read_safetensors(path), max_bytes=4 << 20, names=(path,))
    if got is not None and header_len is None:  # every tensor is exactly its bytes, none overlapping
        base = 8 + len(json.dumps(header).encode())
        spans = []
        for name, arr in got.items():
            info = header[name]
            start, end = info["data_offsets"]
            assert arr.dtype == np.dtype(_ST_DTYPES[info["dtype"]]) and list(arr.shape) == info["shape"]
            assert arr.tobytes() == raw[base + start: base + end]
            spans.append((start, end))
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


@FUZZ
@given(st.dictionaries(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8),
                       st.tuples(st.sampled_from(sorted(_ST_DTYPES)), st.lists(st.integers(0, 4), max_size=3)),
                       max_size=4),
       st.randoms(use_true_random=False))
def test_files_safetensors_writes_are_read_exactly(spec, rnd):
    from safetensors.numpy import save_file

    tensors = {}
    for name, (dt, shape) in spec.items():
        raw = bytes(rnd.getrandbits(8) for _ in range(math.prod(shape) * np.dtype(_ST_DTYPES[dt]).itemsize))
        a = np.frombuffer(raw, np.uint8).view(_ST_DTYPES[dt]).reshape(shape) if dt != "BOOL" else \
            (np.frombuffer(raw, np.uint8) % 2).astype(bool).reshape(shape)
        tensors[name] = a
    assume(not any(t.dtype == ml_dtypes.bfloat16 for t in tensors.values()))  # (safetensors.numpy has no bf16)
    path = os.path.join(_DIR, "w.safetensors")
    save_file(tensors, path)
    got, msg = value_or_one_line(lambda: torch_io.read_safetensors(path), max_bytes=4 << 20)
    assert msg is None and set(got) == set(tensors)
    for k, a in tensors.items():
        assert got[k].dtype == a.dtype and got[k].shape == a.shape and got[k].tobytes() == a.tobytes()


def test_limits_come_from_the_environment_and_are_checked():
    lim = torch_io.ReadLimits.from_env({"HFA_JAX_CHECKPOINT_MAX_MEMBER": "2G", "HFA_JAX_CHECKPOINT_MAX_TOTAL": "1.5T",
                                        "HFA_JAX_CHECKPOINT_MAX_RATIO": "1000"})
    assert (lim.member_bytes, lim.total_bytes, lim.ratio) == (2 << 30, int(1.5 * (1 << 40)), 1000)
    assert torch_io.ReadLimits.from_env({}) == torch_io.ReadLimits()
    for var, text in (("HFA_JAX_CHECKPOINT_MAX_MEMBER", "lots"), ("HFA_JAX_CHECKPOINT_MAX_RATIO", "10G"),
                      ("HFA_JAX_CHECKPOINT_MAX_TOTAL", "0")):
        with pytest.raises(Exception, match=var):
            torch_io.ReadLimits.from_env({var: text})


def test_a_raised_limit_reads_what_the_default_refuses(monkeypatch):
    path = os.path.join(craft.CORPUS, "zip_bomb_deflate_64mib.pth")
    with pytest.raises(CheckpointError, match="HFA_JAX_CHECKPOINT_MAX_RATIO"):
        torch_io.read_torch_zip(path)
    monkeypatch.setenv("HFA_JAX_CHECKPOINT_MAX_RATIO", "5000")
    with pytest.raises(CheckpointError, match=r"over the 1048576-byte limit \(HFA_JAX_CHECKPOINT_MAX_MEMBER\)"):
        torch_io.read_torch_zip(path, torch_io.ReadLimits(ratio=5000, member_bytes=1 << 20))
    w = torch_io.read_torch_zip(path)["w"]
    assert w.shape == (16 << 20,) and w.dtype == np.float32 and not w.any()
