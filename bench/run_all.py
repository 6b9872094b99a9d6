"""Run every benchmark and print one table: hfa_jax against the PyTorch way, side by side.

    python bench/run_all.py [--quick] [--json FILE] [--only NAMES] [--micro] [--no-cost-model]

Rows (``--only`` takes a comma-separated subset; ``cost_model`` selects the cost model):

- ``pretrain_step``, ``finetune_step``: seconds per training step (``bench/bench_train.py``),
  against ``bench/reference_torch.py`` in eager mode (``torch.compile`` in the extra column);
- ``beam_search``: sentences/s, jit beam search vs transformers ``generate`` (``bench/bench_decode.py``);
- ``input_pipeline``: frames/s of the training input path (``bench/bench_input.py``, row (b));
- ``frames_<T>``: fine-tuning step time at T = 64, 128, 256, 300 frames per clip (scaling).

Columns: ours, reference, speedup = reference time / our time (> 1: we are faster; for rates,
ours / reference), unit, settings. ``--json FILE`` writes the rows as a list of objects with keys
``name, ours, reference, unit, speedup, settings`` (plus ``extra``: memory, clips/s, raw times);
the cost model (``bench/cost_model.py``) goes under the same file's sibling ``FILE.cost.json``.
``--micro`` runs toy widths (the smoke test; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

ROW_ORDER = ("pretrain_step", "finetune_step", "beam_search", "input_pipeline",
             "frames_64", "frames_128", "frames_256", "frames_300")
TRAIN_ROWS = {"pretrain_step", "finetune_step", "frames_64", "frames_128", "frames_256", "frames_300"}


def _fmt(x, unit: str) -> str:
    if x is None:
        return "n/a"
    if unit == "s/step":
        return f"{x:.3f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.3f}"


def format_table(rows: list[dict]) -> str:
    head = f"{'benchmark':<15} {'ours':>10} {'reference':>10} {'speedup':>8}  {'unit':<12} settings"
    lines = [head, "-" * len(head)]
    for r in rows:
        sp = f"{r['speedup']:.2f}x" if r.get("speedup") else "n/a"
        lines.append(f"{r['name']:<15} {_fmt(r['ours'], r['unit']):>10} {_fmt(r['reference'], r['unit']):>10} "
                     f"{sp:>8}  {r['unit']:<12} {r['settings']}")
    return "\n".join(lines)


def format_markdown(rows: list[dict]) -> str:
    """The table as Markdown (for bench/RESULTS.md)."""
    out = ["| benchmark | ours | reference | speedup | unit | settings |", "|---|---:|---:|---:|---|---|"]
    for r in rows:
        sp = f"**{r['speedup']:.2f}x**" if r.get("speedup") else "n/a"
        out.append(f"| `{r['name']}` | {_fmt(r['ours'], r['unit'])} | {_fmt(r['reference'], r['unit'])} | {sp} | "
                   f"{r['unit']} | {r['settings']} |")
    return "\n".join(out)


def format_extras(rows: list[dict]) -> str:
    """Second table: memory, throughput in clips/s, torch.compile, checks."""
    out = []
    for r in rows:
        e = r.get("extra") or {}
        bits = []
        if "clips_per_s_ours" in e:
            bits.append(f"clips/s {e['clips_per_s_ours']:.2f} vs {e['clips_per_s_ref']:.2f}")
        if "peak_rss_mib_ours" in e:
            bits.append(f"peak RSS {e['peak_rss_mib_ours']:.0f} vs {e['peak_rss_mib_ref']:.0f} MiB")
        xm = e.get("xla_memory_ours") or {}
        if xm:
            bits.append(f"XLA step buffers {xm['peak_mib']:.0f} MiB (temp {xm['temp_mib']:.0f})")
        if "ref_threads" in e:
            bits.append(f"torch threads {e['ref_threads']} (best of {os.cpu_count()} and 1)")
        if "ref_compiled_s" in e:
            bits.append(f"torch.compile {e['ref_compiled_s']:.3f} s/step -> speedup {e['speedup_vs_compiled']:.2f}x "
                        f"(compile {e['ref_compile_time_s']:.0f} s)")
        if "ref_compiled_error" in e:
            bits.append(f"torch.compile failed: {e['ref_compiled_error']}")
        if "s_per_frame_ours" in e:
            bits.append(f"ms/frame {1e3 * e['s_per_frame_ours']:.1f} vs {1e3 * e['s_per_frame_ref']:.1f}")
        if "identical_sequences" in e:
            bits.append(f"sequences identical to HF: {e['identical_sequences']}")
        if "cpu_mfu_ours" in e:
            bits.append(f"CPU MFU {e['cpu_mfu_ours']:.0%} of measured matmul peak "
                        f"({e['step_tflop']:.3f} TFLOP/step)")
        if "mfu_ours" in e:
            bits.append(f"MFU {e['mfu_ours']:.0%} of the measured bf16 peak {e['bf16_peak_tflops_ours']:.1f} "
                        f"TFLOP/s ({e['step_flops_ours'] / 1e12:.2f} TFLOP/step, {e['device_ours']})")
        if "peak_device_mib_ref" in e:
            bits.append(f"reference peak device memory {e['peak_device_mib_ref']:.0f} MiB")
        if "compile_s_ours" in e:
            bits.append(f"our compile {e['compile_s_ours']:.0f} s")
        if "padding_fraction_ours" in e:
            bits.append(f"padding {e['padding_fraction_ours']:.0%}")
        if bits:
            out.append(f"{r['name']:<15} " + "; ".join(bits))
    return "\n".join(out)


def input_pipeline_row(quick: bool) -> dict:
    """Row (b) of ``bench/bench_input.py`` (its own functions; the pipeline helper owns it)."""
    from bench import bench_input

    rows = bench_input.main(["--quick"] if quick else [])
    r = next(x for x in rows if x["name"].startswith("(b)"))
    s = r["settings"]
    settings = (f"grain ({s['workers']} decoding threads, as the trainer) + jit augment vs PIL + DataLoader "
                f"({s['workers']} worker processes), batch {s['batch_size']}, "
                f"{s['videos']} synthetic clips {s['frame_size_src']} -> {s['stored']}, "
                f"{s['seconds_per_measure']:.0f}s x {s['repeats']}")
    return {"name": "input_pipeline", "ours": r["ours"], "reference": r["reference"], "unit": r["unit"],
            "speedup": r["ours"] / r["reference"], "settings": settings,
            "extra": {"padding_fraction_ours": s.get("padding_fraction_ours", 0.0),
                      "other_rows": [{k: x[k] for k in ("name", "ours", "reference", "speedup")} for x in rows]}}


def cpu_mfu(rows: list[dict], machine: dict, *, quick: bool, micro: bool) -> None:
    """Adds to the training rows our measured step's FLOP utilisation of this CPU's matmul peak
    (FLOPs from XLA's cost analysis of the same step, lowered only)."""
    from bench import bench_train
    from bench.common import Shapes

    peak = machine["matmul_gflops_best"] * 1e9
    for r in rows:
        if r["name"] not in ("pretrain_step", "finetune_step"):
            continue
        kind = "pretrain" if r["name"] == "pretrain_step" else "finetune"
        mode = "quick" if (quick or micro) else "full"
        s = Shapes(**bench_train.TRAIN_SHAPES[mode])
        if micro:
            s = bench_train._micro(s)
        from bench.cost_model import step_cost

        c = step_cost(kind, s, dtype="float32", compile=False)
        r["extra"]["step_tflop"] = c["flops"] / 1e12
        r["extra"]["cpu_mfu_ours"] = c["flops"] / r["ours"] / peak


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller settings, a few minutes")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--only", help=f"comma-separated subset of {', '.join(ROW_ORDER)}, cost_model")
    p.add_argument("--micro", action="store_true", help="toy widths (smoke test)")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument("--no-cost-model", action="store_true", help="skip the cost model")
    p.add_argument("--no-torch-compile", action="store_true", help="skip the torch.compile reference")
    p.add_argument("--quick-input", action="store_true", help="the input_pipeline row in its --quick form")
    p.add_argument("--accelerator", action="store_true",
                   help="GPU rows: ours in bf16 vs the reference's autocast (fp16 on CUDA) at accelerator "
                        "shapes, with our MFU against the measured bf16 peak")
    p.add_argument("--vit-attention", choices=("xla", "auto", "cudnn"), default=None,
                   help="our ViT's attention in the training rows ('auto', the paper config's and the "
                        "default with --accelerator: cuDNN's fused kernel on a GPU in bf16, as the "
                        "reference's SDPA picks flash attention on CUDA; 'xla' otherwise, the same on CPU)")
    p.add_argument("--jax-cache", default=os.path.join(tempfile.gettempdir(), "hfa_bench_jax_cache"),
                   help="JAX persistent compilation cache for our workers ('' disables)")
    a = p.parse_args(argv)
    if a.vit_attention is None:
        a.vit_attention = "auto" if a.accelerator else "xla"
    only = set(a.only.split(",")) if a.only else None
    if only:
        bad = sorted(only - set(ROW_ORDER) - {"cost_model"})
        if bad:
            p.error(f"unknown row(s) {bad}; choose from {', '.join(ROW_ORDER)}, cost_model")
    want = lambda n: only is None or n in only  # noqa: E731
    if a.jax_cache:
        os.environ["HFA_BENCH_JAX_CACHE"] = a.jax_cache
    t0 = time.time()
    load0 = common.loadavg()
    print(f"{common.utc_now()}  machine: {common.machine()}  load average {load0}", flush=True)

    def progress(row):
        sp = f"{row['speedup']:.2f}x" if row.get("speedup") else "n/a"
        print(f"  {row['name']}: ours {_fmt(row['ours'], row['unit'])} reference "
              f"{_fmt(row['reference'], row['unit'])} {row['unit']} ({sp}) [{time.time() - t0:.0f} s]", flush=True)

    rows: list[dict] = []
    train_wanted = {n for n in TRAIN_ROWS if want(n)}
    if train_wanted:
        from bench import bench_train

        rows += bench_train.rows(quick=a.quick, only=train_wanted, micro=a.micro,
                                 compile_reference=not a.no_torch_compile, progress=progress,
                                 accelerator=a.accelerator, vit_attention=a.vit_attention)
    if want("beam_search"):
        from bench import bench_decode

        rows += bench_decode.rows(quick=a.quick, micro=a.micro, progress=progress, accelerator=a.accelerator)
    if want("input_pipeline") and not a.micro:
        rows.append(input_pipeline_row(a.quick or a.quick_input))
        progress(rows[-1])
    rows.sort(key=lambda r: ROW_ORDER.index(r["name"]) if r["name"] in ROW_ORDER else 99)

    cost = None
    from bench import cost_model

    need_cost = want("cost_model") and not a.no_cost_model and not a.micro
    need_mfu = not a.accelerator and any(r["name"] in ("pretrain_step", "finetune_step") for r in rows)
    machine = cost_model.measure_machine(quick=a.quick or a.micro) if (need_cost or need_mfu) else None
    if need_mfu:
        cpu_mfu(rows, machine, quick=a.quick, micro=a.micro)
    if need_cost:
        cost = cost_model.run(quick=a.quick, compile=not a.quick, machine=machine)
    load1 = common.loadavg()

    print()
    print(format_table(rows))
    extras = format_extras(rows)
    if extras:
        print("\n" + extras)
    if a.markdown:
        print("\n" + format_markdown(rows))
    if cost:
        print("\n" + cost_model.format_report(cost))
    print(f"\nversions: {json.dumps(common.versions())}")
    print(f"load average start {load0} end {load1}; total {time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump([{k: r[k] for k in ("name", "ours", "reference", "unit", "speedup", "settings", "extra")}
                       for r in rows], f, indent=1)
        if cost:
            with open(a.json + ".cost.json", "w", encoding="utf-8") as f:
                json.dump(cost, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
