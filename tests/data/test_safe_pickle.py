"""Restricted unpickler: plain data loads, anything else is refused before it can run."""

from __future__ import annotations

import gzip
import io
import os
import pathlib
import pickle

import numpy as np
import pytest

from hfa_jax.data.safe_pickle import load_gzip_pickle, restricted_load
from hfa_jax.errors import DataError

PLAIN = {
    "dev/a": {"name": "dev/a", "text": "über alles", "length": 3, "imgs_path": ["x/1.png", "x/2.png"]},
    "t": (1, -2.5, None, True, False, b"\x00\xff", 10**30),
    "s": {1, 2, 3},
    "f": frozenset({"a"}),
    "nested": [[{}], ()],
}


class _Payload:
    """Unpickling this runs `Path.touch(marker)`: a stand-in for any code execution."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_containers_roundtrip_every_protocol(protocol):
    blob = pickle.dumps(PLAIN, protocol=protocol)
    assert restricted_load(io.BytesIO(blob)) == PLAIN


def test_payload_never_runs(tmp_path):
    control, marker = tmp_path / "control", tmp_path / "marker"
    # The payload is live: plain pickle executes it (this is exactly what must never happen).
    pickle.loads(pickle.dumps({"x": _Payload(str(control))}))
    assert control.exists()

    path = tmp_path / "labels.train"
    with gzip.open(path, "wb") as f:
        pickle.dump({"train/a": {"text": "t", "evil": _Payload(str(marker))}}, f)
    with pytest.raises(DataError) as e:
        load_gzip_pickle(path)
    msg = str(e.value)
    assert not marker.exists()
    assert str(path) in msg and "pathlib" in msg and "touch" in msg
    assert "\n" not in msg


def test_os_system_refused_even_with_numpy(tmp_path):
    marker = tmp_path / "m"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    blob = pickle.dumps([np.zeros(2), Evil()])
    with pytest.raises(DataError, match=r"(posix|os)\.system"):
        restricted_load(io.BytesIO(blob), allow_numpy=True, source="feat.pkl")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_only_when_allowed(protocol):
    obj = {"hand": np.arange(12, dtype=np.float32).reshape(3, 2, 2), "n": np.int64(7),
           "o": np.array(["a", "bc"], dtype=object)}
    blob = pickle.dumps(obj, protocol=protocol)
    with pytest.raises(DataError, match="numpy"):
        restricted_load(io.BytesIO(blob))
    got = restricted_load(io.BytesIO(blob), allow_numpy=True)
    np.testing.assert_array_equal(got["hand"], obj["hand"])
    assert got["hand"].dtype == np.float32 and got["n"] == 7 and list(got["o"]) == ["a", "bc"]


def test_numpy_other_globals_refused():
    blob = pickle.dumps(np.load)  # a numpy function, not array reconstruction
    with pytest.raises(DataError, match="numpy"):
        restricted_load(io.BytesIO(blob), allow_numpy=True)


def test_plain_pickle_without_gzip_layer(tmp_path):
    path = tmp_path / "labels.dev"
    path.write_bytes(pickle.dumps(PLAIN))
    assert load_gzip_pickle(path) == PLAIN


@pytest.mark.parametrize("content", [b"\x1f\x8b\x08\x00garbage", b"not a pickle at all", b""])
def test_corrupt_files_one_line_error(tmp_path, content):
    path = tmp_path / "labels.test"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_gzip_pickle(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "labels.train"
    full = gzip.compress(pickle.dumps(PLAIN))
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="labels.train"):
        load_gzip_pickle(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_gzip_pickle(tmp_path / "nope")


class _ObjectArrayFromRawMemory:
    """An object-dtype array whose state is raw bytes: would turn bytes into object pointers."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"),
                (1, (2,), np.dtype("O"), False, b"\x10" * 16))


def test_object_array_from_raw_bytes_is_rejected():
    blob = pickle.dumps(_ObjectArrayFromRawMemory(), protocol=2)
    with pytest.raises(DataError, match="not a readable pickle"):
        restricted_load(io.BytesIO(blob), allow_numpy=True, source="x.pkl")
