"""One-call probe of our training step on an accelerator: variants side by side, MFU, and where
the device time goes.

Everything runs in one process, so one short run on a fresh GPU machine gives the whole
picture: for each ViT attention variant (``xla``: the paper config, scores materialised; ``auto``: ``jax.nn.dot_product_attention`` picks cuDNN's
fused kernel where it applies) it builds the training step at the accelerator shapes of
``bench/bench_train.py`` (``TRAIN_SHAPES["accel"]``, bf16 compute), initialises it on the host
CPU, compiles it, times it (median after warm-up) and reads its FLOPs from the compiled module;
it measures the bf16 matmul peak once, and for one variant records a ``jax.profiler`` trace of
a few steps and prints the device ops that take the time. XLA flags are per process: run the
script once per flag set (``XLA_FLAGS=... python bench/gpu_probe.py``).

    python bench/gpu_probe.py [--kind finetune] [--variants xla,auto] [--profile auto] \\
        [--out DIR] [--json FILE]

``--micro`` runs toy widths (the CPU smoke test; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import shutil
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import Shapes  # noqa: E402

VARIANTS = ("xla", "auto", "cudnn")


def build(kind: str, s: Shapes):
    """-> the compiled bf16 step (``bench_train.CompiledStep``), state initialised on the host CPU."""
    import jax

    from bench.bench_train import CompiledStep, concrete_batch, init_on_host, make_step

    init_state, step = make_step(kind, s, dtype="bfloat16")
    state = init_on_host(init_state)
    batch = {k: jax.device_put(v) for k, v in concrete_batch(kind, s).items()}
    return CompiledStep(step, state, batch)


def newest_trace(trace_dir: str) -> str:
    """The newest perfetto trace (``*.trace.json.gz``) jax.profiler wrote under ``trace_dir``."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: did jax.profiler write a perfetto trace?")
    return files[-1]


def op_kind(name: str) -> str:
    """A device kernel's kind: cuBLAS/CUTLASS GEMMs as one ``gemm``, cuDNN's fused attention as
    one ``attention (cuDNN)``, and an XLA fusion by its name without the instance number
    (``loop_pad_fusion_46`` and ``fusion.12`` -> ``loop_pad_fusion``, ``fusion``), so the copies of
    a layer's ops count together."""
    if re.search(r"nvjet|cutlass|gemm|xmma|cublas", name, re.I):
        return "gemm"
    if re.search(r"cudnn|fmha|flash|sdpa", name, re.I):
        return "attention (cuDNN)"
    return re.sub(r"([._]\d+)+$", "", name)


