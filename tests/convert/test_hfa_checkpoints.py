"""``python -m hfa_jax.convert`` on the HFA authors' PreTrainModel and FineTuneModel checkpoints at
reduced widths: the values (losses, logits) against the authors' modules holding the same
tensors, the round trip, translation, and the one-line errors.

The checkpoints are built by ``tests/convert/authors_checkpoints.py`` (the authors' key layout, see
its docstring for where each name comes from)."""

from __future__ import annotations

import copy
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hfa_jax.convert import core, lightning_io, tables
from hfa_jax.convert.__main__ import from_lightning, main, to_lightning
from hfa_jax.errors import CheckpointError
from hfa_jax.models import hfa
from hfa_jax.train import losses, schema, tasks
from tests.convert import authors_checkpoints as ac
from tests.convert.authors_checkpoints import ra

# One worker builds the converted checkpoints once (CI runs pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("convert_hfa")

SIZES_PRE = ra.Sizes(vocab=50)
SIZES_FT = ra.Sizes(vocab=ac.TOKENIZER_VOCAB)  # translation needs the test tokenizer's vocabulary
TOL = ac.TOL


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    pre_ckpt, ft_ckpt = str(root / "pretrain.ckpt"), str(root / "finetune.ckpt")
    pre = ac.pretrain_checkpoint(pre_ckpt, SIZES_PRE)
    ft = ac.finetune_checkpoint(ft_ckpt, SIZES_FT)
    pre_wd, ft_wd = str(root / "pretrain"), str(root / "finetune2")
    main(["from-lightning", "--ckpt", pre_ckpt, "--stage", "pretrain", "--out", pre_wd,
          "--config", "configs/pretrain.py:tiny"])
    report = from_lightning(ft_ckpt, "finetune", ft_wd, config="configs/finetune.py:stage2_tiny",
                            tokenizer=ac.TOKENIZER)
    return dict(root=root, pre=pre, ft=ft, pre_ckpt=pre_ckpt, ft_ckpt=ft_ckpt, pre_wd=pre_wd, ft_wd=ft_wd,
                ft_report=report)






def test_written_workdir_and_config(converted):
    config, variables, meta = ac.load_workdir(converted["pre_wd"])
    assert meta["stage"] == "pretrain" and meta["step"] == 120
    m = config["model"]
    # sizes read from the tensors, the authors' fixed LoRA alphas and temperatures, the quirk switches
    assert m["num_pseudo_glosses"] == SIZES_PRE.num_pg and m["mbart"]["vocab_size"] == SIZES_PRE.vocab
    assert m["vit"]["lora_blocks"] == [2] and m["vit"]["lora_rank"] == 4 and m["vit"]["lora_alpha"] == 4.0
    assert m["mbart"]["lora_rank"] == 16 and m["mbart"]["lora_alpha"] == 32.0
    assert m["temporal"]["num_heads"] == SIZES_PRE.t_heads and m["temporal"]["mlp_dim"] == 4 * SIZES_PRE.frame_dim
    assert m["temporal"]["zero_padding_before_pool"] is False and m["temporal"]["zero_padded_inputs"] is True
    assert m["temporal"]["ffn_output_dropout"] is False and m["masked_mean"] is False
    assert m["text_encoder_dropout"] is True
    assert abs(m["tau_class"] - 0.2) < 1e-6 and abs(m["tau_time"] - 0.3) < 1e-6 and not m["learnable_tau"]
    assert float(variables["params"]["logit_scale"]) == 2.0
    ft_config, _, ft_meta = ac.load_workdir(converted["ft_wd"])
    assert ft_meta["stage"] == "finetune2" and ft_config["train"]["stage"] == "finetune2"
    assert ft_config["data"]["tokenizer_dir"] == os.path.abspath(ac.TOKENIZER)
    r = converted["ft_report"]
    assert r["used"] + len(r["rebuilt"]) + len(r["tied"]) == r["tensors"]
    assert "hyper_parameters" in r["dropped_entries"]


@pytest.mark.parametrize("which", ["pre", "ft"])
def test_round_trip_is_identity(converted, which, tmp_path):
    src = converted[f"{which}_ckpt"]
    out = str(tmp_path / "back.ckpt")
    to_lightning(converted[f"{which}_wd"], out)
    a = torch.load(src, weights_only=False)["state_dict"]  # written by this test (holds an argparse.Namespace)
    b = torch.load(out, weights_only=True)["state_dict"]
    assert list(a) == list(b) or set(a) == set(b)
    rebuilt = [k for k in a if any(c in k for c in ("pos_embedding.pe", "rotary_emb."))]
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        if k in rebuilt:  # position tables: recomputed in NumPy, not stored (float32 sin/exp rounding)
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), k
        else:
            assert torch.equal(a[k], b[k]), k
    fresh = (ra.PreTrainModel(SIZES_PRE) if which == "pre" else ra.FineTuneModel(SIZES_FT))
    fresh.load_state_dict(b, strict=True)


