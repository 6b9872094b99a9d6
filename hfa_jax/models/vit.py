"""DINOv2 ViT (Oquab et al. 2023) in Flax linen, with LoRA on the top blocks, and weight import.

Architecture (ViT-S/14 defaults, SPEC §2): patch 14 conv -> CLS (+ registers) + patches, learned
positions on the pretrained 37x37 grid resampled bicubically to the input grid -> 12 pre-LN
blocks with LayerScale (LN eps 1e-6, exact GELU MLP) -> final LayerNorm.

Parameter tree (``frame_encoder/...`` inside HFA)::

    patch_embed/{kernel [14,14,3,D], bias}      cls_token [1,1,D]    mask_token [1,D]
    pos_embed [1, 1+G*G, D]                     register_tokens [1,R,D] (R > 0 only)
    block_{i}/norm1/{scale,bias}  block_{i}/attn/qkv/{kernel [D,3D], bias[, lora_a, lora_b]}
    block_{i}/attn/proj/...  block_{i}/ls1 [D]  block_{i}/norm2/...  block_{i}/mlp/{fc1,fc2}/...
    block_{i}/ls2 [D]        norm/{scale,bias}

q/k/v are one fused ``qkv`` projection as in the torch-hub DINOv2 that the HFA reference loads
(its LoRA on the fused [384 -> 1152] projection gives SPEC's 73,728 LoRA parameters);
Hugging Face's separate query/key/value weights are concatenated on import. ``mask_token`` is
unused in the forward pass but kept (it is part of the checkpoint and of SPEC's 22,056,576).

Position resampling (``pos_resample``), both exactly PyTorch's bicubic (A = -0.75,
align_corners=False, clamped borders), written as two [out, in] interpolation matrices:
  - "hub": torch-hub DINOv2 ``interpolate_pos_encoding``: ``scale_factor = (g + 0.1) / G`` (the
    0.1 offset, dino issue #8), so source coordinates use 1 / scale_factor, not G / g.
  - "hf": transformers' ``Dinov2Embeddings.interpolate_pos_encoding`` (v5): ``size=(g, g)``.
  - "aa": antialiased bicubic with ``size=(g, g)``: transformers' ``Dinov2WithRegisters`` and the
    torch-hub ``dinov2_*_reg`` models (``interpolate_antialias=True``, offset 0.0, whose
    scale_factor g/G gives the same coordinate map).
When the input grid equals the pretrained grid both return the table unchanged.

Checkpoint reading never imports torch and never runs plain pickle: ``pytorch_model.bin`` /
``.pth`` zip archives are read by :func:`read_torch_zip`, a restricted unpickler that only
rebuilds tensors from raw storages (any other global is refused).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import zipfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from hfa_jax.errors import CheckpointError
from hfa_jax.models import attention as attention_lib
from hfa_jax.models.activations import gelu
from hfa_jax.models.lora import LoRADense

Array = jax.Array

__all__ = [
    "ViTConfig",
    "ViT",
    "from_hf",
    "load_state_dict",
    "read_torch_zip",
    "bicubic_matrix",
    "resample_pos_embed",
]


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """DINOv2 ViT hyper-parameters (ViT-S/14 and SPEC §2's LoRA by default)."""

    patch_size: int = 14
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_dim: int = 1536
    ln_eps: float = 1e-6
    pos_grid: int = 37  # pretrained position grid (518 / 14)
    num_registers: int = 0
    layerscale_init: float = 1.0
    pos_resample: str = "hub"  # "hub" (reference code: torch-hub DINOv2) | "hf" | "aa" (register models)
    lora_blocks: tuple[int, ...] = (9, 10, 11)
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_dropout: float = 0.1
    dtype: str | None = None  # compute dtype ("float32", "bfloat16"; None = float32); params float32
    remat: bool = False
    # jax.nn.dot_product_attention implementation: "xla" (scores materialised, every backend),
    # "cudnn" (fused flash attention: GPU, bf16/fp16 only) or "auto" (cudnn where it applies,
    # else xla; jax's own implementation=None always means xla)
    attention: str = "xla"
    # False (SPEC): the blocks below the first LoRA block are frozen and run under stop_gradient
    # (no gradient, no stored activations). True: gradient through every block, for a ViT trained
    # from scratch or fully fine-tuned; the freezing table then decides what is updated.
    train_all_blocks: bool = False

    def __post_init__(self):
        object.__setattr__(self, "lora_blocks", tuple(int(b) for b in self.lora_blocks))
        if self.lora_rank > 0 and any(not 0 <= b < self.depth for b in self.lora_blocks):
            raise ValueError(f"ViTConfig.lora_blocks {self.lora_blocks} out of range for depth {self.depth}")
        if self.pos_resample not in ("hub", "hf", "aa"):
            raise ValueError(f"ViTConfig.pos_resample must be 'hub', 'hf' or 'aa', got {self.pos_resample!r}")
        if self.attention not in ("xla", "cudnn", "auto"):
            raise ValueError(f"ViTConfig.attention must be 'xla', 'cudnn' or 'auto', got {self.attention!r}")

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype) if self.dtype else None

    @property
    def first_trainable_block(self) -> int:
        """Blocks below this index carry no gradient (run under stop_gradient)."""
        if self.train_all_blocks:
            return 0
        return min(self.lora_blocks) if self.lora_blocks and self.lora_rank > 0 else self.depth