def device_op_table(trace_dir: str, steps: int, top: int = 25) -> tuple[list[dict], float]:
    """Sums the complete events of the device lanes of the newest perfetto trace under
    ``trace_dir`` by :func:`op_kind`. Returns (rows of ``name, ms_per_step, count, share``,
    busy ms per step); ``count`` is per step. Device lanes are the processes whose name
    mentions a GPU/TPU device; on a CPU-only run (the smoke test) every lane counts."""
    with gzip.open(newest_trace(trace_dir), "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    pname = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {p for p, n in pname.items() if re.search(r"GPU|TPU|/device:", n)}
    lanes = device or set(pname)
    total = collections.Counter()
    count = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or e.get("pid") not in lanes or "dur" not in e:
            continue
        name = op_kind(str(e.get("name", "?")))
        total[name] += float(e["dur"])
        count[name] += 1
    busy = sum(total.values()) / 1e3 / steps
    rows = [{"name": n, "ms_per_step": t / 1e3 / steps, "count": count[n] / steps,
             "share": t / max(sum(total.values()), 1e-9)} for n, t in total.most_common(top)]
    return rows, busy


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=("finetune", "pretrain"), default="finetune")
    p.add_argument("--variants", default="xla,auto", help=f"comma-separated ViT attention variants of {VARIANTS}")
    p.add_argument("--profile", default="auto", help="the variant to trace ('' = none)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (after 3 warm-up steps)")
    p.add_argument("--out", default="gpu_probe_out",
                   help="folder for the trace (also copied to OUT/trace_<variant>.json.gz, for ui.perfetto.dev)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--model-tflop", type=float,
                   help="model TFLOP per step for MFU, where this jax's lowered cost analysis gives none "
                        "(jax 0.11.2 on a GPU; bench/cost_model.py's step_cost on a CPU gives it)")
    p.add_argument("--micro", action="store_true", help="toy widths (smoke test)")
    a = p.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v]
    bad = sorted(set(variants + ([a.profile] if a.profile else [])) - set(VARIANTS))
    if bad:
        p.error(f"unknown variant(s) {bad}; choose from {VARIANTS}")
    if a.profile and a.profile not in variants:
        p.error(f"--profile {a.profile!r} must be one of --variants {variants}")

    import jax

    from bench.bench_train import TRAIN_SHAPES, _micro

    cache = common.enable_jax_cache()  # HFA_BENCH_JAX_CACHE: a later run can reuse the compiles

    base = Shapes(**TRAIN_SHAPES["accel"])
    if a.micro:
        base = _micro(base)
    dev = jax.devices()[0]
    print(f"{common.utc_now()} {dev.device_kind} ({jax.default_backend()}), XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '')!r}; {a.kind} step at {base.describe()}", flush=True)
    peak = common.bf16_matmul_peak_tflops(n=1024 if a.micro else None)
    common.log(f"bf16 matmul peak {peak:.1f} TFLOP/s")
    results: dict = {"device": dev.device_kind, "xla_flags": os.environ.get("XLA_FLAGS", ""), "kind": a.kind,
                     "jax_cache": cache,
                     "shapes": dataclasses.asdict(base), "bf16_peak_tflops": peak, "variants": {}}
    for v in variants:
        s = dataclasses.replace(base, vit_attention=v)
        common.log(f"variant {v}: building and compiling")
        try:
            run = build(a.kind, s)
        except Exception as e:  # noqa: BLE001 - e.g. cuDNN refusing a shape: report it, go on
            common.log(f"variant {v} failed: {type(e).__name__}: {str(e)[:300]}")
            results["variants"][v] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            continue
        times = run.time(warmup=3, iters=a.steps)
        med = common.median(times)
        common.log(f"variant {v}: {med * 1e3:.1f} ms/step (compile {run.compile_s:.0f} s)")
        flops = a.model_tflop * 1e12 if a.model_tflop else run.flops()
        r = {"median_s": med, "times": times, "compile_s": run.compile_s, "xla_memory": common.xla_memory(run.compiled),
             "step_tflop": flops / 1e12 if flops else None, "mfu": flops / med / (peak * 1e12) if flops else None,
             "tflop_source": "--model-tflop" if a.model_tflop else "lowered cost analysis"}
        if flops:
            common.log(f"variant {v}: {flops / 1e12:.2f} TFLOP ({r['tflop_source']}), MFU {r['mfu']:.1%}")
        if v == a.profile:
            trace_dir = os.path.join(a.out, f"trace_{v}")
            n = 3
            jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
            for _ in range(n):
                float(run())
            jax.profiler.stop_trace()
            rows, busy = device_op_table(trace_dir, n)
            # a copy next to --out's top: jax.profiler nests its files four folders down
            shutil.copyfile(newest_trace(trace_dir), os.path.join(a.out, f"trace_{v}.json.gz"))
            r["profile"] = {"busy_ms_per_step": busy, "top_ops": rows}
            # the optimised HLO: maps the trace's fusion names to what they compute
            with gzip.open(os.path.join(a.out, f"hlo_{v}.txt.gz"), "wt") as f:
                f.write(run.compiled.as_text())
            print(f"\ndevice ops of variant {v} ({n} traced steps; busy {busy:.1f} ms/step, "
                  f"wall {med * 1e3:.1f} ms/step):")
            for row in rows:
                print(f"  {row['ms_per_step']:8.2f} ms {row['share']:6.1%} x{row['count']:<5g} {row['name'][:110]}")
        results["variants"][v] = r
        del run  # frees the variant's buffers before the next compiles
    print("\nvariant   ms/step   TFLOP/step   MFU     compile")
    for v, r in results["variants"].items():
        if "error" in r:
            print(f"{v:<8}  failed: {r['error'][:100]}")
        else:
            tf, mfu = (f"{r['step_tflop']:12.2f}", f"{r['mfu']:7.1%}") if r["mfu"] else (f"{'?':>12}", f"{'?':>7}")
            print(f"{v:<8} {r['median_s'] * 1e3:8.1f} {tf} {mfu} {r['compile_s']:8.0f} s")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