def test_pretraining_losses_match_the_authors_modules(converted):
    config, variables, _ = ac.load_workdir(converted["pre_wd"])
    model = hfa.build_model(hfa.HFAConfig.from_config(config["model"]), "pretrain")
    rng, pixels, mask = ac.inputs(0, 3, 7, [7, 4, 5])
    ids = rng.integers(3, SIZES_PRE.vocab, (3, 6))
    text_mask = np.ones((3, 6), bool)
    text_mask[1, 4:] = False
    ids[~text_mask] = 1
    labels = [[0, 3], [SIZES_PRE.num_pg], [1, 2, 6]]  # class V = the authors' blank (last)
    frames, lengths = ra.frames_to_authors(pixels, mask)
    with torch.no_grad():
        clip, pg, total = converted["pre"].losses(frames, lengths, torch.as_tensor(ids),
                                                  torch.as_tensor(text_mask.astype(np.int64)), labels)
    out = jax.jit(model.apply)(variables, jnp.asarray(pixels), jnp.asarray(mask), jnp.asarray(ids, jnp.int32),
                               jnp.asarray(text_mask))
    targets = np.zeros((3, SIZES_PRE.num_pg + 1), np.float32)
    for i, row in enumerate(labels):
        for j in row:  # their class j is our j + 1; their blank (V) is our 0
            targets[i, (j + 1) % (SIZES_PRE.num_pg + 1)] = 1.0
    ours_total, parts = losses.pretrain_loss(out, jnp.asarray(targets))
    assert abs(float(parts["align_loss"]) - float(clip)) < TOL
    assert abs(float(parts["pg_loss"]) - float(pg)) < TOL
    assert abs(float(ours_total) - float(total)) < TOL


def test_translation_logits_match_the_authors_modules(converted):
    ac.assert_translation_logits_match(converted["ft_wd"], converted["ft"].model, SIZES_FT.vocab)


def test_converted_finetune_checkpoint_translates(converted, tmp_path):
    ac.assert_translates(converted["ft_wd"], tmp_path)


def _state_dict(ckpt: str) -> dict:
    return lightning_io.read_checkpoint(ckpt)["state_dict"]


def test_unmapped_missing_and_misshaped_tensors_stop_with_one_line(converted):
    sd = _state_dict(converted["pre_ckpt"])
    lay = tables.layout_for("hfa", "pretrain")
    config, _, _ = ac.load_workdir(converted["pre_wd"])
    mc = config["model"]
    key = "model.model_images.model.conv_1d.output_proj.weight"
    extra = dict(sd, **{"model.model_images.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"unmapped tensor 'model\.model_images\.extra\.weight'"):
        core.import_state(extra, lay, mc)
    missing = {k: v for k, v in sd.items() if k != key}
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.model_images\.model\.conv_1d\.output_proj"):
        core.import_state(missing, lay, mc)
    bad = dict(sd, **{key: np.zeros((3, 3), np.float32)})
    with pytest.raises(CheckpointError, match=r"has shape \(3, 3\); hfa_jax's params/temporal/out_proj/kernel"):
        core.import_state(bad, lay, mc)
    untied = copy.copy(_state_dict(converted["ft_ckpt"]))
    k = "model.mbart.base_model.model.lm_head.weight"
    untied[k] = untied[k] + 1.0
    ft_config, _, _ = ac.load_workdir(converted["ft_wd"])
    with pytest.raises(CheckpointError, match="differs from"):
        core.import_state(untied, tables.layout_for("hfa", "finetune"), ft_config["model"])


def test_cli_errors_are_one_line(converted, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["from-lightning", "--ckpt", converted["ft_ckpt"], "--stage", "pretrain", "--out", str(tmp_path / "w")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "FineTuneModel" in err and "not --stage pretrain" in err


def test_converted_pretraining_initialises_finetuning(converted):
    """``--config.train.init_from`` of a fine-tuning stage accepts the converted pretraining
    workdir: the trunk and the video encoder (as mBART's encoder) are copied over."""
    import ml_collections
    from flax import traverse_util

    from hfa_jax.convert.__main__ import load_config_file
    from hfa_jax.train.initial_weights import load_initial_params

    pre_config, pre_vars, _ = ac.load_workdir(converted["pre_wd"])
    config = load_config_file("configs/finetune.py:stage1_tiny")
    config.model = ml_collections.ConfigDict(pre_config["model"])
    config.train.init_from = converted["pre_wd"]
    shapes = core.our_shapes(pre_config["model"], "translate")
    flat: dict = {}
    for name, shape in shapes.items():
        flat[tuple(name.split("/"))] = np.zeros(shape, np.float32)
    variables = traverse_util.unflatten_dict(flat)
    stage1 = schema.resolve(config)
    out, report = load_initial_params(stage1, tasks.make(stage1), variables)
    assert any("initialised" in line for line in report)
    p, q = out["params"], pre_vars["params"]
    np.testing.assert_array_equal(p["temporal"]["block_1"]["qkv"]["kernel"], q["temporal"]["block_1"]["qkv"]["kernel"])
    np.testing.assert_array_equal(p["mbart"]["encoder"]["layers_0"]["self_attn"]["q_proj"]["lora_b"],
                                  q["video_encoder"]["layers_0"]["self_attn"]["q_proj"]["lora_b"])
    np.testing.assert_array_equal(out["batch_stats"]["frame_bn"]["var"], pre_vars["batch_stats"]["frame_bn"]["var"])
