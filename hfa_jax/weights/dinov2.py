"""DINOv2 weights: Hugging Face / torch-hub checkpoints -> :class:`~hfa_jax.models.vit.ViT`
parameters (:func:`from_hf`), and the reverse (:func:`to_hf`).

Sources read (no torch, no plain pickle: :mod:`hfa_jax.weights.torch_io`):

- a Hugging Face folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) of
  ``Dinov2Model`` / ``Dinov2WithRegistersModel``: separate query/key/value weights, concatenated
  here into the fused ``qkv`` projection the model (and the torch-hub DINOv2 the HFA reference
  loads) uses;
- a torch-hub state dict (``dinov2_vits14_pretrain.pth``), already fused.

Torch ``Linear`` weights are ``[out, in]``; flax kernels ``[in, out]``. The patch-embedding conv
``[D, 3, p, p]`` becomes ``[p, p, 3, D]``. LoRA adapters, absent from every checkpoint, are
initialised fresh (A ~ N(0, 0.02), B = 0). See the parameter tree in :mod:`hfa_jax.models.vit`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from hfa_jax.errors import CheckpointError
from hfa_jax.models.vit import ViT, ViTConfig
from hfa_jax.weights.torch_io import load_state_dict

__all__ = ["from_hf", "to_hf"]


# --------------------------------------------------------------------------- import
def _get(sd: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...], src: str) -> np.ndarray:
    if key not in sd:
        raise CheckpointError(f"{src}: missing tensor {key!r}; is this a DINOv2 ViT checkpoint?")
    arr = np.asarray(sd[key])
    if tuple(arr.shape) != tuple(shape):
        raise CheckpointError(f"{src}: tensor {key!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
    return arr.astype(np.float32)


def _last3(depth: int) -> tuple[int, ...]:
    """The paper's LoRA sits on the last three blocks (9, 10, 11 of ViT-S's 12)."""
    return tuple(range(max(depth - 3, 0), depth))


def _hf_config(path: str) -> ViTConfig:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{path}: no config.json; expected a Hugging Face DINOv2 folder")
    with open(cfg_path) as f:
        c = json.load(f)
    mt = c.get("model_type")
    if mt not in ("dinov2", "dinov2_with_registers"):
        raise CheckpointError(f"{cfg_path}: model_type is {mt!r}, expected 'dinov2'")
    if c.get("use_swiglu_ffn", False):
        raise CheckpointError(f"{cfg_path}: use_swiglu_ffn=true (ViT-g) is not supported; use ViT-S/B/L")
    try:
        width = int(c["hidden_size"])
        depth = int(c["num_hidden_layers"])
        return ViTConfig(
            lora_blocks=_last3(depth),
            patch_size=int(c["patch_size"]),
            width=width,
            depth=depth,
            num_heads=int(c["num_attention_heads"]),
            mlp_dim=int(width * c.get("mlp_ratio", 4)),
            ln_eps=float(c.get("layer_norm_eps", 1e-6)),
            pos_grid=int(c["image_size"]) // int(c["patch_size"]),
            num_registers=int(c.get("num_register_tokens", 0)),
            layerscale_init=float(c.get("layerscale_value", 1.0)),
            pos_resample="aa" if mt == "dinov2_with_registers" else "hf",
        )
    except KeyError as e:
        raise CheckpointError(f"{cfg_path}: missing field {e.args[0]!r}") from e


# transformers >= 5 names its in-memory modules q_proj/k_proj/v_proj/o_proj but writes the
# legacy names (used by every checkpoint on the Hub); state dicts taken from memory use the new.
_HF_RENAMES = (
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
)


def _legacy_hf_name(key: str) -> str:
    for new, old in _HF_RENAMES:
        key = key.replace(new, old)
    return key


def _convert_hf(sd: Mapping[str, np.ndarray], cfg: ViTConfig, src: str) -> dict:
    sd = {_legacy_hf_name(k[len("dinov2."):] if k.startswith("dinov2.") else k): v for k, v in sd.items()}
    d, p, m = cfg.width, cfg.patch_size, cfg.mlp_dim
    g = lambda k, s: _get(sd, k, s, src)  # noqa: E731
    lin = lambda k, i, o: {"kernel": g(k + ".weight", (o, i)).T, "bias": g(k + ".bias", (o,))}  # noqa: E731
    ln = lambda k: {"scale": g(k + ".weight", (d,)), "bias": g(k + ".bias", (d,))}  # noqa: E731
    params: dict[str, Any] = {
        "patch_embed": {
            "kernel": g("embeddings.patch_embeddings.projection.weight", (d, 3, p, p)).transpose(2, 3, 1, 0),
            "bias": g("embeddings.patch_embeddings.projection.bias", (d,)),
        },
        "cls_token": g("embeddings.cls_token", (1, 1, d)),
        "mask_token": g("embeddings.mask_token", (1, d)),
        "pos_embed": g("embeddings.position_embeddings", (1, 1 + cfg.pos_grid**2, d)),
        "norm": ln("layernorm"),
    }
    if cfg.num_registers:
        params["register_tokens"] = g("embeddings.register_tokens", (1, cfg.num_registers, d))
    for i in range(cfg.depth):
        pre = f"encoder.layer.{i}."
        q, k, v = (lin(pre + f"attention.attention.{n}", d, d) for n in ("query", "key", "value"))
        params[f"block_{i}"] = {
            "norm1": ln(pre + "norm1"),
            "attn": {
                "qkv": {
                    "kernel": np.concatenate([q["kernel"], k["kernel"], v["kernel"]], 1),
                    "bias": np.concatenate([q["bias"], k["bias"], v["bias"]]),
                },
                "proj": lin(pre + "attention.output.dense", d, d),
            },
            "ls1": g(pre + "layer_scale1.lambda1", (d,)),
            "norm2": ln(pre + "norm2"),
            "mlp": {"fc1": lin(pre + "mlp.fc1", d, m), "fc2": lin(pre + "mlp.fc2", m, d)},
            "ls2": g(pre + "layer_scale2.lambda1", (d,)),
        }
    return params


def _hub_config(sd: Mapping[str, np.ndarray], src: str) -> ViTConfig:
    if "pos_embed" not in sd or "patch_embed.proj.weight" not in sd:
        raise CheckpointError(f"{src}: missing tensor 'pos_embed'/'patch_embed.proj.weight'; not a DINOv2 hub checkpoint")
    d, _, p, _ = sd["patch_embed.proj.weight"].shape
    n = sd["pos_embed"].shape[1] - 1
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if any(k.startswith("blocks.0.0.") or ".mlp.w12." in k for k in sd):
        raise CheckpointError(f"{src}: chunked-block or SwiGLU (ViT-g) hub checkpoints are not supported")
    regs = int(sd["register_tokens"].shape[1]) if "register_tokens" in sd else 0
    return ViTConfig(
        lora_blocks=_last3(depth),
        patch_size=int(p),
        width=int(d),
        depth=depth,
        num_heads=int(d) // 64,  # all DINOv2 hub models use head dim 64
        mlp_dim=int(sd["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in sd else 4 * int(d),
        pos_grid=int(round(np.sqrt(n))),
        num_registers=regs,
        # *_reg hub models interpolate with antialias=True and offset 0.0
        pos_resample="aa" if regs else "hub",
    )


def _convert_hub(sd: Mapping[str, np.ndarray], cfg: ViTConfig, src: str) -> dict:
    d, p, m = cfg.width, cfg.patch_size, cfg.mlp_dim
    g = lambda k, s: _get(sd, k, s, src)  # noqa: E731
    lin = lambda k, i, o: {"kernel": g(k + ".weight", (o, i)).T, "bias": g(k + ".bias", (o,))}  # noqa: E731
    ln = lambda k: {"scale": g(k + ".weight", (d,)), "bias": g(k + ".bias", (d,))}  # noqa: E731
    params: dict[str, Any] = {
        "patch_embed": {
            "kernel": g("patch_embed.proj.weight", (d, 3, p, p)).transpose(2, 3, 1, 0),
            "bias": g("patch_embed.proj.bias", (d,)),
        },
        "cls_token": g("cls_token", (1, 1, d)),
        "mask_token": g("mask_token", (1, d)),
        "pos_embed": g("pos_embed", (1, 1 + cfg.pos_grid**2, d)),
        "norm": ln("norm"),
    }
    if cfg.num_registers:
        params["register_tokens"] = g("register_tokens", (1, cfg.num_registers, d))
    for i in range(cfg.depth):
        pre = f"blocks.{i}."
        params[f"block_{i}"] = {
            "norm1": ln(pre + "norm1"),
            "attn": {"qkv": lin(pre + "attn.qkv", d, 3 * d), "proj": lin(pre + "attn.proj", d, d)},
            "ls1": g(pre + "ls1.gamma", (d,)),
            "norm2": ln(pre + "norm2"),
            "mlp": {"fc1": lin(pre + "mlp.fc1", d, m), "fc2": lin(pre + "mlp.fc2", m, d)},
            "ls2": g(pre + "ls2.gamma", (d,)),
        }
    return params


def _add_lora(params: dict, cfg: ViTConfig, seed: int) -> dict:
    """Fresh adapters (A ~ N(0, 0.02), B = 0) for the LoRA blocks of an imported checkpoint."""
    if cfg.lora_rank <= 0:
        return params
    rng = np.random.default_rng(seed)
    r = cfg.lora_rank
    for i in cfg.lora_blocks:
        blk = params[f"block_{i}"]
        for layer in (blk["attn"]["qkv"], blk["attn"]["proj"], blk["mlp"]["fc1"], blk["mlp"]["fc2"]):
            din, dout = layer["kernel"].shape
            layer["lora_a"] = (rng.standard_normal((din, r)) * 0.02).astype(np.float32)
            layer["lora_b"] = np.zeros((r, dout), np.float32)
    return params


def from_hf(path: str, cfg: ViTConfig | None = None, *, seed: int = 0, **overrides: Any) -> tuple[ViT, dict]:
    """Import DINOv2 weights. Returns ``(ViT(cfg), {"params": ...})``.

    path: a Hugging Face folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``),
      or the torch-hub state dict file (``dinov2_vits14_pretrain.pth``; non-register models).
    cfg: optional config; its architecture fields must match the checkpoint (only LoRA, dtype, attention,
      remat and pos_resample are taken from it). Without it the checkpoint's architecture is used
      with the paper's LoRA (r4, alpha 4, on the last three blocks), and ``pos_resample`` follows the
      checkpoint's origin ("hf"; "aa" for register models; "hub" for .pth files).
    overrides: ViTConfig fields to replace (e.g. ``lora_rank=0``, ``pos_resample="hub"``).
    LoRA adapters are freshly initialised (numpy RNG ``seed``).
    """
    if os.path.isdir(path):
        file_cfg = _hf_config(path)
        for name in ("model.safetensors", "pytorch_model.bin"):
            wpath = os.path.join(path, name)
            if os.path.isfile(wpath):
                break
        else:
            raise CheckpointError(f"{path}: neither model.safetensors nor pytorch_model.bin found")
        sd = load_state_dict(wpath)
        convert = _convert_hf
    elif os.path.isfile(path):
        wpath = path
        sd = load_state_dict(path)
        file_cfg = _hub_config(sd, path)
        convert = _convert_hub
    else:
        raise CheckpointError(f"{path}: no such file or folder; give a DINOv2 HF folder or a .pth file")
    if cfg is not None:
        arch = ("patch_size", "width", "depth", "num_heads", "mlp_dim", "pos_grid", "num_registers")
        bad = [f for f in arch if getattr(cfg, f) != getattr(file_cfg, f)]
        if bad:
            raise CheckpointError(
                f"{wpath}: checkpoint {bad[0]}={getattr(file_cfg, bad[0])} but config has {getattr(cfg, bad[0])}"
            )
        file_cfg = dataclasses.replace(file_cfg, **{
            f.name: getattr(cfg, f.name) for f in dataclasses.fields(ViTConfig)
            if f.name in ("lora_blocks", "lora_rank", "lora_alpha", "lora_dropout", "dtype", "remat", "pos_resample", "attention")
        })
    cfg = dataclasses.replace(file_cfg, **overrides)
    params = _add_lora(convert(sd, cfg, wpath), cfg, seed)
    return ViT(cfg), {"params": jax.tree.map(jnp.asarray, params)}


# --------------------------------------------------------------------------- checkpoint writing
def to_hf(params: Mapping[str, Any], cfg: ViTConfig, out_dir: str) -> str:
    """Writes ``params`` (a :class:`ViT`'s ``params``; LoRA adapters are merged into their kernels)
    as a Hugging Face DINOv2 folder (``config.json`` + ``model.safetensors``, the legacy tensor
    names every Hub checkpoint uses), so :func:`from_hf` and ``transformers.Dinov2Model`` read it.
    The folder is written next to ``out_dir`` and renamed into place (atomic). Returns ``out_dir``.
    """
    if cfg.num_registers or cfg.mlp_dim % cfg.width:
        raise ValueError("to_hf: register models and mlp_dim not a multiple of width are not supported")
    d = cfg.width
    scale = cfg.lora_alpha / cfg.lora_rank if cfg.lora_rank > 0 else 0.0

    def kernel(layer):  # merged W + (alpha / r) A B, as the LoRA layer computes it
        k = np.asarray(layer["kernel"], np.float32)
        if "lora_a" in layer:
            k = k + scale * np.asarray(layer["lora_a"], np.float32) @ np.asarray(layer["lora_b"], np.float32)
        return k

    sd: dict[str, np.ndarray] = {}

    def lin(name, layer):
        sd[name + ".weight"] = kernel(layer).T
        sd[name + ".bias"] = np.asarray(layer["bias"], np.float32)

    def ln(name, layer):
        sd[name + ".weight"] = np.asarray(layer["scale"], np.float32)
        sd[name + ".bias"] = np.asarray(layer["bias"], np.float32)

    pe = params["patch_embed"]
    sd["embeddings.patch_embeddings.projection.weight"] = np.asarray(pe["kernel"], np.float32).transpose(3, 2, 0, 1)
    sd["embeddings.patch_embeddings.projection.bias"] = np.asarray(pe["bias"], np.float32)
    sd["embeddings.cls_token"] = np.asarray(params["cls_token"], np.float32)
    sd["embeddings.mask_token"] = np.asarray(params["mask_token"], np.float32)
    sd["embeddings.position_embeddings"] = np.asarray(params["pos_embed"], np.float32)
    ln("layernorm", params["norm"])
    for i in range(cfg.depth):
        blk, pre = params[f"block_{i}"], f"encoder.layer.{i}."
        qkv = blk["attn"]["qkv"]
        k, b = kernel(qkv), np.asarray(qkv["bias"], np.float32)
        for j, n in enumerate(("query", "key", "value")):
            sd[pre + f"attention.attention.{n}.weight"] = k[:, j * d:(j + 1) * d].T
            sd[pre + f"attention.attention.{n}.bias"] = b[j * d:(j + 1) * d]
        lin(pre + "attention.output.dense", blk["attn"]["proj"])
        ln(pre + "norm1", blk["norm1"])
        ln(pre + "norm2", blk["norm2"])
        lin(pre + "mlp.fc1", blk["mlp"]["fc1"])
        lin(pre + "mlp.fc2", blk["mlp"]["fc2"])
        sd[pre + "layer_scale1.lambda1"] = np.asarray(blk["ls1"], np.float32)
        sd[pre + "layer_scale2.lambda1"] = np.asarray(blk["ls2"], np.float32)
    config = {
        "model_type": "dinov2", "architectures": ["Dinov2Model"], "hidden_size": d,
        "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads, "patch_size": cfg.patch_size,
        "image_size": cfg.pos_grid * cfg.patch_size, "num_channels": 3, "mlp_ratio": cfg.mlp_dim // d,
        "layer_norm_eps": cfg.ln_eps, "layerscale_value": cfg.layerscale_init, "hidden_act": "gelu",
        "qkv_bias": True, "use_swiglu_ffn": False, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0, "initializer_range": 0.02,
    }
    out_dir = os.path.abspath(out_dir)
    tmp = out_dir + ".partial"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    os.replace(tmp, out_dir)
    return out_dir
