"""LoRA (Hu et al. 2021) as a drop-in replacement for ``flax.linen.Dense``.

Design (after levanter's ``lora.py``): the frozen base weight keeps the parameter names of
``nn.Dense`` (``kernel [in, out]``, ``bias [out]``), so weights imported from Hugging Face /
torch-hub checkpoints load unchanged, and the adapter adds two parameters next to it:

- ``lora_a [in, r]`` ~ N(0, 0.02)   (the HFA reference / peft "gaussian"-style init used by the paper config)
- ``lora_b [r, out]`` = 0           (so an untrained adapter is the identity change)

``y = x @ kernel + bias + (dropout(x) @ lora_a @ lora_b) * alpha / r``; dropout acts on the LoRA
input only (peft convention). Freezing the base is done by the optimiser mask
(:mod:`hfa_jax.train.freeze`), not here.

For inference, :func:`merge_lora` folds ``scale * A @ B`` into ``kernel`` and deletes the adapter
parameters; a ``LoRADense`` whose adapter parameters are absent from the variables simply runs
as a plain dense layer, so the same module definition applies to merged and unmerged weights.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from hfa_jax.models import axes
from hfa_jax.models.dropout import Dropout

Array = jax.Array
Dtype = Any

__all__ = ["LoRADense", "merge_lora", "lora_scale", "decoding_layout"]


def lora_scale(rank: int, alpha: float) -> float:
    """The LoRA output multiplier ``alpha / rank`` (0 when rank is 0)."""
    return float(alpha) / rank if rank > 0 else 0.0


class LoRADense(nn.Module):
    """Dense layer with an optional low-rank adapter.

    Attributes:
      features: output width.
      rank: LoRA rank r; 0 gives a plain ``nn.Dense`` (same parameter names).
      alpha: LoRA alpha (the update is scaled by alpha / r).
      dropout: dropout rate on the LoRA branch input (needs the ``dropout`` rng when not
        deterministic).
      use_bias: whether the base layer has a bias.
      kernel_init, bias_init: base initialisers (overwritten by imported weights in practice).
      dtype: compute dtype (e.g. bf16); params stay in ``param_dtype``.
      kernel_axes: logical axis names ``(in, out)`` of ``kernel`` (:mod:`hfa_jax.models.axes`);
        ``bias`` takes ``(out,)``, ``lora_a`` ``(in, "lora")``, ``lora_b`` ``("lora", out)``.
        None: the parameters carry no names.
      adapter_elementwise: the adapter's up-projection ``down @ lora_b`` as r broadcast
        multiply-adds in float32, added to the base output with the bias and rounded once,
        instead of a matmul. XLA then fuses it into the base matmul's output: the output is
        written once instead of written, read back and written again (on a TPU, a ViT LoRA
        block's forward + backward 11.5 -> 9.9 GB). For small ranks; the values differ from the
        matmul form by the compute dtype's rounding (float32: by summation order).
    """

    features: int
    rank: int = 0
    alpha: float = 1.0
    dropout: float = 0.0
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    lora_a_init: Callable = nn.initializers.normal(stddev=0.02)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_axes: tuple[str | None, str | None] | None = None
    adapter_elementwise: bool = False

    def _init(self, init_fn: Callable, names: tuple[str | None, ...]) -> Callable:
        return init_fn if self.kernel_axes is None else axes.param(init_fn, names)

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True, *, splits: int = 1) -> Array | tuple[Array, ...]:
        """x: [..., in] -> [..., features].

        ``splits > 1``: the output features are cut into that many equal parts (e.g. a fused
        qkv projection into q, k, v), each computed by its own matmul against its slice of the
        kernel (and of ``lora_b``), and returned as a tuple: the same values as slicing the
        full output, but each part is a contiguous array. Slicing the fused output instead
        copies every part (XLA cannot hand a GEMM's strided column block to the next kernel),
        and the backward pass concatenates their gradients back: on an H100 the ViT's q/k/v
        slice copies took 2.3 ms of a 66 ms fine-tuning step (bench/RESULTS.md). Same
        parameters either way."""
        in_features = x.shape[-1]
        ax_in, ax_out = self.kernel_axes or (None, None)
        if self.features % splits:
            raise ValueError(f"LoRADense: {self.features} output features do not split into {splits} equal parts")
        if not self.is_initializing() and self.has_variable("params", "kernel_t"):
            # Decoding layout (see decoding_layout): the same weight stored [out, in].
            if splits != 1:
                raise ValueError("LoRADense: splits > 1 is not available with the [out, in] decoding layout")
            kernel_t = self.get_variable("params", "kernel_t")
            kernel = None
        else:
            kernel = self.param("kernel", self._init(self.kernel_init, (ax_in, ax_out)),
                                (in_features, self.features), self.param_dtype)
        bias = (
            self.param("bias", self._init(self.bias_init, (ax_out,)), (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        dtype = self.dtype or jnp.result_type(x, kernel if kernel is not None else kernel_t)
        xc = x.astype(dtype)
        # Merged weights (see merge_lora) carry no adapter: run as a plain dense layer then.
        has_adapter = self.rank > 0 and (
            self.is_initializing() or self.has_variable("params", "lora_a")
        )
        down = up = None
        if has_adapter:
            a = self.param("lora_a", self._init(self.lora_a_init, (ax_in, axes.LORA)), (in_features, self.rank),
                           self.param_dtype)
            up = self.param("lora_b", self._init(nn.initializers.zeros, (axes.LORA, ax_out)),
                            (self.rank, self.features), self.param_dtype)
            h = Dropout(rate=self.dropout)(xc, deterministic=deterministic)
            down = jnp.einsum("...i,ir->...r", h, a.astype(dtype), precision=self.precision)
        if kernel is None:
            y = jnp.einsum("...i,oi->...o", xc, kernel_t.astype(dtype), precision=self.precision)
            return self._finish(y, bias, down, up, dtype)
        part = self.features // splits
        outs = []
        for i in range(splits):
            cols = slice(i * part, (i + 1) * part)
            y = jnp.einsum("...i,io->...o", xc, kernel[:, cols].astype(dtype), precision=self.precision)
            outs.append(self._finish(y, None if bias is None else bias[cols], down,
                                     None if up is None else up[:, cols], dtype))
        return outs[0] if splits == 1 else tuple(outs)

    def _finish(self, y: Array, bias: Array | None, down: Array | None, up: Array | None, dtype: Any) -> Array:
        """Base output + bias + the adapter's up-projection of ``down`` (scaled)."""
        if down is not None and self.adapter_elementwise:
            f32 = jnp.float32
            out = y.astype(f32) if bias is None else y.astype(f32) + bias.astype(f32)
            up = up.astype(f32) * lora_scale(self.rank, self.alpha)
            for i in range(down.shape[-1]):  # r multiply-adds XLA fuses into the base matmul's output
                out = out + down[..., i:i + 1].astype(f32) * up[i]
            return out.astype(dtype)
        if bias is not None:
            y = y + bias.astype(dtype)
        if down is not None:
            y = y + _lora_up(down, up.astype(dtype), self.precision) * jnp.asarray(lora_scale(self.rank, self.alpha), dtype)
        return y


def _lora_up(h: Array, b: Array, precision: Any) -> Array:
    """h [..., T, r] @ b [r, out] -> [..., T, out], as a batched matmul over the leading dims.

    Same product as ``einsum("...r,ro->...o")``; the difference is in the gradient. For ``b``,
    autodiff then produces a batched ``h^T @ dy`` per leading index plus a sum, instead of one
    matmul contracting all B*T rows of ``dy``. XLA:CPU lays the latter out by physically
    transposing ``dy`` inside the fusion that produces it (for ``fc1`` that fusion also holds
    the GELU derivative and the dropout mask), which ran ~10x slower than the matmuls around
    it; with the batched form ``dy`` is read in its natural layout. Measured on the ViT-S/14
    LoRA blocks (bench/bench_train.py pretrain step, 2-core CPU): 1.64 s -> 1.25 s per step.
    The broadcast ``b`` is [rows of the leading dims, r, out]: transient, ~118 MB in float32 per
    layer at paper scale (4,800 frames, out 1536).
    """
    if h.ndim < 3:
        return jnp.einsum("...r,ro->...o", h, b, precision=precision)
    lead, (t, r) = h.shape[:-2], h.shape[-2:]
    hb = h.reshape((-1, t, r))
    bb = jnp.broadcast_to(b, (hb.shape[0],) + b.shape)
    out = jnp.einsum("btr,bro->bto", hb, bb, precision=precision)
    return out.reshape(lead + (t, b.shape[-1]))


def _scale_for(path: str, scales: float | Sequence[tuple[str, float]]) -> float:
    if isinstance(scales, (int, float)):
        return float(scales)
    for pattern, value in scales:
        if re.search(pattern, path):
            return float(value)
    raise ValueError(f"merge_lora: no scale rule matches LoRA layer {path!r}; add a (regex, alpha/r) rule")


def merge_lora(variables: Any, scales: float | Sequence[tuple[str, float]] = 1.0) -> Any:
    """Fold every adapter into its base kernel: ``kernel + scale * lora_a @ lora_b``.

    Args:
      variables: a Flax variables dict (``{"params": ...}``) or a bare params tree.
      scales: ``alpha / r`` for all layers (a float), or ``[(regex, scale), ...]`` matched with
        ``re.search`` against the '/'-joined path of the layer's kernel, e.g.
        ``frame_encoder/block_9/attn/qkv/kernel`` (first match wins). HFA uses
        different ranks for ViT (r4, a4 -> 1.0) and mBART (r16, a32 -> 2.0):
        see :func:`hfa_jax.models.hfa.lora_scale_rules`.

    Returns:
      The same tree without ``lora_a``/``lora_b`` (the merged layers run as plain dense layers).
      Computed in float32 at highest precision.
    """

    def merge(node: dict, path: str) -> dict:
        if "lora_a" in node and "lora_b" in node and "kernel" in node:
            s = _scale_for(f"{path}/kernel" if path else "kernel", scales)
            k = node["kernel"]
            delta = jnp.matmul(
                jnp.asarray(node["lora_a"], jnp.float32),
                jnp.asarray(node["lora_b"], jnp.float32),
                precision=jax.lax.Precision.HIGHEST,
            )
            node["kernel"] = (jnp.asarray(k, jnp.float32) + s * delta).astype(jnp.asarray(k).dtype)
            del node["lora_a"], node["lora_b"]
        return node

    return _map_param_nodes(variables, merge)


def _map_param_nodes(variables: Any, fn: Callable[[dict, str], dict]) -> Any:
    """Rebuild a params tree bottom-up, passing every dict node (a copy) and its '/'-joined path
    to ``fn`` before descending into what ``fn`` returns. ``variables`` is a Flax variables dict
    (only ``params`` is walked) or a bare params tree."""

    def walk(node: Any, path: str) -> Any:
        if not isinstance(node, dict) and not hasattr(node, "items"):
            return node
        node = fn(dict(node), path)
        return {key: walk(value, f"{path}/{key}" if path else key) for key, value in node.items()}

    if isinstance(variables, dict) and "params" in variables:
        out = dict(variables)
        out["params"] = walk(variables["params"], "")
        return out
    return walk(variables, "")


def decoding_layout(variables: Any) -> Any:
    """Store every adapter-free ``LoRADense`` kernel transposed, as ``kernel_t [out, in]``.

    For autoregressive decoding on CPU: each step multiplies a few rows (batch x beams) by every
    weight matrix, and XLA:CPU's decoding loop runs those skinny products faster with the weight
    in ``[out, in]`` order (contiguous rows of the contraction) than in ``[in, out]`` (beam search
    1.26x faster at d=1024, bench/RESULTS.md). Values are unchanged; :class:`LoRADense` reads
    ``kernel_t`` when it is present. Layers that still carry an adapter are left alone (merge them
    first with :func:`merge_lora`). Only for trees of ``LoRADense`` layers (``nn.Dense`` does not
    read ``kernel_t``), e.g. the mBART decoder (:func:`hfa_jax.models.decode.decoding_variables`).

    Args:
      variables: a Flax variables dict (``{"params": ...}``) or a bare params tree.

    Returns:
      The same tree with ``kernel`` replaced by ``kernel_t`` in every 2-D, adapter-free dense node.
    """

    def transpose(node: dict, path: str) -> dict:
        kernel = node.get("kernel")
        if kernel is not None and "lora_a" not in node and getattr(kernel, "ndim", 0) == 2:
            node["kernel_t"] = jnp.transpose(kernel)
            del node["kernel"]
        return node

    return _map_param_nodes(variables, transpose)
