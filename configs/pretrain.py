"""Pretraining (docs/training.md): pseudo-gloss + video-text alignment, 100 epochs, peak LR 3e-4.

    python -m hfa_jax.main --config=configs/pretrain.py \
        --config.data.dataset_dir=data/phoenix14t_ds --config.data.tokenizer_dir=data/mbart_trimmed \
        --config.data.pseudo_glosses=data/pseudo_glosses.json --config.data.prototypes=data/protos.npy \
        --config.weights.vit=weights/dinov2-small --config.weights.mbart=weights/mbart_trimmed

Variants: ``configs/pretrain.py:paper`` (default), ``:tiny`` (toy widths, CPU smoke runs), and
``:csl_daily`` (the paper model on CSL-Daily with the BeyondGloss authors' CSL-Daily objectives:
alignment + 0.5 description + 0.3 hand pose, no pseudo-gloss term; ``zh_CN``, character-level
scoring; ``configs/common.py:csl_daily``, docs/csl_daily.md), and ``:how2sign``, ``:openasl``,
``:youtube_asl`` (the paper model on an ASL corpus: English, the ``asl`` protocol, the corpus's
clip lengths and schedule; ``configs/common.py:asl``, docs/asl.md).
The kept checkpoint (``WORKDIR/best``) is the one with the lowest validation total loss.
"""

from __future__ import annotations

from configs import common
from hfa_jax.train import schema


def get_config(arg: str | None = None):
    variant = arg or "paper"
    if variant not in ("paper", "tiny", "csl_daily", *common.ASL_CORPORA):
        raise ValueError(f"unknown pretrain variant {variant!r}; use paper, tiny, csl_daily, "
                         f"{', '.join(common.ASL_CORPORA)}")
    c = schema.base()
    c.name = "pretrain" if variant == "paper" else f"pretrain_{variant}"
    c.model = common.model_config("tiny" if variant == "tiny" else "paper")
    c.train.stage = "pretrain"
    c.train.epochs = 100.0
    c.train.lr = 3e-4  # paper; the authors' scripts used 4e-4 .. 8e-4
    c.train.trainable = tuple(common.trainable_rules("pretrain"))
    c.eval.splits = ("dev",)  # validation loss selects the kept checkpoint
    c.eval.every_epochs = 1.0
    if variant != "tiny":
        c.model.dtype = "bfloat16"  # bf16 compute, fp32 master weights (docs/training.md)
    if variant == "csl_daily":
        common.csl_daily(c, "pretrain")
    if variant in common.ASL_CORPORA:
        common.asl(c, variant, "pretrain")
    return c
