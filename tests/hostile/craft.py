"""Crafting hostile weight files: torch zip archives and safetensors files whose every number is
chosen by the caller, so tests can say exactly what lies in them.

``python -m tests.hostile.craft [OUT_DIR]`` writes the corpus of tests/resources/hostile (see
its README.md for what each file is); the fuzz tests build files with the same functions.
"""

from __future__ import annotations

import bz2
import dataclasses
import io
import json
import os
import random
import struct
import sys
import zipfile
import zlib

from hfa_jax.weights import torch_save

CORPUS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources", "hostile")

# A fixed timestamp keeps the archives byte-identical from run to run.
_DATE = (2020, 1, 1, 0, 0, 0)


@dataclasses.dataclass
class Tensor:
    """One ``_rebuild_tensor_v2(storage key, offset, size, stride)`` record, numbers unchecked."""

    key: str
    offset: int
    size: tuple
    stride: tuple
    storage_type: str = "FloatStorage"
    numel: int = 0  # the storage's element count, as the persistent id states it (torch.load uses it)


def tensor_pickle(tensors: dict[str, Tensor]) -> bytes:
    """The protocol-2 pickle of ``OrderedDict(name -> tensor)``, written opcode by opcode as
    :mod:`hfa_jax.weights.torch_save` does, but with the caller's offsets, sizes and strides."""
    em = torch_save._Emitter()
    em._w(b"\x80\x02")
    em._global("collections", "OrderedDict")
    em._w(b")R")
    if tensors:
        em._w(b"(")
        for name, t in tensors.items():
            em._str(name)
            em._global("torch._utils", "_rebuild_tensor_v2")
            em._w(b"((")
            em._str("storage")
            em._global("torch", t.storage_type)
            em._str(t.key)
            em._str("cpu")
            em._int(t.numel)
            em._w(b"tQ")
            em._int(t.offset)
            em._tuple(t.size)
            em._tuple(t.stride)
            em._w(b"\x89")
            em._global("collections", "OrderedDict")
            em._w(b")RtR")
        em._w(b"u")
    em._w(b".")
    return em.out.getvalue()


