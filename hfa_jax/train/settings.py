"""A run's config as typed settings (t5x habit: bind the configuration at the top, pass plain
objects down).

:func:`hfa_jax.train.schema.resolve` reads the config into :class:`Settings` once, in the
trainer (and in :mod:`hfa_jax.aot`) after :func:`hfa_jax.train.schema.validate`; everything below
takes these objects and never reads the config again. Every field's default is written once, in
:func:`hfa_jax.train.schema.base`: a config that lacks a field (e.g. the ``config.json`` of an
older run) gets the schema's value there, and the dataclasses below have no defaults of their
own. The model's defaults are the :mod:`hfa_jax.models` ``*Config`` dataclasses'
(:func:`model_config`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from hfa_jax.models import hfa
from hfa_jax.models.beyondgloss import BeyondGlossConfig


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """``config.data.augment``: the training-time frame augmentation (:mod:`hfa_jax.data.augment`)."""

    p: float
    max_rotate_deg: float
    max_scale: float
    max_translate_px: int
    padding_chunk: int   # -1 = auto (8 on one CPU device, off elsewhere), 0 = off
    method: str          # auto | gather | matmul | matmul_f32 (hfa_jax.data.augment.METHODS)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """``config.data``: where the data is and how the loaders read it."""

    dataset_dir: str
    tokenizer_dir: str
    pseudo_glosses: str
    prototypes: str
    lang: str
    train_split: str
    frame_selection: str
    max_frames: int
    buckets: tuple[int, ...]
    length_grouping: int
    pack_frames: int
    crop_size: int
    max_text_len: int
    max_description_len: int
    worker_count: int
    read_threads: int
    eval_worker_count: int
    seed: int
    augment: AugmentSettings


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """``config.train``: the stage, its optimiser, objective weights, checkpoints and test hooks."""

    stage: str
    batch_size: int
    microbatches: int
    epochs: float
    num_steps: int
    lr: float
    weight_decay: float
    clip_norm: float | None
    warmup_pct: float
    warmup_epochs: float
    cycle_momentum: bool
    trainable: tuple[tuple[str, bool], ...]
    init_from: str
    pg_loss: str
    pg_weight: float
    lambda_desc: float
    lambda_hand: float
    label_smoothing: float
    bf16_frozen: bool    # store frozen backbone weights read only through a bf16 cast in bf16
    cache_text_vectors: bool  # pretraining: the frozen text encoder's vectors once per sentence
    log_every_steps: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    async_checkpoints: bool
    progress_bar: bool
    tensorboard: bool
    debug_nan_at_step: int
    debug_crash_after_step: int
    debug_hold_after_step: int
    debug_record_batches: bool


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """``config.eval``: when and how a stage is evaluated."""

    splits: tuple[str, ...]
    every_epochs: float
    every_steps: int
    batch_size: int
    num_beams: int
    max_new_tokens: int
    length_penalty: float
    protocol: str
    video_blind: bool
    at_end: bool
    final_on_best: bool


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    """``config.mesh``: the device mesh, multi-host start-up and the logical-axis rules."""

    data: int
    fsdp: int
    distributed: bool
    heartbeat_timeout_s: int
    auto_fsdp: bool
    rules: tuple[tuple[str, Any], ...] | None


@dataclasses.dataclass(frozen=True)
class WeightsSettings:
    """``config.weights``: pretrained weights to import ("" = none): a DINOv2 folder or ``.pth``,
    an mBART folder (Hugging Face or imported), the trimmed vocabulary's ``vocab_map.json``."""

    vit: str
    mbart: str
    vocab_map: str


@dataclasses.dataclass(frozen=True)
class Settings:
    """The whole run: one object per config section, plus the model's config as given
    (``model``: a plain dict, turned into an :class:`~hfa_jax.models.hfa.HFAConfig` once the
    data-dependent sizes are known, :func:`model_config`) and its BeyondGloss switches."""

    name: str
    seed: int
    data: DataSettings
    train: TrainSettings
    eval: EvalSettings
    mesh: MeshSettings
    weights: WeightsSettings
    model: Mapping[str, Any]
    beyondgloss: BeyondGlossConfig


def model_config(config, *, tokenizer=None, num_pseudo_glosses: int | None = None) -> hfa.HFAConfig:
    """``config.model`` -> :class:`hfa_jax.models.hfa.HFAConfig`, with the data-dependent sizes
    (vocabulary and special ids from ``tokenizer``, the number of pseudo-gloss classes) filled in
    where given; otherwise the config's own values stand (e.g. for compiling from shapes alone).
    ``config`` is a config (its ``model`` section is read) or :class:`Settings`."""
    d = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
    if tokenizer is not None:
        d["mbart"] = {**d.get("mbart", {}), "vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_id,
                      "eos_token_id": tokenizer.eos_id, "bos_token_id": tokenizer.bos_id,
                      "decoder_start_token_id": tokenizer.lang_id}
    if num_pseudo_glosses is not None:
        d["num_pseudo_glosses"] = int(num_pseudo_glosses)
    return hfa.HFAConfig.from_config(d)
