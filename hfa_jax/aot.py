"""Compile a stage's programs ahead of time for any TPU topology (or this machine's devices) and
report whether they fit: ``python -m hfa_jax.aot --config=CONFIG --topology=NAME [--json]``.

    python -m hfa_jax.aot --config=configs/finetune.py:stage2 --topology=v5e:2x4
    python -m hfa_jax.aot --config=configs/pretrain.py --topology=local --config.mesh.fsdp=8
    python -m hfa_jax.aot --config=configs/pretrain.py --topology=v5e:2x4 --programs=train --breakdown

No weights and no data are read: the model's variables, the train state and the batches are
shapes (``jax.eval_shape``, :func:`hfa_jax.train.steps.batch_shapes`). The programs are the
trainer's own (:mod:`hfa_jax.train.trainer`'s state plan and shardings, :mod:`hfa_jax.train.steps`'
functions), so a compile error here is one the real run would hit:

* ``train``: the donated train step at the largest bucket, every frame slot filled (frame packing
  then leaves nothing out, so this is the largest program of the run);
* ``eval``: the evaluation step at the evaluation batch;
* ``generate``: beam search (fine-tuning stages).

TPU topologies (``v5e:2x2``, ``v5e:4x4``, ``v6e:2x2``, ``v5p:2x2x2`` ...) compile on a CPU-only
machine through libtpu (``pip install -e ".[tpu]"``), as maxtext's ``train_compile.py`` does.
For each program the report gives the per-device memory (XLA's memory analysis: arguments,
outputs, temporaries, total) against the chip's HBM, whether it fits, XLA's FLOP and memory-traffic
counts, and the step time: XLA's estimate where the backend gives one (TPU; libtpu gives none,
a negative value, for the large training programs), else the roofline bound
``max(FLOPs / peak, bytes / HBM bandwidth)`` from the chip's public specs. From that step time
come the model FLOP utilisation and the paper schedule's hours. If the train step does not fit,
the report tries ``model.remat``, ``mesh.fsdp`` over every device and ``train.microbatches`` and
names the first that fits.

**MFU counts model FLOPs.** The step time's compute term uses the compiled program's FLOPs (what
the chip executes, rematerialisation and kernels included), but the utilisation's numerator is
the train step's *model* FLOPs: XLA's count of the plain-XLA update step (the step without its
augmentation: forward, backward, optimiser), lowered for this machine's first device from shapes
with no rematerialisation, one micro-batch and every attention on XLA's path
(:func:`plain_config`), divided by the number of devices (:func:`model_flops`). So neither a
custom kernel (whose ``CostEstimate`` XLA adds to the compiled count) nor rematerialisation nor
a change in how the augmentation is computed can move the numerator.

``--programs=train,eval`` compiles only those programs. ``--breakdown`` splits the compiled train
step's FLOPs and bytes into its parts (augmentation, frozen ViT, LoRA ViT, temporal, mBART, text
encoder, losses, optimiser, other) by the op metadata of its optimised HLO
(:mod:`hfa_jax.hlo_cost`, which documents the method and its limits); ``--save_hlo=DIR`` keeps
each program's optimised HLO text (``python -m hfa_jax.hlo_cost FILE`` reads it again).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from hfa_jax import config_cli, hlo_cost
from hfa_jax.data import augment as augment_lib
from hfa_jax.errors import ConfigError, UserError
from hfa_jax.train import mesh as mesh_lib
from hfa_jax.train import schema
from hfa_jax.train import settings as settings_lib
from hfa_jax.train import steps as steps_lib
from hfa_jax.train import tasks as tasks_lib
from hfa_jax.train import trainer as trainer_lib

GIB = 2 ** 30
PROGRAMS = ("train", "eval", "generate")  # what stage_programs compiles (generate: tasks that generate)

# Per chip: HBM (GiB), dense bf16 peak (TFLOP/s) and HBM bandwidth (GB/s), by the device kind's
# prefix (public specs).
CHIPS: dict[str, tuple[float, float, float]] = {
    "TPU v5 lite": (16, 197, 819), "TPU v5e": (16, 197, 819), "TPU v5p": (95, 459, 2765), "TPU v5": (95, 459, 2765),
    "TPU v6 lite": (32, 918, 1640), "TPU v6e": (32, 918, 1640), "TPU v4": (32, 275, 1200),
    "NVIDIA A100-SXM4-40GB": (40, 312, 1555), "NVIDIA A100 80GB": (80, 312, 2039),
    "NVIDIA A100-SXM4-80GB": (80, 312, 2039), "NVIDIA H100": (80, 989, 3350), "NVIDIA H200": (141, 989, 4800),
}


@dataclasses.dataclass
class ProgramReport:
    name: str
    per_device_bytes: dict[str, int]   # arguments, outputs, temporaries, total
    hbm_bytes: int | None
    fits: bool | None
    flops: float | None                # per device, XLA's count
    estimated_seconds: float | None    # XLA's estimate (TPU), where it gives a positive one
    mfu: float | None = None
    paper_hours: float | None = None   # the paper schedule at the step time of step_time_source
    note: str = ""
    bytes_accessed: float | None = None   # per device, XLA's count of memory traffic
    roofline_seconds: float | None = None  # max(FLOPs / peak, bytes / HBM bandwidth): a lower bound
    step_time_source: str = ""         # what paper_hours and mfu use: "xla", "roofline" or ""
    model_flops: float | None = None   # per device: the MFU numerator (model_flops(); else flops)
    model_flops_source: str = ""       # where model_flops comes from
    breakdown: dict | None = None      # --breakdown: {part: {"flops", "bytes", "instructions"}}

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def topology_devices(name: str) -> tuple[list[Any], int]:
    """(devices, number of processes) of ``name``: ``local`` or a TPU topology such as ``v5e:2x4``."""
    if name == "local":
        return list(jax.devices()), jax.process_count()
    # libtpu guards a TPU against a second process with /tmp/libtpu_lockfile; compiling for a
    # topology uses no TPU, so it must not wait for (or fail on) a lock another JAX process holds.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies
        topo = topologies.get_topology_desc(topology_name=name, platform="tpu")
    except Exception as e:  # libtpu missing, or a name it does not know
        raise ConfigError(f"--topology={name}: cannot describe this TPU topology ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); install libtpu with pip install -e \".[tpu]\" "
                          "and use a name such as v5e:2x2, v5e:4x4, v6e:2x2 or v5p:2x2x2") from None
    devices = list(topo.devices)
    return devices, len({d.process_index for d in devices})


def chip_of(device) -> tuple[float | None, float | None, float | None]:
    """(HBM GiB, peak bf16 TFLOP/s, HBM GB/s) of a device, from its kind (None where unknown,
    e.g. CPU)."""
    kind = str(getattr(device, "device_kind", ""))
    for prefix, spec in sorted(CHIPS.items(), key=lambda kv: -len(kv[0])):
        if kind.startswith(prefix):
            return spec
    stats = getattr(device, "memory_stats", lambda: None)()
    if stats and stats.get("bytes_limit"):
        return stats["bytes_limit"] / GIB, None, None
    return None, None, None


def _cost(compiled) -> dict:
    try:
        c = compiled.cost_analysis()
    except Exception:
        return {}
    if isinstance(c, (list, tuple)):
        c = c[0] if c else {}
    return dict(c or {})


def compile_program(fn: Callable, args: Sequence[Any], *, mesh, rules, in_shardings, out_shardings=None,
                    donate_argnums=()) -> Any:
    """Lowers and compiles ``fn`` for the mesh's devices (which need not be this machine's)."""
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums)
    with mesh, nn.logical_axis_rules(rules):
        return jitted.lower(*args).compile()


def report_program(name: str, compiled, device, *, steps_per_run: int | None,
                   model_flops: float | None = None, model_flops_source: str = "") -> ProgramReport:
    """Memory, FLOPs, traffic and step time of a compiled program on ``device``'s chip.
    ``model_flops`` (per device): the MFU numerator; without it the compiled program's own FLOPs
    stand in (``model_flops_source`` then says so)."""
    ma = compiled.memory_analysis()
    per = {"arguments": int(ma.argument_size_in_bytes), "outputs": int(ma.output_size_in_bytes),
           "temporaries": int(ma.temp_size_in_bytes)}
    # Donated arguments alias outputs: count those bytes once.
    per["total"] = (per["arguments"] + per["outputs"] + per["temporaries"] - int(ma.alias_size_in_bytes)
                    + int(ma.generated_code_size_in_bytes))
    hbm_gib, peak, bandwidth = chip_of(device)
    hbm = int(hbm_gib * GIB) if hbm_gib else None
    cost = _cost(compiled)
    flops = float(cost["flops"]) if cost.get("flops") else None
    moved = float(cost["bytes accessed"]) if cost.get("bytes accessed") else None
    # XLA's TPU estimate; for large training programs libtpu returns a negative value (no
    # estimate), and then the roofline bound stands in for it.
    est = float(cost["optimal_seconds"]) if (cost.get("optimal_seconds") or 0) > 0 else None
    roofline = None
    if flops and peak and moved and bandwidth:
        roofline = max(flops / (peak * 1e12), moved / (bandwidth * 1e9))
    step, source = (est, "xla") if est else ((roofline, "roofline") if roofline else (None, ""))
    if model_flops is None:
        model_flops, model_flops_source = flops, ("compiled program (no model count given)" if flops else "")
    mfu = model_flops / (step * peak * 1e12) if (model_flops and step and peak) else None
    hours = step * steps_per_run / 3600 if (step and steps_per_run) else None
    return ProgramReport(name=name, per_device_bytes=per, hbm_bytes=hbm, fits=(per["total"] <= hbm) if hbm else None,
                         flops=flops, estimated_seconds=est, mfu=mfu, paper_hours=hours, bytes_accessed=moved,
                         roofline_seconds=roofline, step_time_source=source, model_flops=model_flops,
                         model_flops_source=model_flops_source)


def plain_config(config) -> ml_collections.ConfigDict:
    """``config`` with everything that changes how, not what, the update step computes set to the
    plain XLA program: no rematerialisation, XLA's attention (``model.attention``), the whole
    batch in one micro-batch (XLA's count need not multiply a loop's body by its trip count),
    frozen weights stored as they are imported (float32), and the batch on one device."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.remat = False
    c.model.attention = "xla"
    c.train.microbatches = 1
    c.train.bf16_frozen = False  # the storage of frozen weights is no model FLOP
    c.data.augment.padding_chunk = 0
    c.mesh.data, c.mesh.fsdp = 1, 1
    return c


