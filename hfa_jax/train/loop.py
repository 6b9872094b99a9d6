"""The trainer: one function, :func:`run`, that trains one stage (pretraining, fine-tuning stage 1
or stage 2) in a workdir, resuming if the workdir already holds checkpoints.

Written as phases, like big_vision's ``train.py``::

    0. setup        config check, multi-host init, workdir, TensorBoard writer
    1. mesh         (data, fsdp) device mesh
    2. data         tokenizer, pseudo-glosses, grain loaders (per-example token ids / targets)
    3. shapes       jax.eval_shape of the model init -> parameter shardings -> trainable mask
    4. init         jit-compiled init with out_shardings, then imported / previous-stage weights
    5. step         the donated train step, lowered and compiled up front (memory analysis logged)
    6. resume       latest checkpoint: state, data-iterator position, best metric
    7. loop         progress bar, NaN/Inf stop, periodic eval + checkpoints, SIGTERM save
    8. final eval   best checkpoint on dev/test (fine-tuning: beam search, files, metrics)

State layout (a dict pytree, saved as is): ``step`` (int32), ``trainable`` (the trainable
parameter subtree), ``frozen`` (the rest), ``batch_stats``, ``buffers`` (other non-trained collections, e.g. mBART's
``final_logits_bias``), ``opt_state`` (trainable only) and
``rng`` (the stage's root key; step keys are ``fold_in(rng, step)`` so a resumed run draws exactly
the same randomness).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hfa_jax.errors import CheckpointError, ConfigError, UserError
from hfa_jax.train import beyondgloss_losses as bg_losses
from hfa_jax.train import checkpoint as ckpt_lib
from hfa_jax.train import losses as losses_lib
from hfa_jax.train import mesh as mesh_lib
from hfa_jax.train import optim as optim_lib
from hfa_jax.train import plots
from hfa_jax.train import schema
from hfa_jax.train.freeze import STAGES

PyTree = Any
log = logging.getLogger("hfa_jax.train")


class NonFiniteError(UserError):
    """Training produced NaN/Inf; the message names the step and the first bad quantity."""


class Preempted(SystemExit):
    """Raised after a SIGTERM-triggered checkpoint (exit status 143, like a killed process)."""

    def __init__(self, step: int):
        super().__init__(143)
        self.step = step


class DebugCrash(RuntimeError):
    """Raised by the ``config.train.debug_crash_after_step`` test hook (simulates a kill)."""


# =============================================================================================
# Stage-specific pieces: model, per-example fields, forward passes.
# =============================================================================================


@dataclasses.dataclass
class StageData:
    tokenizer: Any
    pseudo_glosses: Any | None
    sources: dict[str, Any]          # split -> random-access source
    texts: dict[str, list[str]]      # split -> reference sentences by source row
    names: dict[str, list[str]]      # split -> sample names by source row
    fields: dict[str, dict[str, np.ndarray]]  # split -> {field: [N, ...]} per-example arrays


class _RowLookup:
    """example_fn: per-example arrays looked up by source row (picklable, no tokenizer inside)."""

    def __init__(self, fields: Mapping[str, np.ndarray]):
        self.fields = dict(fields)

    def __call__(self, example) -> dict[str, np.ndarray]:
        i = int(example["index"])
        return {k: v[i] for k, v in self.fields.items()}


def _read_split_text(source, extra_key: str | None = None):
    """(names, texts) of every row of a source, read without decoding frames; with
    ``extra_key`` also that feature per row (None where absent)."""
    names, texts, extra = [], [], []
    for i in range(len(source)):
        ex = source[i]
        names.append(ex["name"])
        texts.append(ex["text"])
        if extra_key:
            extra.append(ex.get(extra_key))
    return (names, texts, extra) if extra_key else (names, texts)


def _beyondgloss(config):
    """``config.model.beyondgloss`` as a BeyondGlossConfig (all off when absent)."""
    from hfa_jax.models.beyondgloss import BeyondGlossConfig

    return BeyondGlossConfig.from_config(config.model.get("beyondgloss", None))


def _example_fn(config, fields):
    """The loaders' example_fn: the per-row fields, plus the per-frame hand-pose targets when
    the BeyondGloss hand-pose objective is on (pretraining)."""
    fn = _RowLookup(fields)
    if config.train.stage == "pretrain" and _beyondgloss(config).hand_pose:
        from hfa_jax.data import beyondgloss_io

        length = max(int(b) for b in config.data.buckets)
        fn = beyondgloss_io.CombinedExampleFn((fn, beyondgloss_io.HandPoseField(length=length)))
    return fn


def build_stage_data(config, splits: tuple[str, ...]) -> StageData:
    from hfa_jax.data import pipeline, text as text_lib

    dcfg = config.data
    tok = text_lib.load_tokenizer(dcfg.tokenizer_dir, lang=dcfg.get("lang", "de_DE"))
    pg = None
    stage = config.train.stage
    if stage == "pretrain":
        from hfa_jax.text import pseudo_glosses as pg_lib

        pg = pg_lib.load_pseudo_glosses(dcfg.pseudo_glosses)
    sources, texts, names, fields = {}, {}, {}, {}
    for split in splits:
        src = pipeline.open_split(dcfg.dataset_dir, split)
        sources[split] = src
        bg = _beyondgloss(config)
        use_desc = stage == "pretrain" and bg.description
        if use_desc:
            desc_key = "description_vec" if bg.description_vectors else "description"
            names[split], texts[split], desc_values = _read_split_text(src, desc_key)
        else:
            names[split], texts[split] = _read_split_text(src)
        L = int(dcfg.max_text_len)
        if stage == "pretrain":
            ids, amask = tok.encode_source(texts[split], L)
            keys = [f"{split}/{n}" for n in names[split]]
            pg.check_keys(keys, where=f"split {split!r} of {dcfg.dataset_dir}")
            fields[split] = {"text_ids": ids.astype(np.int32), "text_mask": amask,
                             "pg_targets": pg.multi_hot(keys).astype(np.float32)}
            if use_desc:
                from hfa_jax.data import beyondgloss_io

                fields[split].update(beyondgloss_io.description_fields(
                    desc_values, tokenizer=tok, max_len=int(dcfg.max_description_len),
                    vectors=bg.description_vectors, dim=bg.desc_dim or None,
                    where=f"split {split!r} of {dcfg.dataset_dir}"))
        else:
            enc = tok.encode_targets(texts[split], L)
            fields[split] = {k: np.asarray(v) for k, v in enc.items()}
    return StageData(tok, pg, sources, texts, names, fields)


def hfa_model_config(config, data: StageData | None):
    """``config.model`` -> :class:`hfa_jax.models.hfa.HFAConfig`, with the data-dependent sizes
    (vocabulary, special ids, number of pseudo-gloss classes) filled in from the data."""
    from hfa_jax.models import hfa

    d = config.model.to_dict()
    if data is not None:
        tok = data.tokenizer
        d["mbart"] = {**d.get("mbart", {}), "vocab_size": tok.vocab_size, "pad_token_id": tok.pad_id,
                      "eos_token_id": tok.eos_id, "bos_token_id": tok.bos_id,
                      "decoder_start_token_id": tok.lang_id}
        if data.pseudo_glosses is not None:
            d["num_pseudo_glosses"] = data.pseudo_glosses.num_classes
    return hfa.HFAConfig.from_config(d)


def build_model(config, data: StageData):
    """The flax module of the stage (``HFAPretrain`` or ``HFATranslate``)."""
    from hfa_jax.models import hfa

    kind = "pretrain" if config.train.stage == "pretrain" else "translate"
    return hfa.build_model(hfa_model_config(config, data), kind)


def _dummy_inputs(config, stage: str, b: int, t: int, crop: int, L: int):
    pixels = jnp.zeros((b, t, crop, crop, 3), jnp.float32)
    fmask = jnp.ones((b, t), bool)
    ids = jnp.ones((b, L), jnp.int32)
    return dict(pixels=pixels, frame_mask=fmask, ids=ids, ids_mask=jnp.ones((b, L), bool))


def forward(model, stage: str, variables, batch: Mapping[str, jax.Array], pixels, *, train: bool,
            rng=None):
    """Runs the stage's model on normalised ``pixels [B, T, H, W, 3]``.

    Returns ``(outputs, new_batch_stats)``: pretrain -> the ``HFAPretrain`` dict; fine-tuning ->
    logits ``[B, L, V]``. In training, BatchNorm uses batch statistics and updates them.
    """
    rngs = {"dropout": rng} if train else {}
    kw = dict(deterministic=not train)
    if stage == "pretrain":
        args = (pixels, batch["frame_mask"], batch["text_ids"], batch["text_mask"])
        kw.update({k: batch[k] for k in ("desc_ids", "desc_mask", "desc_vec") if k in batch})
    else:
        args = (pixels, batch["frame_mask"], batch["decoder_input_ids"], batch["target_mask"])
    if "frame_index" in batch:  # frame packing (data.pack_frames): the ViT sees valid frames only
        kw["frame_index"] = batch["frame_index"]
    if train:
        out, upd = model.apply(variables, *args, rngs=rngs, mutable=["batch_stats"], **kw)
        return out, upd.get("batch_stats", variables.get("batch_stats", {}))
    return model.apply(variables, *args, **kw), variables.get("batch_stats", {})


def stage_loss(config, stage: str, outputs, batch) -> tuple[jax.Array, dict]:
    tcfg = config.train
    if stage == "pretrain":
        total, parts = losses_lib.pretrain_loss(outputs, batch["pg_targets"], pg_weight=float(tcfg.pg_weight),
                                                pg_mode=tcfg.pg_loss, example_mask=batch.get("example_mask"))
        bg = _beyondgloss(config)
        return bg_losses.add_beyondgloss_terms(
            total, parts, outputs, batch, description=bg.description, hand_pose=bg.hand_pose,
            lambda_desc=float(tcfg.lambda_desc), lambda_hand=float(tcfg.lambda_hand),
            example_mask=batch.get("example_mask"))
    loss = losses_lib.translation_loss(outputs, batch["labels"], batch["target_mask"],
                                       label_smoothing=float(tcfg.label_smoothing))
    return loss, {"loss": loss}


# =============================================================================================
# Helpers
# =============================================================================================


def _crop(config) -> int:
    return int(config.data.crop_size)


def _padding_chunk(config) -> int:
    """Frames per warp chunk when skipping padding (``data.augment.padding_chunk``; -1: 8 on a
    single CPU device, where the device is the data loader's own cores; off on accelerators,
    where one big kernel beats a sequential loop, and on meshes, where a loop over the sharded
    batch axis would gather it)."""
    from hfa_jax.data import augment as aug

    chunk = int(config.data.augment.get("padding_chunk", -1))
    if chunk < 0:
        single_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
        return aug.CPU_PADDING_CHUNK if single_cpu else 0
    return chunk


def _augment(config, rng, frames, train: bool, frame_mask=None):
    from hfa_jax.data import augment as aug

    a = config.data.augment
    return aug.augment(rng, frames, train=train, crop_size=_crop(config), p=float(a.p),
                       max_rotate_deg=float(a.max_rotate_deg), max_scale=float(a.max_scale),
                       max_translate_px=int(a.max_translate_px), frame_mask=frame_mask,
                       padding_chunk=_padding_chunk(config))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


class MetricsWriter:
    """metrics.jsonl + TensorBoard (tensorboardX, no TensorFlow needed)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if enabled and jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
        if jax.process_index() != 0:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"{split}/{k}", float(v), int(step))

    def text(self, step: int, tag: str, text: str) -> None:
        if self.tb is not None:
            self.tb.add_text(tag, text, int(step))

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _finite_report(names: list[str], flags: np.ndarray) -> str | None:
    bad = [n for n, ok in zip(names, flags) if not ok]
    return bad[0] if bad else None


