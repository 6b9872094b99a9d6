"""Reading PyTorch-world weight files without torch and without plain pickle.

One reader for every imported model (DINOv2, mBART):

- ``.safetensors`` (:func:`read_safetensors`): the 8-byte little-endian header length, the JSON
  header (``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, plus an optional
  ``__metadata__``), then the raw little-endian tensor bytes. Parsed here rather than with
  ``safetensors.numpy``, whose loader refuses bf16 (numpy has no bf16; ``ml_dtypes``, installed
  with jax, has). Every dtype safetensors writes for floats, ints and bools is read in its own
  dtype; callers cast.
- ``torch.save`` zip archives (``pytorch_model.bin`` / ``.pth``, :func:`read_torch_zip`): the
  pickle in ``data.pkl`` is read by a restricted unpickler that admits only ``OrderedDict`` and
  tensor rebuilding from the archive's raw storages; any other global raises
  :class:`~hfa_jax.errors.CheckpointError` before it is looked up, so a payload never runs.

Both return ``{name: np.ndarray}``; :func:`load_state_dict` picks by file name.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np

from hfa_jax.errors import CheckpointError

__all__ = ["load_state_dict", "read_safetensors", "read_torch_zip", "SAFETENSORS_DTYPES"]

# safetensors dtype names -> numpy dtypes (the file stores little-endian bytes).
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype(np.bool_),
}

# A header larger than this is not a weights file (safetensors itself caps it at 100 MB).
_MAX_HEADER_BYTES = 100_000_000


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file -> ``{name: array}`` in the stored dtypes (bf16 as
    ``ml_dtypes.bfloat16``). Raises :class:`CheckpointError` naming the file for a truncated or
    malformed file or an unknown dtype."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > min(_MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{path}: not a safetensors file (header length {n}, file {size} bytes); "
                                      "re-save it with save_pretrained")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{path}: safetensors header is not JSON ({e}); re-save the file") from e
            if not isinstance(header, dict):
                raise CheckpointError(f"{path}: safetensors header is not a JSON object; re-save the file")
            base = 8 + n
            out: dict[str, np.ndarray] = {}
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                out[name] = _read_tensor(f, path, name, info, base, size)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from e
    return out


def _read_tensor(f, path: str, name: str, info, base: int, size: int) -> np.ndarray:
    if isinstance(info, dict) and info.get("dtype") not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}, which is not read; "
                              f"re-save it as one of {sorted(SAFETENSORS_DTYPES)}")
    try:
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        shape = tuple(int(s) for s in info["shape"])
        start, end = (int(x) for x in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: header entry for tensor {name!r} is malformed ({info!r})") from e
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - start != nbytes or start < 0 or base + end > size:
        raise CheckpointError(f"{path}: tensor {name!r} spans bytes [{start}, {end}) but needs {nbytes} "
                              f"within the file's {size - base}; the file is truncated or corrupt")
    f.seek(base + start)
    buf = bytearray(nbytes)  # writable, like the arrays safetensors' own loader returns
    if f.readinto(buf) != nbytes:
        raise CheckpointError(f"{path}: tensor {name!r} is cut short; the file is truncated")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


# --------------------------------------------------------------------------- torch zip archives
_TORCH_STORAGES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. in the pickle: only carries the dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _TORCH_STORAGES[name]


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """``torch._utils._rebuild_tensor_v2``: a (possibly strided) view of a flat storage, copied."""
    if len(size) == 0:
        return np.array(storage[offset])
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *args):
    return data


class _TorchZipUnpickler(pickle.Unpickler):
    """Admits only OrderedDict and tensor rebuilding from the archive's raw storages."""

    def __init__(self, fileobj, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(fileobj)
        self._archive, self._prefix, self._path = archive, prefix, path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(name)
        raise CheckpointError(
            f"{self._path}: refusing to unpickle {module}.{name} (only plain tensors are read); "
            "convert the checkpoint to safetensors"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"{self._path}: unsupported persistent id {pid!r}; convert to safetensors")
        _, stype, key, _location, _numel = pid
        if key not in self._storages:  # tied tensors share one storage
            raw = self._archive.read(f"{self._prefix}data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=stype.dtype)
        return self._storages[key]


def read_torch_zip(path: str) -> dict[str, np.ndarray]:
    """Read a ``torch.save`` zip archive (pytorch_model.bin / .pth) of tensors without torch.

    Returns {name: np.ndarray} (a ``{"model": state_dict}`` wrapper is unwrapped). Raises
    CheckpointError for legacy (non-zip) files or any pickled object other than tensors/OrderedDict.
    """
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a torch zip archive (legacy torch.save format?); re-save it with torch>=1.6 "
            "or convert to model.safetensors"
        )
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if not pkl:
            raise CheckpointError(f"{path}: zip archive has no data.pkl; not a torch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        with zf.open(pkl[0]) as f:
            obj = _TorchZipUnpickler(f, zf, prefix, path).load()
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return {str(k): np.asarray(v) for k, v in obj.items() if isinstance(v, np.ndarray)}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A weights file (``.safetensors``, or a torch zip ``.bin``/``.pth``) -> {name: array}."""
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch_zip(path)
