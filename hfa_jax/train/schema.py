"""The config schema (every field with its default) and start-up validation.

``base()`` is the one place that lists every non-model field; the experiment configs
(``configs/pretrain.py``, ``configs/finetune.py``, ``configs/demo.py``) start from it. The model
fields come from ``configs/common.py`` and are checked by the models' own config class.

``resolve(config)`` reads a validated config once into typed settings
(:mod:`hfa_jax.train.settings`), filling any field it lacks from ``base()``.

``validate(config)`` fails with ONE line (a :class:`hfa_jax.errors.ConfigError`) naming the field
when a config names an unknown field, has a bad value, or points at a data / weight path that does
not exist.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from hfa_jax.data.pipeline import DEFAULT_BUCKETS, FRAME_SELECTIONS
from hfa_jax.data import augment as augment_lib
from hfa_jax.errors import ConfigError
from hfa_jax.metrics import PROTOCOLS
from hfa_jax.models.beyondgloss import BeyondGlossConfig
from hfa_jax.train import tasks
from hfa_jax.train.freeze import STAGES
from hfa_jax.train.losses import PG_LOSS_MODES as PG_LOSSES
from hfa_jax.train.settings import (AugmentSettings, DataSettings, EvalSettings, MeshSettings, Settings,
                                    TrainSettings, WeightsSettings)


def base() -> ml_collections.ConfigDict:
    """Every non-model field with the paper defaults (docs/data.md, docs/training.md,
    docs/evaluation.md). One long literal on purpose: the whole schema reads in one place."""
    c = ml_collections.ConfigDict()
    c.name = "hfa"
    c.job = "train"  # what hfa_jax.main runs (its JOBS): "train" one stage, "demo" the CPU demo
    c.seed = 0  # root of all model randomness (init, dropout, augmentation)

    c.data = ml_collections.ConfigDict(dict(
        dataset_dir="",        # tfds ArrayRecord folder written by data_prep.build_dataset
        tokenizer_dir="",      # mBART tokenizer folder (data_prep.trim_vocab output)
        pseudo_glosses="",     # pseudo-gloss JSON (data_prep.pseudo_glosses); pretraining only
        prototypes="",         # protos.npy [V+1, 300] (data_prep.prototypes); pretraining only
        lang="de_DE",
        train_split="train",
        frame_selection="first",   # HFA keeps the first 300 frames; "random": GFSLT subsample
        max_frames=300,
        buckets=DEFAULT_BUCKETS,
        # > 0: batch clips of similar length (windows of this many batches; pipeline.make_loader).
        # Less padding, so fewer frames through the ViT; 0 = plain shuffling as the references.
        length_grouping=0,
        # > 0: the frame encoder runs on the batch's valid frames only, packed into one of this
        # many capacity levels per bucket (one compiled train step per bucket and level met;
        # same values as unpacked). PHOENIX14T batches are half padding. 0 = every padded frame.
        pack_frames=8,
        crop_size=224,
        max_text_len=64,
        max_description_len=128,  # BeyondGloss descriptions (model.beyondgloss.description)
        worker_count=0,        # grain worker processes for the training loader
        read_threads=2,        # decoding threads per loader process (JPEG decoding frees the GIL)
        eval_worker_count=0,
        seed=0,                # shuffling seed (and, for the demo, the SynthSign seed)
        augment=ml_collections.ConfigDict(dict(p=0.5, max_rotate_deg=30.0, max_scale=0.2,
                                               max_translate_px=10,
                                               # warp in chunks of ~N frames and skip chunks
                                               # of padding: -1 = 8 on CPU, off elsewhere
                                               padding_chunk=-1,
                                               # warp: gather | matmul | matmul_f32 | auto
                                               # (gather on CPU, matmul elsewhere)
                                               method="auto")),
    ))

    c.train = ml_collections.ConfigDict(dict(
        stage="pretrain",
        batch_size=16,         # global batch (all devices, all hosts)
        microbatches=1,        # > 1: the batch in this many sequential parts, one update (train/microbatch.py)
        epochs=100.0,
        num_steps=0,           # > 0 overrides epochs
        lr=3e-4,               # peak of the one-cycle schedule
        weight_decay=0.01,
        clip_norm=1.0,
        warmup_pct=0.05,       # HFA code: 5% of the steps
        warmup_epochs=0.0,     # > 0: the paper's "5 epochs" warm-up instead
        cycle_momentum=True,   # OneCycleLR's β1 cycle 0.95 -> 0.85 -> 0.95
        trainable=(),          # ((regex, bool), ...): first match wins; every param must match
        init_from="",          # previous stage's workdir (its best checkpoint)
        pg_loss="bce_with_logits_on_probs",  # reference quirk; "bce" = plain BCE (paper)
        pg_weight=1.0,         # lambda in L_align + lambda * L_pgp
        lambda_desc=0.5,       # BeyondGloss description alignment weight (model.beyondgloss.description)
        lambda_hand=0.3,       # BeyondGloss hand-pose distillation weight (model.beyondgloss.hand_pose)
        label_smoothing=0.2,
        # bf16 models: frozen pretrained weights that the stage's programs read only through a
        # bf16 cast are stored in bf16 (the same values, half the traffic; train/state.py)
        bf16_frozen=True,
        # pretraining: the frozen text encoder's sentence vectors computed once per sentence, not
        # every step (train/text_vectors.py; off by itself where the encoder trains or has dropout)
        cache_text_vectors=True,
        log_every_steps=50,
        checkpoint_every_steps=1000,
        keep_checkpoints=2,
        async_checkpoints=True,
        progress_bar=True,
        tensorboard=True,
        debug_nan_at_step=-1,        # test hook: poison the loss at this step
        debug_crash_after_step=-1,   # test hook: raise after this step (simulates a kill)
        debug_hold_after_step=-1,    # test hook: after this step's checkpoint, wait to be killed
        debug_record_batches=False,  # test hook: each process logs the rows it read (batches.p<i>.jsonl)
    ))

    c.eval = ml_collections.ConfigDict(dict(
        splits=("dev", "test"),  # the first one selects the best checkpoint
        every_epochs=5.0,
        every_steps=0,           # > 0 overrides every_epochs
        batch_size=16,
        num_beams=4,
        max_new_tokens=150,
        length_penalty=1.0,
        protocol="hfa",          # docs/evaluation.md: sacrebleu 13a with " ." appended
        video_blind=False,       # also score the video-blind control (hyps shuffled)
        at_end=True,             # evaluate (and keep the best) after the last step
        final_on_best=True,      # after training, evaluate the best checkpoint on every split
    ))

    # Pretrained weights (paper runs; empty = random init, as the demo): a DINOv2 HF folder or
    # torch-hub .pth, an mBART HF folder or a folder written by hfa_jax.weights.mbart.save_imported,
    # and the trimmed vocabulary map written by data_prep.trim_vocab (vocab_map.json).
    c.weights = ml_collections.ConfigDict(dict(vit="", mbart="", vocab_map=""))

    c.mesh = ml_collections.ConfigDict(dict(
        data=-1,             # -1: every device not used by fsdp
        fsdp=1,
        distributed=False,   # jax.distributed.initialize() with JAX's cluster detection (multi-host);
                             # also on when JAX_COORDINATOR_ADDRESS/NUM_PROCESSES/PROCESS_ID are set
        heartbeat_timeout_s=100,  # a lost process is noticed within this many seconds
        auto_fsdp=True,      # shard unannotated params over fsdp (largest divisible dim)
        rules=ml_collections.FieldReference(None, field_type=object),  # logical -> mesh axis rules
    ))
    return c


def _unknown(cfg: Any, ref: Any, prefix: str) -> str | None:
    if not isinstance(cfg, ml_collections.ConfigDict):
        return None
    for k in cfg.keys():
        if k not in ref:
            return f"{prefix}{k}"
        if isinstance(ref[k], ml_collections.ConfigDict):
            hit = _unknown(cfg[k], ref[k], f"{prefix}{k}.")
            if hit:
                return hit
    return None


def _need(path: str, field: str, hint: str) -> None:
    if not path:
        raise ConfigError(f"config.{field} is empty; {hint}")
    if not os.path.exists(path):
        raise ConfigError(f"config.{field}={path!r} does not exist; {hint}")


def validate(config: ml_collections.ConfigDict, *, check_paths: bool = True) -> None:
    """Raises ConfigError (one line, naming the field) for unknown fields, bad values, missing paths."""
    ref = base()
    for section in ("data", "train", "eval", "mesh", "weights"):
        if section not in config:
            raise ConfigError(f"config.{section} is missing; start configs from hfa_jax.train.schema.base()")
    for k in config.keys():
        if k not in ref and k not in ("model", "demo"):
            raise ConfigError(f"config.{k} is not a known field; remove it or fix its name")
    for section in ("data", "train", "eval", "mesh", "weights"):
        hit = _unknown(config[section], ref[section], f"config.{section}.")
        if hit:
            raise ConfigError(f"{hit} is not a known field; remove it or fix its name (the fields and their "
                              "defaults: hfa_jax/train/schema.py:base)")
    t = config.train
    if t.stage not in STAGES:
        raise ConfigError(f"config.train.stage={t.stage!r} is not one of {STAGES}")
    if t.pg_loss not in PG_LOSSES:
        raise ConfigError(f"config.train.pg_loss={t.pg_loss!r} is not one of {PG_LOSSES}")
    if config.eval.protocol not in PROTOCOLS:
        raise ConfigError(f"config.eval.protocol={config.eval.protocol!r} is not one of {PROTOCOLS}")
    if config.data.frame_selection not in FRAME_SELECTIONS:
        raise ConfigError(f"config.data.frame_selection={config.data.frame_selection!r} is not first|random")
    method = config.data.augment.get("method", "auto") if "augment" in config.data else "auto"
    if method not in augment_lib.METHODS:
        raise ConfigError(f"config.data.augment.method={method!r} is not one of {', '.join(augment_lib.METHODS)}")
    for field in ("train.batch_size", "eval.batch_size", "data.max_frames", "data.crop_size",
                  "data.max_text_len", "eval.num_beams", "eval.max_new_tokens"):
        sec, key = field.split(".")
        if int(config[sec][key]) <= 0:
            raise ConfigError(f"config.{field}={config[sec][key]} must be positive")
    if int(config.data.read_threads) <= 0:
        raise ConfigError(f"config.data.read_threads={config.data.read_threads} must be positive")
    if int(config.data.pack_frames) < 0:
        raise ConfigError(f"config.data.pack_frames={config.data.pack_frames} must be >= 0 (capacity levels "
                          "per bucket; 0 = no packing)")
    if int(config.data.augment.padding_chunk) < -1:
        raise ConfigError(f"config.data.augment.padding_chunk={config.data.augment.padding_chunk} must be "
                          "-1 (auto), 0 (off) or a chunk length")
    if float(t.lr) <= 0:
        raise ConfigError(f"config.train.lr={t.lr} must be positive")
    if not t.trainable:
        raise ConfigError("config.train.trainable is empty; use configs.common.trainable_rules(stage)")
    for i, rule in enumerate(t.trainable):
        if len(rule) != 2 or not isinstance(rule[0], str) or not isinstance(rule[1], bool):
            raise ConfigError(f"config.train.trainable[{i}]={rule!r} is not a (regex, bool) pair")
    if "model" not in config or config.model is None:
        raise ConfigError("config.model is missing; use configs.common.model_config(variant)")
    task = tasks.of_stage(t.stage)
    bg = BeyondGlossConfig.from_config(config.model.beyondgloss if "beyondgloss" in config.model else None)
    if task.uses_pseudo_glosses and (not bg.pseudo_gloss_head or not bg.text_encoder):
        raise ConfigError("config.model.beyondgloss.pseudo_gloss_head/text_encoder=False (the authors' BeyondGloss "
                          "pretraining models) has no hfa_jax pretraining loss yet; use the converted workdir as "
                          "train.init_from of a fine-tuning stage")
    if not check_paths:
        return
    d = config.data
    _need(d.dataset_dir, "data.dataset_dir", "build it with `python -m data_prep.build_dataset` or fix the path")
    _need(d.tokenizer_dir, "data.tokenizer_dir", "write it with `python -m data_prep.trim_vocab` or fix the path")
    if task.uses_pseudo_glosses:
        _need(d.pseudo_glosses, "data.pseudo_glosses", "write it with `python -m data_prep.pseudo_glosses`")
        if d.prototypes:
            _need(d.prototypes, "data.prototypes", "write it with `python -m data_prep.prototypes`")
    if t.init_from:
        _need(t.init_from, "train.init_from", "train the previous stage into that workdir first")
    for k, v in config.weights.items():
        if v:
            _need(v, f"weights.{k}", "download / import the weights (README: weight import) or leave it empty")
    if "dtype" in config.model and config.model.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config.model.dtype={config.model.dtype!r} is not float32|bfloat16")


# ---------------------------------------------------------------------------------------------
# Reading the config once

def _plain(value: Any) -> Any:
    """ConfigDict / list values -> plain, hashable Python values (lists become tuples)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str, "float | None": float}


