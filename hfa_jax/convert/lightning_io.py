"""Reading and writing PyTorch Lightning checkpoints (``.ckpt``) without torch.

A Lightning checkpoint is a ``torch.save`` zip archive of a dict: ``state_dict`` (the module's
tensors, prefixed by the LightningModule attribute, e.g. ``model.``), plus metadata
(``epoch``, ``global_step``, ``pytorch-lightning_version``, ``hyper_parameters``, ``loops``,
``callbacks``, ``optimizer_states``, ``lr_schedulers``, ...).

Reading goes through the restricted unpickler of :mod:`hfa_jax.weights.torch_io` (tensors from
the archive's raw storages, ``OrderedDict``), extended here with inert stand-ins for the plain
metadata Lightning writes: ``argparse.Namespace`` and Lightning's ``AttributeDict`` (the saved
hyper-parameters), ``pathlib`` paths, ``torch.Size`` / ``torch.device`` / torch dtypes, sets and
the ``_codecs.encode`` that protocol 2 uses for bytes. Each stand-in only builds a plain Python
value; any other global is refused before it is looked up, so a payload never runs.

Writing (:func:`write_checkpoint`) uses :mod:`hfa_jax.weights.torch_save`.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Mapping

import numpy as np

from hfa_jax.errors import CheckpointError
from hfa_jax.weights import torch_io, torch_save

__all__ = ["PickledObject", "read_checkpoint", "write_checkpoint", "LIGHTNING_VERSION"]

# Written into exported checkpoints; Lightning only reads it to migrate older formats.
LIGHTNING_VERSION = "2.4.0"


class PickledObject:
    """Stands in for a pickled plain-data object (``argparse.Namespace``): its attributes only."""

    def __init__(self, *args, **kwargs):
        self.__dict__.update(kwargs)

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"PickledObject({self.__dict__!r})"


class _AttributeDict(dict):
    """Stands in for Lightning's ``AttributeDict`` (a dict subclass)."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.update(state)


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Protocol 2 writes ``bytes`` as ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise CheckpointError("checkpoint: unexpected _codecs.encode arguments; refusing to read it")
    return text.encode(encoding)


def _path(*parts) -> str:
    return os.path.join(*[str(p) for p in parts]) if parts else ""


def _device(*args) -> str:
    return ":".join(str(a) for a in args)


def _tensor_marker(*_args):
    raise CheckpointError("checkpoint: a torch.Tensor class was called directly; refusing to read it")


def _rebuild_from_type_v2(func, new_type, args, state):
    """``torch._tensor._rebuild_from_type_v2``: only for tensors rebuilt by ``func`` (one of the
    admitted rebuilders); the subclass and any Python attributes are dropped."""
    if func not in (torch_io._rebuild_tensor_v2, torch_io._rebuild_parameter):
        raise CheckpointError("checkpoint: tensor rebuilt by an unexpected function; refusing to read it")
    return func(*args)


_TORCH_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                 "uint8", "bool", "float", "double", "half", "long", "int", "short", "complex64")

# (module, name) -> the inert value the unpickler hands back instead of importing it.
_METADATA_GLOBALS: dict[tuple[str, str], Any] = {
    ("argparse", "Namespace"): PickledObject,
    ("pytorch_lightning.utilities.parsing", "AttributeDict"): _AttributeDict,
    ("lightning.fabric.utilities.data", "AttributeDict"): _AttributeDict,
    ("lightning_fabric.utilities.data", "AttributeDict"): _AttributeDict,
    ("pathlib", "PosixPath"): _path,
    ("pathlib", "PurePosixPath"): _path,
    ("pathlib", "WindowsPath"): _path,
    ("pathlib", "PureWindowsPath"): _path,
    ("torch", "Size"): tuple,
    ("torch", "device"): _device,
    ("torch", "Tensor"): _tensor_marker,
    ("torch.nn.parameter", "Parameter"): _tensor_marker,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    **{("torch", t): f"torch.{t}" for t in _TORCH_DTYPES},
}


class _LightningUnpickler(torch_io._TorchZipUnpickler):
    """torch_io's tensor-only unpickler plus :data:`_METADATA_GLOBALS`."""

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module  # protocol 2's Python 2 name
        if (module, name) in _METADATA_GLOBALS:
            return _METADATA_GLOBALS[(module, name)]
        try:
            return super().find_class(module, name)
        except CheckpointError:
            raise CheckpointError(
                f"{self._path}: refusing to unpickle {module}.{name} (only tensors and Lightning's plain "
                "metadata are read; nothing in the file was run); re-save only the state_dict: "
                "torch.save({'state_dict': ckpt['state_dict']}, 'clean.ckpt')") from None


def read_checkpoint(path: str) -> dict[str, Any]:
    """A Lightning ``.ckpt`` (or any ``torch.save`` zip of a dict) -> the dict, with every tensor
    as a NumPy array. A file holding only a state dict is returned as ``{"state_dict": it}``.

    Raises :class:`CheckpointError` (one line naming the file) for a missing, non-zip or corrupt
    file, for any pickled global outside the tensor / plain-metadata set (the payload is never
    run), for a tensor outside its storage, or past the limits of
    :class:`hfa_jax.weights.torch_io.ReadLimits`."""
    obj = torch_io.read_torch_pickle(path, _LightningUnpickler)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict (a Lightning checkpoint), got {type(obj).__name__}")
    if "state_dict" not in obj:
        if all(isinstance(v, np.ndarray) for v in obj.values()):
            obj = {"state_dict": obj}
        else:
            raise CheckpointError(f"{path}: no 'state_dict' entry; not a Lightning checkpoint "
                                  f"(top-level keys: {sorted(k[:40] for k in obj if isinstance(k, str))[:8]})")
    sd = obj["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(sd).__name__}, not a dict of tensors")
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            name = repr(k)[:80] if isinstance(k, str) else f"a {type(k).__name__} key"
            raise CheckpointError(f"{path}: state_dict entry {name} is a {type(v).__name__}, not a tensor; "
                                  "re-save only the tensors")
    return obj


def write_checkpoint(path: str, state_dict: Mapping[str, np.ndarray], *, epoch: int = 0, global_step: int = 0,
                     hyper_parameters: Mapping[str, Any] | None = None) -> str:
    """Writes a Lightning-style checkpoint holding ``state_dict`` (in order) and the minimal
    metadata ``LightningModule.load_from_checkpoint`` reads. No optimiser or loop state."""
    obj: dict[str, Any] = {
        "epoch": int(epoch),
        "global_step": int(global_step),
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": collections.OrderedDict((k, np.asarray(v)) for k, v in state_dict.items()),
    }
    if hyper_parameters:
        obj["hyper_parameters"] = dict(hyper_parameters)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return torch_save.save(obj, path)
