"""DINOv2 ViT (Oquab et al. 2023) in Flax linen, with LoRA on the top blocks.

Architecture (ViT-S/14 defaults, docs/models_and_weights.md): patch 14 conv -> CLS (+ registers) + patches, learned
positions on the pretrained 37x37 grid resampled bicubically to the input grid -> 12 pre-LN
blocks with LayerScale (LN eps 1e-6, exact GELU MLP) -> final LayerNorm.

Parameter tree (``frame_encoder/...`` inside HFA)::

    patch_embed/{kernel [14,14,3,D], bias}      cls_token [1,1,D]    mask_token [1,D]
    pos_embed [1, 1+G*G, D]                     register_tokens [1,R,D] (R > 0 only)
    block_{i}/norm1/{scale,bias}  block_{i}/attn/qkv/{kernel [D,3D], bias[, lora_a, lora_b]}
    block_{i}/attn/proj/...  block_{i}/ls1 [D]  block_{i}/norm2/...  block_{i}/mlp/{fc1,fc2}/...
    block_{i}/ls2 [D]        norm/{scale,bias}

q/k/v are one fused ``qkv`` projection as in the torch-hub DINOv2 that the HFA reference loads
(its LoRA on the fused [384 -> 1152] projection gives the 73,728 LoRA parameters of the paper's count);
Hugging Face's separate query/key/value weights are concatenated on import. ``mask_token`` is
unused in the forward pass but kept (it is part of the checkpoint and of the paper's parameter count).

Logical axis names (:mod:`hfa_jax.models.axes`): ``qkv`` ``(embed, heads)``, ``proj``
``(heads, embed)``, ``fc1`` ``(embed, mlp)``, ``fc2`` ``(mlp, embed)``, the patch kernel's output and
the tokens' width ``embed``, norms and LayerScale ``(norm,)``; block inputs ``(batch, length,
embed)`` (batch = the frames being encoded).

Position resampling (``pos_resample``), both exactly PyTorch's bicubic (A = -0.75,
align_corners=False, clamped borders), written as two [out, in] interpolation matrices:
  - "hub": torch-hub DINOv2 ``interpolate_pos_encoding``: ``scale_factor = (g + 0.1) / G`` (the
    0.1 offset, dino issue #8), so source coordinates use 1 / scale_factor, not G / g.
  - "hf": transformers' ``Dinov2Embeddings.interpolate_pos_encoding`` (v5): ``size=(g, g)``.
  - "aa": antialiased bicubic with ``size=(g, g)``: transformers' ``Dinov2WithRegisters`` and the
    torch-hub ``dinov2_*_reg`` models (``interpolate_antialias=True``, offset 0.0, whose
    scale_factor g/G gives the same coordinate map).
When the input grid equals the pretrained grid both return the table unchanged.

Pretrained weights: :func:`hfa_jax.weights.dinov2.from_hf` -> ``(ViT(cfg), {"params": ...})``
from a Hugging Face folder or a torch-hub ``.pth`` (and ``to_hf`` back). The conversion imports
this module, never the other way round.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from hfa_jax.errors import ConfigError
from hfa_jax.models import attention as attention_lib
from hfa_jax.models import axes
from hfa_jax.models.activations import gelu
from hfa_jax.models.lora import LoRADense, lora_scale

Array = jax.Array

# ViTConfig.remat_policy -> jax.checkpoint policy (None: no rematerialisation)
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

__all__ = [
    "REMAT_POLICIES",
    "ViTConfig",
    "ViT",
    "bicubic_matrix",
    "resample_pos_embed",
]


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """DINOv2 ViT hyper-parameters (ViT-S/14 and the paper's LoRA by default)."""

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
    remat: bool = False  # model.remat: every block recomputed in the backward pass (the policy "full")
    # What the blocks that carry a gradient (the LoRA blocks) keep for the backward pass when
    # ``remat`` is off (REMAT_POLICIES): "none" keeps what XLA keeps (the default), "full"
    # recomputes the block, "dots" keeps the matmul outputs, "dots_no_batch" keeps the weight
    # matmuls' outputs but recomputes the attention scores.
    remat_policy: str = "none"
    # "xla" | "cudnn" | "pallas" | "auto": set from model.attention (hfa_jax.models.attention)
    attention: str = "xla"
    # False (the paper): the blocks below the first LoRA block are frozen and run under stop_gradient
    # (no gradient, no stored activations). True: gradient through every block, for a ViT trained
    # from scratch or fully fine-tuned; the freezing table then decides what is updated.
    train_all_blocks: bool = False
    # Where the attention runs as the Pallas kernel ("pallas", or "auto" on a TPU), the frozen
    # blocks below the first LoRA block run as one fused Pallas kernel each
    # (hfa_jax.models.pallas_vit_block: every intermediate stays on chip, ~10x less HBM traffic
    # per block). False: those blocks run as XLA ops around the attention kernel.
    fused_frozen_blocks: bool = True
    # Likewise, the LoRA blocks' MLPs run as one Pallas kernel with its own backward pass
    # (hfa_jax.models.pallas_lora_mlp: the [tokens, 1536] hidden layer stays on chip). It gives
    # gradients to the adapters and the input only, so the trainer refuses it with a freezing
    # table that trains those MLPs' base weights or biases.
    fused_lora_mlp: bool = True
    # Likewise, the LoRA blocks' q/k/v and output projections add their adapters' rank-r
    # up-projection as multiply-adds that XLA fuses into the base matmul
    # (LoRADense.adapter_elementwise), rather than as a second pass over the output.
    fused_lora_adapters: bool = True

    def __post_init__(self):
        object.__setattr__(self, "lora_blocks", tuple(int(b) for b in self.lora_blocks))
        if self.lora_rank > 0 and any(not 0 <= b < self.depth for b in self.lora_blocks):
            raise ValueError(f"ViTConfig.lora_blocks {self.lora_blocks} out of range for depth {self.depth}")
        if self.pos_resample not in ("hub", "hf", "aa"):
            raise ValueError(f"ViTConfig.pos_resample must be 'hub', 'hf' or 'aa', got {self.pos_resample!r}")
        attention_lib.check_choice(self.attention, "ViTConfig.attention")
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"model.vit.remat_policy must be one of {', '.join(REMAT_POLICIES)}; "
                              f"got {self.remat_policy!r}")

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype) if self.dtype else None

    def runs_kernels(self, dtype) -> bool:
        """Whether the attention resolves to the Pallas kernel here (``pallas``, or ``auto`` on a
        TPU), which is where the fused-block switches apply."""
        return attention_lib.resolve(self.attention, dtype, self.width // self.num_heads, has_kernel=True) == "pallas"

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
        d = x.shape[-1]
        r = cfg.lora_rank if self.lora else 0
        elementwise = bool(r) and cfg.fused_lora_adapters and cfg.runs_kernels(x.dtype)
        dense = lambda f, name, names: LoRADense(  # noqa: E731
            f, rank=r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, dtype=cfg.compute_dtype, name=name,
            kernel_axes=names, adapter_elementwise=elementwise,
        )
        # q, k, v from the fused qkv parameters as three contiguous [B, N, D] arrays (LoRADense
        # ``splits``); the attention splits the heads where its implementation needs them
        q, k, v = dense(3 * d, "qkv", (axes.EMBED, axes.HEADS))(x, deterministic, splits=3)
        h = attention_lib.frame_attention(q[:, :query_rows], k, v, num_heads=cfg.num_heads, choice=cfg.attention,
                                          valid_tokens=valid_tokens)
        return dense(d, "proj", (axes.HEADS, axes.EMBED))(h, deterministic)


class Block(nn.Module):
    """Pre-LN DINOv2 block with LayerScale. x: [B, N, D] -> [B, N, D] (or [B, query_rows, D]:
    only the first ``query_rows`` tokens are updated and returned, attending to all N)."""

    cfg: ViTConfig
    lora: bool = False
    # Run as the fused frozen-block kernel (hfa_jax.models.pallas_vit_block; forward only, no
    # gradient). The parameters are the same; they are created by the ordinary path at init.
    fused: bool = False

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True, query_rows: int | None = None,
                 valid_tokens: int | None = None) -> Array:
        cfg = self.cfg
        d = x.shape[-1]
        if self.fused and not self.is_initializing() and query_rows is None:
            from hfa_jax.models import pallas_vit_block  # Pallas is imported only where it is used

            kernel = functools.partial(pallas_vit_block.frozen_block, num_heads=cfg.num_heads, eps=cfg.ln_eps,
                                       kv_len=valid_tokens)
            return attention_lib.per_frame_shards(kernel, (x,), (self.variables["params"],))
        ln = lambda name: nn.LayerNorm(epsilon=cfg.ln_eps, dtype=cfg.compute_dtype, name=name,  # noqa: E731
                                       **axes.norm_inits())
        ls = lambda name: self.param(  # noqa: E731
            name, axes.param(nn.initializers.constant(cfg.layerscale_init), (axes.NORM,)), (d,))
        x = axes.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
        h = Attention(cfg, self.lora, name="attn")(ln("norm1")(x), deterministic, query_rows, valid_tokens)
        x = x[:, :query_rows] + h * ls("ls1").astype(h.dtype)
        fused_mlp = (self.lora and query_rows is None and cfg.fused_lora_mlp and cfg.lora_rank > 0
                     and cfg.runs_kernels(x.dtype))
        h = _MLP(cfg, self.lora, fused=fused_mlp, name="mlp")(ln("norm2")(x), deterministic)
        return x + h * ls("ls2").astype(h.dtype)