# --------------------------------------------------------------------------- position resampling
def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """PyTorch ``get_cubic_upsample_coefficients``: 4 tap weights for fractional offsets t."""

    def c1(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def c2(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([c2(t + 1), c1(t), c1(1 - t), c2(2 - t)], axis=-1)


def bicubic_matrix(
    in_size: int, out_size: int, scale_factor: float | None = None, antialias: bool = False
) -> np.ndarray:
    """[out_size, in_size] matrix M with ``M @ v`` = ``torch.nn.functional.interpolate(v,
    mode="bicubic", align_corners=False, antialias=antialias)`` along one axis.

    ``scale_factor`` given -> PyTorch maps coordinates with 1/scale_factor (the torch-hub DINOv2
    quirk); otherwise with in_size / out_size. Without antialias: Keys cubic with A = -0.75,
    4 taps, indices clamped at the borders, coordinates in float32 as PyTorch's CPU kernel.
    With antialias (PIL-style, ``_upsample_bicubic2d_aa``): A = -0.5, the kernel stretched by the
    downscaling ratio, taps cut at the borders and weights renormalised.
    """
    if antialias:
        scale = (1.0 / scale_factor) if scale_factor else in_size / out_size
        support = 2.0 * scale if scale >= 1.0 else 2.0
        invscale = 1.0 / scale if scale >= 1.0 else 1.0
        m = np.zeros((out_size, in_size), np.float64)
        for i in range(out_size):
            center = scale * (i + 0.5)
            xmin = max(int(center - support + 0.5), 0)
            xmax = min(int(center + support + 0.5), in_size)
            j = np.arange(xmin, xmax)
            x = np.abs((j - center + 0.5) * invscale)
            w = np.where(x < 1.0, _cubic_weights_scalar1(x, -0.5), np.where(x < 2.0, _cubic_weights_scalar2(x, -0.5), 0.0))
            total = w.sum()
            m[i, xmin:xmax] = w / total if total != 0 else w
        return m.astype(np.float32)
    ratio = np.float32(1.0 / scale_factor) if scale_factor else np.float32(in_size / out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = ratio * (dst + np.float32(0.5)) - np.float32(0.5)  # no clamp for cubic
    base = np.floor(src)
    t = (src - base).astype(np.float64)
    w = _cubic_weights(t)  # [out, 4]
    m = np.zeros((out_size, in_size), np.float64)
    for k in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + k, 0, in_size - 1)
        np.add.at(m, (np.arange(out_size), idx), w[:, k])
    return m.astype(np.float32)


def _cubic_weights_scalar1(x, a):
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic_weights_scalar2(x, a):
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


def resample_pos_embed(pos: Array, grid_h: int, grid_w: int, method: str) -> Array:
    """pos: [1, 1+G*G, D] (CLS first) -> [1, 1+grid_h*grid_w, D], float32 resampling."""
    n = pos.shape[1] - 1
    g = int(round(np.sqrt(n)))
    if g * g != n:
        raise ValueError(f"position table of {n} patches is not a square grid")
    if grid_h == g and grid_w == g:
        return pos  # both references return the table unchanged here
    if method == "hub":
        mh = bicubic_matrix(g, grid_h, (grid_h + 0.1) / g)
        mw = bicubic_matrix(g, grid_w, (grid_w + 0.1) / g)
    elif method == "aa":
        mh, mw = bicubic_matrix(g, grid_h, antialias=True), bicubic_matrix(g, grid_w, antialias=True)
    else:
        mh, mw = bicubic_matrix(g, grid_h), bicubic_matrix(g, grid_w)
    grid = pos[0, 1:].astype(jnp.float32).reshape(g, g, -1)
    out = jnp.einsum("hi,ijd,wj->hwd", mh, grid, mw, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([pos[:, :1].astype(jnp.float32), out.reshape(1, grid_h * grid_w, -1)], 1).astype(
        pos.dtype
    )


# --------------------------------------------------------------------------- modules
def _attention_impl(choice: str, dtype: Any, head_dim: int) -> str:
    """``ViTConfig.attention`` -> the ``jax.nn.dot_product_attention`` implementation for a
    compute dtype and head width. "auto" takes cuDNN's fused kernel where JAX accepts it (a GPU,
    bf16/fp16, head_dim a multiple of 8 up to 128): with "xla" an H100 fine-tuning step spends
    ~25 % of its device time padding, transposing and soft-maxing the materialised scores
    (bench/RESULTS.md)."""
    if choice != "auto":
        return choice
    fused_ok = attention_lib.cudnn_applicable(dtype) and head_dim % 8 == 0 and head_dim <= 128
    return "cudnn" if fused_ok else "xla"


def _padded_length(n: int, impl: str) -> int:
    """Token count the blocks run at. cuDNN's kernel (as JAX calls it for training) takes only
    even sequence lengths, and 1 + 256 tokens is odd: with "cudnn" the token axis is padded to a
    multiple of 8 once at the input (also the GEMMs' alignment) and the padded keys are masked
    by length, instead of padding q/k/v in every layer."""
    return -(-n // 8) * 8 if impl == "cudnn" else n


class Attention(nn.Module):
    """Multi-head self-attention with the fused qkv projection. x: [B, N, D] -> [B, N, D]."""

    cfg: ViTConfig
    lora: bool

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True, query_rows: int | None = None,
                 valid_tokens: int | None = None) -> Array:
        """``query_rows``: only the first that many tokens attend (keys/values still come from
        all N); the output is then [B, query_rows, D]. ``valid_tokens``: keys from that index on
        are padding (masked out)."""
        cfg = self.cfg
        b, n, d = x.shape
        r = cfg.lora_rank if self.lora else 0
        dense = lambda f, name: LoRADense(  # noqa: E731
            f, rank=r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, dtype=cfg.compute_dtype, name=name
        )
        # q, k, v from the fused qkv parameters as three contiguous arrays (LoRADense ``splits``)
        q, k, v = (t.reshape(b, n, cfg.num_heads, d // cfg.num_heads)
                   for t in dense(3 * d, "qkv")(x, deterministic, splits=3))
        q = q[:, :query_rows]
        impl = _attention_impl(cfg.attention, q.dtype, q.shape[-1])
        if query_rows is not None and query_rows % 2:
            impl = "xla"  # an odd query count (the CLS-only last block): cuDNN refuses it, and it is tiny
        lengths = None if valid_tokens is None or valid_tokens == n else jnp.full((b,), valid_tokens, jnp.int32)
        h = None
        if impl == "cudnn" and cfg.attention == "auto":  # "auto" runs everywhere: XLA where JAX refuses cuDNN
            h = attention_lib.cudnn_attention(q, k, v, key_value_seq_lengths=lengths, who="ViT", fallback="xla")
            impl = "xla"
        if h is None:
            h = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation=impl)
        h = h.reshape(b, q.shape[1], d)
        return dense(d, "proj")(h, deterministic)


class Block(nn.Module):
    """Pre-LN DINOv2 block with LayerScale. x: [B, N, D] -> [B, N, D] (or [B, query_rows, D]:
    only the first ``query_rows`` tokens are updated and returned, attending to all N)."""

    cfg: ViTConfig
    lora: bool = False

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True, query_rows: int | None = None,
                 valid_tokens: int | None = None) -> Array:
        cfg = self.cfg
        d = x.shape[-1]
        ln = lambda name: nn.LayerNorm(epsilon=cfg.ln_eps, dtype=cfg.compute_dtype, name=name)  # noqa: E731
        ls = lambda name: self.param(name, nn.initializers.constant(cfg.layerscale_init), (d,))  # noqa: E731
        h = Attention(cfg, self.lora, name="attn")(ln("norm1")(x), deterministic, query_rows, valid_tokens)
        x = x[:, :query_rows] + h * ls("ls1").astype(h.dtype)
        h = _MLP(cfg, self.lora, name="mlp")(ln("norm2")(x), deterministic)
        return x + h * ls("ls2").astype(h.dtype)


class _MLP(nn.Module):
    cfg: ViTConfig
    lora: bool

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        cfg = self.cfg
        r = cfg.lora_rank if self.lora else 0
        kw = dict(rank=r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, dtype=cfg.compute_dtype)
        h = LoRADense(cfg.mlp_dim, name="fc1", **kw)(x, deterministic)
        h = gelu(h)
        return LoRADense(x.shape[-1], name="fc2", **kw)(h, deterministic)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches -> ``features``: ``[B, H, W, C]`` ->
    ``[B, H//p, W//p, features]``, the same map (and the same ``kernel [p, p, C, F]`` / ``bias``
    parameters and init) as a stride-``p`` VALID ``nn.Conv``.

    Written as patch extraction (reshape + transpose) and one matmul: on CPU that runs ~1.7x
    faster than XLA's convolution for DINOv2's 14x14 patches, and the copy that extracts the
    patches absorbs element-wise work on the pixels before it (the ImageNet normalisation of
    uint8 crops fuses into it for free)."""

    features: int
    patch: int
    dtype: Any = None

    @nn.compact
    def __call__(self, pixels: Array) -> Array:
        b, h, w, c = pixels.shape
        p = self.patch
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        pixels, kernel, bias = nn.dtypes.promote_dtype(pixels, kernel, bias, dtype=self.dtype)
        gh, gw = h // p, w // p
        x = pixels[:, : gh * p, : gw * p]  # VALID: a ragged border is dropped, as the conv does
        x = x.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh, gw, p * p * c)
        return x @ kernel.reshape(p * p * c, self.features) + bias


class ViT(nn.Module):
    """pixels: [B, H, W, 3] float32 (ImageNet-normalised) -> tokens [B, 1+R+N, D] after the final
    LayerNorm, CLS first, then R registers, then N = (H//p)*(W//p) patches in row-major order.

    ``cls_only=True`` returns only the final-norm CLS token, [B, 1, D] (what HFA uses), and
    does less work for it: the last block computes keys/values for every token but queries,
    attention output, MLP and residuals for the CLS row alone (three quarters of that block's
    matmuls, forward and backward). Same values as ``tokens[:, :1]`` of the full output.
    """

    cfg: ViTConfig

    @nn.compact
    def __call__(self, pixels: Array, deterministic: bool = True, cls_only: bool = False) -> Array:
        cfg = self.cfg
        d = cfg.width
        x = PatchEmbed(d, cfg.patch_size, dtype=cfg.compute_dtype, name="patch_embed")(pixels)
        b, gh, gw, _ = x.shape
        x = x.reshape(b, gh * gw, d)
        cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d))
        self.param("mask_token", nn.initializers.zeros, (1, d))  # checkpoint parity; unused here
        pos = self.param("pos_embed", nn.initializers.truncated_normal(0.02), (1, 1 + cfg.pos_grid**2, d))
        pos = resample_pos_embed(pos, gh, gw, cfg.pos_resample)
        dtype = x.dtype
        tokens = [jnp.broadcast_to(cls + pos[:, :1], (b, 1, d)).astype(dtype)]
        if cfg.num_registers:
            reg = self.param("register_tokens", nn.initializers.zeros, (1, cfg.num_registers, d))
            tokens.append(jnp.broadcast_to(reg, (b, cfg.num_registers, d)).astype(dtype))
        tokens.append((x + pos[:, 1:].astype(dtype)).astype(dtype))
        x = jnp.concatenate(tokens, axis=1)
        n = x.shape[1]
        n_run = _padded_length(n, _attention_impl(cfg.attention, dtype, d // cfg.num_heads))
        if n_run > n:  # zero tokens: finite through LayerNorm and the MLP, masked as keys, cut below
            x = jnp.pad(x, ((0, 0), (0, n_run - n), (0, 0)))

        block_cls = nn.remat(Block, static_argnums=(2, 3, 4)) if cfg.remat else Block
        first = cfg.first_trainable_block
        for i in range(cfg.depth):
            if i == first and not cfg.train_all_blocks:
                # Frozen blocks below the first LoRA block: no gradient, so no stored activations.
                x = jax.lax.stop_gradient(x)
            lora = cfg.lora_rank > 0 and i in cfg.lora_blocks
            rows = 1 if cls_only and i == cfg.depth - 1 else None
            x = block_cls(cfg, lora=lora, name=f"block_{i}")(x, deterministic, rows, n)
        if first >= cfg.depth:
            x = jax.lax.stop_gradient(x)
        x = x[:, :n]
        return nn.LayerNorm(epsilon=cfg.ln_eps, dtype=cfg.compute_dtype, name="norm")(x)


# --------------------------------------------------------------------------- checkpoint reading
_TORCH_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def _bf16():
    import ml_dtypes  # installed with jax

    return ml_dtypes.bfloat16


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _bf16() if name == "BFloat16Storage" else _TORCH_DTYPES[name]


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    arr = storage
    itemsize = arr.dtype.itemsize
    if len(size) == 0:
        return np.array(arr[offset])
    view = np.lib.stride_tricks.as_strided(
        arr[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
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
            import collections

            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and (name in _TORCH_DTYPES or name == "BFloat16Storage"):
            return _StorageType(name)
        raise CheckpointError(
            f"{self._path}: refusing to unpickle {module}.{name} (only plain tensors are read); "
            "convert the checkpoint to safetensors"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"{self._path}: unsupported persistent id {pid!r}; convert to safetensors")
        _, stype, key, _location, _numel = pid
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=stype.dtype)
        return self._storages[key]


def read_torch_zip(path: str) -> dict[str, np.ndarray]:
    """Read a ``torch.save`` zip archive (pytorch_model.bin / .pth) of tensors without torch.

    Returns {name: np.ndarray}. Raises CheckpointError for legacy (non-zip) files or any pickled
    object other than tensors/OrderedDict.
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
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from e
    return read_torch_zip(path)


# --------------------------------------------------------------------------- import
def _get(sd: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...], src: str) -> np.ndarray:
    if key not in sd:
        raise CheckpointError(f"{src}: missing tensor {key!r}; is this a DINOv2 ViT checkpoint?")
    arr = np.asarray(sd[key])
    if tuple(arr.shape) != tuple(shape):
        raise CheckpointError(f"{src}: tensor {key!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
    return arr.astype(np.float32)


def _last3(depth: int) -> tuple[int, ...]:
    """SPEC's LoRA sits on the last three blocks (9, 10, 11 of ViT-S's 12)."""
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
      with SPEC's LoRA (r4, alpha 4, on the last three blocks), and ``pos_resample`` follows the
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
    from safetensors.numpy import save_file

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
        import shutil

        shutil.rmtree(tmp)
    os.makedirs(tmp)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    os.replace(tmp, out_dir)
    return out_dir
