"""Convert between the HFA and BeyondGloss authors' PyTorch Lightning checkpoints and hfa_jax workdirs.

    python -m hfa_jax.convert from-lightning --ckpt best.ckpt --stage pretrain --out runs/pretrain
    python -m hfa_jax.convert from-lightning --ckpt best.ckpt --stage finetune --out runs/finetune2 \\
        --tokenizer MBart_trimmed
    python -m hfa_jax.convert to-lightning --workdir runs/finetune2 --out finetune.ckpt [--target hfa|beyondgloss]

``from-lightning`` writes an hfa_jax workdir (``config.json`` + an orbax ``best/`` checkpoint in
the train-state layout) that ``--config.train.init_from``, ``hfa_jax.translate`` and the evaluation
accept. Its ``config.json`` is ``--config`` (default: the paper's ``configs/pretrain.py`` or
``configs/finetune.py:stage2``) with every size read from the tensors and the authors'
forward-pass switches. ``to-lightning`` writes a ``.ckpt`` whose ``state_dict`` the authors'
Lightning module loads with ``load_state_dict(strict=True)``. Neither direction imports torch.
See docs/coming_from_pytorch.md.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from hfa_jax import config_cli
from hfa_jax.convert import core, lightning_io, tables
from hfa_jax.errors import CheckpointError, ConfigError, cli_main

__all__ = ["from_lightning", "to_lightning", "main"]

# Our stage name for each of the authors' stages (their fine-tuning is one stage: our stage 2's
# trainable set, which is also what ``init_from`` continues from).
_OUR_STAGE = {"pretrain": "pretrain", "finetune": "finetune2"}
_DEFAULT_CONFIG = {"pretrain": "configs/pretrain.py", "finetune": "configs/finetune.py:stage2"}


def load_config_file(spec: str):
    """``path.py[:variant]`` -> ``get_config(variant)``, as ``--config`` of ``hfa_jax.main``. A
    relative path is tried from the current folder, then from the repository holding hfa_jax."""
    path, _, variant = spec.partition(":")
    candidates = [path, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), path)]
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is None:
        raise ConfigError(f"--config {spec}: no such file; pass a training config file (configs/*.py[:variant])")
    config = config_cli.load_config(found + (f":{variant}" if variant else ""))  # errors: one line
    config.unlock() if hasattr(config, "unlock") else None
    return config


def _save_workdir(out: str, config, variables: dict, step: int, meta: dict) -> None:
    from hfa_jax.train import checkpoint as ckpt_lib
    from hfa_jax.train import freeze, tasks
    from hfa_jax.train.state import split_params

    stage = str(config.train.stage)
    rules = config.train.get("trainable", None) or freeze.trainable_rules(stage)
    mask = freeze.trainable_mask(variables["params"], [tuple(r) for r in rules])
    trainable, frozen = split_params(variables["params"], mask)
    state = {"step": np.int32(step), "trainable": trainable, "frozen": frozen,
             "batch_stats": variables.get("batch_stats", {}),
             "buffers": {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}}
    os.makedirs(out, exist_ok=True)
    if os.path.isdir(os.path.join(out, "best")) or os.path.isdir(os.path.join(out, "checkpoints")):
        raise CheckpointError(f"{out} already holds checkpoints; pass an empty or new --out folder")
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    ck = ckpt_lib.Checkpointer(out, keep=1, use_async=False, best_mode=tasks.of_stage(stage).best_mode)
    ck.save_best(step, state, {**meta, "step": step, "stage": stage})
    ck.close()


def from_lightning(ckpt: str, stage: str, out: str, *, target: str | None = None, config: str | None = None,
                   tokenizer: str | None = None) -> dict:
    """Converts ``ckpt`` (the authors' Lightning checkpoint of ``stage``) into the workdir ``out``.
    Returns a report dict (class, counts, dropped entries)."""
    obj = lightning_io.read_checkpoint(ckpt)
    sd = obj["state_dict"]
    found_target, found_stage = core.detect_class(sd)
    # BeyondGloss Pretrain_desc (Desc_Clip) is a pretraining class too: --stage pretrain
    if found_stage.partition("_")[0] != stage or (target and target != found_target):
        raise CheckpointError(f"{ckpt}: holds the authors' {tables.MODEL_CLASSES[(found_target, found_stage)]}, "
                              f"not --stage {stage}" + (f" --target {target}" if target else ""))
    lay = tables.layout_for(found_target, found_stage)
    cfg = load_config_file(config or _DEFAULT_CONFIG[stage])
    model_cfg = core.model_config_from_state(sd, lay, cfg.model.to_dict())
    variables, report = core.import_state(sd, lay, model_cfg)
    import ml_collections

    cfg.model = ml_collections.ConfigDict(model_cfg)
    cfg.train.stage = _OUR_STAGE[stage]
    cfg.train.init_from = ""
    if tokenizer:
        cfg.data.tokenizer_dir = os.path.abspath(tokenizer)
    cfg.name = os.path.basename(os.path.abspath(out))
    step, epoch = _count(obj, "global_step", ckpt), _count(obj, "epoch", ckpt)
    dropped = sorted(k if isinstance(k, str) else type(k).__name__ for k in obj if k != "state_dict")
    _save_workdir(out, cfg, variables, step, {"converted_from": os.path.abspath(ckpt),
                                              "authors_class": tables.MODEL_CLASSES[(lay.target, lay.stage)],
                                              "epoch": epoch})
    return {"class": tables.MODEL_CLASSES[(lay.target, lay.stage)], "tensors": len(sd), "used": len(report["used"]),
            "rebuilt": report["rebuilt"], "tied": report["tied"], "dropped_entries": dropped, "step": step}


def _count(obj: dict, key: str, path: str) -> int:
    """A Lightning counter (``global_step``, ``epoch``): absent or None is 0; an int, or a
    one-element integer tensor, is taken; anything else is one line naming the key."""
    v = obj.get(key, 0)
    if isinstance(v, np.ndarray) and v.size == 1 and v.dtype.kind in "iu":
        v = int(v.reshape(()))
    if v is None:
        return 0
    if type(v) is not int or v < 0:
        raise CheckpointError(f"{path}: key {key!r} is a {type(v).__name__}, not a count; the checkpoint is corrupt")
    return v


def to_lightning(workdir: str, out: str, *, target: str | None = None, legacy_peft: bool = False) -> dict:
    """Writes the authors' checkpoint for ``workdir``'s best (else latest) checkpoint to ``out``.
    ``target`` None: ``beyondgloss`` when the model has the authors' description feedback
    (``model.beyondgloss.desc_feedback``), else ``hfa``."""
    from flax import traverse_util

    from hfa_jax.model_folder import read_config
    from hfa_jax.train import checkpoint as ckpt_lib

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{workdir}: no config.json; pass an hfa_jax workdir")
    config = read_config(workdir)  # the JSON checked: one line naming the file and key
    try:
        state, meta = ckpt_lib.load_state_arrays(workdir, best=True)
    except CheckpointError:
        state, meta = ckpt_lib.load_state_arrays(workdir, best=False)
    bg = config.model.get("beyondgloss", None) or {}
    target = target or ("beyondgloss" if bg.get("desc_feedback", False) else "hfa")
    stage = "pretrain" if config.train.stage == "pretrain" else "finetune"
    if stage == "pretrain" and target == "beyondgloss" and bg.get("description_from", "") == "video_encoder":
        stage = "pretrain_desc"  # Desc_Clip (Pretrain_desc.py)
    lay = tables.layout_for(target, stage)
    flat = dict(traverse_util.flatten_dict(state.get("frozen") or {}))
    flat.update(traverse_util.flatten_dict(state.get("trainable") or {}))
    variables = {"params": traverse_util.unflatten_dict(flat), **(state.get("buffers") or {})}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    model_cfg = config.model.to_dict()
    shared = variables["params"].get("mbart", {}).get("shared", {}).get("embedding")
    emb = variables["params"].get("video_encoder", {}).get("embed_tokens", {}).get("embedding")
    vocab = shared if shared is not None else emb
    if vocab is not None:  # the training config takes it from the tokenizer: read it from the weights
        model_cfg["mbart"] = {**model_cfg.get("mbart", {}), "vocab_size": int(np.shape(vocab)[0])}
    core.check_exportable(model_cfg, lay)
    sd = core.export_state(variables, lay, model_cfg, peft_base_layer=not legacy_peft)
    step = int(meta.get("step", 0) or 0)
    lightning_io.write_checkpoint(out, sd, global_step=step)
    return {"class": tables.MODEL_CLASSES[(lay.target, lay.stage)], "tensors": len(sd), "step": step}


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m hfa_jax.convert", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("from-lightning", help="the authors' .ckpt -> an hfa_jax workdir")
    a.add_argument("--ckpt", required=True, help="the authors' Lightning checkpoint (.ckpt)")
    a.add_argument("--stage", required=True, choices=("pretrain", "finetune"),
                   help="pretrain: HFA/BeyondGloss PreTrainModel (SLRCLIP or Desc_Clip); finetune: FineTuneModel")
    a.add_argument("--out", required=True, help="the hfa_jax workdir to write (new or empty)")
    a.add_argument("--target", choices=("hfa", "beyondgloss"), default=None, help="expected code base (checked)")
    a.add_argument("--config", default=None, help="base training config (default: the paper's for the stage)")
    a.add_argument("--tokenizer", default=None, help="the authors' trimmed mBART folder (config.data.tokenizer_dir)")
    b = sub.add_parser("to-lightning", help="an hfa_jax workdir -> the authors' .ckpt")
    b.add_argument("--workdir", required=True)
    b.add_argument("--out", required=True, help="the .ckpt file to write")
    b.add_argument("--target", choices=("hfa", "beyondgloss"), default=None,
                   help="the authors' code base (default: beyondgloss when model.beyondgloss.desc_feedback is on)")
    b.add_argument("--legacy-peft", action="store_true",
                   help="peft < 0.7 key names (q_proj.weight instead of q_proj.base_layer.weight)")
    args = p.parse_args(argv)
    if args.cmd == "from-lightning":
        r = from_lightning(args.ckpt, args.stage, args.out, target=args.target, config=args.config,
                           tokenizer=args.tokenizer)
        print(f"{args.ckpt}: {r['class']}, {r['tensors']} tensors: {r['used']} mapped, {len(r['rebuilt'])} rebuilt "
              f"buffers checked, {len(r['tied'])} tied copies checked; dropped {', '.join(r['dropped_entries']) or '-'}")
        print(f"wrote {args.out} (config.json + best/{r['step']})")
    else:
        r = to_lightning(args.workdir, args.out, target=args.target, legacy_peft=args.legacy_peft)
        print(f"wrote {args.out}: {r['class']}, {r['tensors']} tensors (step {r['step']})")


if __name__ == "__main__":
    sys.exit(main())