class _MLP(nn.Module):
    cfg: ViTConfig
    lora: bool
    fused: bool = False  # the LoRA MLP kernel (hfa_jax.models.pallas_lora_mlp); same parameters

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        cfg = self.cfg
        r = cfg.lora_rank if self.lora else 0
        params = self.variables.get("params", {}) if not self.is_initializing() else {}
        if self.fused and r and all("lora_a" in params.get(k, {}) for k in ("fc1", "fc2")):
            from hfa_jax.models import pallas_lora_mlp  # Pallas is imported only where it is used

            words = None
            if not deterministic and cfg.lora_dropout > 0:
                words = jax.random.bits(self.make_rng("dropout"), (4,), jnp.uint32)
            return pallas_lora_mlp.lora_mlp(x, params, scale=lora_scale(r, cfg.lora_alpha), rate=cfg.lora_dropout,
                                            words=words)
        kw = dict(rank=r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, dtype=cfg.compute_dtype)
        h = LoRADense(cfg.mlp_dim, name="fc1", kernel_axes=(axes.EMBED, axes.MLP), **kw)(x, deterministic)
        h = gelu(h)
        return LoRADense(x.shape[-1], name="fc2", kernel_axes=(axes.MLP, axes.EMBED), **kw)(h, deterministic)


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
        kernel = self.param("kernel", axes.param(nn.initializers.lecun_normal(), (None, None, None, axes.EMBED)),
                            (p, p, c, self.features))
        bias = self.param("bias", axes.param(nn.initializers.zeros, (axes.EMBED,)), (self.features,))
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
        token = (None, None, axes.EMBED)
        cls = self.param("cls_token", axes.param(nn.initializers.normal(1e-6), token), (1, 1, d))
        # checkpoint parity; unused here
        self.param("mask_token", axes.param(nn.initializers.zeros, token[1:]), (1, d))
        pos = self.param("pos_embed", axes.param(nn.initializers.truncated_normal(0.02), token),
                         (1, 1 + cfg.pos_grid**2, d))
        pos = resample_pos_embed(pos, gh, gw, cfg.pos_resample)
        dtype = x.dtype
        tokens = [jnp.broadcast_to(cls + pos[:, :1], (b, 1, d)).astype(dtype)]
        if cfg.num_registers:
            reg = self.param("register_tokens", axes.param(nn.initializers.zeros, token), (1, cfg.num_registers, d))
            tokens.append(jnp.broadcast_to(reg, (b, cfg.num_registers, d)).astype(dtype))
        tokens.append((x + pos[:, 1:].astype(dtype)).astype(dtype))
        x = jnp.concatenate(tokens, axis=1)
        n = x.shape[1]
        n_run = attention_lib.frame_tokens(n, cfg.attention, dtype, d // cfg.num_heads)
        if n_run > n:  # zero tokens: finite through LayerNorm and the MLP, masked as keys, cut below
            x = jnp.pad(x, ((0, 0), (0, n_run - n), (0, 0)))

        first = cfg.first_trainable_block
        frozen_cls = nn.remat(Block, static_argnums=(2, 3, 4)) if cfg.remat else Block
        policy = REMAT_POLICIES[cfg.remat_policy]
        trained_cls = frozen_cls if cfg.remat or policy is None else nn.remat(
            Block, static_argnums=(2, 3, 4), policy=policy)
        fused = cfg.fused_frozen_blocks and not cfg.train_all_blocks and cfg.runs_kernels(dtype)
        for i in range(cfg.depth):
            if i < first and fused:
                x = Block(cfg, lora=False, fused=True, name=f"block_{i}")(x, deterministic, None, n)
                continue
            if i == first and not cfg.train_all_blocks:
                # Frozen blocks below the first LoRA block: no gradient, so no stored activations.
                x = jax.lax.stop_gradient(x)
            lora = cfg.lora_rank > 0 and i in cfg.lora_blocks
            rows = 1 if cls_only and i == cfg.depth - 1 else None
            block_cls = trained_cls if i >= first else frozen_cls
            x = block_cls(cfg, lora=lora, name=f"block_{i}")(x, deterministic, rows, n)
        if first >= cfg.depth:
            x = jax.lax.stop_gradient(x)
        x = x[:, :n]
        return nn.LayerNorm(epsilon=cfg.ln_eps, dtype=cfg.compute_dtype, name="norm", **axes.norm_inits())(x)
