"""hfa_jax.aot: a stage's programs compiled from shapes alone, for a TPU topology this machine does
not have (libtpu) and for the local devices, with memory and FLOPs reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from configs import demo as demo_cfg
from hfa_jax import aot, hlo_cost
from hfa_jax.errors import ConfigError
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


def test_pretraining_compiles_for_a_v5e_2x2_slice(tmp_path):
    pytest.importorskip("libtpu", reason="libtpu is not installed: pip install -e '.[tpu]'")
    devices, processes = aot.topology_devices("v5e:2x2")
    assert len(devices) == 4 and processes == 1
    config = tiny("pretrain")
    config.model.vit.update(dict(depth=3, lora_blocks=(1, 2)))  # a frozen block, a full LoRA block, the CLS one
    config.model.attention = "auto"  # as the paper configs; aot resolves it as a TPU would
    reports = aot.stage_programs(config, devices, num_train=40, frame_size=36, breakdown=True, save_hlo=str(tmp_path))
    _check(reports, ("train", "eval"))
    # model.attention=auto resolves for the TPU target: the ViT's Pallas kernels (Mosaic) compile
    hlo = (tmp_path / "train.hlo.txt").read_text()
    for kernel in ("vit_frozen_block", "vit_attention_bwd", "vit_lora_mlp_fwd", "vit_lora_mlp_bwd"):
        assert kernel in hlo, kernel
    train = reports[0]
    _check_breakdown(train)
    # MFU's numerator is the plain program's model FLOP count, not the compiled program's
    assert train.model_flops > 0 and train.model_flops_source == aot.MODEL_FLOPS_SOURCE
    step = train.estimated_seconds if train.step_time_source == "xla" else train.roofline_seconds
    assert train.mfu == pytest.approx(train.model_flops / (step * 197e12))
    assert train.hbm_bytes == 16 * 2 ** 30 and train.fits  # a v5e chip's 16 GiB
    assert train.bytes_accessed > 0 and train.roofline_seconds > 0 and train.paper_hours > 0
    assert train.step_time_source in ("xla", "roofline")
    table = aot.format_table("v5e:2x2", devices, processes, reports)
    assert "train" in table and "yes" in table
    json.dumps([r.to_json() for r in reports])  # the --json report is plain data


def _check_breakdown(train):
    """Every part of a pretraining step is found in the compiled program, and the parts add up
    to about XLA's own count."""
    parts = {p for p, v in train.breakdown.items() if v["flops"] > 0 and v["bytes"] > 0}
    assert {"augmentation", "frozen ViT", "LoRA ViT", "temporal", "mBART", "losses", "optimiser"} <= parts, parts
    assert "text encoder" not in parts  # its sentence vectors are computed once (train/text_vectors.py)
    total = sum(v["flops"] for v in train.breakdown.values())
    assert 0.5 < total / train.flops < 2.5  # elementwise ops are counted a little differently from XLA


def test_the_breakdown_of_a_local_pretraining_step_names_every_part(tmp_path):
    devices, processes = aot.topology_devices("local")
    reports = aot.stage_programs(tiny("pretrain"), devices, num_train=40, frame_size=36, only=("train",),
                                 breakdown=True, save_hlo=str(tmp_path))
    assert [r.name for r in reports] == ["train"]
    train = reports[0]
    _check_breakdown(train)
    assert train.model_flops > 0 and train.model_flops_source == aot.MODEL_FLOPS_SOURCE
    # the saved HLO gives the same breakdown again (python -m hfa_jax.hlo_cost FILE)
    text = (tmp_path / "train.hlo.txt").read_text()
    assert hlo_cost.breakdown(text, (0,)).to_json() == train.breakdown
    table = aot.format_table("local", devices, processes, reports)
    assert "FLOPs and bytes per part" in table and "augmentation" in table and "model FLOPs" in table
    json.dumps([r.to_json() for r in reports])


