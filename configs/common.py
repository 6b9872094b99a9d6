"""Model fields and freezing rules shared by the pretraining / fine-tuning / demo configs.

``model_config(variant)`` returns the ``config.model`` subtree (read by
``hfa_jax.models.hfa.HFAConfig.from_config``); ``trainable_rules(stage)`` returns the
``config.train.trainable`` table of ``(regex, trainable)`` rules, matched with ``re.search``
against '/'-joined parameter paths, first match wins, every parameter must match
(``hfa_jax.train.freeze.trainable_mask``).

Variants:
  - "paper": the paper's model exactly (ViT-S/14 + LoRA r4 on blocks 9-11, temporal 512/8 heads/2+2
    blocks, mBART-large-cc25 with the trimmed 2172-token vocabulary and LoRA r16/alpha 32,
    2322 pseudo-gloss prototypes). ``python -m hfa_jax.params`` reproduces the paper's counts.
  - "tiny" (alias "demo"): the same architecture at toy widths for CPU smoke runs and tests.

``csl_daily(config, stage)`` turns a paper config into its CSL-Daily counterpart (docs/csl_daily.md):
Chinese targets (``zh_CN``), character-level scoring, and the BeyondGloss objectives as the authors
run them on CSL-Daily.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from hfa_jax.models import attention as attention_lib
from hfa_jax.models import hfa
from hfa_jax.train.freeze import STAGES, trainable_rules  # the paper's freezing table, owned by the library

__all__ = ["model_config", "trainable_rules", "STAGES", "csl_daily", "asl", "ASL_CORPORA"]



# The "tiny" model: the paper's architecture at toy widths (every other field: the paper's).
_TINY = dict(
    vit=dict(width=32, depth=3, num_heads=2, mlp_dim=64, pos_grid=4, lora_blocks=(2,), lora_rank=2,
             lora_alpha=2.0),
    temporal=dict(width=32, num_heads=4, mlp_dim=64, blocks_before=1, blocks_after=1, out_dim=32),
    mbart=dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
               encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256, lora_rank=4, lora_alpha=8.0),
    frame_dim=32,
)


def model_config(variant: str = "paper") -> ml_collections.ConfigDict:
    """The ``config.model`` subtree for ``variant`` in {"paper", "tiny", "demo"}.

    Every field and its default comes from the model's config dataclasses
    (:class:`hfa_jax.models.hfa.HFAConfig` and its parts: their defaults are the paper's model,
    and they are the one place those defaults are written); a variant states only what it changes.
    Special ids of the trimmed vocabulary are set from the tokenizer by the trainer.
    """
    if variant not in ("paper", "tiny", "demo"):
        raise ValueError(f"unknown model variant {variant!r}; use 'paper', 'tiny' or 'demo'")
    fields = dataclasses.asdict(hfa.HFAConfig())
    # One attention key for the whole model (model.attention): the per-model copies that
    # HFAConfig pushes into its parts are not config fields (hfa_jax.models.attention).
    for sub, key in attention_lib.LEGACY_KEYS:
        fields[sub].pop(key, None)
    c = ml_collections.ConfigDict(fields)
    if variant == "paper":
        # xla | cudnn | pallas | auto. "auto": cuDNN's fused attention on a GPU in bf16/fp16, the
        # ViT's Pallas kernel on TPU, XLA elsewhere (on a CPU exactly "xla"); an H100 fine-tuning
        # step 98.7 -> 66.4 ms with cuDNN in the ViT (bench/RESULTS.md)
        c.attention = "auto"
    else:
        for key, value in _TINY.items():
            if isinstance(value, dict):
                c[key].update(value)
            else:
                c[key] = value
    return c


def csl_daily(c: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
    """The CSL-Daily settings on top of a paper config ``c`` of ``stage`` (changed in place, returned).

    From elsobhano/BeyondGloss (``slt_framework/configs/csldaily.yaml`` changes only paths from the
    PHOENIX14T config; ``pretrain.py`` + the README's best weights): pretraining optimises
    ``L_align + 0.5 L_desc + 0.3 L_distill`` with no pseudo-gloss term, 100 epochs, peak LR 3e-4,
    5 % warm-up, batch 16, at most 300 frames. So ``train.pg_weight = 0`` (the trainer still reads a
    pseudo-gloss file; with weight 0 it does not change the loss) and both BeyondGloss objectives
    are on; the hand-pose feedback is part of the visual trunk, so the fine-tuning stages keep it.
    Targets are Chinese (``zh_CN``; the authors' code hard-codes ``de_DE`` even here) and BLEU /
    ROUGE are scored per character (``char``; the authors' code scores 13a, which leaves a Chinese
    sentence as one token).
    """
    c.data.lang = "zh_CN"
    c.eval.protocol = "char"
    c.model.beyondgloss.hand_pose = True
    if stage == "pretrain":
        c.model.beyondgloss.description = True
        # The authors precompute the description vectors offline (mBART-large-50, [1, 1024] per
        # video); the English descriptions would be <unk> under the Chinese-trimmed tokenizer.
        c.model.beyondgloss.description_vectors = True
        c.train.pg_weight = 0.0
        c.train.lambda_desc = 0.5
        c.train.lambda_hand = 0.3
        c.train.epochs = 100.0
        c.train.lr = 3e-4
        c.train.warmup_pct = 0.05
        c.train.batch_size = 16
    return c


# The ASL corpora (docs/asl.md), from their published sizes: training clips, mean clip length, and
# this recipe's epochs per stage (pretrain, stage 1, stage 2): 1.2-1.8 M clip passes per
# pretraining stage (the paper's PHOENIX14T pretraining is 0.7 M: 7,096 clips x 100 epochs) and at
# least three passes over the corpus. A starting point stated for reproducibility, not a result:
# no ASL run at this scale has been made with hfa_jax yet.
ASL_CORPORA = {
    #              train clips, mean seconds, epochs (pretrain, stage 1, stage 2)
    "how2sign": (31_128, 8.2, (40.0, 40.0, 80.0)),
    "openasl": (96_476, 10.6, (15.0, 15.0, 30.0)),
    "youtube_asl": (610_000, 5.8, (3.0, 3.0, 6.0)),
}


def asl(c: ml_collections.ConfigDict, corpus: str, stage: str) -> ml_collections.ConfigDict:
    """An ASL corpus's settings on top of a paper config ``c`` of ``stage`` (in place, returned).

    English targets (``en_XX``) scored with the ``asl`` protocol (sacrebleu's default signature).
    Clips are stored at half their source rate (``build_dataset --fps 12.5``, docs/asl.md), so a
    mean clip of 6-11 s has 70-130 frames; up to 256 frames (20 s) are kept, a longer clip is
    subsampled (the GFSLT random subsample, ``frame_selection="random"``), and buckets of 64 frames
    keep the padding small. The global batch is 128 (2 clips per chip on v5e-64) with the paper's
    peak LR; the schedule's epochs come from :data:`ASL_CORPORA`.
    """
    if corpus not in ASL_CORPORA:
        raise ValueError(f"unknown ASL corpus {corpus!r}; use one of {', '.join(ASL_CORPORA)}")
    epochs = dict(zip(("pretrain", "finetune1", "finetune2"), ASL_CORPORA[corpus][2]))
    c.data.lang = "en_XX"
    c.eval.protocol = "asl"
    c.data.max_frames = 256
    c.data.frame_selection = "random"
    c.data.buckets = (64, 128, 192, 256)
    c.train.batch_size = 128
    c.eval.batch_size = 128
    c.train.epochs = epochs[stage]
    return c
