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

import math

import ml_collections

from hfa_jax.train.freeze import STAGES, trainable_rules  # the paper's freezing table, owned by the library

__all__ = ["model_config", "trainable_rules", "STAGES", "csl_daily"]



def _mbart(**kw) -> dict:
    d = dict(
        vocab_size=2172,  # trimmed PHOENIX14T vocabulary (docs/text.md)
        d_model=1024,
        encoder_layers=12,
        decoder_layers=12,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_ffn_dim=4096,
        decoder_ffn_dim=4096,
        max_position_embeddings=1024,
        scale_embedding=True,
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        lora_rank=16,
        lora_alpha=32.0,
        lora_dropout=0.1,
        # Special ids of the trimmed vocabulary are set from the tokenizer by the training config.
        decoder_start_token_id=None,
    )
    d.update(kw)
    return d


def model_config(variant: str = "paper") -> ml_collections.ConfigDict:
    """The ``config.model`` subtree for ``variant`` in {"paper", "tiny", "demo"}."""
    if variant == "paper":
        c = dict(
            vit=dict(
                patch_size=14, width=384, depth=12, num_heads=6, mlp_dim=1536, ln_eps=1e-6,
                pos_grid=37, num_registers=0, layerscale_init=1.0,
                pos_resample="hub",  # the reference loads torch-hub DINOv2 (scale-factor + 0.1 offset)
                lora_blocks=(9, 10, 11), lora_rank=4, lora_alpha=4.0, lora_dropout=0.1,
                train_all_blocks=False,  # the paper: blocks below the first LoRA block are frozen
                remat_policy="none",  # none | full | dots | dots_no_batch: what the LoRA blocks keep
            ),
            temporal=dict(
                width=512, num_heads=8, mlp_dim=2048, blocks_before=2, blocks_after=2, out_dim=1024,
                window=3, rope_base=10000.0, dropout=0.1, drop_path_rate=0.1, layerscale_init=1e-5,
            ),
            mbart=_mbart(),
            frame_dim=512,
            num_pseudo_glosses=2322,
        )
    elif variant in ("tiny", "demo"):
        c = dict(
            vit=dict(
                patch_size=14, width=32, depth=3, num_heads=2, mlp_dim=64, ln_eps=1e-6,
                pos_grid=4, num_registers=0, layerscale_init=1.0, pos_resample="hub",
                lora_blocks=(2,), lora_rank=2, lora_alpha=2.0, lora_dropout=0.1,
                train_all_blocks=False, remat_policy="none",
            ),
            temporal=dict(
                width=32, num_heads=4, mlp_dim=64, blocks_before=1, blocks_after=1, out_dim=32,
                window=3, rope_base=10000.0, dropout=0.1, drop_path_rate=0.1, layerscale_init=1e-5,
            ),
            mbart=_mbart(
                d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_position_embeddings=256, lora_rank=4, lora_alpha=8.0,
            ),
            frame_dim=32,
            num_pseudo_glosses=2322,
        )
    else:
        raise ValueError(f"unknown model variant {variant!r}; use 'paper', 'tiny' or 'demo'")
    c.update(
        proto_dim=300,
        pg_dropout=0.2,
        tau_class=0.1,
        tau_time=0.1,
        learnable_tau=False,  # paper: learnable; reference code: fixed 0.1
        masked_mean=False,  # reference: video/text means include padding
        logit_scale_init=math.log(1 / 0.07),
        bn_momentum=0.1,
        bn_eps=1e-5,
        frozen_bn=False,  # True: frame_bn uses its running statistics in training too
        dtype="float32",  # "bfloat16" on GPU/TPU (params stay float32)
        remat=False,
        # One attention choice for the ViT, the temporal encoder and mBART (docs/models_and_weights.md):
        # xla | cudnn | pallas | auto. "auto": cuDNN's fused attention on a GPU in bf16/fp16, the
        # ViT's Pallas kernel on TPU, XLA elsewhere (on a CPU exactly "xla"); an H100 fine-tuning
        # step 98.7 -> 66.4 ms with cuDNN in the ViT (bench/RESULTS.md)
        attention="auto",
        # BeyondGloss objectives (docs/beyondgloss.md; hfa_jax/models/beyondgloss.py), off = plain HFA.
        beyondgloss=dict(description=False, description_vectors=False, hand_pose=False, hand_dim=288,
                         feedback_dropout=0.1, desc_dim=0,
                         # the authors' BeyondGloss classes (docs/coming_from_pytorch.md#beyondgloss)
                         desc_feedback=False, pseudo_gloss_head=True, cls_token=True, text_encoder=True,
                         description_from="features", mapper=True),
    )
    return ml_collections.ConfigDict(c)


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