def _grad_groups(trainable: dict) -> list[str]:
    """Top-level module names of the trainable params: the units of the NaN report."""
    return sorted(trainable.keys())


def _total_steps(config, steps_per_epoch: int) -> int:
    tcfg = config.train
    if int(tcfg.get("num_steps", 0) or 0) > 0:
        return int(tcfg.num_steps)
    return max(1, int(round(float(tcfg.epochs) * steps_per_epoch)))


def _warmup_pct(config, total_steps: int, steps_per_epoch: int) -> float:
    tcfg = config.train
    if tcfg.get("warmup_epochs", None) not in (None, 0):  # the paper's "5 epochs" switch
        return min(1.0, float(tcfg.warmup_epochs) * steps_per_epoch / total_steps)
    return float(tcfg.warmup_pct)


def _every(n_epochs: float | int | None, steps: int | None, steps_per_epoch: int) -> int:
    if steps:
        return int(steps)
    if n_epochs:
        return max(1, int(round(float(n_epochs) * steps_per_epoch)))
    return 0


# =============================================================================================
# Initial weights
# =============================================================================================


def _flat(tree) -> dict[str, Any]:
    from flax import traverse_util

    return {k: v for k, v in traverse_util.flatten_dict(tree, sep="/").items()} if tree else {}


