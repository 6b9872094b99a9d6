"""Training-step benchmarks: ``pretrain_step``, ``finetune_step`` (stage 2) and the
``frames_<T>`` scaling rows, hfa_jax against the PyTorch reference (``bench/reference_torch.py``).

Both sides get the same shapes (:class:`reference_torch.Shapes`), the same batch layout (one
clip padded to 3/4 of the frames), the same trainable set (docs/training.md) and the same optimiser
(clip 1.0 -> AdamW wd 0.01 with the one-cycle schedule). Both run the ViT on the valid frames
only: the reference by boolean indexing (a dynamic shape, as GFSLT-VLP concatenates clips),
ours with the trainer's frame packing (``data.pack_frames`` capacity levels; at the default 8
levels the bench batch packs exactly its valid frames). A step is forward + backward +
optimiser update, on already-normalised pixels (the augmentation/input path is measured by
``bench/bench_input.py``). Ours mirrors the trainer's ``train_step`` (``hfa_jax.train.loop``):
only the trainable subtree is differentiated, the NaN/Inf guard (``isfinite`` of the loss and
of each gradient group, select of the old state on failure) is included, and the state is
donated.

Each side runs in its own subprocess (``worker`` sub-command) so peak RSS is per side.
``rows --accelerator`` is the GPU variant: ours with bf16 compute, the reference under
``torch.autocast`` (float16 + ``GradScaler`` on CUDA), ``TRAIN_SHAPES["accel"]``, and our MFU
(XLA's FLOPs of the compiled step / step time / the bf16 matmul peak measured in the worker).

    python bench/bench_train.py rows [--quick] [--only pretrain_step,frames_64]
    python bench/bench_train.py worker --side ours|torch|torch_compile --kind pretrain|finetune \
        --shapes '{"batch": 2, "frames": 16}' [--iters 5 --warmup 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import Shapes  # noqa: E402  (torch is only imported by the reference worker)

STAGE = {"pretrain": "pretrain", "finetune": "finetune2", "finetune2": "finetune2", "finetune1": "finetune1"}


# ----------------------------------------------------------------------------------------------
# Ours
# ----------------------------------------------------------------------------------------------


def hfa_config(s: Shapes, *, dtype: str = "float32"):
    """``HFAConfig`` for the benchmark shapes: the paper's ViT-S/14 and temporal encoder, mBART with
    the depth/width of ``s`` (paper: d 1024, 12+12 layers)."""
    from hfa_jax.models.hfa import HFAConfig
    from configs.common import model_config

    c = model_config("paper").to_dict()
    c["vit"].update(width=s.vit_width, depth=s.vit_depth, num_heads=s.vit_heads, mlp_dim=s.vit_mlp,
                    lora_blocks=tuple(s.lora_blocks))
    c["attention"] = s.vit_attention  # model.attention: one key for the whole model (models/attention.py)
    c["temporal"].update(width=s.t_width, num_heads=s.t_heads, mlp_dim=s.t_mlp, out_dim=s.d_model)
    c["mbart"].update(vocab_size=s.vocab, d_model=s.d_model, encoder_layers=s.enc_layers,
                      decoder_layers=s.dec_layers, encoder_attention_heads=s.m_heads,
                      decoder_attention_heads=s.m_heads, encoder_ffn_dim=s.m_ffn, decoder_ffn_dim=s.m_ffn,
                      max_position_embeddings=s.max_pos, decoder_start_token_id=3)
    c["frame_dim"] = s.t_width
    c["num_pseudo_glosses"] = s.num_pg
    c["dtype"] = dtype
    return HFAConfig.from_config(c)


def pack_levels() -> int:
    """The trainer's default ``data.pack_frames`` (capacity levels per bucket)."""
    from hfa_jax.train import schema as validate

    return int(validate.base().data.pack_frames)


