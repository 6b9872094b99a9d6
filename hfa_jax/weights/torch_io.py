"""Reading PyTorch-world weight files without torch and without plain pickle, within stated limits.

One reader for every imported model (DINOv2, mBART) and for :mod:`hfa_jax.convert`:

- ``.safetensors`` (:func:`read_safetensors`): the 8-byte little-endian header length, the JSON
  header (``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, plus an optional
  ``__metadata__``), then the raw little-endian tensor bytes. Parsed here rather than with
  ``safetensors.numpy``, whose loader refuses bf16 (numpy has no bf16; ``ml_dtypes``, installed
  with jax, has). Every dtype safetensors writes for floats, ints and bools is read in its own
  dtype; callers cast.
- ``torch.save`` zip archives (``pytorch_model.bin`` / ``.pth`` / ``.ckpt``, :func:`read_torch_zip`,
  :func:`read_torch_pickle`): the pickle in ``data.pkl`` is read by a restricted unpickler that
  admits only ``OrderedDict`` and tensor rebuilding from the archive's raw storages; any other
  global raises :class:`~hfa_jax.errors.CheckpointError` before it is looked up, so a payload
  never runs.

Files come from strangers, so every number in them is checked before it is used, as the
safetensors format itself prescribes (bounded header, validated offsets) and as
``torch.load(weights_only=True)`` intends for pickles:

- a tensor's dtype, size, stride and storage offset are checked against its storage's length
  with Python integers (no fixed-width overflow) before any view of the bytes exists;
- each zip member's and the whole file's decompressed size are capped (:class:`ReadLimits`):
  the caps are checked against the sizes the archive declares before anything is allocated, and
  members are stream-read with the declared size as a hard limit (only stored and deflated
  members: zipfile inflates the others in one unbounded call);
- safetensors offsets must lie inside the file, agree with dtype x shape, and not overlap.

Anything else raises one :class:`CheckpointError` line naming the file and the tensor (or
member) at fault. Both readers return ``{name: np.ndarray}``; :func:`load_state_dict` picks by
file name.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import math
import os
import pickle
import pickletools
import re
import zipfile
from typing import Any, Iterator, Mapping

import ml_dtypes
import numpy as np

from hfa_jax.errors import CheckpointError, ConfigError

__all__ = ["ReadLimits", "LIMIT_ENV", "load_state_dict", "read_safetensors", "read_torch_zip",
           "read_torch_pickle", "SAFETENSORS_DTYPES"]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# ReadLimits field -> the environment variable that changes it for every reader in the process.
LIMIT_ENV: dict[str, str] = {
    "member_bytes": "HFA_JAX_CHECKPOINT_MAX_MEMBER",
    "total_bytes": "HFA_JAX_CHECKPOINT_MAX_TOTAL",
    "ratio": "HFA_JAX_CHECKPOINT_MAX_RATIO",
}


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """What reading one weights file may allocate.

    member_bytes: one decompressed zip member (one torch storage). total_bytes: everything one
    torch archive allocates (decompressed members plus the tensors built from them). ratio: that
    same total, as a multiple of the file's size on disk; ``torch.save`` stores members
    uncompressed and builds each tensor once, so a genuine file needs about 2x, while a zip bomb
    or a tensor with stride 0 over a tiny storage asks for far more. pickle_bytes and
    pickle_ops: ``data.pkl``'s size and its number of pickle opcodes, counted before it is
    unpickled (each opcode builds at most one object, so these bound the unpickler's memory:
    about 150 MB and a few seconds at the limits). ``torch.save`` spends some 30 opcodes and
    90 bytes per tensor: a Lightning checkpoint with Adam states, about 130 opcodes per
    parameter, fits 7000 parameters (the HFA model has about 1000). header_bytes: a safetensors JSON header.

    The first three can be changed with the environment variables of :data:`LIMIT_ENV`
    (bytes, or a number with K, M, G or T for binary multiples); :meth:`from_env` reads them."""

    member_bytes: int = 16 * GiB
    total_bytes: int = 64 * GiB
    ratio: int = 100
    pickle_bytes: int = 8 * MiB
    pickle_ops: int = 1_000_000
    header_bytes: int = 16 * MiB

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "ReadLimits":
        """The defaults, with any of :data:`LIMIT_ENV` set in ``environ`` taking their place."""
        values: dict[str, int] = {}
        for field, var in LIMIT_ENV.items():
            text = environ.get(var, "").strip()
            if text:
                values[field] = _parse_size(var, text, binary=field != "ratio")
        return cls(**values)


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)


def _parse_size(var: str, text: str, *, binary: bool) -> int:
    m = _SIZE.match(text)
    scale = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1 << 40}
    if m is None or (m.group(2) and not binary):
        want = "a number of bytes, optionally with K, M, G or T (e.g. 32G)" if binary else "a whole number"
        raise ConfigError(f"{var}={text!r}: expected {want}")
    value = int(float(m.group(1)) * scale[m.group(2).upper()])
    if value < 1:
        raise ConfigError(f"{var}={text!r}: must be at least 1")
    return value


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name(key: object) -> str:
    """A tensor or member name for a message: quoted, one line, short."""
    return _one_line(repr(key), 120)


@contextlib.contextmanager
def _refusing(path: str, what: str) -> Iterator[None]:
    """Whatever goes wrong inside becomes one CheckpointError line naming ``path``."""
    try:
        yield
    except CheckpointError:
        raise
    except MemoryError:
        raise CheckpointError(f"{path}: ran out of memory reading the {what}; the file is corrupt or "
                              "too large for this machine") from None
    except RecursionError:
        raise CheckpointError(f"{path}: the {what} is nested too deeply; the file is corrupt") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the {what} ({_one_line(e)})") from None
    except Exception as e:  # a corrupt zip, pickle or JSON stream, whatever its exception type
        raise CheckpointError(f"{path}: cannot read the {what} ({type(e).__name__}: {_one_line(e)}); "
                              "the file is corrupt") from None


# --------------------------------------------------------------------------- safetensors
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

# numpy refuses more dimensions than this.
_MAX_NDIM = 32


def _is_int(x: object) -> bool:
    return type(x) is int  # not bool, not float: JSON and pickles give exact ints for sizes


def read_safetensors(path: str, limits: ReadLimits | None = None) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file -> ``{name: array}`` in the stored dtypes (bf16 as
    ``ml_dtypes.bfloat16``). Raises :class:`CheckpointError` naming the file (and the tensor)
    for a truncated or malformed file, an unknown dtype, or a header outside ``limits``."""
    limits = limits or ReadLimits.from_env()
    with _refusing(path, "safetensors file"):
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n < 2 or n > size - 8:
                raise CheckpointError(f"{path}: not a safetensors file (header length {n}, file {size} bytes); "
                                      "re-save it with save_pretrained")
            if n > limits.header_bytes:
                raise CheckpointError(f"{path}: safetensors header of {n} bytes is over the {limits.header_bytes}-byte "
                                      "limit; the file is corrupt")
            try:
                header = json.loads(f.read(n))
            except (ValueError, RecursionError) as e:  # (UnicodeDecodeError is a ValueError)
                raise CheckpointError(f"{path}: safetensors header is not JSON ({_one_line(e, 120)}); "
                                      "re-save the file") from None
            if not isinstance(header, dict):
                raise CheckpointError(f"{path}: safetensors header is not a JSON object; re-save the file")
            meta = header.pop("__metadata__", {})
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise CheckpointError(f"{path}: safetensors __metadata__ is not an object of strings; "
                                      "re-save the file")
            base, data_len = 8 + n, size - 8 - n
            spans = sorted((_safetensors_entry(path, name, info, data_len) + (name,)
                            for name, info in header.items()), key=lambda s: (s[0], s[1]))
            prev_end, prev_name = 0, None
            for start, end, _dtype, _shape, name in spans:
                if start < prev_end:  # overlapping tensors would let a small file ask for many copies
                    raise CheckpointError(f"{path}: tensor {_name(name)} overlaps tensor {_name(prev_name)} "
                                          "in the data; the file is corrupt")
                prev_end, prev_name = end, name
            out: dict[str, np.ndarray] = {}
            for start, end, dtype, shape, name in spans:
                f.seek(base + start)
                buf = bytearray(end - start)  # writable, like the arrays safetensors' own loader returns
                if f.readinto(buf) != end - start:
                    raise CheckpointError(f"{path}: tensor {_name(name)} is cut short; the file is truncated")
                out[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return {name: out[name] for name in header}  # header order


def _safetensors_entry(path: str, name: str, info: object, data_len: int) -> tuple[int, int, np.dtype, tuple]:
    """One header entry, checked: (begin, end, dtype, shape) with 0 <= begin <= end <= data_len
    and end - begin == itemsize * prod(shape), all in Python ints."""
    where = f"{path}: tensor {_name(name)}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: header entry is not an object; the file is corrupt")
    dtype_name = info.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{where} has dtype {_one_line(repr(dtype_name), 40)}, which is not read; "
                              f"re-save it as one of {sorted(SAFETENSORS_DTYPES)}")
    dtype = SAFETENSORS_DTYPES[dtype_name]
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(_is_int(s) for s in shape):
        raise CheckpointError(f"{where}: shape {_one_line(repr(shape), 80)} is not a list of at most "
                              f"{_MAX_NDIM} integers; the file is corrupt")
    if any(s < 0 for s in shape):
        raise CheckpointError(f"{where}: negative shape {shape}; the file is corrupt")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(x) for x in offsets)):
        raise CheckpointError(f"{where}: data_offsets {_one_line(repr(offsets), 80)} is not [begin, end]; "
                              "the file is corrupt")
    start, end = offsets
    nbytes = math.prod(shape) * dtype.itemsize
    if not 0 <= start <= end <= data_len or end - start != nbytes:
        raise CheckpointError(f"{where} spans bytes [{start}, {end}) but its shape needs {_one_line(str(nbytes), 40)} "
                              f"within the file's {data_len}; the file is truncated or corrupt")
    return start, end, dtype, tuple(shape)


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

