"""Parameter report from shapes alone (``jax.eval_shape`` of ``init``: no weights, no FLOPs).

Usage::

    python -m hfa_jax.params --config=configs/pretrain.py:paper          # per-module table
    python -m hfa_jax.params --config=configs/finetune.py:paper --json   # {"trainable": N, "total": N}
    python -m hfa_jax.params --config=configs/common.py:paper --stage=finetune2

``--config=FILE:ARG`` loads FILE and calls ``get_config(ARG)`` (a full config: ``config.model``,
``config.train.stage``, ``config.train.trainable``) or, for ``configs/common.py``,
``model_config(ARG)`` (then ``--stage`` picks the freezing rules; default "pretrain").
The model is the pretraining model for stage "pretrain" and the translation model otherwise.
Only the ``params`` collection is counted: BatchNorm statistics, ``final_logits_bias`` and the
sinusoidal tables are buffers/constants (docs/models_and_weights.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from typing import Any, Sequence

import jax

from hfa_jax.errors import ConfigError, cli_main
from hfa_jax.models.hfa import HFAConfig, init_shapes
from hfa_jax.train.freeze import count_params, path_str, trainable_mask, trainable_rules
from hfa_jax.train.tasks import of_stage

__all__ = ["load_config_arg", "param_report", "main"]


def load_config_arg(spec: str) -> tuple[Any, Any]:
    """'path/to/file.py[:arg]' -> (model config, full config or None)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"--config: no such file {path!r}; use e.g. configs/pretrain.py:paper")
    name = "_hfa_cfg_" + os.path.splitext(os.path.basename(path))[0]
    spec_ = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec_)
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:  # configs import each other as `configs.common`
        sys.path.insert(0, root)
    spec_.loader.exec_module(module)
    if hasattr(module, "get_config"):
        full = module.get_config(arg or None)
        if "model" not in full:
            raise ConfigError(f"--config: {path}: get_config({arg!r}) has no 'model' field")
        return full.model, full
    if hasattr(module, "model_config"):
        return module.model_config(arg or "paper"), None
    raise ConfigError(f"--config: {path} defines neither get_config() nor model_config()")


def param_report(model_cfg: Any, stage: str, rules: Sequence[tuple[str, bool]] | None = None) -> dict:
    """Count parameters of the model for ``stage`` from shapes.

    Returns {"trainable": N, "total": N, "modules": {top-level name: (trainable, total)}}.
    """

    cfg = HFAConfig.from_config(model_cfg)
    kind = of_stage(stage).model_kind
    params = init_shapes(cfg, kind)["params"]
    mask = trainable_mask(params, rules if rules is not None else trainable_rules(stage))
    modules: dict[str, list[int]] = {}
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_m = jax.tree.leaves(mask)
    for (path, leaf), flag in zip(flat_p, flat_m):
        top = path_str(path).split("/")[0]
        n = count_params(leaf)
        entry = modules.setdefault(top, [0, 0])
        entry[1] += n
        if flag:
            entry[0] += n
    return {
        "trainable": count_params(params, mask),
        "total": count_params(params),
        "modules": {k: tuple(v) for k, v in modules.items()},
    }


_STAGE_ALIASES = {"stage1": "finetune1", "stage2": "finetune2", "finetune": "finetune2", "paper": "finetune2"}


def _table(report: dict, title: str) -> str:
    rows = [f"{title}", f"{'module':<16}{'trainable':>16}{'total':>16}", "-" * 48]
    for name, (tr, tot) in report["modules"].items():
        rows.append(f"{name:<16}{tr:>16,}{tot:>16,}")
    rows.append("-" * 48)
    rows.append(f"{'all':<16}{report['trainable']:>16,}{report['total']:>16,}")
    return "\n".join(rows)


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m hfa_jax.params", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="FILE.py:ARG, e.g. configs/pretrain.py:paper")
    ap.add_argument("--stage", default=None, help="pretrain | finetune1 | finetune2 (default: from the config)")
    ap.add_argument("--json", action="store_true", help='print {"trainable": N, "total": N} only')
    args = ap.parse_args(argv)
    jax.config.update("jax_platforms", "cpu")  # shapes only: never grab an accelerator
    model_cfg, full = load_config_arg(args.config)
    rules = None
    stage = args.stage
    train = full.get("train") if full is not None else None
    if stage is None:
        stage = (train.get("stage") if train is not None else None) or "pretrain"
    stage = _STAGE_ALIASES.get(stage, stage)
    if stage not in ("pretrain", "finetune1", "finetune2"):
        raise ConfigError(f"stage {stage!r} unknown; use pretrain, finetune1 or finetune2")
    if args.stage is None and train is not None and train.get("trainable") is not None:
        rules = [tuple(r) for r in train.trainable]
    report = param_report(model_cfg, stage, rules)
    if args.json:
        print(json.dumps({"trainable": report["trainable"], "total": report["total"]}))
    else:
        print(_table(report, f"{args.config} (stage {stage})"))


if __name__ == "__main__":
    main()
