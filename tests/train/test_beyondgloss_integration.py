"""BeyondGloss switches through the trainer (docs/beyondgloss.md): both objectives on a tiny SynthSign
dataset converted by data_prep.beyondgloss; logged terms show which objectives are on; the
hand-pose feedback travels from pretraining into fine-tuning."""

import json
import os

import numpy as np
import pytest

from hfa_jax.train import state as state_lib
from hfa_jax.train import checkpoint as ckpt_lib
from hfa_jax.train import loop
from tests.train.test_loop import tiny_config


@pytest.fixture(scope="module")
def bg_paths(tmp_path_factory):
    from configs import demo as demo_cfg
    from hfa_jax import demo

    root = str(tmp_path_factory.mktemp("bgdata"))
    c = demo_cfg.get_config("smoke")
    c.demo.update(dict(num_train=8, num_eval=8, max_glosses=2, frame_size=36, fasttext_dim=8, workers=1,
                       tokenizer_descriptions=True, domain="frequent", pretrain_frame_encoder=False))
    c.model.beyondgloss.hand_pose = True  # the demo adds the SynthSign-derived hand_pose feature
    paths = demo.prepare_data(c, root)
    assert paths["dataset_dir"].endswith("dataset_beyondgloss")
    return paths


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_switches_train_and_log(bg_paths, tmp_path, desc=True, hand=True):
    c = tiny_config(bg_paths, steps=2)
    c.model.beyondgloss.description = desc
    c.model.beyondgloss.hand_pose = hand
    c.data.max_description_len = 64
    c.eval.at_end = True  # evaluates dev (the BeyondGloss terms too) and keeps a best checkpoint
    wd = str(tmp_path / "pre")
    loop.run(c, wd)
    rows = [r for r in _rows(wd) if r["split"] == "train"]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)
    for r in rows:
        assert ("desc_loss" in r) == desc and ("hand_loss" in r) == hand
        want = r["align_loss"] + r["pg_loss"] + 0.5 * r.get("desc_loss", 0.0) + 0.3 * r.get("hand_loss", 0.0)
        assert r["loss"] == pytest.approx(want, rel=1e-5)
    dev = [r for r in _rows(wd) if r["split"] == "dev"]
    assert dev and ("desc_loss" in dev[-1]) == desc and ("hand_loss" in dev[-1]) == hand
    params, _, _ = _final_params(wd)
    assert ("hand_pose" in params) == hand and ("desc_proj" in params) == desc
    if hand:
        assert params["hand_pose"]["student"]["proj"]["kernel"].shape == (16, 288)
        # fine-tuning keeps the feedback branch and starts from the pretrained one
        f = tiny_config(bg_paths, stage="finetune1", steps=1)
        f.model.beyondgloss.hand_pose = True
        f.train.init_from = wd
        wd2 = str(tmp_path / "ft1")
        loop.run(f, wd2)
        p2, _, _ = _final_params(wd2)
        np.testing.assert_array_equal(p2["hand_pose"]["feedback"]["fuse"]["kernel"],
                                      params["hand_pose"]["feedback"]["fuse"]["kernel"])  # frozen in stage 1


def _final_params(workdir):
    state, meta = ckpt_lib.load_state_arrays(workdir, best=False)
    return state_lib.merge_params(state["trainable"], state["frozen"]), state, meta
