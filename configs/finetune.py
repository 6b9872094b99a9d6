"""Fine-tuning (docs/training.md): stage 1 trains the mapper + decoder LoRA (100 epochs), stage 2 everything
trainable (200 epochs); the kept checkpoint (``WORKDIR/best``) has the best dev BLEU-4.

    python -m hfa_jax.main --config=configs/finetune.py:stage1 --workdir=runs/finetune1 \
        --config.train.init_from=runs/pretrain --config.data.dataset_dir=... \
        --config.data.tokenizer_dir=... --config.weights.mbart=weights/mbart_trimmed
    python -m hfa_jax.main --config=configs/finetune.py:stage2 --workdir=runs/finetune2 \
        --config.train.init_from=runs/finetune1 --config.data.dataset_dir=... --config.data.tokenizer_dir=...

Variants: ``stage1``, ``stage2`` (paper model), ``paper`` (= stage2), ``stage1_tiny`` /
``stage2_tiny`` (toy widths for CPU smoke runs), and ``stage1_csl_daily`` / ``stage2_csl_daily``
(the paper stages on CSL-Daily: ``zh_CN`` targets, character-level scoring, the BeyondGloss
hand-pose feedback of ``configs/pretrain.py:csl_daily`` kept; docs/csl_daily.md), and
``stage1_how2sign`` / ``stage2_how2sign`` and the same for ``openasl`` and ``youtube_asl``
(``configs/common.py:asl``, docs/asl.md).
"""

from __future__ import annotations

from configs import common
from hfa_jax.train import schema


def get_config(arg: str | None = None):
    arg = arg or "stage2"
    stage_name, _, variant = arg.partition("_")  # "stage1_youtube_asl" -> stage1, youtube_asl
    variant = variant or "paper"
    if stage_name == "paper":
        stage_name = "stage2"
    if stage_name not in ("stage1", "stage2") or variant not in ("paper", "tiny", "csl_daily", *common.ASL_CORPORA):
        raise ValueError(f"unknown finetune variant {arg!r}; use stage1, stage2, paper, stage1_tiny, stage2_tiny, "
                         "stage1_csl_daily, stage2_csl_daily, or stage1_/stage2_ with "
                         f"{', '.join(common.ASL_CORPORA)}")
    stage = {"stage1": "finetune1", "stage2": "finetune2"}[stage_name]
    c = schema.base()
    c.name = stage if variant == "paper" else f"{stage}_{variant}"
    c.model = common.model_config("tiny" if variant == "tiny" else "paper")
    c.train.stage = stage
    c.train.epochs = 100.0 if stage == "finetune1" else 200.0
    c.train.lr = 3e-4
    c.train.trainable = tuple(common.trainable_rules(stage))
    c.eval.splits = ("dev", "test")  # dev BLEU-4 selects the kept checkpoint
    c.eval.every_epochs = 5.0
    if variant != "tiny":
        c.model.dtype = "bfloat16"
    if variant == "csl_daily":
        common.csl_daily(c, stage)
    if variant in common.ASL_CORPORA:
        common.asl(c, variant, stage)
    return c