def _unflat(flat: Mapping[str, Any]) -> dict:
    from flax import traverse_util

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
        target[dst] = np.asarray(v, dtype=np.asarray(target[dst]).dtype)
        n += 1
    return n


# Which parts of the previous stage initialise this one (SPEC §3): the pseudo-gloss head, the
# prototypes, the CLS token and the frozen text encoder are dropped after pretraining; the LoRA'd
# video encoder becomes the translation model's mBART encoder (reference Finetune_Model:
# ``trans_encoder`` -> ``mbart...encoder``), its token embedding excepted (mBART's shared one).
_TRANSFER = {
    ("pretrain", "finetune1"): [("frame_encoder/", "frame_encoder/"), ("frame_proj/", "frame_proj/"),
                                ("frame_bn/", "frame_bn/"), ("temporal/", "temporal/"),
                                ("hand_pose/", "hand_pose/"),  # BeyondGloss feedback (part of the trunk)
                                ("video_encoder/", "mbart/encoder/")],
    ("finetune1", "finetune2"): [("", "")],
    ("finetune2", "finetune2"): [("", "")],
    ("finetune1", "finetune1"): [("", "")],
}


def load_initial_params(config, stage: str, variables: dict) -> tuple[dict, list[str]]:
    """Fills ``variables`` (host NumPy nested dicts: params, batch_stats, buffers) from imported
    pretrained weights (``config.weights``: DINOv2 + mBART, paper runs), the pseudo-gloss
    prototypes (``config.data.prototypes``) and the previous stage's best checkpoint
    (``config.train.init_from``), in that order. Returns (variables, report lines)."""
    from hfa_jax.models import mbart as mbart_lib, vit as vit_lib

    report: list[str] = []
    flat = {col: _flat(v) for col, v in variables.items()}
    params = flat["params"]
    w = config.get("weights", None)
    if w is not None and w.get("vit", ""):
        _, vv = vit_lib.from_hf(w.vit, hfa_model_config(config, None).vit, seed=int(config.seed))
        n = _put(params, _flat(vv["params"]), "", "frame_encoder/", f"ViT weights {w.vit}")
        report.append(f"imported {n} ViT tensors from {w.vit}")
    if w is not None and w.get("mbart", ""):
        if os.path.isdir(os.path.join(w.mbart, "variables")):
            _, mv = mbart_lib.load_imported(w.mbart)
        else:
            _, mv = mbart_lib.from_hf(w.mbart, w.get("vocab_map", "") or None)
        mflat = _flat(mv["params"])
        skip = ("lora_a", "lora_b")  # adapters stay freshly initialised
        if stage == "pretrain":
            enc = _flat(mbart_lib.encoder_variables(mv)["params"])
            n = _put(params, enc, "", "video_encoder/", f"mBART weights {w.mbart}", skip=skip)
            n += _put(params, enc, "", "text_encoder/", f"mBART weights {w.mbart}", skip=skip)
        else:
            n = _put(params, mflat, "", "mbart/", f"mBART weights {w.mbart}", skip=skip)
            if "buffers" in mv and "buffers" in flat:
                _put(flat["buffers"], _flat(mv["buffers"]), "", "mbart/", f"mBART buffers {w.mbart}")
        report.append(f"imported {n} mBART tensors from {w.mbart}")
    if stage == "pretrain" and config.data.get("prototypes", ""):
        protos = np.load(config.data.prototypes)
        want = np.shape(params["prototypes"])
        if protos.ndim != 2 or protos.shape[0] - 1 != want[0] or protos.shape[1] != want[1]:
            raise CheckpointError(f"config.data.prototypes={config.data.prototypes!r} has shape {protos.shape}; "
                                  f"expected [{want[0] + 1}, {want[1]}] (row 0 = blank) for this pseudo-gloss file")
        params["prototypes"] = protos[1:].astype(np.float32)
        report.append(f"prototypes from {config.data.prototypes}")
    init_from = config.train.get("init_from", "")
    if init_from:
        prev, meta = ckpt_lib.load_state_arrays(init_from, best=True)
        prev_stage = meta.get("stage", "")
        rules = _TRANSFER.get((prev_stage, stage))
        if rules is None:
            raise ConfigError(f"config.train.init_from={init_from!r} holds stage {prev_stage!r}, which cannot "
                              f"initialise stage {stage!r}; point it at the previous stage's workdir")
        prev_params = _flat(optim_lib.merge_params(prev["trainable"], prev["frozen"]))
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