def test_an_unknown_program_or_an_unwritable_hlo_folder_is_one_config_error_before_any_compile(tmp_path):
    devices = aot.topology_devices("local")[0]
    with pytest.raises(ConfigError, match="unknown program"):
        aot.stage_programs(tiny("pretrain"), devices, num_train=40, frame_size=36, only=("train", "trian"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="--save_hlo=.*cannot create"):
        aot.stage_programs(tiny("pretrain"), devices, num_train=40, frame_size=36, save_hlo=str(tmp_path / "file" / "x"))


def test_hlo_cost_reads_no_hostile_file_into_a_traceback(tmp_path, capsys):
    # a fusion that names no computation: its bytes count, its FLOPs cannot
    b = hlo_cost.breakdown(HLO.replace("calls=%fused_dot, ", ""), (10,))
    assert b.instructions["LoRA ViT"] == 1 and b.flops["LoRA ViT"] == 0
    for name, data in (("missing", None), ("text", b"not HLO at all\n"), ("binary", bytes(range(256)) * 4)):
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(SystemExit) as e:
            hlo_cost.main([str(path)])
        assert e.value.code == 2, name
        assert capsys.readouterr().err.startswith("error: "), name


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


def test_the_mfu_numerator_is_the_plain_program_whatever_the_remat_switch():
    c = tiny("pretrain")
    plain = aot.model_flops(c, num_devices=1, frame_size=36)
    c.model.remat = True
    c.train.microbatches = 2
    assert aot.model_flops(c, num_devices=2, frame_size=36) == pytest.approx(plain / 2)
    r = aot.report_program("train", _Compiled(-1.0), type("V5e", (), {"device_kind": "TPU v5 lite"})(),
                           steps_per_run=1, model_flops=197e12 * 0.005, model_flops_source="test")
    assert r.mfu == pytest.approx(0.25)  # 5 ms of model FLOPs in a 20 ms (traffic-bound) step


HLO = """HloModule jit_train_step, is_scheduled=true

FileNames
1 "/x/hfa_jax/train/optim.py"
2 "/x/hfa_jax/train/steps.py"

FunctionNames
1 "update_fn"
2 "update_step.<locals>.keep.<locals>.<lambda>"

FileLocations
1 {file_name_id=1 function_name_id=1 line=3 end_line=3 column=1 end_column=1}
2 {file_name_id=2 function_name_id=2 line=9 end_line=9 column=1 end_column=1}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}

%fused_dot (p0: bf16[8,4], p1: bf16[4,16]) -> bf16[8,16] {
  %p0 = bf16[8,4]{1,0} parameter(0)
  %p1 = bf16[4,16]{1,0} parameter(1)
  ROOT %dot.1 = bf16[8,16]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(train_step)/jvp(HFAPretrain)/HFAPretrain.encode_frames_aux/frame_encoder/block_10/mlp/fc1/dot_general"}
}

ENTRY %main (a: bf16[8,4], b: bf16[4,16], w: f32[16]) -> (bf16[8,16], f32[16], f32[16]) {
  %a = bf16[8,4]{1,0} parameter(0)
  %b = bf16[4,16]{1,0} parameter(1)
  %w = f32[16]{0} parameter(2)
  %fusion.1 = bf16[8,16]{1,0} fusion(%a, %b), kind=kOutput, calls=%fused_dot, metadata={op_name="jit(train_step)/jvp(HFAPretrain)/HFAPretrain.encode_frames_aux/frame_encoder/block_10/mlp/fc1/dot_general"}
  %add.2 = f32[16]{0} add(%w, %w), metadata={op_name="jit(train_step)/add" stack_frame_id=1}
  %multiply.3 = f32[16]{0} multiply(%w, %w), metadata={op_name="jit(train_step)/select_n" stack_frame_id=2}
  ROOT %t = (bf16[8,16]{1,0}, f32[16]{0}, f32[16]{0}) tuple(%fusion.1, %add.2, %multiply.3)
}
"""


def test_the_breakdown_counts_each_kernel_and_names_its_part():
    b = hlo_cost.breakdown(HLO, lora_blocks=(9, 10, 11))
    assert b.flops["LoRA ViT"] == 2 * 8 * 16 * 4
    assert b.bytes["LoRA ViT"] == 2 * (8 * 4 + 4 * 16 + 8 * 16)  # operands + output, bf16
    # from their source stacks: optax's update and the update step's non-finite guard
    assert b.flops["optimiser"] == 16 + 16 and b.bytes["optimiser"] == 2 * 4 * 16 * 3
    assert b.instructions["LoRA ViT"] == 1 and b.total_flops() == 2 * 8 * 16 * 4 + 32
    assert hlo_cost.Breakdown.from_json(b.to_json()).to_json() == b.to_json()
    assert hlo_cost.part_of("jit(train_step)/jvp(HFAPretrain)/HFAPretrain.encode_frames_aux/frame_encoder/block_3/x",
                            [], (9, 10, 11)) == "frozen ViT"
    assert hlo_cost.part_of("jit(train_step)/jit(augment)/gather", []) == "augmentation"
    assert hlo_cost.part_of("jit(train_step)/transpose(jvp(HFATranslate))/mbart/decoder/layers_0/x", []) == "mBART"
    # a module called through a method appears as "name.method/" (stage 2's mBART, 2026-12-07)
    assert hlo_cost.part_of("jit(train_step)/jvp(HFATranslate)/mbart.decode_full/decoder/layers_0/x", []) == "mBART"
    assert hlo_cost.part_of("jit(train_step)/jvp(HFATranslate)/HFATranslate.encode/mbart.encode/encoder/x", []) == "mBART"
    assert hlo_cost.part_of("jit(f)/HFATranslate.encode_frames_aux/frame_encoder/block_10/mlp/x", [], (9, 10)) == "LoRA ViT"
    assert hlo_cost.part_of("jit(train_step)/log", [("/x/hfa_jax/train/tasks.py", "Pretraining.objective.<locals>."
                                                                                   "<lambda>")]) == "losses"


def test_async_weight_copies_count_the_slice_they_move_not_the_whole_source():
    # a TPU program stages a [1024, 1024] f32 weight in VMEM a quarter at a time
    start = hlo_cost.Instr("s", "((f32[1024,1024]), f32[256,1024], s32[])", "slice-start", ["w"], "")
    copy = hlo_cost.Instr("c", "(f32[1024], f32[1024], u32[])", "copy-start", ["v"], "")
    shapes = {"w": "f32[1024,1024]", "v": "f32[1024]"}
    assert hlo_cost.instruction_bytes(start, shapes) == 2 * 256 * 1024 * 4
    assert hlo_cost.instruction_bytes(copy, shapes) == 2 * 1024 * 4
    assert "slice-done" in hlo_cost._FREE