# Reading a member in pieces keeps the decompressor from ever producing more than is asked.
_CHUNK = 4 * MiB


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. in the pickle: only carries the name.
    ``__slots__``: pickle state cannot give it other attributes."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _StorageRef:
    """A persistent id ``("storage", type, key, location, numel)``; the bytes are read when a
    tensor needs them (:class:`_Archive`)."""

    __slots__ = ("stype", "key")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, stype: object, key: object):
        self.stype, self.key = stype, key


class _TensorRef:
    """What ``torch._utils._rebuild_tensor_v2`` was called with; checked and copied out of its
    storage only once the whole pickle is read (:meth:`_Archive.build`), when its name is known."""

    __slots__ = ("storage", "offset", "size", "stride")
    __hash__ = None  # type: ignore[assignment]  (cannot be a dict key or set member)

    def __init__(self, storage: object, offset: object, size: object, stride: object):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """``torch._utils._rebuild_tensor_v2``: a (possibly strided) view of a flat storage."""
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *args):
    return data


class _TorchZipUnpickler(pickle.Unpickler):
    """Admits only OrderedDict and tensor rebuilding from the archive's raw storages."""

    def __init__(self, fileobj, path: str):
        super().__init__(fileobj)
        self._path = path

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
            f"{self._path}: refusing to unpickle {_one_line(module, 80)}.{_one_line(name, 80)} (only plain "
            "tensors are read); convert the checkpoint to safetensors"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._path}: unsupported persistent id {_one_line(repr(pid), 80)}; "
                                  "convert to safetensors")
        return _StorageRef(pid[1], pid[2])


