"""The trainer on a tiny generated dataset: exact resume after a crash, NaN stop, and the same
losses / parameters on 1 device and on 8 emulated CPU devices (data-parallel and FSDP)."""

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from hfa_jax.train import state as state_lib
from hfa_jax.train import checkpoint as ckpt_lib
from hfa_jax.train import evaluation, loop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Shared by this module and the 8-device subprocess: a tiny stage config over prepared data.
CONFIG_SRC = textwrap.dedent('''
    from configs import demo as demo_cfg
    from hfa_jax.train import schema as validate

    def tiny_config(paths, stage="pretrain", steps=6, batch=8):
        c = validate.base()
        c.model = demo_cfg.demo_model()
        c.model.vit.update(dict(width=16, depth=1, num_heads=2, mlp_dim=32, pos_grid=4, lora_blocks=(0,)))
        c.model.temporal.update(dict(width=16, num_heads=2, mlp_dim=32, out_dim=16))
        c.model.mbart.update(dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                  decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32))
        c.model.frame_dim = 16
        c.model.proto_dim = 8
        c.model.temporal.dropout = 0.0
        c.data.update(dict(crop_size=32, max_frames=32, buckets=(32,), max_text_len=16))
        c.data.augment.max_translate_px = 2
        c.data.dataset_dir = paths["dataset_dir"]
        c.data.tokenizer_dir = paths["tokenizer_dir"]
        c.data.pseudo_glosses = paths["pseudo_glosses"]
        c.data.prototypes = paths["prototypes"]
        c.train.stage = stage
        c.train.trainable = demo_cfg.DEMO_RULES[stage]
        c.train.batch_size = batch
        c.train.num_steps = steps
        c.train.lr = 3e-3
        c.train.log_every_steps = 1
        c.train.checkpoint_every_steps = 2
        c.train.progress_bar = False
        c.train.tensorboard = False
        c.train.async_checkpoints = True
        c.eval.splits = ("dev",)
        c.eval.at_end = False
        c.eval.final_on_best = False
        c.eval.batch_size = 8
        return c
''')
exec(CONFIG_SRC)  # defines tiny_config  # noqa: S102


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """A tiny SynthSign dataset with tokenizer, pseudo-glosses and prototypes (demo steps 1-5)."""
    from configs import demo as demo_cfg
    from hfa_jax import demo

    root = str(tmp_path_factory.mktemp("tinydata"))
    c = demo_cfg.get_config("smoke")
    c.demo.update(dict(num_train=8, num_eval=8, max_glosses=2, frame_size=36, fasttext_dim=8, workers=1,
                       domain="frequent", pretrain_frame_encoder=False))
    return demo.prepare_data(c, root)


def _final_params(workdir):
    state, meta = ckpt_lib.load_state_arrays(workdir, best=False)
    return state_lib.merge_params(state["trainable"], state["frozen"]), state, meta


def _losses(workdir, key="loss"):
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == "train":
                out[row["step"]] = row[key]
    return out


def test_resume_after_crash_equals_uninterrupted_run(paths, tmp_path):
    full = str(tmp_path / "full")
    loop.run(tiny_config(paths, steps=5), full)

    cut = str(tmp_path / "cut")
    c = tiny_config(paths, steps=5)
    c.train.debug_crash_after_step = 3  # killed after step 3; the last checkpoint is step 2
    with pytest.raises(loop.DebugCrash):
        loop.run(c, cut)
    assert ckpt_lib.Checkpointer(cut).latest_step() == 2
    loop.run(tiny_config(paths, steps=5), cut)  # the same command again: resumes from step 2

    pa, sa, ma = _final_params(full)
    pb, sb, mb = _final_params(cut)
    assert ma["step"] == mb["step"] == 5
    for (ka, a), (kb, b) in zip(jax.tree_util.tree_flatten_with_path(pa)[0],
                                jax.tree_util.tree_flatten_with_path(pb)[0]):
        assert ka == kb
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=str(ka))
    for a, b in zip(jax.tree.leaves(sa["opt_state"]), jax.tree.leaves(sb["opt_state"])):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    la, lb = _losses(full), _losses(cut)
    for s in range(1, 6):
        assert la[s] == pytest.approx(lb[s], abs=1e-6)
    # training moved the parameters (the comparison is not between two untouched inits)
    init = jax.device_get(loop.init_state(loop.build_trainer(tiny_config(paths, steps=5), str(tmp_path / "i"))))
    moved = state_lib.merge_params(init["trainable"], init["frozen"])
    assert not np.allclose(moved["temporal"]["out_proj"]["kernel"], pa["temporal"]["out_proj"]["kernel"])


