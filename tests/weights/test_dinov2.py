"""DINOv2 weight conversion (hfa_jax.weights.dinov2): the Hugging Face folder, pytorch_model.bin
and torch-hub .pth readers agree with each other and with transformers, the exporter round-trips,
and bad checkpoints stop with one line."""

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from hfa_jax.errors import CheckpointError
from hfa_jax.models.vit import ViT, ViTConfig
from hfa_jax.weights.dinov2 import from_hf
from hfa_jax.weights.torch_io import read_torch_zip
from tests.models.test_vit import _hf_small, _pixels, _torch_tokens


def test_safetensors_bin_and_hub_pth_readers(tmp_path):
    model, path = _hf_small(tmp_path)
    x = _pixels(2, 42, 56)  # non-square grid 3x4 from the 4x4 table
    ref = _torch_tokens(model, x)
    m1, v1 = from_hf(path, lora_rank=0)
    y1 = np.asarray(m1.apply(v1, jnp.asarray(x)))
    assert np.abs(y1 - ref).max() < 1e-4
    # pytorch_model.bin (torch zip pickle) read without torch; in-memory (transformers 5) names
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, str(bin_dir / "pytorch_model.bin"))
    m2, v2 = from_hf(str(bin_dir), lora_rank=0)
    np.testing.assert_array_equal(np.asarray(m2.apply(v2, jnp.asarray(x))), y1)
    # torch-hub layout (fused qkv, ls*.gamma, ...) as dinov2_vits14_pretrain.pth
    sd = {k: torch.from_numpy(v) for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    hub = {"cls_token": sd["embeddings.cls_token"], "pos_embed": sd["embeddings.position_embeddings"],
           "mask_token": sd["embeddings.mask_token"],
           "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
    for i in range(2):
        p, q = f"encoder.layer.{i}.", f"blocks.{i}."
        for s in ("weight", "bias"):
            hub[q + f"attn.qkv.{s}"] = torch.cat([sd[p + f"attention.attention.{n}.{s}"] for n in ("query", "key", "value")])
            hub[q + f"attn.proj.{s}"] = sd[p + f"attention.output.dense.{s}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                hub[q + f"{n}.{s}"] = sd[p + f"{n}.{s}"]
        hub[q + "ls1.gamma"] = sd[p + "layer_scale1.lambda1"]
        hub[q + "ls2.gamma"] = sd[p + "layer_scale2.lambda1"]
    pth = str(tmp_path / "dinov2_vits14_pretrain.pth")
    torch.save(hub, pth)
    m3, v3 = from_hf(pth, lora_rank=0)
    assert m3.cfg.pos_resample == "hub" and m3.cfg.num_heads == 2 and m3.cfg.depth == 2
    y3 = np.asarray(m3.apply(v3, jnp.asarray(x)))
    # same weights, hub resampling: equal to the HF-folder import run with pos_resample="hub"
    m4, v4 = from_hf(path, lora_rank=0, pos_resample="hub")
    np.testing.assert_allclose(y3, np.asarray(m4.apply(v4, jnp.asarray(x))), atol=1e-6)
    assert np.abs(y3 - ref).max() > 1e-4  # the hub's offset quirk really changes the positions
    m5, v5 = from_hf(pth, lora_rank=0, pos_resample="hf")
    assert np.abs(np.asarray(m5.apply(v5, jnp.asarray(x))) - ref).max() < 1e-4


def test_to_hf_round_trip_and_transformers_reads_it(tmp_path):
    """Our exporter writes a folder that from_hf and transformers' Dinov2Model both read back to
    the same function (LoRA merged into the kernels)."""
    import transformers

    from hfa_jax.weights.dinov2 import to_hf

    cfg = ViTConfig(patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, pos_grid=4, lora_blocks=(1,),
                    lora_rank=2, lora_alpha=4.0)
    m = ViT(cfg)
    x = jnp.asarray(_pixels(2, 32, 32))
    p = m.init(jax.random.key(0), x)["params"]
    rng = np.random.default_rng(0)
    p = jax.tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape).astype(np.float32), p)  # LoRA B != 0
    out = to_hf(p, cfg, str(tmp_path / "fe"))
    ours = np.asarray(m.apply({"params": p}, x))
    m2, v2 = from_hf(out, cfg, lora_rank=0)
    np.testing.assert_allclose(np.asarray(m2.apply(v2, x)), ours, atol=1e-5)
    hf = transformers.Dinov2Model.from_pretrained(out).eval()
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)).last_hidden_state.numpy()
    np.testing.assert_allclose(ref, ours, atol=1e-5)
    assert not os.path.exists(out + ".partial")


def _write_folder(tmp_path, config, tensors, name="bad"):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        save_file(tensors, str(d / "model.safetensors"))
    return str(d)


def test_bad_checkpoints(tmp_path):
    model, path = _hf_small(tmp_path)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    sd = load_file(os.path.join(path, "model.safetensors"))
    with pytest.raises(CheckpointError, match="config.json"):
        from_hf(str(tmp_path))
    with pytest.raises(CheckpointError, match="model_type"):
        from_hf(_write_folder(tmp_path, {**cfg, "model_type": "bert"}, sd, "bert"))
    with pytest.raises(CheckpointError, match="neither model.safetensors"):
        from_hf(_write_folder(tmp_path, cfg, None, "empty"))
    missing = {k: v for k, v in sd.items() if k != "encoder.layer.1.mlp.fc2.weight"}
    with pytest.raises(CheckpointError, match=r"missing tensor 'encoder.layer.1.mlp.fc2.weight'"):
        from_hf(_write_folder(tmp_path, cfg, missing, "missing"))
    bad = dict(sd, **{"embeddings.position_embeddings": np.zeros((1, 10, 128), np.float32)})
    with pytest.raises(CheckpointError, match=r"'embeddings.position_embeddings' has shape \(1, 10, 128\)"):
        from_hf(_write_folder(tmp_path, cfg, bad, "shape"))
    with pytest.raises(CheckpointError, match="no such file"):
        from_hf(str(tmp_path / "nowhere"))
    # a pickle that smuggles a non-tensor global is refused, never executed
    evil = str(tmp_path / "evil.pth")
    torch.save({"w": torch.zeros(2), "obj": __import__("collections").Counter("ab")}, evil)
    with pytest.raises(CheckpointError, match="refusing to unpickle collections.Counter"):
        read_torch_zip(evil)
    legacy = str(tmp_path / "legacy.pth")
    with open(legacy, "wb") as f:
        f.write(b"\x80\x02not a zip")
    with pytest.raises(CheckpointError, match="not a torch zip archive"):
        from_hf(legacy)
    assert zipfile.is_zipfile(evil)
    with pytest.raises(CheckpointError, match="pos_embed"):
        torch.save({"w": torch.zeros(2)}, str(tmp_path / "other.pth"))
        from_hf(str(tmp_path / "other.pth"))
