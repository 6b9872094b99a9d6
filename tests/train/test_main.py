"""The entry point and the configs: every variant loads and validates; start-up errors are one
line naming the field; --workdir defaults to runs/<config name>."""

import os
import subprocess
import sys

import pytest

from configs import demo, finetune, pretrain
from hfa_jax.train import schema as validate
from hfa_jax import main as main_lib
from hfa_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("mod,arg", [(pretrain, None), (pretrain, "tiny"), (finetune, "stage1"),
                                     (finetune, "stage2"), (finetune, "paper"), (finetune, "stage1_tiny"),
                                     (demo, None), (demo, "smoke")])
def test_every_config_variant_validates(mod, arg):
    c = mod.get_config(arg)
    validate.validate(c, check_paths=False)
    assert c.train.stage in validate.STAGES
    assert main_lib.default_workdir(c) == os.path.join("runs", c.name)


def test_stage_defaults_follow_the_spec():
    p, f1, f2 = pretrain.get_config(), finetune.get_config("stage1"), finetune.get_config("stage2")
    assert (p.train.stage, f1.train.stage, f2.train.stage) == ("pretrain", "finetune1", "finetune2")
    assert (p.train.epochs, f1.train.epochs, f2.train.epochs) == (100, 100, 200)
    for c in (p, f1, f2):
        assert (c.train.weight_decay, c.train.clip_norm, c.train.batch_size, c.train.warmup_pct) == (0.01, 1.0, 16, 0.05)
    assert f1.train.label_smoothing == 0.2 and f1.eval.num_beams == 4 and f1.eval.max_new_tokens == 150


def test_unknown_field_and_missing_path_name_the_field(tmp_path):
    c = pretrain.get_config("tiny")
    c.unlock()
    c.train.learning_rate = 1e-3
    with pytest.raises(ConfigError, match=r"config\.train\.learning_rate is not a known field"):
        validate.validate(c)
    for field, value, message in (("read_threads", 0, r"config\.data\.read_threads=0 must be positive"),
                                  ("pack_frames", -1, r"config\.data\.pack_frames=-1 must be >= 0"),
                                  ("padding_chunk", -2, r"config\.data\.augment\.padding_chunk=-2")):
        c = pretrain.get_config("tiny")
        (c.data.augment if field == "padding_chunk" else c.data)[field] = value
        with pytest.raises(ConfigError, match=message):
            validate.validate(c, check_paths=False)
    c = pretrain.get_config("tiny")
    c.data.dataset_dir = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"config\.data\.dataset_dir=.*does not exist"):
        validate.validate(c)
    c.data.dataset_dir = str(tmp_path)
    c.data.tokenizer_dir = str(tmp_path)
    c.data.pseudo_glosses = str(tmp_path / "pg.json")
    with pytest.raises(ConfigError, match=r"config\.data\.pseudo_glosses"):
        validate.validate(c)


def _main(*args):
    return subprocess.run([sys.executable, "-m", "hfa_jax.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_cli_bad_path_is_one_line_exit_2(tmp_path):
    r = _main("--config=configs/pretrain.py:tiny", f"--workdir={tmp_path}/w",
              f"--config.data.dataset_dir={tmp_path}/missing")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert lines[-1].startswith("error: config.data.dataset_dir=") and "does not exist" in lines[-1]
    assert "Traceback" not in r.stderr


def test_cli_unknown_override_is_rejected():
    r = _main("--config=configs/pretrain.py:tiny", "--config.train.lrr=0.1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]  # one line (hfa_jax.config_cli)
    assert r.stderr.startswith("error: --config.train.lrr: configs/pretrain.py:tiny has no field train.lrr; "
                               "did you mean --config.train.lr?")
