"""Cost model: FLOPs and bytes of the paper-scale training steps from XLA's cost analysis, this
machine's measured matmul peak and memory bandwidth, the floor time per step, and a projection
of the full paper schedule on one H100.

Paper scale (docs/training.md): batch 16, 300 frames, 224 px, ViT-S/14, temporal 512, mBART-large
(12+12 layers, d 1024, trimmed vocabulary 2172), text length 64, bf16 compute (the paper
configs' ``model.dtype``). The steps are built exactly as in ``bench/bench_train.py`` (the
trainer's step: trainable-only gradients, AdamW + clip, NaN guard) and lowered on abstract
``ShapeDtypeStruct``s (``jax.eval_shape`` of the init), so nothing of that size is ever
allocated or run. With ``--compile`` (default) the HLO is also compiled for this CPU and the
optimised module's cost analysis is used (its bytes count fused kernels, so they are meaningful);
``--no-compile`` reads the cheaper pre-optimisation analysis (FLOPs are the same; its "bytes"
count every unfused op and are only an upper bound).

The H100 projection is a projection, not a measurement: time/step = FLOPs / (peak x MFU) with
the stated peak (~800 TFLOP/s dense bf16 observed on an H100 SXM; 989 spec) and an assumed MFU,
checked against the HBM floor bytes / 3.0 TB/s. PHOENIX14T: 7096 training videos, batch 16 ->
443 steps/epoch (drop remainder); pretrain 100 epochs, fine-tune stage 1 100 epochs, stage 2
200 epochs. "Bucketed" scales each step by the expected padded length: with the pipeline's
buckets (64, 128, 192, 256, 300) and PHOENIX14T's train lengths (GFSLT-VLP ``labels.train``,
clipped at 300 frames: mean 116.5), a shuffled batch of 16 pads to 244.9 frames on average
(simulated once over 50 epochs; step cost is linear in frames, see the ``frames_<T>`` rows).
"Packed" also runs the ViT on the valid frames only (the trainer's default ``data.pack_frames``
= 8 capacity levels per bucket: 131.5 frames per clip on average in the same simulation): the
ViT's FLOPs per frame are the slope between two lowerings with 4,800 and 2,400 packed frames,
the rest of the step scales with the padded length as above.

    python bench/cost_model.py [--quick] [--no-compile] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import Shapes  # noqa: E402

PAPER = Shapes(batch=16, frames=300, image=224, text_len=64, enc_layers=12, dec_layers=12)
TRAIN_VIDEOS = 7096
STEPS_PER_EPOCH = TRAIN_VIDEOS // PAPER.batch  # 443
SCHEDULE = (("pretrain", 100), ("finetune1", 100), ("finetune2", 200))
MEAN_BUCKET_FRAMES = 244.9  # see the module docstring
MEAN_PACKED_FRAMES = 131.5  # ViT frames per clip with 8 packing levels (module docstring)
H100 = {"bf16_tflops": 800.0, "hbm_tb_s": 3.0, "assumed_mfu": 0.40}


def step_cost(kind: str, s: Shapes, *, dtype: str = "bfloat16", compile: bool = True,
              packed_frames: int | None = None) -> dict:
    """XLA cost analysis of one training step of ``kind`` ("pretrain", "finetune1",
    "finetune2") at shapes ``s``, lowered on abstract values (nothing allocated);
    ``packed_frames``: frames through the ViT (default: the trainer's packing of the bench layout).

    Returns ``{"flops", "bytes", "transcendentals", "source", "seconds"}`` (+ ``xla_memory``
    when compiled)."""
    import jax

    from bench.bench_train import abstract_batch, make_step

    t0 = time.perf_counter()
    init_state, step = make_step(kind, s, dtype=dtype)
    abstract_state = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    batch = abstract_batch("pretrain" if kind == "pretrain" else "finetune", s, packed_frames=packed_frames)
    lowered = jax.jit(step, donate_argnums=0).lower(abstract_state, batch)
    out: dict = {}
    if compile:
        compiled = lowered.compile()
        ca = compiled.cost_analysis()
        out["xla_memory"] = common.xla_memory(compiled)
        out["source"] = "compiled (optimised HLO, CPU backend)"
    else:
        ca = lowered.cost_analysis()
        out["source"] = "lowered (pre-optimisation HLO)"
    if isinstance(ca, (list, tuple)):  # older jax returned one dict per computation
        ca = ca[0]
    out.update(flops=float(ca.get("flops", 0.0)), bytes=float(ca.get("bytes accessed", 0.0)),
               transcendentals=float(ca.get("transcendentals", 0.0)), seconds=time.perf_counter() - t0)
    return out


def measure_machine(*, quick: bool = False) -> dict:
    """This machine's f32 matmul peak (jit ``dot`` of two n x n matrices) and memory read
    bandwidth (jit ``sum`` over a large array), medians after warm-up."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    n = 1024 if quick else 2048
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    dot = jax.jit(lambda x, y: x @ y)
    t = common.time_calls(lambda: dot(a, a), warmup=2, iters=5 if quick else 10, sync=jax.block_until_ready)
    gflops = 2 * n**3 / common.median(t) / 1e9
    gflops_best = 2 * n**3 / min(t) / 1e9
    m = (16 if quick else 64) * 2**20  # float32 elements: 64 / 256 MiB
    x = jnp.ones((m,), jnp.float32)
    # A read-only reduction: no output allocation, so page faults on fresh buffers (which would
    # cap an ``x + 1`` copy at ~1 GB/s here) do not count.
    total = jax.jit(lambda v: jnp.sum(v))
    t = common.time_calls(lambda: total(x), warmup=2, iters=5 if quick else 10, sync=jax.block_until_ready)
    gbs = 4 * m / common.median(t) / 1e9
    gbs_best = 4 * m / min(t) / 1e9
    return {"matmul_gflops": gflops, "matmul_gflops_best": gflops_best, "matmul_n": n,
            "bandwidth_gb_s": gbs, "bandwidth_gb_s_best": gbs_best, "bandwidth_mib": 4 * m / 2**20,
            "loadavg": common.loadavg()}


def floor_seconds(cost: dict, peak_flops: float, bandwidth: float) -> float:
    """Roofline floor: the larger of compute time at peak and traffic time at full bandwidth.
    Bytes only count when they come from the compiled (fused) module: the pre-optimisation
    count charges every unfused op and is no traffic estimate, so the floor is compute-only."""
    compute = cost["flops"] / peak_flops
    if not cost.get("source", "").startswith("compiled"):
        return compute
    return max(compute, cost["bytes"] / bandwidth)


def project_h100(costs: dict[str, dict], *, mfu: float = H100["assumed_mfu"],
                 peak_tflops: float = H100["bf16_tflops"], mfu_source: str = "assumed") -> dict:
    """Projected wall time of the paper schedule on one H100 (see the module docstring).
    ``mfu``/``peak_tflops``: the assumed 40 % of ~800 TFLOP/s, or an MFU measured on an H100
    (``bench/run_all.py --accelerator``) with the peak measured in the same run
    (``mfu_source="measured ..."``)."""
    peak = peak_tflops * 1e12
    bw = H100["hbm_tb_s"] * 1e12
    stages = {}
    total = total_b = 0.0
    total_p = None
    for kind, epochs in SCHEDULE:
        c = costs[kind]
        step_s = c["flops"] / (peak * mfu)
        hbm_floor = c["bytes"] / bw if c.get("source", "").startswith("compiled") else None
        steps = STEPS_PER_EPOCH * epochs
        hours = steps * step_s / 3600.0
        hours_b = hours * MEAN_BUCKET_FRAMES / PAPER.frames
        stages[kind] = {"epochs": epochs, "steps": steps, "step_s": step_s, "hbm_floor_s": hbm_floor,
                        "hours_300_frames": hours, "hours_bucketed": hours_b}
        if "vit_flops_per_frame" in c:
            vit_full = c["vit_flops_per_frame"] * PAPER.batch * PAPER.frames
            packed = ((c["flops"] - vit_full) * MEAN_BUCKET_FRAMES / PAPER.frames
                      + c["vit_flops_per_frame"] * PAPER.batch * MEAN_PACKED_FRAMES)
            stages[kind]["hours_packed"] = hours * packed / c["flops"]
            stages[kind]["vit_share"] = vit_full / c["flops"]
            total_p = (total_p or 0.0) + stages[kind]["hours_packed"]
        total += hours
        total_b += hours_b
    out = {"assumed_mfu": mfu, "mfu_source": mfu_source, "peak_tflops": peak_tflops, "hbm_tb_s": H100["hbm_tb_s"],
           "stages": stages, "total_hours_300_frames": total, "total_hours_bucketed": total_b}
    if total_p is not None:
        out["total_hours_packed"] = total_p
    return out


def run(*, quick: bool = False, compile: bool = True, kinds=None, progress=None, machine: dict | None = None,
        projection: dict | None = None) -> dict:
    """Everything the cost model prints: machine, per-stage costs, floors, H100 projection."""
    machine = machine or measure_machine(quick=quick)
    peak = machine["matmul_gflops_best"] * 1e9
    bw = machine["bandwidth_gb_s_best"] * 1e9
    costs = {}
    for kind, _ in SCHEDULE:
        if kinds and kind not in kinds:
            continue
        full = PAPER.batch * PAPER.frames
        costs[kind] = step_cost(kind, PAPER, compile=compile, packed_frames=full)
        # the ViT's FLOPs per frame: slope between two lowerings (FLOPs need no compile)
        hi = costs[kind] if not compile else step_cost(kind, PAPER, compile=False, packed_frames=full)
        lo = step_cost(kind, PAPER, compile=False, packed_frames=full // 2)
        costs[kind]["vit_flops_per_frame"] = (hi["flops"] - lo["flops"]) / (full - full // 2)
        costs[kind]["floor_s_this_machine"] = floor_seconds(costs[kind], peak, bw)
        if progress:
            progress(kind, costs[kind])
    out = {"shapes": dataclasses.asdict(PAPER), "dtype": "bfloat16", "machine": machine, "costs": costs,
           "date": common.utc_now()}
    if all(k in costs for k, _ in SCHEDULE):
        out["h100"] = project_h100(costs, **(projection or {}))
    return out


def format_report(r: dict) -> str:
    m = r["machine"]
    lines = [f"Cost model (XLA cost analysis of one training step at paper scale: batch 16, 300 frames, 224 px, "
             f"mBART-large 12+12, bf16 compute; {next(iter(r['costs'].values()))['source']})",
             f"this machine: f32 matmul {m['matmul_gflops']:.1f} GFLOP/s median ({m['matmul_gflops_best']:.1f} best, "
             f"n={m['matmul_n']}), memory bandwidth {m['bandwidth_gb_s']:.1f} GB/s median "
             f"({m['bandwidth_gb_s_best']:.1f} best), load average {m['loadavg']}",
             f"{'stage':<10} {'TFLOP/step':>11} {'GB/step':>9} {'floor here (s/step)':>20}"
             + ("" if next(iter(r["costs"].values()))["source"].startswith("compiled")
                else "   (GB: unfused upper bound; floor = compute only)")]
    for kind, c in r["costs"].items():
        lines.append(f"{kind:<10} {c['flops'] / 1e12:>11.2f} {c['bytes'] / 1e9:>9.1f} {c['floor_s_this_machine']:>20.1f}")
    h = r.get("h100")
    if h:
        lines.append(f"PROJECTION (not measured) on one H100: {h['peak_tflops']:.0f} TFLOP/s bf16 dense x "
                     f"{h.get('mfu_source', 'assumed')} MFU {h['assumed_mfu']:.1%}, HBM {h['hbm_tb_s']} TB/s; "
                     f"{STEPS_PER_EPOCH} steps/epoch")
        for kind, st in h["stages"].items():
            hb = f", HBM floor {st['hbm_floor_s']:.3f} s" if st["hbm_floor_s"] is not None else ""
            lines.append(f"  {kind:<10} {st['epochs']:>3} epochs {st['steps']:>6} steps x {st['step_s']:.3f} s{hb} = "
                         f"{st['hours_300_frames']:.1f} h (all clips padded to 300) / {st['hours_bucketed']:.1f} h bucketed"
                         + (f" / {st['hours_packed']:.1f} h bucketed + packed (ViT {st['vit_share']:.0%} of "
                            "the 300-frame step)" if "hours_packed" in st else ""))
        lines.append(f"  total: {h['total_hours_300_frames']:.1f} h at 300 frames, {h['total_hours_bucketed']:.1f} h with "
                     f"length buckets (mean padded length {MEAN_BUCKET_FRAMES} frames)"
                     + (f", {h['total_hours_packed']:.1f} h with the ViT on packed valid frames "
                        f"({MEAN_PACKED_FRAMES} per clip)" if "total_hours_packed" in h else ""))
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller machine probes")
    p.add_argument("--no-compile", action="store_true", help="pre-optimisation cost analysis only (fast)")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--mfu", type=float, default=None,
                   help="project with this MFU (e.g. the one run_all.py --accelerator measured) instead of 40%%")
    p.add_argument("--peak-tflops", type=float, default=H100["bf16_tflops"],
                   help="bf16 peak for the projection (the one measured with --mfu)")
    a = p.parse_args(argv)
    projection = None
    if a.mfu is not None:
        if not 0.0 < a.mfu <= 1.0:
            p.error(f"--mfu must be a fraction in (0, 1], got {a.mfu}")
        projection = {"mfu": a.mfu, "peak_tflops": a.peak_tflops, "mfu_source": "measured"}
    r = run(quick=a.quick, compile=not a.no_compile, projection=projection,
            progress=lambda k, c: print(f"  {k}: {c['flops'] / 1e12:.2f} TFLOP ({c['seconds']:.0f} s)", file=sys.stderr))
    print(format_report(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == "__main__":
    main()
