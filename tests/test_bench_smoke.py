"""Smoke test of the benchmark machinery (bench/): the scripts must keep running.

Runs ``bench/run_all.py --micro --only beam_search`` end to end (two worker subprocesses on toy
widths: transformers ``generate`` and our jit beam search on the same saved weights), checks the
JSON rows, and checks that our beam search returned exactly transformers' sequences. The
numbers themselves mean nothing at these shapes. Also checks the pure parts: the table
formatter, ``--only`` validation and the H100 schedule arithmetic of the cost model.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import cost_model, run_all  # noqa: E402


def test_run_all_micro_beam_search(tmp_path, capsys):
    out = tmp_path / "rows.json"
    run_all.main(["--micro", "--only", "beam_search", "--no-torch-compile", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["beam_search"]
    r = rows[0]
    assert set(r) >= {"name", "ours", "reference", "unit", "speedup", "settings"}
    assert r["unit"] == "sentences/s" and r["ours"] > 0 and r["reference"] > 0
    assert r["speedup"] == pytest.approx(r["ours"] / r["reference"], rel=1e-6)
    # Same weights, same inputs: the jit beam search must return transformers' sequences.
    assert r["extra"]["identical_sequences"] == "2/2"
    printed = capsys.readouterr().out
    assert "beam_search" in printed and "speedup" in printed


def test_only_rejects_unknown_rows():
    with pytest.raises(SystemExit):
        run_all.main(["--only", "no_such_row"])


def test_table_speedup_column():
    rows = [{"name": "finetune_step", "ours": 0.5, "reference": 1.5, "unit": "s/step", "speedup": 3.0,
             "settings": "s"}, {"name": "frames_64", "ours": 1.0, "reference": None, "unit": "s/step",
                                "speedup": None, "settings": "t"}]
    lines = run_all.format_table(rows).splitlines()
    assert lines[2].split()[:4] == ["finetune_step", "0.500", "1.500", "3.00x"]
    assert lines[3].split()[:4] == ["frames_64", "1.000", "n/a", "n/a"]


def test_h100_projection_arithmetic():
    # 8e14 FLOP per step at 800 TFLOP/s x 50% MFU = 2 s/step.
    costs = {k: {"flops": 8e14, "bytes": 3e12, "source": "compiled"} for k, _ in cost_model.SCHEDULE}
    p = cost_model.project_h100(costs, mfu=0.5)
    assert cost_model.STEPS_PER_EPOCH == 443  # 7096 // 16
    st = p["stages"]["finetune2"]
    assert st["steps"] == 443 * 200 and st["step_s"] == pytest.approx(2.0)
    assert st["hbm_floor_s"] == pytest.approx(1.0)
    assert st["hours_300_frames"] == pytest.approx(443 * 200 * 2.0 / 3600)
    assert p["total_hours_300_frames"] == pytest.approx(443 * 400 * 2.0 / 3600)
    assert p["total_hours_bucketed"] == pytest.approx(p["total_hours_300_frames"] * 244.9 / 300)
    assert "total_hours_packed" not in p
    # ViT at 1e11 FLOP/frame = 4.8e14 of the 8e14: the rest scales with 244.9/300, the ViT with
    # 131.5 packed frames per clip
    costs = {k: {**c, "vit_flops_per_frame": 1e11} for k, c in costs.items()}
    p = cost_model.project_h100(costs, mfu=0.5)
    want = (3.2e14 * 244.9 / 300 + 1e11 * 16 * 131.5) / 8e14
    assert p["stages"]["pretrain"]["vit_share"] == pytest.approx(0.6)
    assert p["total_hours_packed"] == pytest.approx(p["total_hours_300_frames"] * want)
    # a measured MFU and peak replace the assumed ones: 8e14 / (400e12 x 0.25) = 8 s/step
    m = cost_model.project_h100(costs, mfu=0.25, peak_tflops=400.0, mfu_source="measured")
    assert m["stages"]["finetune2"]["step_s"] == pytest.approx(8.0) and m["mfu_source"] == "measured"
    assert m["total_hours_packed"] == pytest.approx(4 * p["total_hours_packed"])


@pytest.mark.slow  # ~1 min of compiles; kept out of the 15-minute first command
def test_accelerator_rows_run_on_cpu(tmp_path):
    # The GPU rows (ours bf16 vs the reference's autocast, MFU against the measured bf16 peak)
    # run the same code on CPU, with bf16 autocast.
    out = tmp_path / "rows.json"
    # (--accelerator defaults to the ViT attention a GPU run picks: "auto", XLA's on CPU)
    run_all.main(["--micro", "--accelerator", "--only", "finetune_step", "--no-torch-compile", "--json", str(out)])
    (r,) = json.loads(out.read_text())
    e = r["extra"]
    assert r["name"] == "finetune_step" and r["ours"] > 0 and r["reference"] > 0
    assert "our ViT attention auto" in r["settings"]
    assert e["precision"] == "ours bfloat16, reference torch.bfloat16"
    assert e["step_flops_ours"] > 0 and e["bf16_peak_tflops_ours"] > 0
    assert e["mfu_ours"] == pytest.approx(e["step_flops_ours"] / r["ours"] / (e["bf16_peak_tflops_ours"] * 1e12))


def test_gpu_probe_groups_device_ops(tmp_path):
    # bench/gpu_probe.py reads jax.profiler's perfetto trace: only the device lanes count, and
    # the numbered instances of one fusion (one per layer) are summed as one kind.
    import gzip

    from bench import gpu_probe

    ev = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
          {"ph": "X", "pid": 1, "name": "fusion.12", "dur": 300.0},
          {"ph": "X", "pid": 1, "name": "fusion.7", "dur": 100.0},
          {"ph": "X", "pid": 1, "name": "nvjet_sm90_tst_192x192_64x3", "dur": 150.0},
          {"ph": "X", "pid": 1, "name": "void cutlass::Kernel2<cutlass_75_tensorop>", "dur": 50.0},
          {"ph": "X", "pid": 2, "name": "host_work", "dur": 5000.0}]
    run = tmp_path / "plugins" / "profile" / "run1"
    run.mkdir(parents=True)
    with gzip.open(run / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": ev}, f)
    rows, busy = gpu_probe.device_op_table(str(tmp_path), steps=2)
    assert busy == pytest.approx(0.3)  # (300 + 100 + 200) us over 2 steps, in ms
    assert [(r["name"], r["count"]) for r in rows] == [("fusion", 1.0), ("gemm", 1.0)]
    assert gpu_probe.op_kind("loop_pad_fusion_46") == "loop_pad_fusion"
    assert gpu_probe.op_kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention (cuDNN)"
    assert rows[0]["ms_per_step"] == pytest.approx(0.2) and rows[0]["share"] == pytest.approx(400 / 600)
    with pytest.raises(FileNotFoundError, match="trace.json.gz"):
        gpu_probe.device_op_table(str(tmp_path / "empty"), steps=1)


def test_pipelined_timing_queues_the_next_call_before_reading_the_last():
    # our training rows are timed as the trainer runs: step i+1 dispatched before step i is read
    from bench import common

    events, n = [], iter(range(100))

    def fn():
        i = next(n)
        events.append(("call", i))
        return i

    times = common.time_calls_pipelined(fn, warmup=2, iters=4, sync=lambda i: events.append(("sync", i)))
    assert len(times) == 4 and all(t >= 0 for t in times)
    calls = [i for kind, i in events if kind == "call"]
    syncs = [i for kind, i in events if kind == "sync"]
    assert calls == list(range(7)) and syncs == list(range(7))  # 1 + 2 warm-up + 4 timed, all read
    for i in range(6):  # call i+1 is queued before result i is read
        assert events.index(("call", i + 1)) < events.index(("sync", i))


def test_decode_matmul_floor_runs():
    """The beam-search bound (``bench_decode.py floor``) times the decoder's weight products."""
    from bench import bench_decode
    from bench.bench_train import _micro
    from bench.common import Shapes

    s = _micro(Shapes())
    short = bench_decode.matmul_floor(s, sentences=1, max_new_tokens=2, repeats=1)
    assert short["median_s"] > 0 and len(short["times"]) == 1
    assert short["ms_per_step"] == pytest.approx(1e3 * short["median_s"] / 2)


def test_our_pretrain_step_row_runs():
    """The pretrain_step row's own side: the library's update step at toy widths (the
    finetune_step row runs in test_accelerator_rows_run_on_cpu)."""
    kind = "pretrain"
    from bench import bench_train
    from bench.common import Shapes

    res = bench_train.ours_worker(kind, bench_train._micro(Shapes()), iters=1, warmup=0, max_seconds=30)
    assert res["median_s"] > 0 and np.isfinite(res["loss"]) and res["trainable"] > 0
