"""XLA's FLOP and byte counts for the ViT's attention choices, compiled for one TPU chip on this
machine (libtpu, no TPU needed): ``python bench/aot_attention.py [--topology v5e:2x2]``.

Programs, at paper widths (ViT-S/14, 224 px: 257 tokens, 6 heads of 64, bf16 compute) on
``--frames`` frames per chip (600 = global batch 16 on 8 chips at the 300-frame bucket):

- ``frozen block``: one block without LoRA, forward (blocks 0-8 of the paper's ViT);
- ``frozen block, fused kernel``: the same block as one Pallas kernel
  (:mod:`hfa_jax.models.pallas_vit_block`; ``--impls`` pallas only);
- ``LoRA block``: one LoRA block, forward + backward (gradients of the LoRA parameters and the
  input; blocks 9-10);
- ``ViT stack``: the whole ViT (``cls_only``, blocks 0-8 frozen), forward + backward of the
  LoRA parameters (``--programs=frozen,lora,stack``).

The LoRA block and the stack are compiled for each ``model.vit.remat_policy`` in
``--remat-policies``, and everything once per ``model.attention`` choice in ``--impls`` (``xla``: the scores
materialised; ``pallas``: :mod:`hfa_jax.models.pallas_attention`). XLA's byte counts include tile
padding (257 tokens are stored as 264 or 272 rows): compare them between choices, not as
absolute traffic. Prints a Markdown table (``--json`` for the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import SingleDeviceSharding  # noqa: E402

from hfa_jax.aot import _cost, topology_devices  # noqa: E402
import flax.linen as nn  # noqa: E402

from hfa_jax.models.vit import REMAT_POLICIES, Block, ViT, ViTConfig  # noqa: E402


def _shapes(tree, sharding):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def _is_lora(path) -> bool:
    return "lora_" in jax.tree_util.keystr(path)


def _split(params):
    """(LoRA leaves, the rest) as two trees with None where the other has a leaf."""
    lora = jax.tree_util.tree_map_with_path(lambda p, a: a if _is_lora(p) else None, params)
    rest = jax.tree_util.tree_map_with_path(lambda p, a: None if _is_lora(p) else a, params)
    return lora, rest


def _merge(lora, rest):
    return jax.tree.map(lambda a, b: a if b is None else b, rest, lora, is_leaf=lambda x: x is None)


def programs(cfg: ViTConfig, frames: int, which: set[str]):
    """name -> (function, example args as shapes without sharding) for ``which`` of "frozen",
    "lora", "stack". The LoRA block and the stack follow ``cfg.remat_policy``."""
    n = 1 + (224 // cfg.patch_size) ** 2
    x = jax.ShapeDtypeStruct((frames, n, cfg.width), jnp.bfloat16)
    out = {}
    frozen = Block(cfg, lora=False)
    p_frozen = jax.eval_shape(lambda: frozen.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))["params"]
    if "frozen" in which:
        out["frozen block (fwd)"] = (lambda p, x: frozen.apply({"params": p}, x, True, None, n), (p_frozen, x))
    if "fused" in which and cfg.attention == "pallas":
        from hfa_jax.models import pallas_vit_block

        out["frozen block, fused kernel (fwd)"] = (
            lambda p, x: pallas_vit_block.frozen_block(x, p, num_heads=cfg.num_heads, eps=cfg.ln_eps), (p_frozen, x))

    policy = REMAT_POLICIES[cfg.remat_policy]
    lora = (Block if policy is None else nn.remat(Block, static_argnums=(2, 3, 4), policy=policy))(cfg, lora=True)
    p_lora = jax.eval_shape(lambda: lora.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype), True, None, n))["params"]

    def lora_fwd_bwd(p, x, ct):
        trainable, rest = _split(p)
        y, vjp = jax.vjp(lambda t, x: lora.apply({"params": _merge(t, rest)}, x, True, None, n), trainable, x)
        return vjp(ct)

    if "lora" in which:
        out["LoRA block (fwd+bwd)"] = (lora_fwd_bwd, (p_lora, x, x))
    if "stack" in which:
        vit = ViT(cfg)
        pix = jax.ShapeDtypeStruct((frames, 224, 224, 3), jnp.float32)
        p_vit = jax.eval_shape(lambda: vit.init(jax.random.key(0), jnp.zeros(pix.shape, pix.dtype)))["params"]

        def stack_fwd_bwd(p, pixels):
            trainable, rest = _split(p)
            loss = lambda t: jnp.sum(vit.apply({"params": _merge(t, rest)}, pixels, True, True).astype(jnp.float32))  # noqa: E731
            return jax.grad(loss)(trainable)

        out["ViT stack (fwd+bwd)"] = (stack_fwd_bwd, (p_vit, pix))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="v5e:2x2", help="a TPU topology libtpu knows; one chip of it is used")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--impls", default="xla,pallas")
    ap.add_argument("--programs", default="frozen,lora", help="of frozen, fused, lora, stack (the whole ViT, fwd+bwd)")
    ap.add_argument("--remat-policies", default="none", help=f"model.vit.remat_policy values, of {list(REMAT_POLICIES)}")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    devices, _ = topology_devices(a.topology)
    dev = devices[0]
    sharding = SingleDeviceSharding(dev)
    rows = []
    for impl, policy in [(i, r) for i in a.impls.split(",") for r in a.remat_policies.split(",")]:
        cfg = ViTConfig(dtype="bfloat16", attention=impl, remat_policy=policy)
        for name, (fn, args) in programs(cfg, a.frames, set(a.programs.split(","))).items():
            t = time.time()
            compiled = jax.jit(fn).lower(*_shapes(args, sharding)).compile()
            cost = _cost(compiled)
            mem = compiled.memory_analysis()
            rows.append(dict(program=name, attention=impl, remat_policy=policy, flops=cost.get("flops"),
                             bytes_accessed=cost.get("bytes accessed"),
                             temp_bytes=getattr(mem, "temp_size_in_bytes", None), compile_s=round(time.time() - t, 1)))
            print(f"# {name} {impl}: {rows[-1]}", file=sys.stderr, flush=True)
    if a.json:
        print(json.dumps(dict(device=dev.device_kind, frames=a.frames, rows=rows), indent=1))
        return 0
    print(f"{dev.device_kind}, {a.frames} frames per chip, bf16\n")
    print("| program | attention | remat policy | TFLOP | GB accessed | temporaries GB |\n|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['program']} | {r['attention']} | {r['remat_policy']} | {r['flops'] / 1e12:.3f} | {r['bytes_accessed'] / 1e9:.2f} | "
              f"{(r['temp_bytes'] or 0) / 1e9:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