MODEL_FLOPS_SOURCE = "plain-XLA update step (no remat, XLA attention, one micro-batch, no augmentation) / devices"


def _stage_of(config) -> tuple[Any, settings_lib.Settings, tasks_lib.Task]:
    """(model config, settings, task) of a config compiled from shapes alone (``config`` is an
    unlocked copy; a missing decoder start id is filled in)."""
    model_cfg = settings_lib.model_config(config)
    if model_cfg.mbart.decoder_start_token_id is None:
        # The language id comes from the tokenizer in a real run; any id compiles the same program.
        config.model.mbart.decoder_start_token_id = model_cfg.mbart.vocab_size - 1
        model_cfg = settings_lib.model_config(config)
    settings = schema.resolve(config)
    return model_cfg, settings, tasks_lib.make(settings)


def model_flops(config, *, num_devices: int, frame_size: int) -> float:
    """The train step's model FLOPs per device: XLA's count of the plain-XLA update step
    (:func:`hfa_jax.train.steps.update_step`: forward, backward and optimiser on normalised
    pixels; no augmentation) of :func:`plain_config`, lowered for this machine's first device
    from shapes alone (nothing is allocated or compiled) at the global batch, every frame slot
    filled, divided by ``num_devices``."""
    c = plain_config(config)
    model_cfg, settings, task = _stage_of(c)
    mesh = mesh_lib.make_mesh(data=1, fsdp=1, devices=[jax.devices()[0]])
    rules = mesh_lib.logical_rules(settings.mesh.rules)
    gbs = settings.train.batch_size
    model = trainer_lib.build_model(task, model_cfg)
    plan = trainer_lib.plan_state(task, model, mesh, rules, total_steps=trainer_lib.total_steps_of(settings.train, 100),
                                  steps_per_epoch=100)
    t, crop = max(settings.data.buckets), settings.data.crop_size
    batch = steps_lib.batch_shapes(task, batch_size=gbs, num_frames=t, frame_size=frame_size, kind="train",
                                   num_pseudo_glosses=model_cfg.num_pseudo_glosses)
    batch.pop("frames")
    pixels = jax.ShapeDtypeStruct((gbs, t, crop, crop, 3), jnp.float32)

    def fn(state, batch, pixels, rng):
        return steps_lib.update_step(state, batch, pixels, model=model, task=task, tx=plan.tx,
                                     schedule=plan.schedule, rng=rng)

    with mesh, nn.logical_axis_rules(rules):
        lowered = jax.jit(fn).lower(plan.abstract_state, batch, pixels, jax.random.key(0))
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = float((cost or {}).get("flops", 0.0))
    if flops <= 0:
        raise ConfigError("the lowered update step has no FLOP count on this machine's backend")
    return flops / num_devices


