"""One prepared probe of our training step on a GPU: MFU, the kernel table and the paper-batch step,
with and without the new attention path, in one process and one command.

    python bench/gpu_probe.py --out probe/ --json probe/probe.json

For each shape set (``--shapes``: ``paper``, the paper batch 16 x 300 frames x 224 px with
mBART-large 12 + 12; ``accel``, ``bench/bench_train.py``'s B=8, T=64 rows) and each attention
variant (``--variants``: the ``model.attention`` values ``xla`` (XLA's materialised scores, the
plain program), ``cudnn``, ``pallas``, ``auto``) it builds the bf16 training step, initialises it
on the host CPU, compiles it, times it (median after warm-up) and reports the MFU: the step's
*model* FLOPs (XLA's count of the plain-XLA program, the ``xla`` variant lowered for the CPU in a
side process while the GPU works, so no kernel changes the numerator; or ``--model-tflop``)
over (step time x the bf16 matmul peak measured in the same process). For ``--profile``'s
variant it records a ``jax.profiler`` trace of a few steps and prints the device kernels that take
the time, grouped by kind.

XLA's GEMM autotuning and Triton GEMM fusions are on (XLA's defaults; the script warns when
``XLA_FLAGS`` turns them off, as the earliest H100 runs did to shorten the compile), and the
compiled programs and autotuning results go to the persistent cache (``--compile-cache``, default
``~/.cache/hfa_jax/jax``, :mod:`hfa_jax.compile_cache`), so a second run on the same machine skips
both. XLA flags are per process: run the script once per flag set.

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
import subprocess
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import Shapes  # noqa: E402

VARIANTS = ("xla", "cudnn", "pallas", "auto")  # model.attention
# Flags that turn XLA's GEMM autotuning or its Triton GEMM fusions off.
SLOW_PATH_FLAGS = ("--xla_gpu_autotune_level=0", "--xla_gpu_enable_triton_gemm=false")


def shape_sets() -> dict[str, dict]:
    """``--shapes`` choices: the paper batch, and the accelerator rows of bench_train.py."""
    from bench.bench_train import TRAIN_SHAPES
    from bench.cost_model import PAPER

    return {"paper": dataclasses.asdict(PAPER), "accel": dict(TRAIN_SHAPES["accel"])}


def configure(*, attention: str, remat: bool) -> None:
    """Makes ``bench_train``'s model config use ``model.attention=attention`` in every part (the
    ViT, the temporal encoder, mBART) and rematerialise every block or not (``model.remat``: the
    paper batch's saved activations, ~60 GB for the LoRA blocks alone, need it on an 80 GB GPU).
    Both change how the step computes, never its model FLOPs: the MFU numerator is counted
    without them (:func:`start_model_flops`)."""
    from bench import bench_train

    plain = getattr(bench_train.hfa_config, "__wrapped__", bench_train.hfa_config)

    def hfa_config(s, *, dtype="float32"):
        c = plain(s, dtype=dtype)
        shared = dict(attention=attention, remat=remat)
        return dataclasses.replace(c, **shared, vit=dataclasses.replace(c.vit, **shared),
                                   temporal=dataclasses.replace(c.temporal, **shared),
                                   mbart=dataclasses.replace(c.mbart, **shared))

    hfa_config.__wrapped__ = plain
    bench_train.hfa_config = hfa_config


def slow_path_flags(xla_flags: str) -> list[str]:
    """The flags of ``xla_flags`` that turn GEMM autotuning or Triton GEMM fusions off."""
    return [f for f in xla_flags.split() if f in SLOW_PATH_FLAGS]


def start_model_flops(kind: str, s: Shapes) -> subprocess.Popen:
    """Starts a CPU-only side process that prints the plain-XLA step's FLOPs at shapes ``s``
    (``bench/cost_model.py``'s lowered count, with ``model.attention=xla`` and no remat)."""
    code = ("import json, sys; from bench.common import Shapes; from bench.cost_model import step_cost; "
            "from bench.gpu_probe import configure; configure(attention='xla', remat=False); "
            "s = Shapes(**json.loads(sys.argv[2])); "
            "print('FLOPS', step_cost(sys.argv[1], s, compile=False)['flops'])")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shapes = dataclasses.asdict(s)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-c", code, kind, json.dumps(shapes)], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def model_flops_of(proc: subprocess.Popen, timeout: float = 900.0) -> float | None:
    """The FLOPs :func:`start_model_flops`'s process printed (None if it failed)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None
    m = re.search(r"^FLOPS ([\d.e+]+)$", out, re.M)
    if not m:
        common.log(f"model FLOP count failed: {err.strip().splitlines()[-1] if err.strip() else '?'}")
        return None
    return float(m.group(1))


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
    p.add_argument("--shapes", default="paper", help="comma-separated shape sets: paper, accel")
    p.add_argument("--variants", default="xla,auto",
                   help=f"comma-separated model.attention variants of {VARIANTS} (xla: the plain program)")
    p.add_argument("--profile", default="auto", help="the variant to trace ('' = none), at the first shape set")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (after 3 warm-up steps)")
    p.add_argument("--out", default="gpu_probe_out",
                   help="folder for the trace (also copied to OUT/trace_<variant>.json.gz, for ui.perfetto.dev)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--model-tflop", type=float,
                   help="model TFLOP per step for MFU (default: counted in a CPU side process; applies to every "
                        "shape set, so give it with one --shapes only)")
    p.add_argument("--compile-cache", default="auto",
                   help="persistent compilation + autotuning cache: auto (~/.cache/hfa_jax/jax), a folder, or off")
    p.add_argument("--remat", choices=("auto", "on", "off"), default="auto",
                   help="model.remat for the timed steps (auto: on for the paper batch)")
    p.add_argument("--micro", action="store_true", help="toy widths (smoke test)")
    a = p.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v]
    bad = sorted(set(variants + ([a.profile] if a.profile else [])) - set(VARIANTS))
    if bad:
        p.error(f"unknown variant(s) {bad}; choose from {VARIANTS}")
    if a.profile and a.profile not in variants:
        p.error(f"--profile {a.profile!r} must be one of --variants {variants}")
    sets = shape_sets()
    names = [x for x in a.shapes.split(",") if x]
    if not names or sorted(set(names) - set(sets)):
        p.error(f"--shapes: choose from {sorted(sets)}")

    import jax

    from bench.bench_train import _micro
    from hfa_jax import compile_cache

    xla_flags = os.environ.get("XLA_FLAGS", "")
    for f in slow_path_flags(xla_flags):
        common.log(f"warning: XLA_FLAGS has {f}: GEMM autotuning / Triton GEMM fusions are off in this run")
    cache = compile_cache.enable(a.compile_cache) or common.enable_jax_cache()
    dev = jax.devices()[0]
    print(f"{common.utc_now()} {dev.device_kind} ({jax.default_backend()}), XLA_FLAGS={xla_flags!r}, "
          f"compile cache {cache}; {a.kind} step, shapes {names}, variants {variants}", flush=True)
    shapes = {n: Shapes(**sets[n]) for n in names}
    if a.micro:
        shapes = {n: _micro(s) for n, s in shapes.items()}
    # the MFU numerator, counted on the CPU while the GPU compiles and runs
    counting = {} if a.model_tflop else {n: start_model_flops(a.kind, s) for n, s in shapes.items()}
    peak = common.bf16_matmul_peak_tflops(n=1024 if a.micro else None)
    common.log(f"bf16 matmul peak {peak:.1f} TFLOP/s")
    results: dict = {"device": dev.device_kind, "xla_flags": xla_flags, "slow_path_flags": slow_path_flags(xla_flags),
                     "kind": a.kind, "jax_cache": cache, "bf16_peak_tflops": peak, "shapes": {}, "variants": {}}
    for n, base in shapes.items():
        results["shapes"][n] = dataclasses.asdict(base)
        remat = a.remat == "on" or (a.remat == "auto" and n == "paper")
        results["shapes"][n]["remat"] = remat
        for v in variants:
            key = f"{n}/{v}"
            common.log(f"{key}: building and compiling at {base.describe()}, model.attention={v}, remat {remat}")
            configure(attention=v, remat=remat)
            try:
                run = build(a.kind, base)
                times = run.time(warmup=3, iters=a.steps)
            except Exception as e:  # noqa: BLE001 - e.g. a kernel refusing a shape, or out of memory: report, go on
                common.log(f"{key} failed: {type(e).__name__}: {str(e)[:300]}")
                results["variants"][key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                continue
            med = common.median(times)
            common.log(f"{key}: {med * 1e3:.1f} ms/step (compile {run.compile_s:.0f} s)")
            r = {"median_s": med, "times": times, "compile_s": run.compile_s,
                 "xla_memory": common.xla_memory(run.compiled), "compiled_tflop": (run.flops() or 0) / 1e12 or None}
            if v == a.profile and n == names[0]:
                r["profile"] = _profile(run, v, a.out, med)
            results["variants"][key] = r
            del run  # frees the variant's buffers before the next compiles
    for n in names:
        flops = a.model_tflop * 1e12 if a.model_tflop else model_flops_of(counting[n])
        src = "--model-tflop" if a.model_tflop else "plain-XLA program (xla variant), lowered on the CPU"
        for v in variants:
            r = results["variants"].get(f"{n}/{v}", {})
            if "median_s" in r:
                r.update(step_tflop=flops / 1e12 if flops else None, tflop_source=src,
                         mfu=flops / r["median_s"] / (peak * 1e12) if flops else None)
    print("\nshapes/variant   ms/step   model TFLOP   MFU     compile")
    for k, r in results["variants"].items():
        if "error" in r:
            print(f"{k:<15}  failed: {r['error'][:100]}")
        else:
            tf, mfu = (f"{r['step_tflop']:12.2f}", f"{r['mfu']:7.1%}") if r.get("mfu") else (f"{'?':>12}", f"{'?':>7}")
            print(f"{k:<15} {r['median_s'] * 1e3:8.1f} {tf} {mfu} {r['compile_s']:8.0f} s")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return results


def _profile(run, v: str, out: str, med: float) -> dict:
    """Traces 3 steps of ``run`` and prints the device-kernel table; writes the trace and the
    optimised HLO under ``out``."""
    import jax

    trace_dir = os.path.join(out, f"trace_{v}")
    n = 3
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(n):
        float(run())
    jax.profiler.stop_trace()
    rows, busy = device_op_table(trace_dir, n)
    # a copy next to --out's top: jax.profiler nests its files four folders down
    shutil.copyfile(newest_trace(trace_dir), os.path.join(out, f"trace_{v}.json.gz"))
    # the optimised HLO: maps the trace's fusion names to what they compute
    with gzip.open(os.path.join(out, f"hlo_{v}.txt.gz"), "wt") as f:
        f.write(run.compiled.as_text())
    print(f"\ndevice ops of variant {v} ({n} traced steps; busy {busy:.1f} ms/step, wall {med * 1e3:.1f} ms/step):")
    for row in rows:
        print(f"  {row['ms_per_step']:8.2f} ms {row['share']:6.1%} x{row['count']:<5g} {row['name'][:110]}")
    return {"busy_ms_per_step": busy, "top_ops": rows}


if __name__ == "__main__":
    main()