class _Archive:
    """The members of one torch zip archive, read under :class:`ReadLimits`, and the tensors built
    from them. Every byte allocated counts against one budget:
    ``min(total_bytes, ratio * file size)``."""

    def __init__(self, path: str, zf: zipfile.ZipFile, prefix: str, limits: ReadLimits):
        self.path, self.zf, self.prefix, self.limits = path, zf, prefix, limits
        self.file_size = os.path.getsize(path)
        self.budget = min(limits.total_bytes, limits.ratio * self.file_size)
        self.used = 0
        self._storages: dict[str, bytearray] = {}
        self._built: dict[int, Any] = {}  # id(tensor ref or container) -> what replaces it

    def _take(self, nbytes: int, what: str) -> None:
        if self.used + nbytes > self.budget:
            if self.budget == self.limits.total_bytes:
                why = f"the limit of {self.budget} bytes ({LIMIT_ENV['total_bytes']})"
            else:
                why = (f"{self.limits.ratio} x the file's {self.file_size} bytes ({LIMIT_ENV['ratio']}), "
                       "which a genuine checkpoint stays far below")
            raise CheckpointError(f"{self.path}: {what} needs {_one_line(str(nbytes), 40)} bytes more, over {why}; "
                                  "refusing to read it")
        self.used += nbytes

    def read_member(self, name: str, cap: int, cap_name: str) -> bytearray:
        """A member's bytes, checked against the sizes it declares before anything is allocated."""
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{self.path}: the archive has no member {_name(name)}; "
                                  "the file is truncated or corrupt") from None
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # torch.save stores members uncompressed. zipfile inflates bzip2 and LZMA in one call
            # however much comes out, so a 1 KB member could take gigabytes before any check.
            raise CheckpointError(f"{self.path}: member {_name(name)} uses zip compression method "
                                  f"{info.compress_type}; only stored or deflated members are read "
                                  "(torch.save writes stored ones), re-save the checkpoint")
        if info.header_offset + info.compress_size > self.file_size:
            raise CheckpointError(f"{self.path}: member {_name(name)} claims {info.compress_size} bytes past the "
                                  "end of the file; the file is truncated or corrupt")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise CheckpointError(f"{self.path}: member {_name(name)} is stored but declares two sizes; "
                                  "the file is corrupt")
        if info.file_size > cap:
            raise CheckpointError(f"{self.path}: member {_name(name)} decompresses to {info.file_size} bytes, over "
                                  f"the {cap}-byte limit ({cap_name}); refusing to read it")
        self._take(info.file_size, f"member {_name(name)}")
        buf = bytearray(info.file_size)
        view, pos = memoryview(buf), 0
        with self.zf.open(info) as f:  # zipfile stops at the declared size and checks the CRC
            while pos < len(buf):
                got = f.readinto(view[pos: pos + _CHUNK])
                if not got:
                    break
                pos += got
            over = f.read(1)
        if pos != len(buf) or over:
            raise CheckpointError(f"{self.path}: member {_name(name)} does not decompress to its declared "
                                  f"{len(buf)} bytes; the file is corrupt")
        return buf

    def storage(self, key: str) -> bytearray:
        if key not in self._storages:  # tied tensors share one storage
            self._storages[key] = self.read_member(f"{self.prefix}data/{key}", self.limits.member_bytes,
                                                   LIMIT_ENV["member_bytes"])
        return self._storages[key]

    def tensor(self, ref: _TensorRef, key: str) -> np.ndarray:
        """``ref`` checked against its storage, then copied out of it."""
        where = f"{self.path}: tensor {_name(key)}"
        st = ref.storage
        if not (isinstance(st, _StorageRef) and isinstance(st.stype, _StorageType) and isinstance(st.key, str)
                and isinstance(st.stype.name, str) and st.stype.name in _TORCH_STORAGES):
            raise CheckpointError(f"{where} is not backed by a storage of a known type; the file is corrupt")
        dtype = _TORCH_STORAGES[st.stype.name]
        offset, size, stride = ref.offset, ref.size, ref.stride
        if not (_is_int(offset) and isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
                and len(size) == len(stride) <= _MAX_NDIM and all(_is_int(x) for x in (*size, *stride))):
            raise CheckpointError(f"{where}: size, stride and storage offset are not integers of one rank "
                                  f"(at most {_MAX_NDIM}); the file is corrupt")
        size, stride = tuple(size), tuple(stride)
        if offset < 0 or any(x < 0 for x in (*size, *stride)):
            raise CheckpointError(f"{where}: negative size, stride or storage offset; the file is corrupt")
        raw = self.storage(st.key)
        numel = math.prod(size)
        self._take(numel * dtype.itemsize, f"tensor {_name(key)}")
        n, rest = divmod(len(raw), dtype.itemsize)
        if rest:
            raise CheckpointError(f"{where}: storage {_name(st.key)} of {len(raw)} bytes is not a whole number of "
                                  f"{dtype.name} elements; the file is corrupt")
        if numel == 0:
            return np.zeros(size, dtype)
        last = offset + sum((s - 1) * t for s, t in zip(size, stride))  # the highest element read
        if last >= n:
            raise CheckpointError(f"{where} reads element {_one_line(str(last), 40)} of storage {_name(st.key)}, which "
                                  f"holds {n}; the file is corrupt")
        flat = np.frombuffer(raw, dtype=dtype, count=n)
        if not size:
            return np.array(flat[offset])
        # Every index is now < n, so each stride of a dimension longer than 1 is < n too; the
        # stride of a length-1 dimension is never used, and is set to 0 to keep it in range.
        strides = tuple(t * dtype.itemsize if s > 1 else 0 for s, t in zip(size, stride))
        return np.array(np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=strides))

    def build(self, obj: Any, where: tuple = (), depth: int = 0) -> Any:
        """``obj`` with every :class:`_TensorRef` in it replaced by its array; containers are
        walked in place (dicts, lists, attribute objects) or rebuilt (tuples), each once however
        often the pickle refers to it. ``where`` is the place, ``(parent's where, key)``, spelt
        out (dict keys joined with ``/``) only for a message."""
        if id(obj) in self._built:  # one pickled tensor (or container) referenced twice stays one
            return self._built[id(obj)]
        if isinstance(obj, _TensorRef):
            self._built[id(obj)] = self.tensor(obj, _spell(where))
            return self._built[id(obj)]
        if not isinstance(obj, (dict, list, tuple)) and not isinstance(getattr(obj, "__dict__", None), dict):
            return obj
        if depth > 64:
            raise CheckpointError(f"{self.path}: {_name(_spell(where))} is nested more than 64 levels deep; "
                                  "the file is corrupt")
        self._built[id(obj)] = obj  # (a container that holds itself is walked once)
        if isinstance(obj, dict):
            for k, v in list(obj.items()):
                obj[k] = self.build(v, (where, k), depth + 1)
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                obj[i] = self.build(v, (where, i), depth + 1)
        elif isinstance(obj, tuple):
            self._built[id(obj)] = tuple(self.build(v, (where, i), depth + 1) for i, v in enumerate(obj))
        elif not callable(obj):  # a plain-data stand-in (hfa_jax.convert.lightning_io.PickledObject)
            for k, v in list(vars(obj).items()):
                vars(obj)[k] = self.build(v, (where, k), depth + 1)
        return self._built[id(obj)]


