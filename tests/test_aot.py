"""hfa_jax.aot: a stage's programs compiled from shapes alone, for a TPU topology this machine does
not have (libtpu) and for the local devices, with memory and FLOPs reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from configs import demo as demo_cfg
from hfa_jax import aot
from hfa_jax.train import schema


def tiny(stage: str):
    c = schema.base()
    c.model = demo_cfg.demo_model()
    c.model.vit.update(dict(width=16, depth=1, num_heads=2, mlp_dim=32, pos_grid=4, lora_blocks=(0,)))
    c.model.temporal.update(dict(width=16, num_heads=2, mlp_dim=32, out_dim=16))
    c.model.mbart.update(dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                              decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=64))
    c.model.frame_dim = 16
    c.model.proto_dim = 8
    c.model.num_pseudo_glosses = 20
    c.data.update(dict(crop_size=32, max_frames=16, buckets=(8, 16), max_text_len=8))
    c.train.stage = stage
    c.train.trainable = demo_cfg.DEMO_RULES[stage]
    c.train.batch_size = 4
    c.train.num_steps = 10
    c.eval.batch_size = 4
    c.eval.num_beams = 2
    c.eval.max_new_tokens = 4
    return c


def _check(reports, names):
    assert [r.name for r in reports] == list(names)
    for r in reports:
        p = r.per_device_bytes
        assert p["arguments"] > 0 and p["temporaries"] > 0 and p["total"] >= p["temporaries"], r
        assert r.flops and r.flops > 0, r


def test_pretraining_compiles_for_a_v5e_2x2_slice():
    pytest.importorskip("libtpu", reason="libtpu is not installed: pip install -e '.[tpu]'")
    devices, processes = aot.topology_devices("v5e:2x2")
    assert len(devices) == 4 and processes == 1
    reports = aot.stage_programs(tiny("pretrain"), devices, num_train=40, frame_size=36)
    _check(reports, ("train", "eval"))
    train = reports[0]
    assert train.hbm_bytes == 16 * 2 ** 30 and train.fits  # a v5e chip's 16 GiB
    assert train.bytes_accessed > 0 and train.roofline_seconds > 0 and train.paper_hours > 0
    assert train.step_time_source in ("xla", "roofline")
    table = aot.format_table("v5e:2x2", devices, processes, reports)
    assert "train" in table and "yes" in table
    json.dumps([r.to_json() for r in reports])  # the --json report is plain data


def test_fine_tuning_compiles_for_the_local_devices_with_beam_search():
    devices, _ = aot.topology_devices("local")
    reports = aot.stage_programs(tiny("finetune2"), devices, num_train=40, frame_size=36)
    _check(reports, ("train", "eval", "generate"))
    assert reports[0].fits is None  # a CPU has no HBM figure: fit is not judged


def test_an_unknown_topology_is_one_line():
    r = subprocess.run([sys.executable, "-m", "hfa_jax.aot", "--config=configs/demo.py:smoke", "--topology=v9z:1x1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: --topology=v9z:1x1: cannot describe this TPU topology")


class _Compiled:
    """The two analyses report_program reads, with chosen numbers."""

    def __init__(self, optimal_seconds):
        self.cost = {"flops": 197e12 * 0.010, "bytes accessed": 819e9 * 0.020, "optimal_seconds": optimal_seconds}

    def memory_analysis(self):
        class M:
            argument_size_in_bytes, output_size_in_bytes, temp_size_in_bytes = 2 ** 30, 2 ** 29, 2 ** 32
            alias_size_in_bytes, generated_code_size_in_bytes = 2 ** 29, 0
        return M()

    def cost_analysis(self):
        return self.cost


def test_step_time_is_xlas_estimate_else_the_roofline_bound():
    class V5e:
        device_kind = "TPU v5 lite"

    # 10 ms of compute and 20 ms of HBM traffic on a v5e chip: the roofline bound is 20 ms
    r = aot.report_program("train", _Compiled(-626.7), V5e(), steps_per_run=3600)
    assert r.estimated_seconds is None and r.step_time_source == "roofline"
    assert r.roofline_seconds == pytest.approx(0.020) and r.paper_hours == pytest.approx(0.020)
    assert r.mfu == pytest.approx(0.5)
    assert r.per_device_bytes["total"] == 2 ** 30 + 2 ** 32 and r.fits  # the donated half counted once
    r = aot.report_program("train", _Compiled(0.040), V5e(), steps_per_run=3600)
    assert r.step_time_source == "xla" and r.paper_hours == pytest.approx(0.040) and r.mfu == pytest.approx(0.25)