def _section(cls, given: Any, defaults: Any, **nested):
    """``cls`` from a config section, each field taken from ``given`` where it has it, else from
    the schema's ``defaults``, and cast to its annotated scalar type; ``nested`` holds the
    resolved sub-sections."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in nested:
            values[f.name] = nested[f.name]
            continue
        value = _plain(given[f.name] if given is not None and f.name in given else defaults[f.name])
        cast = _SCALARS.get(f.type)
        values[f.name] = cast(value) if cast is not None and value is not None else value
    return cls(**values)


def resolve(config) -> Settings:
    """The config (validated, :func:`validate`) read once, as
    :class:`~hfa_jax.train.settings.Settings`; fields it lacks take :func:`base`'s values."""
    ref = base()

    def given(name):
        return config[name] if name in config else None

    data, ref_data = given("data"), ref.data
    augment = _section(AugmentSettings, data["augment"] if data is not None and "augment" in data else None,
                       ref_data.augment)
    model = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
    return Settings(
        name=str(config.name) if "name" in config else ref.name,
        seed=int(config.seed) if "seed" in config else ref.seed,
        data=_section(DataSettings, data, ref_data, augment=augment),
        train=_section(TrainSettings, given("train"), ref.train),
        eval=_section(EvalSettings, given("eval"), ref.eval),
        mesh=_section(MeshSettings, given("mesh"), ref.mesh),
        weights=_section(WeightsSettings, given("weights"), ref.weights),
        model=model,
        beyondgloss=BeyondGlossConfig.from_config(model.get("beyondgloss")),
    )
