"""The crafted files of tests/resources/hostile: each gives its one CheckpointError line, in a
child process (a crash shows as a signal, not as a dead test run) within a few MB of memory,
and through ``python -m hfa_jax.convert``; and ``tests.hostile.craft`` still makes them byte for
byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hfa_jax.convert import lightning_io
from hfa_jax.convert.__main__ import _count, main
from hfa_jax.errors import CheckpointError
from hfa_jax.weights import torch_save
from tests.hostile import craft

# file -> a fragment of its one-line error
EXPECTED = {
    "segfault_stride.pth": "tensor 'w' reads element 1099511627777 of storage '0', which holds 4",
    "offset_past_storage.pth": "tensor 'w' reads element 1099511627779 of storage '0', which holds 4",
    "leak_memory.pth": "tensor 'w' reads element 4095 of storage '0', which holds 4",
    "stride_zero_16gib.pth": "tensor 'w' needs 17179869184 bytes more, over 100 x the file's 659 bytes",
    "zip_bomb_bzip2_1gib.pth": "member 'archive/data/0' uses zip compression method 12",
    "zip_bomb_deflate_64mib.pth": "member 'archive/data/0' needs 67108864 bytes more, over 100 x the file's",
    "lying_member_size.pth": "member 'archive/data/0' is stored but declares two sizes",
    "pickle_payload.pth": "refusing to unpickle posix.system",
    "pickle_object_bomb.pth": "data.pkl has more than 1000000 pickle opcodes",
    "safetensors_overflow_shape.safetensors": "tensor 'w' spans bytes [0, 0) but its shape needs 73786976294838206464",
    "safetensors_negative_shape.safetensors": "tensor 'w': negative shape [-1, -4]",
    "safetensors_overlap.safetensors": "tensor 'w1' overlaps tensor 'w0'",
}

# Reads every file given and prints {name: [message or None, peak traced bytes]} as JSON.
_CHILD = """
import json, os, sys, tracemalloc
from hfa_jax.errors import CheckpointError
from hfa_jax.weights.torch_io import load_state_dict
out = {}
for path in sys.argv[1:]:
    tracemalloc.start()
    try:
        load_state_dict(path)
        msg = None
    except CheckpointError as e:
        msg = str(e)
    out[os.path.basename(path)] = [msg, tracemalloc.get_traced_memory()[1]]
    tracemalloc.stop()
print(json.dumps(out))
"""


def test_every_hostile_file_gives_its_one_line_error():
    files = sorted(os.listdir(craft.CORPUS))
    assert sorted(f for f in files if f != "README.md") == sorted(EXPECTED)
    paths = [os.path.join(craft.CORPUS, f) for f in sorted(EXPECTED)]
    proc = subprocess.run([sys.executable, "-c", _CHILD, *paths], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode == 0, proc.stderr[-2000:]  # (a negative code is the signal that killed it)
    got = json.loads(proc.stdout)
    for name, fragment in EXPECTED.items():
        msg, peak = got[name]
        assert msg is not None, f"{name} was read"
        assert fragment in msg and msg.startswith(os.path.join(craft.CORPUS, name)), (name, msg)
        assert "\n" not in msg
        assert peak < 4 << 20, (name, peak)


def test_the_corpus_is_what_craft_makes():
    # (the two zip bombs take seconds to compress and are left out here)
    for name, data in craft.corpus(bombs=False).items():
        with open(os.path.join(craft.CORPUS, name), "rb") as f:
            assert f.read() == data, name


def test_convert_cli_gives_one_line_for_each_hostile_checkpoint(tmp_path, capsys):
    bad_sd = torch_save.save({"state_dict": {"w": 3}}, str(tmp_path / "int_entry.ckpt"))
    bad_step = torch_save.save({"state_dict": {}, "global_step": "many"}, str(tmp_path / "bad_step.ckpt"))
    cases = {os.path.join(craft.CORPUS, n): f for n, f in EXPECTED.items() if n.endswith(".pth")}
    cases[bad_sd] = "state_dict entry 'w' is a int, not a tensor"
    for path, fragment in cases.items():
        with pytest.raises(SystemExit) as e:
            main(["from-lightning", "--ckpt", path, "--stage", "finetune", "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and fragment in err and path in err, err
    assert lightning_io.read_checkpoint(bad_step)["global_step"] == "many"  # (read; from_lightning checks it)
    with pytest.raises(CheckpointError, match="key 'global_step' is a str, not a count"):
        _count({"global_step": "many"}, "global_step", bad_step)
