"""The ASL recipes: every stage's config validates, keeps the paper's model, and differs from the
PHOENIX14T recipe only where docs/asl.md says."""

from __future__ import annotations

import pytest

from configs import common, finetune, pretrain
from hfa_jax.train import schema


@pytest.mark.parametrize("corpus", sorted(common.ASL_CORPORA))
def test_asl_variants(corpus):
    pairs = [(pretrain.get_config(corpus), pretrain.get_config("paper")),
             (finetune.get_config(f"stage1_{corpus}"), finetune.get_config("stage1")),
             (finetune.get_config(f"stage2_{corpus}"), finetune.get_config("stage2"))]
    for (c, paper), epochs in zip(pairs, common.ASL_CORPORA[corpus][2]):
        schema.validate(c, check_paths=False)
        assert c.model.to_dict() == paper.model.to_dict()  # the paper's model
        assert (c.data.lang, c.eval.protocol, c.train.epochs) == ("en_XX", "asl", epochs)
        assert c.train.stage == paper.train.stage and c.train.trainable == paper.train.trainable
        changed = {f"{section}.{k}" for section in ("data", "train", "eval")
                   for k in c[section] if c[section][k] != paper[section][k]}
        assert changed == {"data.lang", "data.max_frames", "data.frame_selection", "data.buckets",
                           "train.batch_size", "train.epochs", "eval.batch_size", "eval.protocol"}
    with pytest.raises(ValueError, match="how2sign"):
        pretrain.get_config("bobsl")