def reference_frame_mask(s: Shapes):
    """The reference's layout (``reference_torch.make_batch``): the last clip 3/4 long."""
    import numpy as np

    fm = np.ones((s.batch, s.frames), bool)
    if s.batch > 1:
        fm[-1, (3 * s.frames) // 4:] = False
    return fm


def abstract_batch(kind: str, s: Shapes, packed_frames: int | None = None) -> dict:
    """ShapeDtypeStructs of one batch (pixels [B, T, H, W, 3] f32 normalised) with the packed
    frame index ``[1, P]``: ``packed_frames`` P, default the trainer's packing of
    :func:`reference_frame_mask`; 0 = no packing (every padded frame through the ViT)."""
    import jax
    import jax.numpy as jnp

    from hfa_jax.models.packing import capacity

    b, t, L = s.batch, s.frames, s.text_len
    sd = jax.ShapeDtypeStruct
    out = {"pixels": sd((b, t, s.image, s.image, 3), jnp.float32), "frame_mask": sd((b, t), jnp.bool_)}
    if packed_frames is None:
        packed_frames = capacity(int(reference_frame_mask(s).sum()), b * t, pack_levels())
        packed_frames = 0 if packed_frames == b * t else packed_frames  # full: unpacked, as the trainer
    if packed_frames:
        out["frame_index"] = sd((1, packed_frames), jnp.int32)
    if kind == "pretrain":
        out.update(text_ids=sd((b, L), jnp.int32), text_mask=sd((b, L), jnp.bool_),
                   pg_targets=sd((b, s.num_pg + 1), jnp.float32))
    else:
        out.update(decoder_input_ids=sd((b, L), jnp.int32), target_mask=sd((b, L), jnp.bool_),
                   labels=sd((b, L), jnp.int32))
    return out


def concrete_batch(kind: str, s: Shapes, seed: int = 0) -> dict:
    """A batch with the reference's layout (``reference_torch.make_batch``: the last clip 3/4
    long, the last text half long) as numpy, channels-last pixels. Values are random."""
    import numpy as np

    from hfa_jax.models.packing import leaves_out_frames, pack_index

    rng = np.random.default_rng(seed)
    b, t, L = s.batch, s.frames, s.text_len
    fm = reference_frame_mask(s)
    tm = np.ones((b, L), bool)
    tm[-1, L // 2:] = False
    ids = rng.integers(4, s.vocab, (b, L)).astype(np.int32)
    out = {"pixels": rng.standard_normal((b, t, s.image, s.image, 3), np.float32), "frame_mask": fm}
    index = pack_index(fm, 1, pack_levels())
    if leaves_out_frames(index, fm):  # as the trainer: otherwise the unpacked program runs
        out["frame_index"] = index
    if kind == "pretrain":
        pg = np.zeros((b, s.num_pg + 1), np.float32)
        pg[:, 1:6] = 1.0
        out.update(text_ids=ids, text_mask=tm, pg_targets=pg)
    else:
        out.update(decoder_input_ids=ids, target_mask=tm, labels=ids)
    return out


def make_step(kind: str, s: Shapes, *, dtype: str = "float32", total_steps: int = 1000):
    """-> (init_state(rng) -> state, step(state, batch) -> (state, loss)), both un-jitted and pure.

    The trainer's own state (:func:`hfa_jax.train.state.make_state`) and update
    (:func:`hfa_jax.train.steps.update_step`: forward with dropout, the stage's loss, gradients of
    the trainable subtree, AdamW, the non-finite guard) on the batch's normalised ``pixels``,
    as the reference receives them; the paper's optimiser and freezing table."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import ml_collections

    from hfa_jax.models.hfa import build_model
    from hfa_jax.train import freeze, schema, steps, tasks
    from hfa_jax.train import optim as optim_lib
    from hfa_jax.train import state as state_lib

    cfg = hfa_config(s, dtype=dtype)
    model = build_model(cfg, "pretrain" if kind == "pretrain" else "translate")
    tx, schedule = optim_lib.make_optimizer(peak_lr=3e-4, total_steps=total_steps, pct_start=0.05,
                                            weight_decay=0.01, clip_norm=1.0)
    config = schema.base()
    config.train.stage = STAGE[kind]
    config.model = ml_collections.ConfigDict({"beyondgloss": None})  # the paper model: no BeyondGloss terms
    task = tasks.make(schema.resolve(config))
    rules = freeze.trainable_rules(STAGE[kind])
    small = dataclasses.replace(s, batch=1, frames=2)
    dummy = {k: jnp.zeros(v.shape, v.dtype) for k, v in abstract_batch(kind, small, packed_frames=0).items()}

    def init_state(rng):
        r1, r2 = jax.random.split(rng)
        variables = nn.meta.unbox(model.init({"params": r1, "dropout": r2}, *task.model_inputs(
            dummy, dummy["pixels"]), deterministic=True))
        mask = freeze.trainable_mask(variables["params"], rules)
        return state_lib.make_state(variables, rng, mask=mask, tx=tx)

    def step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        new_state, metrics, _ = steps.update_step(state, batch, batch["pixels"], model=model, task=task,
                                                  tx=tx, schedule=schedule, rng=rng)
        return new_state, metrics["loss"]

    return init_state, step


def init_on_host(init_state, seed: int = 0):
    """``init_state(key)`` run on the host CPU, the result copied to the default device. Why: the
    init program (every initialiser of the model) runs once, and compiling it for a GPU took
    190 s on an H100 (40 s on a 2-core CPU)."""
    import jax

    with jax.default_device(jax.devices("cpu")[0]):
        state = jax.jit(init_state)(jax.random.PRNGKey(seed))
    return jax.block_until_ready(jax.device_put(state, jax.devices()[0]))


class CompiledStep:
    """A training step compiled for ``(state, batch)`` with the state donated, as the trainer
    runs it. Calling it runs one step on the held state and returns the loss."""

    def __init__(self, step, state, batch):
        import jax

        t0 = time.perf_counter()
        self.lowered = jax.jit(step, donate_argnums=0).lower(state, batch)
        self.compiled = self.lowered.compile()
        self.compile_s = time.perf_counter() - t0
        self.state, self.batch = state, batch

    def __call__(self):
        self.state, loss = self.compiled(self.state, self.batch)
        return loss

    def time(self, *, warmup: int, iters: int, max_seconds: float | None = None) -> list[float]:
        """Seconds per step as the trainer runs them: step i+1 is queued before step i's loss
        is read back (``common.time_calls_pipelined``)."""
        return common.time_calls_pipelined(self, warmup=warmup, iters=iters, sync=float, max_seconds=max_seconds)

    def flops(self) -> float | None:
        """FLOPs of one step: XLA's cost analysis of the lowered module, the model FLOPs that
        MFU counts; None where this jax gives none (jax 0.11.2 on a GPU). Not the compiled
        module's: on a GPU its GEMMs are cuBLAS custom calls that the analysis does not count
        (an H100 step of 7.7 TFLOP read as 0.30)."""
        try:
            ca = self.lowered.cost_analysis()
        except Exception:  # noqa: BLE001 - a missing analysis must not lose the timings
            return None
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca  # older jax: one dict per computation
        return float(ca["flops"]) if ca and ca.get("flops") else None


def ours_worker(kind: str, s: Shapes, *, iters: int, warmup: int, max_seconds: float,
                precision: str = "fp32") -> dict:
    import jax

    common.log(f"ours {kind} on {jax.devices()[0].device_kind}: {s.describe()}")
    init_state, step = make_step(kind, s, dtype="bfloat16" if precision == "mixed" else "float32")
    state = init_on_host(init_state)
    batch = {k: jax.device_put(v) for k, v in concrete_batch(kind, s).items()}
    common.log("initialised; compiling the step")
    run = CompiledStep(step, state, batch)
    common.log(f"compiled in {run.compile_s:.1f} s; timing")
    times = run.time(warmup=warmup, iters=iters, max_seconds=max_seconds)
    common.log(f"median {common.median(times):.4f} s/step over {len(times)} steps")
    from hfa_jax.train.freeze import count_params

    out = {"times": times, "median_s": common.median(times), "peak_rss_mib": common.peak_rss_mb(),
           "compile_s": run.compile_s, "xla_memory": common.xla_memory(run.compiled),
           "trainable": count_params(run.state["trainable"]), "loss": float(run()),
           "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if precision == "mixed":  # accelerator rows: model FLOP utilisation against a measured peak
        out["step_flops"] = run.flops()
        out["bf16_peak_tflops"] = common.bf16_matmul_peak_tflops()
        if out["step_flops"]:
            out["mfu"] = out["step_flops"] / out["median_s"] / (out["bf16_peak_tflops"] * 1e12)
    return out


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------


def torch_worker(kind: str, s: Shapes, *, iters: int, warmup: int, max_seconds: float, compile: bool,
                 precision: str = "fp32") -> dict:
    import torch

    from bench import reference_torch as ref

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # the accelerator rows compare our bf16 with the reference's fp16 autocast (CPU: bf16)
    amp = ref.Amp(device, None if precision == "fp32" else
                  (torch.float16 if device == "cuda" else torch.bfloat16))
    common.log(f"torch {kind} on {device} ({'compiled' if compile else 'eager'}, amp {amp.dtype}): {s.describe()}")
    model, opt, sched = ref.build(kind, s, device=device)
    batch = ref.move_batch(ref.make_batch(kind, s), device)
    common.log("built; warming up")
    compile_s = 0.0
    if compile:
        step = ref.compiled_step(model, opt, sched, amp)
        t0 = time.perf_counter()
        step(batch)  # compiles
        compile_s = time.perf_counter() - t0
    else:
        step = lambda b: ref.train_step(model, opt, sched, b, amp)  # noqa: E731
    if device == "cuda":
        step(batch)
        threads = {"threads": torch.get_num_threads(), "probe_s": {}}
        torch.cuda.reset_peak_memory_stats()
    else:
        threads = common.pick_torch_threads(lambda: step(batch))
    times = common.time_calls(lambda: step(batch), warmup=max(warmup - 1, 0), iters=iters, max_seconds=max_seconds)
    common.log(f"median {common.median(times):.4f} s/step over {len(times)} steps")
    out = {"times": times, "median_s": common.median(times), "peak_rss_mib": common.peak_rss_mb(),
           "compile_s": compile_s, "trainable": ref.trainable_count(model), "loss": step(batch),
           "threads": threads["threads"], "thread_probe_s": threads["probe_s"], "device": device,
           "amp": str(amp.dtype)}
    if device == "cuda":
        out["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------

# Settings (2-core CPU: each step must take seconds, not minutes).
TRAIN_SHAPES = {"full": dict(batch=2, frames=16, image=112), "quick": dict(batch=1, frames=8, image=56),
                # accelerator rows (bf16 vs fp16 autocast): real ViT-S/14 at 224 px and mBART-large
                "accel": dict(batch=8, frames=64, image=224, enc_layers=12, dec_layers=12, text_len=32)}
SCALING_FRAMES = (64, 128, 256, 300)
SCALING_SHAPES = {"full": dict(batch=1, image=28), "quick": dict(batch=1, image=28),
                  "accel": dict(batch=1, image=224, enc_layers=12, dec_layers=12, text_len=32)}
TORCH_COMPILE_TIMEOUT = 600.0  # Inductor on 2 CPU cores takes minutes; give up after this
ITERS = {"full": (2, 5, 60.0), "quick": (1, 3, 20.0), "accel": (3, 10, 60.0)}  # warmup, iters, max s


def _run(side: str, kind: str, s: Shapes, mode: str, timeout: float = 1800.0, precision: str = "fp32") -> dict:
    warmup, iters, max_s = ITERS["quick" if mode == "micro" else mode]
    args = ["worker", "--side", side, "--kind", kind, "--shapes", json.dumps(dataclasses.asdict(s)),
            "--iters", str(iters), "--warmup", str(warmup), "--max-seconds", str(max_s),
            "--precision", precision]
    return common.run_worker("bench_train.py", args, timeout=timeout)


def _row(name: str, ours: dict, ref: dict, settings: str, extra: dict) -> dict:
    return {"name": name, "ours": ours["median_s"], "reference": ref["median_s"] if ref else None,
            "unit": "s/step", "speedup": (ref["median_s"] / ours["median_s"]) if ref else None,
            "settings": settings, "extra": extra}


def rows(*, quick: bool = False, only: set[str] | None = None, micro: bool = False,
         compile_reference: bool = True, progress: Any = None, accelerator: bool = False,
         vit_attention: str = "xla") -> list[dict]:
    """Runs the training rows wanted by ``only`` (None = all) and returns them.

    ``micro``: toy widths (the smoke test); ``compile_reference``: also time ``torch.compile``
    (extra field, the main reference stays eager as the issue asks); ``accelerator``: the GPU
    rows, ours in bf16 against the reference's autocast (fp16 with a GradScaler on CUDA), at
    accelerator shapes (``TRAIN_SHAPES["accel"]``), with our MFU against the measured bf16 peak;
    ``vit_attention``: our ``model.attention`` ("xla", "auto": cuDNN where it applies), which the
    ViT, the temporal encoder and mBART share."""
    mode = "quick" if quick or micro else "full"
    if accelerator:
        mode = "micro" if micro else "accel"
    precision = "mixed" if accelerator else "fp32"
    shapes_key = "quick" if mode == "micro" else mode
    want = lambda n: only is None or n in only  # noqa: E731
    out = []
    base = Shapes(**TRAIN_SHAPES[shapes_key], vit_attention=vit_attention)
    if micro:
        base = _micro(base)
    for kind, name in (("pretrain", "pretrain_step"), ("finetune", "finetune_step")):
        if not want(name):
            continue
        ours = _run("ours", kind, base, mode, precision=precision)
        ref = _run("torch", kind, base, mode, precision=precision)
        extra = {"clips_per_s_ours": base.batch / ours["median_s"], "clips_per_s_ref": base.batch / ref["median_s"],
                 "peak_rss_mib_ours": ours["peak_rss_mib"], "peak_rss_mib_ref": ref["peak_rss_mib"],
                 "xla_memory_ours": ours["xla_memory"], "compile_s_ours": ours["compile_s"],
                 "trainable_ours": ours["trainable"], "trainable_ref": ref["trainable"],
                 "times_ours": ours["times"], "times_ref": ref["times"], "ref_threads": ref["threads"],
                 "backend_ours": ours["backend"], "device_ours": ours["device_kind"], "device_ref": ref["device"],
                 "precision": f"ours {'bfloat16' if accelerator else 'float32'}, reference {ref['amp']}",
                 "xla_flags_ours": ours.get("xla_flags", "")}
        for k in ("mfu", "step_flops", "bf16_peak_tflops"):
            if k in ours:
                extra[f"{k}_ours"] = ours[k]
        if "peak_device_mib" in ref:
            extra["peak_device_mib_ref"] = ref["peak_device_mib"]
        if compile_reference and not micro:
            try:
                rc = _run("torch_compile", kind, base, mode, timeout=TORCH_COMPILE_TIMEOUT, precision=precision)
                extra.update(ref_compiled_s=rc["median_s"], ref_compile_time_s=rc["compile_s"],
                             speedup_vs_compiled=rc["median_s"] / ours["median_s"])
            except Exception as e:  # noqa: BLE001 - reported in the table, not fatal
                extra["ref_compiled_error"] = str(e).strip().splitlines()[-1][:200]
        settings = base.describe() + ("; bf16 vs autocast" if accelerator else "")
        out.append(_row(name, ours, ref, settings, extra))
        if progress:
            progress(out[-1])
    frames = SCALING_FRAMES if not micro else (8, 16)
    for t in frames:
        name = f"frames_{t}"
        if not want(name):
            continue
        s = dataclasses.replace(Shapes(**SCALING_SHAPES[shapes_key]), frames=t, vit_attention=vit_attention)
        if micro:
            s = _micro(s)
        ours = _run("ours", "finetune", s, mode, precision=precision)
        ref = _run("torch", "finetune", s, mode, precision=precision)
        extra = {"s_per_frame_ours": ours["median_s"] / t, "s_per_frame_ref": ref["median_s"] / t,
                 "peak_rss_mib_ours": ours["peak_rss_mib"], "peak_rss_mib_ref": ref["peak_rss_mib"],
                 "xla_memory_ours": ours["xla_memory"], "ref_threads": ref["threads"]}
        out.append(_row(name, ours, ref, "finetune step; " + s.describe(), extra))
        if progress:
            progress(out[-1])
    return out


def _micro(s: Shapes) -> Shapes:
    """Toy widths for the smoke test (seconds per worker)."""
    return dataclasses.replace(s, batch=1, frames=min(s.frames, 16), image=28, vit_width=32, vit_depth=3,
                               vit_heads=2, vit_mlp=64, lora_blocks=(2,), t_width=32, t_heads=4, t_mlp=64,
                               d_model=32, m_heads=4, m_ffn=64, enc_layers=1, dec_layers=1, vocab=64, num_pg=16,
                               text_len=6, max_pos=64)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--side", choices=("ours", "torch", "torch_compile"), required=True)
    w.add_argument("--kind", choices=("pretrain", "finetune"), required=True)
    w.add_argument("--shapes", default="{}")
    w.add_argument("--iters", type=int, default=5)
    w.add_argument("--warmup", type=int, default=2)
    w.add_argument("--max-seconds", type=float, default=60.0)
    w.add_argument("--precision", choices=("fp32", "mixed"), default="fp32")
    r = sub.add_parser("rows")
    r.add_argument("--quick", action="store_true")
    r.add_argument("--micro", action="store_true")
    r.add_argument("--only", default=None)
    r.add_argument("--accelerator", action="store_true", help="GPU rows: bf16 vs fp16 autocast, MFU")
    a = p.parse_args(argv)
    if a.cmd == "worker":
        d = json.loads(a.shapes)
        if "lora_blocks" in d:
            d["lora_blocks"] = tuple(d["lora_blocks"])
        s = Shapes(**d)
        if a.side == "ours":
            common.enable_jax_cache()
            res = ours_worker(a.kind, s, iters=a.iters, warmup=a.warmup, max_seconds=a.max_seconds,
                              precision=a.precision)
        else:
            res = torch_worker(a.kind, s, iters=a.iters, warmup=a.warmup, max_seconds=a.max_seconds,
                               compile=a.side == "torch_compile", precision=a.precision)
        common.emit(res)
    else:
        only = set(a.only.split(",")) if a.only else None
        for row in rows(quick=a.quick, only=only, micro=a.micro, accelerator=a.accelerator):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
