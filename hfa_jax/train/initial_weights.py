"""The weights a stage starts from: imported pretrained weights (DINOv2, mBART), the pseudo-gloss
prototypes, and the previous stage's best checkpoint (``config.train.init_from``).

All of it works on host NumPy variables, before they are sharded onto the devices; every copied
tensor is checked to exist in the model with the same shape.

:func:`bf16_frozen_mask` names the frozen weights the stage stores in bfloat16 (the pretrained
backbones' own weights that its programs only ever read through a bf16 cast,
:func:`hfa_jax.train.state.bf16_read_only`, :func:`is_backbone`). A previous stage's checkpoint
then holds those weights in bfloat16; where this stage imports the same pretrained weights, their
float32 values are kept (:func:`_put`), so a stage that trains or reads in float32 a weight an
earlier stage kept frozen starts from the full-precision value.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hfa_jax.errors import CheckpointError, ConfigError
from hfa_jax.models import hfa
from hfa_jax.models import mbart as mbart_lib
from hfa_jax.weights import dinov2 as dinov2_weights
from hfa_jax.weights import mbart as mbart_weights
from hfa_jax.train import checkpoint as ckpt_lib
from hfa_jax.train import freeze
from hfa_jax.train import state as state_lib
from hfa_jax.train.settings import Settings
from hfa_jax.train.state import merge_params
from hfa_jax.train.tasks import Task


def _flat(tree) -> dict[str, Any]:
    return {k: v for k, v in traverse_util.flatten_dict(tree, sep="/").items()} if tree else {}


def _unflat(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def _put(target: dict[str, Any], source: Mapping[str, Any], src_prefix: str, dst_prefix: str,
         what: str, *, skip: tuple[str, ...] = ()) -> int:
    """Copies every ``source`` leaf under ``src_prefix`` to ``dst_prefix`` in ``target`` (flat
    dicts), checking that the destination exists with the same shape. Returns the count."""
    n = 0
    for k, v in source.items():
        if not k.startswith(src_prefix) or any(x in k for x in skip):
            continue
        dst = dst_prefix + k[len(src_prefix):]
        if dst not in target:
            raise CheckpointError(f"{what}: {k} has no counterpart {dst} in the model; the model config "
                                  "does not match those weights")
        if tuple(np.shape(v)) != tuple(np.shape(target[dst])):
            raise CheckpointError(f"{what}: {k} has shape {np.shape(v)} but the model's {dst} is "
                                  f"{np.shape(target[dst])}; the model config does not match those weights")
        old = np.asarray(target[dst])
        if _rounds_to(old, v):
            # A weight an earlier stage stored in bfloat16 because it was frozen there, and this
            # stage already holds its float32 import: bfloat16(that import) is exactly the
            # checkpoint's value, so keep the full-precision one.
            n += 1
            continue
        target[dst] = np.asarray(v, dtype=old.dtype)
        n += 1
    return n


def _rounds_to(full: np.ndarray, low: Any) -> bool:
    """True when ``low`` is a bfloat16 array and ``full`` a float32 array that rounds to it."""
    low = np.asarray(low)
    if low.dtype != jnp.bfloat16 or full.dtype != np.float32 or full.shape != low.shape:
        return False
    return bool(np.array_equal(full.astype(jnp.bfloat16).view(np.uint16), low.view(np.uint16)))


# Which parts of the previous stage initialise this one (docs/training.md): the pseudo-gloss head, the
# prototypes, the CLS token and the frozen text encoder are dropped after pretraining; the LoRA'd
# video encoder becomes the translation model's mBART encoder (reference Finetune_Model:
# ``trans_encoder`` -> ``mbart...encoder``), its token embedding excepted (mBART's shared one).
_TRANSFER = {
    ("pretrain", "finetune1"): [("frame_encoder/", "frame_encoder/"), ("frame_proj/", "frame_proj/"),
                                ("frame_bn/", "frame_bn/"), ("temporal/", "temporal/"),
                                ("hand_pose/", "hand_pose/"),  # BeyondGloss feedback (part of the trunk)
                                ("desc_feedback/", "desc_feedback/"),  # the authors' mapper_1/mapper_2
                                ("video_encoder/", "mbart/encoder/")],
    ("finetune1", "finetune2"): [("", "")],
    ("finetune2", "finetune2"): [("", "")],
    ("finetune1", "finetune1"): [("", "")],
}


def load_initial_params(settings: Settings, task: Task, variables: dict) -> tuple[dict, list[str]]:
    """Fills ``variables`` (host NumPy nested dicts: params, batch_stats, buffers) from imported
    pretrained weights (``config.weights``: DINOv2 + mBART, paper runs), the pseudo-gloss
    prototypes (``config.data.prototypes``, tasks that use pseudo-glosses) and the previous
    stage's best checkpoint (``config.train.init_from``), in that order. Returns (variables,
    report lines)."""
    report: list[str] = []
    flat = {col: _flat(v) for col, v in variables.items()}
    params = flat["params"]
    w, stage = settings.weights, settings.train.stage
    if w.vit:
        vit_cfg = hfa.HFAConfig.from_config(settings.model).vit
        _, vv = dinov2_weights.from_hf(w.vit, vit_cfg, seed=settings.seed)
        n = _put(params, _flat(vv["params"]), "", "frame_encoder/", f"ViT weights {w.vit}")
        report.append(f"imported {n} ViT tensors from {w.vit}")
    if w.mbart:
        if os.path.isdir(os.path.join(w.mbart, "variables")):
            _, mv = mbart_weights.load_imported(w.mbart)
        else:
            _, mv = mbart_weights.from_hf(w.mbart, w.vocab_map or None)
        skip = ("lora_a", "lora_b")  # adapters stay freshly initialised
        # The task says where mBART goes: its encoder into the pretraining model's two encoders,
        # or the whole model (buffers included) into the translation model.
        source = _flat((mbart_lib.encoder_variables(mv) if task.mbart_encoder_only else mv)["params"])
        n = sum(_put(params, source, "", dst, f"mBART weights {w.mbart}", skip=skip) for dst in task.mbart_targets)
        if not task.mbart_encoder_only and "buffers" in mv and "buffers" in flat:
            for dst in task.mbart_targets:
                _put(flat["buffers"], _flat(mv["buffers"]), "", dst, f"mBART buffers {w.mbart}")
        report.append(f"imported {n} mBART tensors from {w.mbart}")
    if task.uses_pseudo_glosses and settings.data.prototypes:
        path = settings.data.prototypes
        protos = np.load(path)
        want = np.shape(params["prototypes"])
        if protos.ndim != 2 or protos.shape[0] - 1 != want[0] or protos.shape[1] != want[1]:
            raise CheckpointError(f"config.data.prototypes={path!r} has shape {protos.shape}; "
                                  f"expected [{want[0] + 1}, {want[1]}] (row 0 = blank) for this pseudo-gloss file")
        params["prototypes"] = protos[1:].astype(np.float32)
        report.append(f"prototypes from {path}")
    init_from = settings.train.init_from
    if init_from:
        prev, meta = ckpt_lib.load_state_arrays(init_from, best=True)
        prev_stage = meta.get("stage", "")
        rules = _TRANSFER.get((prev_stage, stage))
        if rules is None:
            raise ConfigError(f"config.train.init_from={init_from!r} holds stage {prev_stage!r}, which cannot "
                              f"initialise stage {stage!r}; point it at the previous stage's workdir")
        prev_params = _flat(merge_params(prev["trainable"], prev["frozen"]))
        n = 0
        for src, dst in rules:
            n += _put(params, prev_params, src, dst, f"checkpoint {init_from}",
                      skip=("embed_tokens",) if src == "video_encoder/" else ())
            prev_cols = {"batch_stats": prev.get("batch_stats") or {}, **(prev.get("buffers") or {})}
            for col, tree in prev_cols.items():
                if col in flat and tree:
                    _put(flat[col], _flat(tree), src, dst, f"checkpoint {init_from} ({col})")
        report.append(f"initialised {n} tensors from {init_from} (stage {prev_stage}, step {meta.get('step')})")
    return {col: _unflat(v) for col, v in flat.items()}, report


def bf16_frozen_mask(settings: Settings, compute_dtype: Any, read_fns: Sequence[Callable[..., Any]], frozen: Any,
                     *args: Any) -> Any | None:
    """The frozen leaves a stage stores in bfloat16, or None (every frozen weight stays float32).

    Only a bfloat16-compute model (``compute_dtype``, ``config.model.dtype``) casts weights to
    bfloat16; for it, ``read_fns`` (every program of the stage that reads the frozen weights, as
    ``fn(frozen, *args)``) are traced and the pretrained backbones' leaves they all read only
    through a bf16 cast are marked (:func:`hfa_jax.train.state.bf16_read_only`,
    :func:`is_backbone`). ``config.train.bf16_frozen=False`` turns it off."""
    if jnp.dtype(compute_dtype) != jnp.bfloat16 or not settings.train.bf16_frozen or not jax.tree.leaves(frozen):
        return None
    mask = state_lib.bf16_read_only(read_fns, frozen, *args)
    mask = jax.tree_util.tree_map_with_path(lambda p, m: bool(m) and is_backbone(freeze.path_str(p)), mask)
    return mask if any(jax.tree.leaves(mask)) else None


# The imported pretrained backbones' own weights (not their LoRA adapters): frozen in every stage
# of the paper's table and re-imported where a stage starts them from config.weights. Only these
# are stored in bf16: a weight one stage keeps frozen and a later stage trains (the temporal
# encoder and the adapters in fine-tuning stage 1) must reach that later stage in float32.
_BACKBONE = re.compile(r"^(frame_encoder|video_encoder|text_encoder|mbart)/")
_ADAPTER = re.compile(r"/lora_[ab]$")


def is_backbone(path: str) -> bool:
    """Whether a parameter path is a pretrained backbone weight (DINOv2 ViT, mBART), adapters
    excluded."""
    return bool(_BACKBONE.search(path)) and not _ADAPTER.search(path)