# =============================================================================================
# Evaluation
# =============================================================================================


def _eval_loader(config, source, fields, batch_size: int):
    from hfa_jax.data import pipeline

    dcfg = config.data
    return pipeline.make_loader(source, batch_size=batch_size, seed=0, shuffle=False, num_epochs=1,
                                frame_selection=dcfg.frame_selection, max_frames=int(dcfg.max_frames),
                                buckets=tuple(dcfg.buckets), drop_remainder=False,
                                worker_count=int(dcfg.get("eval_worker_count", 0)),
                                example_fn=_example_fn(config, fields), fill_last_batch=True)


def write_translations(path_prefix: str, names, hyps, refs) -> None:
    with open(path_prefix + ".hyp.txt", "w", encoding="utf-8") as f:
        f.writelines(h + "\n" for h in hyps)
    with open(path_prefix + ".ref.txt", "w", encoding="utf-8") as f:
        f.writelines(r + "\n" for r in refs)
    with open(path_prefix + ".tsv", "w", encoding="utf-8") as f:
        f.write("name\thypothesis\treference\n")
        for n, h, r in zip(names, hyps, refs):
            f.write(f"{n}\t{h}\t{r}\n")


def video_blind_permutation(n: int, seed: int = 0) -> np.ndarray:
    """A derangement of range(n) (no video keeps its own sentence), seeded."""
    if n < 2:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            return p


# =============================================================================================
# The trainer
# =============================================================================================


@dataclasses.dataclass
class Trainer:
    """Everything :func:`run` builds; kept as an object so tests and ``translate`` can reuse it."""

    config: Any
    workdir: str
    stage: str
    mesh: Any
    rules: Any
    data: StageData
    model: Any
    tx: Any
    schedule: Any
    state_shardings: Any
    batch_sharding: Any
    steps_per_epoch: int
    total_steps: int
    train_step: Callable
    eval_fn: Callable
    generate_fn: Callable | None
    grad_names: list[str]
    ckpt: ckpt_lib.Checkpointer
    writer: MetricsWriter