@pytest.mark.parametrize("log_every", [1, 5])
def test_nan_stops_with_step_and_quantity_and_keeps_last_checkpoint(paths, tmp_path, log_every):
    # log_every=5: step 3 is no logging/checkpoint step, so its flags are read one step late,
    # after step 4 is queued: the error still names step 3 and nothing after it is saved
    wd = str(tmp_path / "nan")
    c = tiny_config(paths, steps=6)
    c.train.log_every_steps = log_every
    c.train.debug_nan_at_step = 2  # the third update
    with pytest.raises(loop.NonFiniteError, match=r"non-finite loss at step 3 .*last good checkpoint is step 2"):
        loop.run(c, wd)
    ck = ckpt_lib.Checkpointer(wd)
    assert ck.latest_step() == 2
    _, _, meta = _final_params(wd)
    assert meta["step"] == 2


MULTI = textwrap.dedent('''
    import json, os, sys
    import jax
    assert jax.device_count() == 8, jax.devices()
    sys.path.insert(0, {repo!r})
    from hfa_jax.train import loop
    exec({config_src!r})
    paths = json.loads({paths!r})
    for name, data, fsdp in (("dp8", 8, 1), ("fsdp", 4, 2)):
        c = tiny_config(paths, steps=2)
        c.data.augment.p = 0.0
        c.model.vit.lora_dropout = 0.0
        c.data.pack_frames = 32
        c.data.buckets = (40,)
        c.mesh.data = data
        c.mesh.fsdp = fsdp
        c.mesh.auto_fsdp = True
        loop.run(c, os.path.join({out!r}, name))
''')


def test_same_losses_on_1_and_8_devices_data_parallel_and_fsdp(paths, tmp_path):
    one = str(tmp_path / "one")
    c = tiny_config(paths, steps=2)
    # Random crops only: the affine warp rounds to 8 bits, so float-order differences between
    # the 1- and 8-device programs could flip a pixel by one grey level (a test of the warp under
    # sharding is in tests/data/test_sharding.py); crops are exact.
    c.data.augment.p = 0.0
    # Frames are packed per device (data.pack_frames), so the ViT's dropout masks are drawn for
    # a different number of packed frames on 1 and 8 devices: its dropout is off here. Fine
    # capacity levels and a 40-frame bucket for clips of at most 32, so that both runs really
    # leave out padded frames (a batch with no padding to leave out runs the unpacked program).
    c.model.vit.lora_dropout = 0.0
    c.data.pack_frames = 32
    c.data.buckets = (40,)
    loop.run(c, one)
    code = MULTI.format(repo=REPO, config_src=CONFIG_SRC, paths=json.dumps(paths), out=str(tmp_path))
    # (the two optimisation flags only shorten XLA's CPU compile of this tiny model)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
                         "--xla_llvm_disable_expensive_passes=true")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ref_l, ref_g = _losses(one), _losses(one, "grad_norm")
    ref_p, _, _ = _final_params(one)
    for name in ("dp8", "fsdp"):
        wd = str(tmp_path / name)
        l, g = _losses(wd), _losses(wd, "grad_norm")
        for s in (1, 2):
            assert l[s] == pytest.approx(ref_l[s], rel=1e-5, abs=1e-6), (name, s)
            assert g[s] == pytest.approx(ref_g[s], rel=1e-4), (name, s)
        p, _, _ = _final_params(wd)
        # Adam divides by sqrt(v): where a gradient is ~1e-9 (noise) its sign depends on the
        # summation order and the update is +-lr either way, so single parameters can differ by up
        # to 2 steps x lr (1.2e-4 in warm-up); the typical parameter must agree to ~1e-9.
        diffs = []
        for (k, a), b in zip(jax.tree_util.tree_flatten_with_path(ref_p)[0], jax.tree.leaves(p)):
            np.testing.assert_allclose(a, b, rtol=0, atol=5e-4, err_msg=f"{name} {k}")
            diffs.append(np.abs(np.asarray(a) - np.asarray(b)).ravel())
        assert np.median(np.concatenate(diffs)) < 1e-7, name
    with open(os.path.join(str(tmp_path / "fsdp"), "train.log")) as f:
        log_text = f.read()
    assert "'fsdp': 2" in log_text
    packed8 = [int(p) for p in re.findall(r"'frame_index': \(8, (\d+)\)", log_text)]
    assert packed8 and max(packed8) < 40, packed8  # one packing group per device, padding left out
    with open(os.path.join(one, "train.log")) as f:
        packed = [int(p) for p in re.findall(r"'frame_index': \(1, (\d+)\)", f.read())]
    assert packed and max(packed) < 8 * 40, packed  # the 1-device run did leave padded frames out
    fractions = _losses(one, "vit_frame_fraction")
    assert all(0 < f <= 1 for f in fractions.values()) and min(fractions.values()) < 1, fractions