def torch_zip(pickle_bytes: bytes, storages: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED,
              declared_sizes: dict[str, int] | None = None, pickle_compression: int = zipfile.ZIP_STORED) -> bytes:
    """A torch.save-layout zip archive (``archive/data.pkl``, ``archive/data/<key>``) with the
    storages compressed by ``compression`` (the pickle by ``pickle_compression``).
    ``declared_sizes`` overrides a member's declared uncompressed size (a lying header)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        def put(name: str, data: bytes, method: int) -> None:
            info = zipfile.ZipInfo(name, date_time=_DATE)
            info.compress_type = method
            zf.writestr(info, data)
        put("archive/data.pkl", pickle_bytes, pickle_compression)
        put("archive/byteorder", b"little", zipfile.ZIP_STORED)
        for key, data in storages.items():
            put(f"archive/data/{key}", data, compression)
        put("archive/version", b"3\n", zipfile.ZIP_STORED)
    raw = buf.getvalue()
    for key, size in (declared_sizes or {}).items():
        raw = _declare_size(raw, f"archive/data/{key}", size)
    return raw


def _declare_size(raw: bytes, name: str, size: int) -> bytes:
    """Rewrites the uncompressed size of member ``name`` in its local and central headers."""
    out, enc = bytearray(raw), name.encode()
    # (signature, offset of the uncompressed size, offset of the file name) in each header
    for sig, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        pos = out.find(sig)
        while pos >= 0:
            if out[pos + name_at: pos + name_at + len(enc)] == enc:
                struct.pack_into("<I", out, pos + size_at, size)
            pos = out.find(sig, pos + 4)
    return bytes(out)


def bomb_member(nbytes: int, method: int) -> tuple[bytes, int]:
    """(compressed bytes of ``nbytes`` zeros, crc) made in 16 MiB pieces (never all in memory)."""
    comp = bz2.BZ2Compressor(9) if method == zipfile.ZIP_BZIP2 else zlib.compressobj(9, zlib.DEFLATED, -15)
    piece, crc, out = bytes(16 << 20), 0, []
    left = nbytes
    while left:
        chunk = piece[: min(left, len(piece))]
        crc = zlib.crc32(chunk, crc)
        out.append(comp.compress(chunk))
        left -= len(chunk)
    out.append(comp.flush())
    return b"".join(out), crc


def bomb_zip(nbytes: int, method: int) -> bytes:
    """A torch archive whose one float storage is ``nbytes`` of zeros, compressed by ``method``
    (the zip headers state the true size); the tensor views all of it."""
    data, crc = bomb_member(nbytes, method)
    pkl = tensor_pickle({"w": Tensor("0", 0, (nbytes // 4,), (1,))})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in (("archive/data.pkl", pkl), ("archive/byteorder", b"little")):
            zf.writestr(zipfile.ZipInfo(name, date_time=_DATE), payload)
        # The member is written from its compressed bytes directly (zipfile would compress it
        # all in memory): a ZipInfo with the sizes and CRC, then the raw stream.
        info = zipfile.ZipInfo("archive/data/0", date_time=_DATE)
        info.compress_type = method
        info.file_size, info.compress_size, info.CRC = nbytes, len(data), crc
        info.header_offset = buf.tell()
        zf.fp.write(info.FileHeader(zip64=nbytes > 0xFFFFFFFF))
        zf.fp.write(data)
        zf.start_dir = zf.fp.tell()
        zf.filelist.append(info)
        zf.NameToInfo[info.filename] = info
    return buf.getvalue()


def safetensors(header: object, data: bytes = b"", *, header_len: int | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian header length (``header_len`` overrides it),
    the JSON ``header`` (or raw bytes), then ``data``."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(head) if header_len is None else header_len
    return n.to_bytes(8, "little") + head + data


def corpus(bombs: bool = True) -> dict[str, bytes]:
    """The files of tests/resources/hostile, by name (README.md there says what each one is);
    ``bombs=False`` leaves out the two zip bombs, which take seconds to compress."""
    four = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    files = {
        # storage offset far past the storage.
        "offset_past_storage.pth": torch_zip(tensor_pickle({"w": Tensor("0", 1 << 40, (4,), (1,))}), {"0": four}),
        # a stride that jumps 2**40 elements per row: the old reader's as_strided walked off the
        # heap and the process died of SIGSEGV.
        "segfault_stride.pth": torch_zip(tensor_pickle({"w": Tensor("0", 0, (2, 2), (1 << 40, 1))}), {"0": four}),
        # 4096 floats read from a 4-float storage: the old reader returned 16 KB of the
        # process's own memory inside the tensor.
        "leak_memory.pth": torch_zip(tensor_pickle({"w": Tensor("0", 0, (4096,), (1,))}), {"0": four}),
        # stride 0: a 16 GiB tensor of one float.
        "stride_zero_16gib.pth": torch_zip(tensor_pickle({"w": Tensor("0", 0, (65536, 65536), (0, 0))}), {"0": four}),
        # the storage member declares 4 GiB in its headers but holds 16 bytes.
        "lying_member_size.pth": torch_zip(tensor_pickle({"w": Tensor("0", 0, (4,), (1,))}), {"0": four},
                                           declared_sizes={"0": (1 << 32) - 1}),
        # 1.2 million empty dicts in a list (the pickle deflated to 1 KB, a 12 KB random storage
        # beside it): unpickled, some 200 MB of objects from a 13 KB file.
        "pickle_object_bomb.pth": torch_zip(b"\x80\x02](" + b"}" * 1_200_000 + b"e.",
                                            {"0": random.Random(0).randbytes(12_000)},
                                            pickle_compression=zipfile.ZIP_DEFLATED),
        # a payload: the pickle calls os.system.
        "pickle_payload.pth": torch_zip(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.", {}),
        # shape 2**32 x 2**32 floats: 2**66 bytes, 0 in int64 arithmetic; offsets [0, 0].
        "safetensors_overflow_shape.safetensors": safetensors(
            {"w": {"dtype": "F32", "shape": [1 << 32, 1 << 32], "data_offsets": [0, 0]}}),
        # shape [-1, -4]: its product, 4 floats, matches the 16 bytes given.
        "safetensors_negative_shape.safetensors": safetensors(
            {"w": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}}, four),
        # 100 tensors over the same 16 bytes: a small file asking for many copies.
        "safetensors_overlap.safetensors": safetensors(
            {f"w{i}": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]} for i in range(100)}, four),
    }
    if bombs:
        # 1 GiB of zeros, bzip2: 1 KB on disk; zipfile inflates bzip2 in one unbounded call.
        files["zip_bomb_bzip2_1gib.pth"] = bomb_zip(1 << 30, zipfile.ZIP_BZIP2)
        # 64 MiB of zeros, deflate: 65 KB on disk (the sizes in the zip headers are true).
        files["zip_bomb_deflate_64mib.pth"] = bomb_zip(64 << 20, zipfile.ZIP_DEFLATED)
    return files


def main(out: str = CORPUS) -> None:
    os.makedirs(out, exist_ok=True)
    for name, data in corpus().items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main(*sys.argv[1:])
