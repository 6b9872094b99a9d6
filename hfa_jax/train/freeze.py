"""Freezing as data (big_vision style): a table of ``(regex, trainable)`` rules.

A parameter's path is its '/'-joined key path inside the params tree (e.g.
``frame_encoder/block_9/attn/qkv/lora_a``). The first rule whose regex ``re.search``-es the path
decides; a parameter that no rule matches is an error (ConfigError naming it), so a renamed
module can never be silently frozen or trained. The rule tables live in the configs
(``configs/common.py: trainable_rules``).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax

from hfa_jax.errors import ConfigError

__all__ = ["path_str", "trainable_mask", "count_params"]


def path_str(path: tuple) -> str:
    """A jax key path -> 'a/b/c'."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


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
