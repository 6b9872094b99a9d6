"""The conversion at the paper widths, on shapes alone (no weights allocated).

The authors' state dicts are those of ``bench/reference_authors.py`` built on PyTorch's ``meta``
device at the paper sizes (their code: ``vit_small`` img 518 with LoRA on blocks 9-11,
``Transformer(d_model=512, num_heads=8, layers=[2, 2])``, mBART-large with the trimmed 2172-token
vocabulary, 2322 pseudo-gloss classes). Import reads them as zero-stride NumPy views; export is
checked with :func:`hfa_jax.convert.core.export_shapes`. The three BeyondGloss classes
(elsobhano/BeyondGloss ``slt_framework/models/clip_models.py``: ``FeatureExtracter`` with
``hamer_mapper_1`` 512->288, ``hamer_mapper_2`` 288->512, ``mapper_1_downsample`` 1024->512,
``Transformer(512, 8, [2, 2], d_llm=512)``, ``mapper_1`` 512->1024, ``mapper_2`` 1024->512; no
pseudo-gloss head, no CLS token; ``sign_proj: False``) the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfa_jax.convert import core, tables
from hfa_jax.convert.__main__ import load_config_file
from tests.convert.authors_checkpoints import ra

PAPER = ra.Sizes(vit_width=384, vit_depth=12, vit_heads=6, vit_mlp=1536, vit_img=518, lora_blocks=(9, 10, 11),
                 frame_dim=512, t_heads=8, t_layers=(2, 2), d_model=1024, m_heads=16, enc_layers=12, dec_layers=12,
                 m_ffn=4096, vocab=2172, max_pos=1024, num_pg=2322)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_paper_width_state_dicts_map_both_ways(stage):
    with torch.device("meta"):
        authors = (ra.PreTrainModel if stage == "pretrain" else ra.FineTuneModel)(PAPER)
    shapes = {k: tuple(v.shape) for k, v in authors.state_dict().items()}
    lay = tables.layout_for("hfa", stage)
    zero = np.zeros((), np.float32)
    sd = {k: np.broadcast_to(zero, s) for k, s in shapes.items()}  # no memory: shapes only
    base = load_config_file("configs/pretrain.py" if stage == "pretrain" else "configs/finetune.py:stage2")
    mc = core.model_config_from_state(sd, lay, base.model.to_dict())
    for c in tables.constants_for(lay, width=512, num_heads=8, num_blocks=4, blocks_before=2, proto_dim=300,
                                  tau_class=0.1, tau_time=0.1):
        sd[c.theirs] = c.make()  # the computed buffers (the meta device holds no values)
    mc = core.model_config_from_state(sd, lay, base.model.to_dict())
    assert mc["vit"]["lora_blocks"] == [9, 10, 11] and mc["temporal"]["blocks_before"] == 2
    assert mc["mbart"]["vocab_size"] == 2172 and mc["mbart"]["encoder_layers"] == 12
    if stage == "pretrain":
        assert mc["num_pseudo_glosses"] == 2322 and abs(mc["tau_class"] - 0.1) < 1e-7
    _assert_maps_both_ways(sd, shapes, lay, mc)


def _assert_maps_both_ways(sd, shapes, lay, mc):
    """Every source tensor is used, rebuilt or tied; the import gives exactly our variables'
    shapes; the export gives back exactly the authors' shapes."""
    variables, report = core.import_state(sd, lay, mc)
    ours = core.our_shapes(mc, core.our_kind(lay))
    flat = {}
    for col, tree in variables.items():
        flat.update({f"{col}/{k}": v for k, v in _flat(tree).items()})
    assert {k: tuple(v.shape) for k, v in flat.items()} == ours
    assert sorted(report["used"] + report["rebuilt"] + report["tied"]) == sorted(shapes)
    assert core.export_shapes(ours, lay, mc) == shapes


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("stage", ["pretrain", "pretrain_desc", "finetune"])
def test_paper_width_beyondgloss_state_dicts_map_both_ways(stage):
    authors_cls = {"pretrain": ra.BeyondGlossPreTrainModel, "pretrain_desc": ra.BeyondGlossPretrainDesc,
                   "finetune": ra.BeyondGlossFineTuneModel}[stage]
    with torch.device("meta"):
        authors = authors_cls(PAPER)  # hand_dim 288, desc_dim 1024 (the Sizes defaults)
    shapes = {k: tuple(v.shape) for k, v in authors.state_dict().items()}
    lay = tables.layout_for("beyondgloss", stage)
    zero = np.zeros((), np.float32)
    sd = {k: np.broadcast_to(zero, s) for k, s in shapes.items()}
    for c in tables.constants_for(lay, width=512, num_heads=8, num_blocks=4, blocks_before=2, proto_dim=300,
                                  tau_class=None, tau_time=None):
        sd[c.theirs] = c.make()
    base = load_config_file("configs/finetune.py:stage2" if stage == "finetune" else "configs/pretrain.py")
    mc = core.model_config_from_state(sd, lay, base.model.to_dict())
    bg = mc["beyondgloss"]
    assert mc["temporal"]["out_dim"] == 512 and mc["mbart"]["d_model"] == 1024 and mc["mbart"]["encoder_layers"] == 12
    assert bg["hand_dim"] == 288 and bg["desc_dim"] == 1024 and bg["desc_feedback"] and not bg["mapper"]
    _assert_maps_both_ways(sd, shapes, lay, mc)


def test_beyondgloss_checkpoints_are_recognised():
    # key prefixes of slt_framework/models: clip_models.py FeatureExtracter.hamer_mapper_1 inside
    # ImageCLIP.model (Pretrain_Model.py), gloss_free_model.backbone (Finetune_Model.py) and
    # Desc_Clip.model / .trans_encoder (Pretrain_desc.py)
    w = np.zeros(1, np.float32)
    assert core.detect_class({"model.model_images.model.hamer_mapper_1.weight": w}) == ("beyondgloss", "pretrain")
    assert core.detect_class({"model.backbone.hamer_mapper_1.weight": w}) == ("beyondgloss", "finetune")
    assert core.detect_class({"model.model.conv_2d.dino.lin.weight": w,
                              "model.trans_encoder.base_model.model.layer_norm.weight": w}) == \
        ("beyondgloss", "pretrain_desc")
