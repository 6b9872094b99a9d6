"""Freezing as data (big_vision style): a table of ``(regex, trainable)`` rules.

A parameter's path is its '/'-joined key path inside the params tree (e.g.
``frame_encoder/block_9/attn/qkv/lora_a``). The first rule whose regex ``re.search``-es the path
decides; a parameter that no rule matches is an error (ConfigError naming it), so a renamed
module can never be silently frozen or trained. The paper's table is :func:`trainable_rules`;
experiment configs may set their own (``config.train.trainable``).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax

from hfa_jax.errors import ConfigError

__all__ = ["STAGES", "path_keys", "path_str", "trainable_mask", "count_params", "trainable_rules",
           "trained_vit_mlp_weights"]

# The training stages, in order: pseudo-gloss + video-text pretraining, then the two fine-tuning stages.
STAGES = ("pretrain", "finetune1", "finetune2")


def path_keys(path: tuple) -> tuple[str, ...]:
    """A jax key path -> its keys as strings, e.g. ``("frame_encoder", "block_9", "attn")``."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return tuple(parts)


def path_str(path: tuple) -> str:
    """A jax key path -> 'a/b/c'."""
    return "/".join(path_keys(path))


def trainable_mask(params: Any, rules: Sequence[tuple[str, bool]]) -> Any:
    """params: a pytree (arrays or ShapeDtypeStructs) -> same-structure pytree of bool
    (True = trainable). Raises ConfigError for a parameter no rule matches or a bad regex."""
    compiled = []
    for i, rule in enumerate(rules):
        try:
            pattern, flag = rule
            compiled.append((re.compile(pattern), bool(flag)))
        except (re.error, TypeError, ValueError) as e:
            raise ConfigError(f"train.trainable rule #{i} {rule!r} is not a valid (regex, bool) pair: {e}") from e

    def decide(path, _leaf):
        name = path_str(path)
        for regex, flag in compiled:
            if regex.search(name):
                return flag
        raise ConfigError(
            f"parameter {name!r} matches no rule in train.trainable; add a (regex, True/False) rule for it"
        )

    return jax.tree_util.tree_map_with_path(decide, params)


_VIT_MLP_BASE = re.compile(r"^frame_encoder/block_\d+/mlp/fc[12]/(kernel|bias)$")


def trained_vit_mlp_weights(mask: Any) -> list[str]:
    """Paths of the ViT's block MLP base weights and biases (``frame_encoder/block_N/mlp/fc1/kernel``) that
    ``mask`` trains. The fused LoRA MLP kernel gives those no gradient
    (:mod:`hfa_jax.models.pallas_lora_mlp`), so a table that trains them cannot use it."""
    out = []
    for path, flag in jax.tree_util.tree_leaves_with_path(mask):
        name = path_str(path)
        if flag and _VIT_MLP_BASE.search(name):
            out.append(name)
    return out


def count_params(params: Any, mask: Any | None = None) -> int:
    """Number of scalars in ``params`` (only where ``mask`` is True, when given)."""
    leaves = jax.tree.leaves(params)
    if mask is None:
        return int(sum(int(_size(x)) for x in leaves))
    flags = jax.tree.leaves(mask)
    return int(sum(int(_size(x)) for x, f in zip(leaves, flags) if f))


def _size(x) -> int:
    n = 1
    for s in getattr(x, "shape", ()):
        n *= int(s)
    return n


_LORA = r"/lora_[ab]$"


# The paper's freezing table per stage (docs/training.md).
#   pretrain: ViT LoRA, Linear+BN, temporal, pseudo-gloss head, prototypes, CLS, logit scale and
#     the video encoder's LoRA train; the ViT, the video encoder's mBART weights and the text
#     encoder are frozen.
#   finetune1: only the mapper and the decoder LoRA train.
#   finetune2: everything trainable: ViT LoRA, Linear+BN, temporal, mapper, encoder + decoder LoRA.
_PAPER_RULES: dict[str, tuple[tuple[str, bool], ...]] = {
    "pretrain": (
        (r"^frame_encoder/.*" + _LORA, True),
        (r"^frame_encoder/", False),
        (r"^(frame_proj|frame_bn|temporal|pg_head|hand_pose|desc_proj|desc_feedback)/", True),
        (r"^(prototypes|cls_token|logit_scale)$", True),
        (r"^video_encoder/.*" + _LORA, True),
        (r"^video_encoder/", False),
        (r"^text_encoder/", False),
    ),
    "finetune1": (
        (r"^mapper/", True),
        (r"^mbart/decoder/.*" + _LORA, True),
        (r"^(frame_encoder|frame_proj|frame_bn|temporal|hand_pose|desc_feedback|mbart)/", False),
    ),
    "finetune2": (
        (r"^frame_encoder/.*" + _LORA, True),
        (r"^frame_encoder/", False),
        (r"^(frame_proj|frame_bn|temporal|hand_pose|desc_feedback|mapper)/", True),
        (r"^mbart/.*" + _LORA, True),
        (r"^mbart/", False),
    ),
}


def trainable_rules(stage: str) -> list[tuple[str, bool]]:
    """The paper's freezing table for ``stage`` in :data:`STAGES` (``_PAPER_RULES``)."""
    if stage not in _PAPER_RULES:
        raise ValueError(f"unknown training stage {stage!r}; use one of {STAGES}")
    return list(_PAPER_RULES[stage])