def _setup_logging(workdir: str) -> None:
    """Log to ``WORKDIR/train.log`` (only this run's workdir) and to stderr."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    for h in list(log.handlers):
        if isinstance(h, logging.FileHandler):
            log.removeHandler(h)
            h.close()
    fh = logging.FileHandler(os.path.join(workdir, "train.log"))
    fh.setFormatter(fmt)
    log.addHandler(fh)
    if not any(type(h) is logging.StreamHandler for h in log.handlers):
        sh = logging.StreamHandler()
        sh.setFormatter(fmt)
        log.addHandler(sh)
    log.setLevel(logging.INFO)
    log.propagate = False


def _to_device(batch: Mapping[str, np.ndarray], mesh, keys, pack_levels: int = 0) -> dict:
    """Host batch -> global arrays on the mesh; with ``pack_levels`` > 0 also the packed-frame
    index (``frame_index``, one group per data shard, see :mod:`hfa_jax.models.packing`)."""
    from hfa_jax.data.sharding import agree_on_time_length, packed_frame_index, to_global

    host = agree_on_time_length({k: batch[k] for k in keys})
    if pack_levels > 0:
        from hfa_jax.models.packing import leaves_out_frames

        index = packed_frame_index(host["frame_mask"], mesh, pack_levels, mesh_lib.BATCH_AXES)
        if leaves_out_frames(index, host["frame_mask"]):
            host["frame_index"] = index
    return to_global(host, mesh, mesh_lib.BATCH_AXES)


def build_trainer(config, workdir: str) -> Trainer:
    """Phases 0–5: everything up to (not including) resume and the loop."""
    # ---- 0. setup --------------------------------------------------------------------------
    schema.validate(config)
    stage = config.train.stage
    mesh_lib.maybe_initialize_distributed(config.mesh)
    os.makedirs(workdir, exist_ok=True)
    _setup_logging(workdir)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    writer = MetricsWriter(workdir, enabled=bool(config.train.get("tensorboard", True)))

    # ---- 1. mesh ---------------------------------------------------------------------------
    mesh = mesh_lib.make_mesh(config.mesh)
    rules = mesh_lib.rules_from_config(config.mesh)
    bsh = mesh_lib.batch_sharding(mesh)
    log.info("stage %s: mesh %s over %d devices (%s)", stage, dict(mesh.shape), jax.device_count(),
             jax.devices()[0].platform)

    # ---- 2. data ---------------------------------------------------------------------------
    splits = tuple(dict.fromkeys([config.data.train_split, *config.eval.splits]))
    data = build_stage_data(config, splits)
    gbs = int(config.train.batch_size)
    n_dev = jax.device_count()
    if gbs % n_dev:
        raise ConfigError(f"config.train.batch_size={gbs} is not a multiple of the {n_dev} devices")
    n_train = len(data.sources[config.data.train_split])
    if n_train < gbs:
        raise ConfigError(f"config.train.batch_size={gbs} > {n_train} training videos; lower it")
    steps_per_epoch = n_train // gbs
    total_steps = _total_steps(config, steps_per_epoch)
    log.info("data: %d train videos, %d steps/epoch, %d steps", n_train, steps_per_epoch, total_steps)

    # ---- 3. shapes -> shardings ------------------------------------------------------------
    model = build_model(config, data)
    dummy = _dummy_inputs(config, stage, n_dev, int(config.data.buckets[0]), _crop(config),
                          int(config.data.max_text_len))

    def init_variables(rng):
        r1, r2 = jax.random.split(rng)
        return model.init({"params": r1, "dropout": r2}, *dummy.values(), deterministic=True)

    root = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), STAGES.index(stage))
    with mesh, nn.logical_axis_rules(rules):
        boxed_shapes = jax.eval_shape(init_variables, root)
    auto_fsdp = bool(config.mesh.get("auto_fsdp", True))
    var_sh = mesh_lib.variable_shardings(boxed_shapes, mesh, rules, auto_fsdp=auto_fsdp)
    abstract_vars = nn.meta.unbox(boxed_shapes)
    from hfa_jax.train import freeze

    mask = freeze.trainable_mask(abstract_vars["params"], [tuple(r) for r in config.train.trainable])
    abs_tr, _ = optim_lib.split_params(abstract_vars["params"], mask)
    if not jax.tree.leaves(abs_tr):
        raise ConfigError(f"config.train.trainable leaves no trainable parameter in stage {stage}")
    tx, schedule = optim_lib.make_optimizer(
        peak_lr=float(config.train.lr), total_steps=total_steps,
        pct_start=_warmup_pct(config, total_steps, steps_per_epoch),
        weight_decay=float(config.train.weight_decay), clip_norm=config.train.clip_norm,
        cycle_momentum=bool(config.train.cycle_momentum))

    def make_state(variables, rng):
        """variables (all collections) -> the train state (frozen params get no optimiser state)."""
        tr_, fr_ = optim_lib.split_params(variables["params"], mask)
        return {"step": jnp.zeros((), jnp.int32), "trainable": tr_, "frozen": fr_,
                "batch_stats": variables.get("batch_stats", {}),
                "buffers": {k: v for k, v in variables.items() if k not in ("params", "batch_stats")},
                "opt_state": tx.init(tr_), "rng": rng}

    abstract_state = jax.eval_shape(make_state, abstract_vars, root)
    # Train-state paths end with the variable's path inside its collection (trainable/<p>,
    # frozen/<p>, opt_state/.../mu/<p>, batch_stats/<p>, buffers/<col>/<p>): match on that.
    by_path = {}
    for k, v in mesh_lib.shardings_by_path(abstract_vars, var_sh).items():
        by_path[k[1:]] = v
        by_path[k] = v
    state_sh = mesh_lib.state_shardings(abstract_state, by_path, mesh, auto_fsdp=auto_fsdp)
    n_tr, n_all = optim_lib.count_params(abs_tr), optim_lib.count_params(abstract_vars["params"])
    log.info("parameters: %s trainable / %s total", f"{n_tr:,}", f"{n_all:,}")

    # ---- 5. the step functions (compiled in run() once the first batch shape is known) -----
    grad_names = [f"gradient of {g}" for g in _grad_groups(abs_tr)]
    nan_step = int(config.train.get("debug_nan_at_step", -1))

    def variables_of(state, trainable=None):
        params = optim_lib.merge_params(state["trainable"] if trainable is None else trainable,
                                        state["frozen"])
        v = {"params": params, **state["buffers"]}
        if state["batch_stats"]:
            v["batch_stats"] = state["batch_stats"]
        return v

    def train_step(state, batch):
        step = state["step"]
        rng = jax.random.fold_in(state["rng"], step)
        r_aug, r_drop = jax.random.split(rng)
        pixels = _augment(config, r_aug, batch["frames"], train=True,
                          frame_mask=batch["frame_mask"])

        def loss_of(trainable):
            # Only the trainable subtree is differentiated; frozen params are closed over.
            out, new_bs = forward(model, stage, variables_of(state, trainable), batch, pixels,
                                  train=True, rng=r_drop)
            loss, parts = stage_loss(config, stage, out, batch)
            if nan_step >= 0:  # test hook: poison the loss at one step
                loss = loss * jnp.where(step == nan_step, jnp.nan, 1.0)
                parts = {**parts, "loss": loss}
            return loss, (parts, new_bs)

        (loss, (parts, new_bs)), grads = jax.value_and_grad(loss_of, has_aux=True)(state["trainable"])
        updates, new_opt = tx.update(grads, state["opt_state"], state["trainable"])
        new_tr = optax.apply_updates(state["trainable"], updates)
        names = sorted(parts)
        finite = jnp.stack([jnp.isfinite(parts[k]) for k in names]
                           + [jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads[m])]))
                              for m in _grad_groups(grads)])
        ok = jnp.all(finite)

        def keep(new, old):  # a bad step leaves the state untouched; the loop then stops
            return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)

        new_state = {**state, "step": step + ok.astype(jnp.int32), "trainable": keep(new_tr, state["trainable"]),
                     "batch_stats": keep(new_bs, state["batch_stats"]),
                     "opt_state": keep(new_opt, state["opt_state"])}
        metrics = {**{k: parts[k] for k in names}, "grad_norm": optax.global_norm(grads),
                   "lr": schedule.lr(step)}
        return new_state, metrics, finite

    def eval_fn(state, batch):
        pixels = _augment(config, None, batch["frames"], train=False)
        out, _ = forward(model, stage, variables_of(state), batch, pixels, train=False)
        _, parts = stage_loss(config, stage, out, batch)
        extra = {}
        if stage == "pretrain":
            extra = {"pg_sim": out["pg_sim"], "temporal_mask": out["temporal_mask"]}
        return parts, extra

    generate_fn = None
    if stage != "pretrain":
        def generate_fn(state, batch):
            pixels = _augment(config, None, batch["frames"], train=False)
            out = model.generate(variables_of(state), pixels, batch["frame_mask"],
                                 num_beams=int(config.eval.num_beams),
                                 max_new_tokens=int(config.eval.max_new_tokens),
                                 length_penalty=float(config.eval.length_penalty))
            return out.sequences

    ckpt = ckpt_lib.Checkpointer(workdir, keep=int(config.train.keep_checkpoints),
                                 use_async=bool(config.train.get("async_checkpoints", True)),
                                 best_mode="min" if stage == "pretrain" else "max")
    trainer = Trainer(config=config, workdir=workdir, stage=stage, mesh=mesh, rules=rules, data=data,
                      model=model, tx=tx, schedule=schedule, state_shardings=state_sh, batch_sharding=bsh,
                      steps_per_epoch=steps_per_epoch, total_steps=total_steps, train_step=train_step,
                      eval_fn=eval_fn, generate_fn=generate_fn, grad_names=grad_names, ckpt=ckpt,
                      writer=writer)
    trainer._init_variables = init_variables  # type: ignore[attr-defined]
    trainer._variables_of = variables_of  # type: ignore[attr-defined]
    trainer._make_state = make_state  # type: ignore[attr-defined]
    trainer._abstract_state = abstract_state  # type: ignore[attr-defined]
    trainer._root = root  # type: ignore[attr-defined]
    return trainer


def init_state(tr: Trainer) -> PyTree:
    """Phase 4: jit-compiled init with out_shardings, then imported / previous-stage weights."""
    config, mesh = tr.config, tr.mesh
    with mesh, nn.logical_axis_rules(tr.rules):
        def init_fn(rng):
            return tr._make_state(nn.meta.unbox(tr._init_variables(rng)), rng)

        state = jax.jit(init_fn, out_shardings=tr.state_shardings)(tr._root)
    w = config.get("weights", None)
    needs_load = (bool(config.train.init_from) or (w is not None and any(w.values()))
                  or (tr.stage == "pretrain" and bool(config.data.prototypes)))
    if needs_load:
        host = jax.device_get(state)
        variables = {"params": optim_lib.merge_params(host["trainable"], host["frozen"]), **host["buffers"]}
        if host["batch_stats"]:
            variables["batch_stats"] = host["batch_stats"]
        variables, lines = load_initial_params(config, tr.stage, variables)
        for line in lines:
            log.info("%s", line)
        host_state = jax.device_get(tr._make_state(variables, jax.device_get(tr._root)))
        state = jax.device_put(host_state, tr.state_shardings)
    return state


def _fields_for(tr: Trainer, split: str) -> dict[str, np.ndarray]:
    return tr.data.fields[split]


def _device_keys(tr: Trainer, batch: Mapping[str, np.ndarray]) -> list[str]:
    return [k for k in batch if k != "index"]


def evaluate_loss(tr: Trainer, state, split: str, eval_jit) -> tuple[dict, dict | None]:
    """Mean loss parts over a split (filler rows of the last batch masked out). Also returns the
    first video's pseudo-gloss map for the plot (pretraining)."""
    bs = int(tr.config.eval.batch_size)
    loader = _eval_loader(tr.config, tr.data.sources[split], _fields_for(tr, split), bs)
    sums: dict[str, float] = {}
    n = 0
    first = None
    for batch in loader:
        valid = batch["index"] >= 0
        batch = dict(batch)
        batch["example_mask"] = valid
        dev = _to_device(batch, tr.mesh, _device_keys(tr, batch))
        parts, extra = eval_jit(state, dev)
        k = int(valid.sum())
        for name, v in parts.items():
            sums[name] = sums.get(name, 0.0) + float(v) * k
        n += k
        if first is None and extra and extra.get("pg_sim") is not None:
            first = {"pg_sim": np.asarray(extra["pg_sim"][0]), "mask": np.asarray(extra["temporal_mask"][0]),
                     "index": int(batch["index"][0])}
    return {k: v / max(n, 1) for k, v in sums.items()}, first