def _spell(where: tuple) -> str:
    """``(((), "state_dict"), "w")`` -> ``"state_dict/w"``."""
    parts = []
    while where:
        where, k = where
        parts.append(str(k))
    return "/".join(reversed(parts))


def read_torch_pickle(path: str, unpickler: type[_TorchZipUnpickler] = _TorchZipUnpickler,
                      limits: ReadLimits | None = None) -> Any:
    """The object a ``torch.save`` zip archive holds, every tensor as a NumPy array, read with
    ``unpickler`` (a :class:`_TorchZipUnpickler`, which decides what globals are admitted)
    under ``limits`` (default :meth:`ReadLimits.from_env`).

    Raises CheckpointError (one line naming the file, and the tensor or member) for a missing,
    legacy or corrupt file, a refused global, a tensor outside its storage, or a limit hit."""
    limits = limits or ReadLimits.from_env()
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    with _refusing(path, "checkpoint"):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path}: not a torch zip archive (legacy torch.save format?); re-save it with torch>=1.6 "
                "(torch.save(torch.load(f), f)) or convert to model.safetensors"
            )
        with zipfile.ZipFile(path) as zf:
            pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
            if not pkl:
                raise CheckpointError(f"{path}: zip archive has no data.pkl; not a torch checkpoint")
            prefix = pkl[0][: -len("data.pkl")]
            archive = _Archive(path, zf, prefix, limits)
            if f"{prefix}byteorder" in zf.NameToInfo:
                order = bytes(archive.read_member(f"{prefix}byteorder", 16, "byteorder"))
                if order.strip() != b"little":
                    raise CheckpointError(f"{path}: byte order {_name(order)}, only 'little' is read; re-save the "
                                          "checkpoint on a little-endian machine")
            data = archive.read_member(pkl[0], limits.pickle_bytes, "data.pkl")
            for n, _ in enumerate(pickletools.genops(data)):  # (raises ValueError on a bad stream)
                if n >= limits.pickle_ops:
                    raise CheckpointError(f"{path}: data.pkl has more than {limits.pickle_ops} pickle opcodes; "
                                          "a checkpoint of tensors needs far fewer, refusing to read it")
            obj = unpickler(io.BytesIO(data), path).load()
            del data
            return archive.build(obj)


def read_torch_zip(path: str, limits: ReadLimits | None = None) -> dict[str, np.ndarray]:
    """Read a ``torch.save`` zip archive (pytorch_model.bin / .pth) of tensors without torch.

    Returns {name: np.ndarray} (a ``{"model": state_dict}`` wrapper is unwrapped). Raises
    CheckpointError for legacy (non-zip) files, any pickled object other than tensors /
    OrderedDict, a tensor outside its storage, or a file over ``limits`` (:class:`ReadLimits`)."""
    obj = read_torch_pickle(path, limits=limits)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, np.ndarray)}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A weights file (``.safetensors``, or a torch zip ``.bin``/``.pth``) -> {name: array}."""
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch_zip(path)
