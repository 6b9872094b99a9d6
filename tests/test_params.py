"""Parameter report: the paper's exact counts (paper Table 3; docs/models_and_weights.md) from shapes alone."""

import json
import os

import pytest

from configs.common import model_config
from hfa_jax import params as params_cli
from hfa_jax.params import param_report


def test_paper_counts_exact():
    mc = model_config("paper")
    pre = param_report(mc, "pretrain")
    assert (pre["trainable"], pre["total"]) == (15_200_325, 346_123_973)
    mods = pre["modules"]
    # the counted pieces listed in docs/models_and_weights.md
    assert mods["frame_encoder"] == (73_728, 22_056_576 + 73_728)
    assert mods["frame_proj"][1] + mods["frame_bn"][1] == 198_144
    assert mods["temporal"] == (12_611_584 + 525_312,) * 2
    assert mods["pg_head"] == (307_500, 307_500) and mods["prototypes"] == (696_600, 696_600)
    assert mods["cls_token"] == (1_024, 1_024) and mods["logit_scale"] == (1, 1)
    assert mods["video_encoder"] == (786_432, 152_209_408 + 2172 * 1024 + 786_432)
    assert mods["text_encoder"] == (0, 152_209_408 + 2172 * 1024)
    fine = param_report(mc, "finetune2")
    assert (fine["trainable"], fine["total"]) == (16_819_712, 395_924_608)
    assert fine["modules"]["mapper"] == (1_051_648, 1_051_648)
    assert fine["modules"]["mbart"] == (786_432 + 1_572_864, 152_209_408 + 2172 * 1024 + 202_614_784 + 786_432 + 1_572_864)
    stage1 = param_report(mc, "finetune1")
    assert (stage1["trainable"], stage1["total"]) == (1_051_648 + 1_572_864, 395_924_608)


COMMON = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "common.py")


def test_cli_json_and_table(capsys):
    params_cli.main([f"--config={COMMON}:paper", "--stage=finetune2", "--json"])
    assert json.loads(capsys.readouterr().out) == {"trainable": 16_819_712, "total": 395_924_608}
    params_cli.main([f"--config={COMMON}:tiny"])
    out = capsys.readouterr().out
    assert "frame_encoder" in out and "video_encoder" in out and out.strip().splitlines()[-1].startswith("all")


def test_cli_bad_config(capsys):
    with pytest.raises(SystemExit) as e:
        params_cli.main(["--config=configs/nope.py:paper"])
    assert e.value.code == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "spec, expected",
    [("pretrain.py:paper", (15_200_325, 346_123_973)), ("finetune.py:paper", (16_819_712, 395_924_608)),
     ("finetune.py:stage1", (2_624_512, 395_924_608))],
)
def test_cli_on_training_configs(spec, expected, capsys):
    params_cli.main([f"--config={os.path.join(os.path.dirname(COMMON), spec)}", "--json"])
    got = json.loads(capsys.readouterr().out)
    assert (got["trainable"], got["total"]) == expected