def translate_split(tr: Trainer, state, split: str, gen_jit, *, desc: str = "") -> tuple[list[str], list[str], list[str]]:
    """Beam search over a split. Returns (names, hypotheses, references) in source order."""
    from tqdm import tqdm

    bs = int(tr.config.eval.batch_size)
    src = tr.data.sources[split]
    loader = _eval_loader(tr.config, src, _fields_for(tr, split), bs)
    hyps: dict[int, str] = {}
    n_batches = math.ceil(len(src) / bs)
    for batch in tqdm(loader, total=n_batches, desc=desc or f"beam search {split}", leave=False,
                      disable=jax.process_index() != 0):
        dev = _to_device(batch, tr.mesh, ["frames", "frame_mask"])
        ids = np.asarray(jax.device_get(gen_jit(state, dev)))
        texts = tr.data.tokenizer.decode(ids)
        for i, t in zip(batch["index"], texts):
            if i >= 0:
                hyps[int(i)] = t
    order = range(len(src))
    return ([tr.data.names[split][i] for i in order], [hyps[i] for i in order],
            [tr.data.texts[split][i] for i in order])


def score_translations(config, hyps, refs) -> dict[str, float]:
    from hfa_jax import metrics

    return metrics.translation_metrics(hyps, refs, protocol=config.eval.protocol)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains ``config.train.stage`` in ``workdir`` (resuming if possible); returns a summary with
    the final evaluation metrics."""
    from tqdm import tqdm

    t_start = time.time()
    tr = build_trainer(config, workdir)
    tcfg, stage, mesh = config.train, tr.stage, tr.mesh

    # ---- 4. init ---------------------------------------------------------------------------
    state = init_state(tr)

    # ---- 2b. the training loader -------------------------------------------------------------
    from hfa_jax.data import pipeline

    dcfg = config.data
    per_host = int(tcfg.batch_size) // jax.process_count()
    loader = pipeline.make_loader(
        tr.data.sources[dcfg.train_split], batch_size=per_host, seed=int(dcfg.seed), shuffle=True,
        num_epochs=None, frame_selection=dcfg.frame_selection, max_frames=int(dcfg.max_frames),
        buckets=tuple(dcfg.buckets), drop_remainder=True, worker_count=int(dcfg.worker_count),
        read_threads=int(dcfg.get("read_threads", 1)),
        example_fn=_example_fn(config, _fields_for(tr, dcfg.train_split)),
        length_grouping=int(dcfg.get("length_grouping", 0)))
    it = iter(loader)

    # ---- 6. resume -------------------------------------------------------------------------
    best_value = None
    start = tr.ckpt.latest_step()
    if start is not None:
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                tr._abstract_state, tr.state_shardings)
        state, meta = tr.ckpt.restore(abstract, start)
        it.set_state(meta["data_iter"])
        best_value = meta.get("best_value")
        log.info("resumed from step %d (best %s so far: %s)", start, _best_name(stage), best_value)
    step = int(jax.device_get(state["step"]))

    # ---- 5. compile the train step up front ------------------------------------------------
    donate = jax.jit(tr.train_step, in_shardings=(tr.state_shardings, None),
                     out_shardings=(tr.state_shardings, None, None), donate_argnums=(0,))
    compiled: dict[tuple, Any] = {}

    def step_fn(state, dev_batch):
        key = tuple((k, v.shape) for k, v in sorted(dev_batch.items()))
        if key not in compiled:
            t0 = time.time()
            with mesh, nn.logical_axis_rules(tr.rules):
                c = donate.lower(state, dev_batch).compile()
            compiled[key] = c
            shapes = {k: dev_batch[k].shape for k in ("frames", "frame_index") if k in dev_batch}
            _log_memory(c, time.time() - t0, shapes)
        return compiled[key](state, dev_batch)

    # The frame encoder runs on the valid frames only, packed to one of data.pack_frames capacity
    # levels per bucket (one compiled step per bucket and level met).
    pack_levels = int(dcfg.get("pack_frames", 0))
    eval_jit = jax.jit(tr.eval_fn)
    gen_jit = jax.jit(tr.generate_fn) if tr.generate_fn is not None else None

    log_every = int(tcfg.log_every_steps)
    ckpt_every = _every(None, int(tcfg.checkpoint_every_steps), tr.steps_per_epoch)
    eval_every = _every(config.eval.get("every_epochs", None), int(config.eval.get("every_steps", 0) or 0),
                        tr.steps_per_epoch)
    crash_after = int(tcfg.get("debug_crash_after_step", -1))

    def meta_now(s):
        return {"step": int(s), "stage": stage, "data_iter": it.get_state(), "best_value": best_value,
                "best_metric": _best_name(stage)}

    def do_eval(s):
        nonlocal best_value
        value, scalars = _periodic_eval(tr, state, s, eval_jit, gen_jit)
        if value is not None and tr.ckpt.is_better(value, best_value):
            best_value = value
            tr.ckpt.save_best(s, state, meta_now(s))
            log.info("step %d: new best %s = %.4f", s, _best_name(stage), value)
        return scalars

    # ---- 7. loop ---------------------------------------------------------------------------
    pbar = tqdm(total=tr.total_steps, initial=step, desc=stage, dynamic_ncols=True,
                disable=jax.process_index() != 0 or not bool(tcfg.get("progress_bar", True)))
    window_t, window_n, window_slots, window_vit = time.time(), 0, 0, 0
    pending = None  # (step number, finiteness flags, metrics) of the last step not yet checked

    def check_finite(step_no: int, finite, metrics) -> None:
        finite = np.asarray(jax.device_get(finite))
        if not finite.all():
            names = sorted(k for k in metrics if k not in ("grad_norm", "lr")) + tr.grad_names
            bad = _finite_report(names, finite)
            last = tr.ckpt.latest_step()
            raise NonFiniteError(
                f"non-finite {bad} at step {step_no} (stage {stage}); the state was not updated "
                f"and the last good checkpoint is step {last} in {workdir}/checkpoints: lower "
                "config.train.lr or check the data, then rerun to resume from it")

    with ckpt_lib.PreemptionFlag() as preempt:
        try:
            while step < tr.total_steps:
                batch = next(it)
                dev = _to_device(batch, mesh, _device_keys(tr, batch), pack_levels=pack_levels)
                slots = int(dev["frame_mask"].size)  # global shapes: no transfer
                window_slots += slots
                window_vit += int(dev["frame_index"].size) if "frame_index" in dev else slots
                state, metrics, finite = step_fn(state, dev)
                # The previous step's finiteness flags are read only now, with this step already
                # queued: the device never waits for the host between steps (on an H100 the
                # per-step read left it idle ~9 ms of a 66 ms step), and the host prepares the
                # next batch while the device works. A bad step leaves the state untouched
                # (train_step), so learning of it one step later loses nothing.
                if pending is not None:
                    check_finite(*pending)
                pending = (step + 1, finite, metrics)
                step += 1
                window_n += 1
                if ((step % log_every == 0 or step == tr.total_steps) or preempt.requested or step == crash_after
                        or (eval_every and step % eval_every == 0) or (ckpt_every and step % ckpt_every == 0)):
                    check_finite(*pending)  # before anything reads, evaluates or saves this state
                    pending = None
                if step % log_every == 0 or step == tr.total_steps:
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    dt = time.time() - window_t
                    m["examples_per_sec"] = window_n * int(tcfg.batch_size) / max(dt, 1e-9)
                    # frames the ViT encoded / padded frame slots (< 1 with data.pack_frames)
                    m["vit_frame_fraction"] = window_vit / max(window_slots, 1)
                    window_t, window_n, window_slots, window_vit = time.time(), 0, 0, 0
                    tr.writer.write(step, "train", m)
                    pbar.set_postfix(loss=f"{m['loss']:.4f}", ex_s=f"{m['examples_per_sec']:.1f}",
                                     lr=f"{m['lr']:.2e}")
                pbar.update(1)
                if eval_every and (step % eval_every == 0) and step < tr.total_steps:
                    do_eval(step)
                if (ckpt_every and step % ckpt_every == 0) or preempt.requested:
                    tr.ckpt.save(step, state, meta_now(step))
                if preempt.requested:
                    tr.ckpt.wait()
                    log.info("SIGTERM: saved checkpoint at step %d, exiting", step)
                    raise Preempted(step)
                if step == crash_after:
                    tr.ckpt.wait()
                    raise DebugCrash(f"debug crash after step {step}")
            # ---- 8. final eval + checkpoint ------------------------------------------------
            final = do_eval(step) if bool(config.eval.at_end) else None
            tr.ckpt.save(step, state, meta_now(step))
            if tr.ckpt.best.latest_step() is None:  # never evaluated: the last state is the kept one
                tr.ckpt.save_best(step, state, meta_now(step))
            tr.ckpt.wait()
        finally:
            pbar.close()
            with contextlib.suppress(Exception):
                tr.ckpt.wait()
    summary = {"stage": stage, "steps": step, "best_value": best_value, "best_metric": _best_name(stage),
               "final": final}
    if stage != "pretrain" and bool(config.eval.get("final_on_best", True)):
        summary["results"] = final_evaluation(tr, gen_jit)
    _write_plots(tr)
    summary["seconds"] = time.time() - t_start
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=_json_default)
    tr.writer.close()
    tr.ckpt.close()
    return summary


def _best_name(stage: str) -> str:
    return "val_loss" if stage == "pretrain" else "bleu4"


def _log_memory(compiled, seconds: float, shapes: dict) -> None:
    try:
        ma = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        ma = None
    if ma is None:
        log.info("compiled train step for %s in %.1fs (no memory analysis on this backend)", shapes, seconds)
        return
    gib = 1 / 2 ** 30
    log.info("compiled train step for %s in %.1fs: arguments %.3f GiB, outputs %.3f GiB, temporaries "
             "%.3f GiB, generated code %.3f GiB (aliased %.3f GiB)", shapes, seconds,
             ma.argument_size_in_bytes * gib, ma.output_size_in_bytes * gib, ma.temp_size_in_bytes * gib,
             ma.generated_code_size_in_bytes * gib, ma.alias_size_in_bytes * gib)


def _periodic_eval(tr: Trainer, state, step: int, eval_jit, gen_jit) -> tuple[float | None, dict]:
    """Pretraining: validation loss (+ alignment plot). Fine-tuning: dev beam search + BLEU."""
    cfg = tr.config
    split = cfg.eval.splits[0]
    if tr.stage == "pretrain":
        scalars, first = evaluate_loss(tr, state, split, eval_jit)
        tr.writer.write(step, split, scalars)
        log.info("step %d: %s %s", step, split, _fmt(scalars))
        if first is not None and jax.process_index() == 0 and tr.data.pseudo_glosses is not None:
            name = tr.data.names[split][first["index"]]
            pg = tr.data.pseudo_glosses
            with contextlib.suppress(Exception):
                plots.plot_pg_alignment(first["pg_sim"], first["mask"], pg.vocab,
                                        pg.targets.get(f"{split}/{name}", []),
                                        os.path.join(tr.workdir, "pg_alignment.png"),
                                        title=f"{split}/{name} at step {step}")
        return scalars["loss"], scalars
    names, hyps, refs = translate_split(tr, state, split, gen_jit)
    scores = score_translations(cfg, hyps, refs)
    os.makedirs(os.path.join(tr.workdir, "translations"), exist_ok=True)
    if jax.process_index() == 0:
        write_translations(os.path.join(tr.workdir, "translations", f"{split}_step{step}"), names, hyps, refs)
    tr.writer.write(step, split, scores)
    tr.writer.text(step, f"{split}/examples", "\n\n".join(f"H: {h}\nR: {r}" for h, r in zip(hyps[:5], refs[:5])))
    log.info("step %d: %s %s", step, split, _fmt(scores))
    return scores["bleu4"], scores


def _fmt(d: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(d.items()))


def final_evaluation(tr: Trainer, gen_jit, *, video_blind: bool = False) -> dict:
    """Restores the best checkpoint and evaluates every ``config.eval.splits`` split (files +
    metrics.json in ``workdir/translations``). With ``video_blind`` also scores each test split
    with the hypotheses shuffled across sentences (the video-blind control)."""
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            tr._abstract_state, tr.state_shardings)
    state, meta = tr.ckpt.restore(abstract, best=True)
    out = {"best_step": meta["step"]}
    outdir = os.path.join(tr.workdir, "translations")
    os.makedirs(outdir, exist_ok=True)
    for split in tr.config.eval.splits:
        names, hyps, refs = translate_split(tr, state, split, gen_jit, desc=f"final {split}")
        scores = score_translations(tr.config, hyps, refs)
        out[split] = scores
        if jax.process_index() == 0:
            write_translations(os.path.join(outdir, f"{split}_best"), names, hyps, refs)
        log.info("best checkpoint (step %s) on %s: %s", meta["step"], split, _fmt(scores))
        if video_blind or bool(tr.config.eval.get("video_blind", False)):
            perm = video_blind_permutation(len(hyps), seed=int(tr.config.seed))
            blind = [hyps[j] for j in perm]
            out[f"{split}_video_blind"] = score_translations(tr.config, blind, refs)
            if jax.process_index() == 0:
                write_translations(os.path.join(outdir, f"{split}_best_video_blind"), names, blind, refs)
    if jax.process_index() == 0:
        with open(os.path.join(outdir, "metrics.json"), "w") as f:
            json.dump(out, f, indent=2, default=_json_default)
    return out


def _write_plots(tr: Trainer) -> None:
    if jax.process_index() != 0:
        return
    hist = plots.read_history(tr.writer.path)
    with contextlib.suppress(Exception):
        plots.plot_loss_curves(hist, os.path.join(tr.workdir, "loss_curves.png"), title=tr.stage)
