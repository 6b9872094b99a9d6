"""Restricted unpickling for dataset label files.

GFSLT-VLP and the HFA authors ship their labels as gzip-compressed pickles (docs/data.md). A plain
`pickle.load` executes whatever the file asks for (any importable callable, e.g. `os.system`),
so label files are read with an unpickler whose `find_class` admits no global except:

* always: `builtins.set` / `builtins.frozenset` (protocol <= 3 pickles spell a set as a call
  to its constructor) and `_codecs.encode` (protocol <= 2 spells bytes that way); dicts, lists,
  tuples, str, bytes, int, float, bool and None need no global at all — they have their own
  opcodes;
* with `allow_numpy=True`: exactly the globals numpy's own `ndarray.__reduce__` /
  `__reduce_ex__` emit (array and dtype reconstruction, scalars, protocol-5 `_frombuffer`),
  for the BeyondGloss feature files.

Anything else raises :class:`~hfa_jax.errors.DataError` naming the file and the refused global,
before the global is looked up, so the payload never runs.
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import io
import os
import pickle
from typing import IO, Any

from hfa_jax.errors import DataError

# (module, name) pairs a plain-containers pickle may reference.
_PLAIN_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("__builtin__", "set"),  # protocol-2 pickles written by Python 2
        ("__builtin__", "frozenset"),
        # Protocol <= 2 spells a `bytes` object as `_codecs.encode(latin1_str, "latin1")`.
        ("_codecs", "encode"),
    }
)

# What numpy's pickling emits for arrays, dtypes and scalars (numpy 1.x wrote `numpy.core.*`,
# numpy 2.x writes `numpy._core.*`; both map onto the installed numpy). Nothing else from numpy.
_NUMPY_GLOBALS: dict[tuple[str, str], tuple[str, str]] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _NUMPY_GLOBALS[(_mod, "_reconstruct")] = ("numpy._core.multiarray", "_reconstruct")
    _NUMPY_GLOBALS[(_mod, "scalar")] = ("numpy._core.multiarray", "scalar")
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _NUMPY_GLOBALS[(_mod, "_frombuffer")] = ("numpy._core.numeric", "_frombuffer")
_NUMPY_GLOBALS[("numpy", "ndarray")] = ("numpy", "ndarray")
_NUMPY_GLOBALS[("numpy", "dtype")] = ("numpy", "dtype")


class _RefusedGlobal(Exception):
    """Internal: raised from `find_class`, turned into a DataError with the file name."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fileobj: IO[bytes], *, allow_numpy: bool):
        super().__init__(fileobj)
        self._allow_numpy = allow_numpy

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN_GLOBALS:
            return {"set": set, "frozenset": frozenset, "encode": codecs.encode}[name]
        if self._allow_numpy and (module, name) in _NUMPY_GLOBALS:
            real_module, real_name = _NUMPY_GLOBALS[(module, name)]
            return getattr(importlib.import_module(real_module), real_name)
        # Refuse before importing anything: the payload never runs.
        raise _RefusedGlobal(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise _RefusedGlobal("<persistent id>", repr(pid)[:60])


def _source_name(fileobj: IO[bytes], source: str | None) -> str:
    if source is not None:
        return source
    return str(getattr(fileobj, "name", "<pickle stream>"))


def restricted_load(
    fileobj: IO[bytes], *, allow_numpy: bool = False, source: str | None = None
) -> Any:
    """Unpickles `fileobj`, admitting only plain containers, strings and numbers.

    Args:
      fileobj: a binary file object positioned at the start of a pickle.
      allow_numpy: also admit numpy ndarray/dtype/scalar reconstruction (nothing else of numpy).
      source: file name for error messages (default: `fileobj.name`).

    Returns:
      The unpickled object.

    Raises:
      DataError: the pickle references a refused global, or the stream is corrupt/truncated.
    """
    where = _source_name(fileobj, source)
    try:
        return _RestrictedUnpickler(fileobj, allow_numpy=allow_numpy).load()
    except _RefusedGlobal as e:
        allowed = "plain containers, strings, numbers" + (" and numpy arrays" if allow_numpy else "")
        raise DataError(
            f"{where}: refused to unpickle global '{e.module}.{e.name}' (label files may hold only "
            f"{allowed}); use the original label file or re-export it as plain dicts/lists"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, ImportError, OSError) as e:
        # OSError covers gzip's BadGzipFile and truncated-stream errors.
        raise DataError(
            f"{where}: not a readable pickle ({type(e).__name__}: {str(e)[:120]}); "
            "re-download or regenerate the file"
        ) from None


def load_gzip_pickle(path: str | os.PathLike, *, allow_numpy: bool = False) -> Any:
    """Loads a gzip-compressed pickle (GFSLT-VLP `labels.*`) with :func:`restricted_load`.

    A file that is not gzip-compressed is read as a plain pickle (some re-exports drop the gzip
    layer); both go through the same restricted unpickler.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: label file not found; check the --labels path")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(
                f"{path}: corrupt gzip stream ({str(e)[:120]}); re-download the file"
            ) from None
    return restricted_load(io.BytesIO(raw), allow_numpy=allow_numpy, source=path)