def test_microbatches_with_frame_packing_equal_the_one_batch_run(paths, tmp_path):
    """train.microbatches=2 with frame packing through the whole trainer: per-step losses and
    final parameters equal the one-batch run. BatchNorm is frozen (model.frozen_bn) and dropout
    off, the two things that legitimately differ per micro-batch (docs/microbatches.md)."""
    def config(k):
        c = tiny_config(paths, steps=2)
        c.data.augment.p = 0.0
        c.data.pack_frames = 32
        c.data.buckets = (40,)  # clips of at most 32 frames: padding for packing to leave out
        c.model.frozen_bn = True
        c.model.vit.lora_dropout = c.model.pg_dropout = 0.0
        c.model.mbart.dropout = c.model.mbart.lora_dropout = 0.0
        c.train.microbatches = k
        return c

    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    loop.run(config(1), one)
    loop.run(config(2), two)
    with open(os.path.join(two, "train.log")) as f:
        packed = [int(p) for p in re.findall(r"'frame_index': \(1, 2, (\d+)\)", f.read())]
    assert packed and max(packed) < 4 * 40, packed  # each micro-batch of 4 clips left padding out
    ref_l, l2 = _losses(one), _losses(two)
    assert sorted(l2) == [1, 2]
    for s in (1, 2):
        assert l2[s] == pytest.approx(ref_l[s], rel=1e-5, abs=1e-6), s
    ref_p, _, _ = _final_params(one)
    p, _, _ = _final_params(two)
    diffs = []
    for (k, a), b in zip(jax.tree_util.tree_flatten_with_path(ref_p)[0], jax.tree.leaves(p)):
        # as in the 1-vs-8-device test: Adam's +-lr on gradients that are rounding noise
        np.testing.assert_allclose(a, b, rtol=0, atol=5e-4, err_msg=str(k))
        diffs.append(np.abs(np.asarray(a) - np.asarray(b)).ravel())
    assert np.median(np.concatenate(diffs)) < 1e-7


def test_sigterm_sets_the_preemption_flag_instead_of_killing():
    import signal

    with ckpt_lib.PreemptionFlag() as flag:
        assert not flag.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.requested  # the loop saves a checkpoint at the next step boundary, then exits 143
    assert signal.getsignal(signal.SIGTERM) is not None


def test_video_blind_permutation_is_a_derangement():
    p = evaluation.video_blind_permutation(50, seed=3)
    assert sorted(p) == list(range(50)) and not np.any(p == np.arange(50))


def test_length_grouping_reaches_the_training_loader(paths, tmp_path, monkeypatch):
    from hfa_jax.data import pipeline

    class Stop(Exception):
        pass

    seen, original = {}, pipeline.make_loader

    def spy(*args, **kw):
        if not kw.get("shuffle"):  # evaluation loaders
            return original(*args, **kw)
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(pipeline, "make_loader", spy)
    c = tiny_config(paths, steps=2)
    c.data.length_grouping = 3
    with pytest.raises(Stop):
        loop.run(c, str(tmp_path / "w"))
    assert seen["length_grouping"] == 3 and seen["drop_remainder"] is True
