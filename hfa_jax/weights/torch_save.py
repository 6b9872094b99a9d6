"""Writing PyTorch's ``torch.save`` zip format without torch.

The inverse of :func:`hfa_jax.weights.torch_io.read_torch_zip`, for plain data: a zip archive
(stored, not compressed) holding

- ``archive/data.pkl``: a protocol-2 pickle of the object, where every array is written as
  ``torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())`` and
  each storage as a persistent id ``("storage", torch.<T>Storage, key, "cpu", numel)``;
- ``archive/data/<key>``: the raw little-endian bytes of each storage;
- ``archive/version``, ``archive/.data/version`` (``3``) and ``archive/byteorder`` (``little``),

which is what ``torch.load`` (``weights_only`` or not) reads. The pickle is emitted opcode by
opcode here rather than with :mod:`pickle`, because pickling a reference to ``torch._utils``
would need torch importable; only the few opcodes plain data needs are used.

Objects written: ``dict`` (``OrderedDict`` kept as such), ``list``, ``tuple``, ``str``, ``int``,
``float``, ``bool``, ``None`` and NumPy arrays / scalars of the dtypes in :data:`STORAGE_NAMES`
(bf16 as ``ml_dtypes.bfloat16``). Anything else raises :class:`TypeError`.
"""

from __future__ import annotations

import collections
import io
import os
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["save", "STORAGE_NAMES"]

# numpy dtype -> torch storage class name (the inverse of torch_io's table).
STORAGE_NAMES: dict[np.dtype, str] = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}

_ARCHIVE = "archive"


class _Emitter:
    """Protocol-2 pickle opcodes for plain data and tensors; collects the storages."""

    def __init__(self):
        self.out = io.BytesIO()
        self.storages: list[np.ndarray] = []

    def _w(self, b: bytes) -> None:
        self.out.write(b)

    def _global(self, module: str, name: str) -> None:
        self._w(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def _str(self, s: str) -> None:
        data = s.encode("utf-8")
        self._w(b"X" + struct.pack("<I", len(data)) + data)

    def _int(self, v: int) -> None:
        if -(2**31) <= v < 2**31:
            self._w(b"J" + struct.pack("<i", v))
        else:
            n = (v.bit_length() + 8) // 8
            self._w(b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True))

    def _tuple(self, items) -> None:
        self._w(b"(")
        for x in items:
            self.emit(x)
        self._w(b"t")

    def _tensor(self, a: np.ndarray) -> None:
        dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if np.dtype(dtype) not in STORAGE_NAMES:
            raise TypeError(f"torch_save: arrays of dtype {a.dtype} have no torch storage type")
        a = np.ascontiguousarray(a, dtype=dtype).reshape(a.shape)  # (ascontiguousarray makes 0-d 1-d)
        key = str(len(self.storages))
        self.storages.append(a)
        shape = tuple(int(s) for s in a.shape)
        stride, acc = [], 1
        for s in reversed(shape):
            stride.append(acc)
            acc *= s
        stride = tuple(reversed(stride))
        self._global("torch._utils", "_rebuild_tensor_v2")
        self._w(b"(")
        # persistent id of the storage
        self._w(b"(")
        self._str("storage")
        self._global("torch", STORAGE_NAMES[np.dtype(dtype)])
        self._str(key)
        self._str("cpu")
        self._int(int(a.size))
        self._w(b"tQ")
        self._int(0)
        self._tuple(shape)
        self._tuple(stride)
        self._w(b"\x89")  # requires_grad False
        self._global("collections", "OrderedDict")
        self._w(b")R")  # backward hooks: OrderedDict()
        self._w(b"tR")

    def emit(self, x: Any) -> None:
        if x is None:
            self._w(b"N")
        elif x is True:
            self._w(b"\x88")
        elif x is False:
            self._w(b"\x89")
        elif isinstance(x, (np.ndarray, np.generic)) and not isinstance(x, (np.str_, np.bytes_)):
            self._tensor(np.asarray(x))
        elif isinstance(x, int):
            self._int(int(x))
        elif isinstance(x, float):
            self._w(b"G" + struct.pack(">d", x))
        elif isinstance(x, str):
            self._str(x)
        elif isinstance(x, dict):
            if isinstance(x, collections.OrderedDict):
                self._global("collections", "OrderedDict")
                self._w(b")R")
            else:
                self._w(b"}")
            if x:
                self._w(b"(")
                for k, v in x.items():
                    self.emit(k)
                    self.emit(v)
                self._w(b"u")
        elif isinstance(x, list):
            self._w(b"]")
            if x:
                self._w(b"(")
                for v in x:
                    self.emit(v)
                self._w(b"e")
        elif isinstance(x, tuple):
            self._tuple(x)
        else:
            raise TypeError(f"torch_save: cannot write a {type(x).__name__}; only plain data and arrays")


def save(obj: Any, path: str) -> str:
    """Writes ``obj`` (plain data with NumPy arrays as tensors) to ``path`` in the
    ``torch.save`` zip format; ``torch.load(path)`` returns it with the arrays as tensors.
    The file is written to ``path + '.tmp'`` and renamed, so a crash leaves no half file."""
    em = _Emitter()
    em._w(b"\x80\x02")
    em.emit(obj)
    em._w(b".")
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{_ARCHIVE}/data.pkl", em.out.getvalue())
        zf.writestr(f"{_ARCHIVE}/byteorder", "little")
        for i, a in enumerate(em.storages):
            zf.writestr(f"{_ARCHIVE}/data/{i}", a.tobytes())
        zf.writestr(f"{_ARCHIVE}/version", "3\n")
        zf.writestr(f"{_ARCHIVE}/.data/version", "3\n")
    os.replace(tmp, path)
    return path
