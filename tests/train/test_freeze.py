"""Freezing rules: first match wins, unmatched parameters are errors, and the stage tables of
configs/common.py put every paper parameter on the intended side."""

import jax
import jax.numpy as jnp
import pytest

from configs.common import model_config, trainable_rules
from hfa_jax.errors import ConfigError
from hfa_jax.models.hfa import HFAConfig, init_shapes
from hfa_jax.train.freeze import count_params, path_str, trainable_mask


def _flat(mask):
    return {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}


def test_first_match_wins_and_unmatched_raises():
    params = {"enc": {"lora_a": jnp.zeros((2, 3)), "kernel": jnp.zeros((3, 3))}, "head": {"bias": jnp.zeros(4)}}
    mask = _flat(trainable_mask(params, [(r"lora_", True), (r"^enc/", False), (r"^head/", True)]))
    assert mask == {"enc/kernel": False, "enc/lora_a": True, "head/bias": True}
    mask = _flat(trainable_mask(params, [(r"^enc/", False), (r"lora_", True), (r".", True)]))
    assert mask["enc/lora_a"] is False  # order matters
    with pytest.raises(ConfigError, match="'head/bias' matches no rule"):
        trainable_mask(params, [(r"^enc/", True)])
    with pytest.raises(ConfigError, match="not a valid"):
        trainable_mask(params, [(r"(", True)])
    m = trainable_mask(params, [(r"lora_", True), (r".", False)])
    assert count_params(params) == 19 and count_params(params, m) == 6


@pytest.mark.parametrize("stage", ["pretrain", "finetune1", "finetune2"])
def test_stage_tables_on_paper_model(stage):
    cfg = HFAConfig.from_config(model_config("paper"))
    params = init_shapes(cfg, "pretrain" if stage == "pretrain" else "translate")["params"]
    mask = _flat(trainable_mask(params, trainable_rules(stage)))  # every parameter matched
    lora = "frame_encoder/block_9/attn/qkv/lora_a"
    assert mask[lora] is (stage != "finetune1")
    assert mask["frame_encoder/block_9/attn/qkv/kernel"] is False
    assert mask["frame_encoder/block_0/attn/qkv/kernel"] is False
    assert mask["temporal/block_0/qkv/kernel"] is (stage != "finetune1")
    if stage == "pretrain":
        assert mask["prototypes"] and mask["cls_token"] and mask["logit_scale"] and mask["pg_head/proj/kernel"]
        assert mask["video_encoder/layers_0/self_attn/q_proj/lora_b"]
        assert not mask["video_encoder/layers_0/self_attn/q_proj/kernel"]
        assert not any(v for k, v in mask.items() if k.startswith("text_encoder/"))
    else:
        assert mask["mapper/linear/kernel"]
        assert mask["mbart/decoder/layers_0/encoder_attn/v_proj/lora_a"]
        assert mask["mbart/encoder/layers_0/self_attn/q_proj/lora_a"] is (stage == "finetune2")
        assert not mask["mbart/shared/embedding"] and not mask["mbart/decoder/layers_0/fc1/kernel"]
