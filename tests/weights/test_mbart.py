"""mBART weight import (hfa_jax.weights.mbart): the imported-weights checkpoint, bad folders,
pytorch_model.bin without torch unpickling, bf16 safetensors. Parity of the imported model with
transformers is in tests/models/test_mbart.py."""

from __future__ import annotations

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from hfa_jax.errors import CheckpointError
from hfa_jax.weights import mbart
from tests.models.test_mbart import tiny  # noqa: F401 - the module-scoped fixture


def test_save_and_load_imported(tiny, tmp_path):
    _, _, module, variables = tiny
    out = mbart.save_imported(variables, str(tmp_path / "imported"), module.cfg)
    cfg, restored = mbart.load_imported(out)
    assert cfg == module.cfg
    flat_a, flat_b = jax.tree.leaves_with_path(variables), jax.tree.leaves_with_path(restored)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (_, x), (_, y) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(CheckpointError, match="already exists"):
        mbart.save_imported(variables, out)


def test_bad_checkpoints_raise_checkpoint_error(tiny, tmp_path):
    _, path, _, _ = tiny
    with pytest.raises(CheckpointError, match="config.json"):
        mbart.from_hf(str(tmp_path))
    state = load_file(os.path.join(path, "model.safetensors"))
    hf_cfg = json.load(open(os.path.join(path, "config.json")))

    def folder(name, cfg, tensors):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        if tensors is not None:
            save_file(tensors, str(d / "model.safetensors"))
        return str(d)

    with pytest.raises(CheckpointError, match="not 'mbart'"):
        mbart.from_hf(folder("bert", {**hf_cfg, "model_type": "bert"}, state))
    key = "model.encoder.layers.1.fc2.weight"
    with pytest.raises(CheckpointError, match=key.replace("model.", "")):
        mbart.from_hf(folder("missing", hf_cfg, {k: v for k, v in state.items() if k != key}))
    bad = dict(state)
    bad["model.decoder.layers.0.self_attn.v_proj.weight"] = np.zeros((64, 32), np.float32)
    with pytest.raises(CheckpointError, match=r"decoder.layers.0.self_attn.v_proj.weight.*\(64, 32\)"):
        mbart.from_hf(folder("misshaped", hf_cfg, bad))
    d = folder("legacy_bin", hf_cfg, None)
    with open(os.path.join(d, "pytorch_model.bin"), "wb") as f:
        f.write(b"\x80\x02not a zip archive")
    with pytest.raises(CheckpointError, match="safetensors"):
        mbart.from_hf(d)


def test_pytorch_model_bin_is_read_without_torch_unpickling(tiny, tmp_path):
    model, _, module, variables = tiny
    d = tmp_path / "bin"
    d.mkdir()
    model.config.to_json_file(str(d / "config.json"))
    torch.save(model.state_dict(), str(d / "pytorch_model.bin"))  # zip format, tied tensors shared
    _, bin_vars = mbart.from_hf(str(d), lora_rank=0)
    jax.tree.map(np.testing.assert_array_equal, bin_vars, jax.tree.map(np.asarray, variables))


def test_bfloat16_safetensors_checkpoint_is_read(tiny, tmp_path):
    """Checkpoints stored in bf16 (numpy has no bf16) are read and upcast to float32."""
    model, _, _, variables = tiny
    path = str(tmp_path / "bf16")
    model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    model.to(torch.float32)
    _, bf_vars = mbart.from_hf(path, lora_rank=0)
    ref = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), variables)
    jax.tree.map(np.testing.assert_array_equal, bf_vars, ref)