def stage_programs(config, devices: Sequence[Any], *, num_train: int, frame_size: int,
                   only: Sequence[str] = ("train", "eval", "generate"), breakdown: bool = False,
                   save_hlo: str = "", count_model_flops: bool = True) -> list[ProgramReport]:
    """Compiles the stage's programs for ``devices`` and reports each (per device). With
    ``breakdown`` the train step's FLOPs and bytes per part (:mod:`hfa_jax.hlo_cost`); with
    ``save_hlo`` each program's optimised HLO text is written there (``<program>.hlo.txt``);
    ``count_model_flops``: the train step's MFU numerator from :func:`model_flops` (else the
    compiled program's FLOPs)."""
    unknown = sorted(set(only) - set(PROGRAMS))
    if unknown:
        raise ConfigError(f"--programs: unknown program(s) {', '.join(unknown)}; choose from {', '.join(PROGRAMS)}")
    if save_hlo:  # before the (long) compiles: an unwritable folder is one line, now
        try:
            os.makedirs(save_hlo, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--save_hlo={save_hlo}: cannot create this folder ({e.strerror or e})") from None
    original = config
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
    schema.validate(config, check_paths=False)
    if devices[0].platform != jax.devices()[0].platform:
        # What the real run computes on its own backend (steps.padding_chunk: off off-CPU).
        config.data.augment.padding_chunk = 0
        config.data.augment.method = augment_lib.resolve_method(  # "auto" as the target resolves it
            str(config.data.augment.get("method", "auto")), devices[0].platform)
        if devices[0].platform == "tpu" and str(config.model.get("attention", "xla")) == "auto":
            # model.attention=auto resolves by the backend the model is traced on, here this
            # host's; on a TPU it is the ViT's Pallas kernels (and XLA elsewhere in the model,
            # which is what "pallas" means there too)
            config.model.attention = "pallas"
    model_cfg, settings, task = _stage_of(config)
    mesh = mesh_lib.make_mesh(data=settings.mesh.data, fsdp=settings.mesh.fsdp, devices=devices)
    rules = mesh_lib.logical_rules(settings.mesh.rules)
    gbs = settings.train.batch_size
    if gbs % len(devices):
        raise ConfigError(f"config.train.batch_size={gbs} is not a multiple of the {len(devices)} devices")
    steps_per_epoch = max(1, num_train // gbs)
    total_steps = trainer_lib.total_steps_of(settings.train, steps_per_epoch)
    model = trainer_lib.build_model(task, model_cfg)
    plan = trainer_lib.plan_state(task, model, mesh, rules, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    bound = trainer_lib.bind_steps(task, model, plan)
    t = max(settings.data.buckets)
    state = plan.abstract_sharded_state()

    def batch(kind: str, size: int) -> dict:
        shapes = steps_lib.batch_shapes(task, batch_size=size, num_frames=t, frame_size=frame_size, kind=kind,
                                        num_pseudo_glosses=model_cfg.num_pseudo_glosses)
        return {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                        sharding=NamedSharding(mesh, P(mesh_lib.BATCH_AXES, *[None] * (len(v.shape) - 1))))
                for k, v in shapes.items()}

    reports = []
    programs = {"train": (bound.train, "train", gbs, dict(out_shardings=(plan.state_shardings, None, None),
                                                            donate_argnums=(0,))),
                "eval": (bound.eval, "eval", settings.eval.batch_size, {})}
    if bound.generate is not None:
        programs["generate"] = (bound.generate, "generate", settings.eval.batch_size, {})
    for name, (fn, kind, size, kw) in programs.items():
        if name not in only:
            continue
        if size % len(devices):
            reports.append(ProgramReport(name, {}, None, None, None, None,
                                         note=f"batch {size} is not a multiple of {len(devices)} devices"))
            continue
        b = batch(kind, size)
        compiled = compile_program(fn, (state, b), mesh=mesh, rules=rules,
                                   in_shardings=(plan.state_shardings, {k: v.sharding for k, v in b.items()}), **kw)
        mf, mf_source = None, ""
        if name == "train" and count_model_flops:
            mf = model_flops(original, num_devices=len(devices), frame_size=frame_size)
            mf_source = MODEL_FLOPS_SOURCE
        report = report_program(name, compiled, devices[0], steps_per_run=total_steps if name == "train" else None,
                                model_flops=mf, model_flops_source=mf_source)
        text = compiled.as_text() if (save_hlo or (breakdown and name == "train")) else ""
        if save_hlo:
            path = os.path.join(save_hlo, f"{name}.hlo.txt")
            try:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
            except OSError as e:
                raise ConfigError(f"--save_hlo: cannot write {path} ({e.strerror or e})") from None
        if breakdown and name == "train":
            report.breakdown = hlo_cost.breakdown(text, model_cfg.vit.lora_blocks).to_json()
        reports.append(report)
    return reports


def suggestions(config, devices, *, num_train: int, frame_size: int) -> list[tuple[str, ProgramReport]]:
    """Train-step variants tried when the train step does not fit, cheapest change first; stops at
    the first that fits. Returns ``[(override, report)]``."""
    n = len(devices)
    variants: list[dict] = [{"model.remat": True}]
    if n > 1:
        variants += [{"mesh.fsdp": n}, {"model.remat": True, "mesh.fsdp": n}]
    gbs = int(config.train.batch_size)
    for k in (2, 4, 8, 16):
        if gbs % (k * n) == 0:
            variants.append({"model.remat": True, "mesh.fsdp": n, "train.microbatches": k} if n > 1
                            else {"model.remat": True, "train.microbatches": k})
    out = []
    for v in variants:
        c = ml_collections.ConfigDict(config.to_dict())
        for key, value in v.items():
            section, field = key.split(".")
            c[section][field] = value
        try:
            r = stage_programs(c, devices, num_train=num_train, frame_size=frame_size, only=("train",),
                               count_model_flops=False)[0]
        except UserError:
            continue
        label = " ".join(f"--config.{k}={val}" for k, val in v.items())
        out.append((label, r))
        if r.fits:
            break
    return out


def format_table(topology: str, devices, num_processes: int, reports: Sequence[ProgramReport],
                 tried: Sequence[tuple[str, ProgramReport]] = ()) -> str:
    def gib(x):
        return f"{x / GIB:8.2f}" if x is not None else "       -"

    lines = [f"topology {topology}: {len(devices)} devices ({getattr(devices[0], 'device_kind', devices[0].platform)}) "
             f"over {num_processes} process(es); memory per device in GiB",
             f"{'program':10s} {'args':>8s} {'outputs':>8s} {'temps':>8s} {'total':>8s} {'HBM':>8s} {'fits':>5s} "
             f"{'GFLOP/dev':>10s} {'GB moved':>9s} {'est. ms':>8s} {'roofl. ms':>9s} {'MFU':>6s} {'paper h':>8s}"]
    for r in list(reports) + [t[1] for t in tried]:
        if not r.per_device_bytes:
            lines.append(f"{r.name:10s} {r.note}")
            continue
        p = r.per_device_bytes
        fits = "-" if r.fits is None else ("yes" if r.fits else "NO")
        lines.append(f"{r.name:10s} {gib(p['arguments'])} {gib(p['outputs'])} {gib(p['temporaries'])} {gib(p['total'])} "
                     f"{gib(r.hbm_bytes)} {fits:>5s} {(r.flops or 0) / 1e9:10.1f} {(r.bytes_accessed or 0) / 1e9:9.1f} "
                     f"{(r.estimated_seconds or 0) * 1e3:8.1f} {(r.roofline_seconds or 0) * 1e3:9.1f} "
                     f"{(r.mfu or 0) * 100:5.1f}% {(r.paper_hours or 0):8.1f}")
    if any(r.step_time_source == "roofline" for r in list(reports) + [t[1] for t in tried]):
        lines.append("MFU and paper h use the roofline bound where XLA gives no step-time estimate (est. ms 0)")
    for r in reports:
        if r.name == "train" and r.model_flops and r.model_flops_source:
            lines.append(f"MFU of {r.name}: model FLOPs {r.model_flops / 1e9:.1f} GFLOP/dev ({r.model_flops_source}) "
                         "/ (step time x peak)")
    for r in reports:
        if r.breakdown:
            lines.append(hlo_cost.format_breakdown(hlo_cost.Breakdown.from_json(r.breakdown), xla_flops=r.flops,
                                                   xla_bytes=r.bytes_accessed,
                                                   title=f"{r.name}: FLOPs and bytes per part, per device "
                                                         "(optimised HLO, hfa_jax.hlo_cost)"))
    for label, r in tried:
        lines.append(f"  train with {label}: {'fits' if r.fits else 'does not fit'} "
                     f"({r.per_device_bytes['total'] / GIB:.2f} GiB)")
    return "\n".join(lines)


_FLAGS: dict = {}


def _define_flags() -> None:
    """The command's flags, defined when it runs (not at import: ``hfa_jax.main`` defines a
    ``--config`` flag of its own, and both modules are imported by the tests)."""
    _FLAGS["config"] = config_flags.DEFINE_config_file("config", None, "config file (configs/*.py[:variant])",
                                                       lock_config=True)
    _FLAGS["topology"] = flags.DEFINE_string("topology", "local", "a TPU topology (v5e:2x4, v6e:2x2 ...) or 'local'")
    _FLAGS["json"] = flags.DEFINE_bool("json", False, "print one JSON object instead of the table")
    _FLAGS["num_train"] = flags.DEFINE_integer("num_train", 7096, "training videos (steps per epoch; PHOENIX14T: 7096)")
    _FLAGS["frame_size"] = flags.DEFINE_integer("frame_size", 256, "stored frame size of the dataset (build_dataset --size)")
    _FLAGS["suggest"] = flags.DEFINE_bool("suggest", True, "if the train step does not fit, try the switches that may make it fit")
    _FLAGS["programs"] = flags.DEFINE_list("programs", list(PROGRAMS),
                                           "which of the stage's programs to compile (train, eval, generate)")
    _FLAGS["breakdown"] = flags.DEFINE_bool("breakdown", False, "FLOPs and bytes per part of the train step")
    _FLAGS["save_hlo"] = flags.DEFINE_string("save_hlo", "", "write each program's optimised HLO text to this folder")


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = _FLAGS["config"].value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/pretrain.py")
    try:
        devices, num_processes = topology_devices(_FLAGS["topology"].value)
        reports = stage_programs(config, devices, num_train=_FLAGS["num_train"].value, frame_size=_FLAGS["frame_size"].value,
                                 only=tuple(_FLAGS["programs"].value), breakdown=_FLAGS["breakdown"].value,
                                 save_hlo=_FLAGS["save_hlo"].value)
        tried = []
        train = next((r for r in reports if r.name == "train"), None)
        if _FLAGS["suggest"].value and train is not None and train.fits is False:
            tried = suggestions(config, devices, num_train=_FLAGS["num_train"].value, frame_size=_FLAGS["frame_size"].value)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if _FLAGS["json"].value:
        print(json.dumps({"topology": _FLAGS["topology"].value, "num_devices": len(devices), "num_processes": num_processes,
                          "programs": [r.to_json() for r in reports],
                          "suggestions": [{"override": k, **r.to_json()} for k, r in tried]}, indent=1))
    else:
        print(format_table(_FLAGS["topology"].value, devices, num_processes, reports, tried))


def main() -> None:
    _define_flags()
    app.run(_main, flags_parser=config_cli.parse_flags)  # --config errors: one line


if __name__ == "__main__":
    main()
