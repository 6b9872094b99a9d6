"""Setting up a training stage: everything :func:`hfa_jax.train.loop.run` needs before its first step.

Phases (big_vision's ``train.py`` order)::

    0. setup    config check, multi-host init, workdir, log file, TensorBoard writer
    1. mesh     the (data, fsdp) device mesh and the logical-axis rules
    2. data     tokenizer, pseudo-glosses, per-example token ids / targets, sources per split
    3. shapes   jax.eval_shape of the model init -> parameter and state shardings, trainable mask,
                optimiser (:func:`plan_state`, also used by :mod:`hfa_jax.aot` without any data)
    4. steps    the train / eval / generate steps of :mod:`hfa_jax.train.steps`, bound to the model
    5. init     jit-compiled init with out_shardings, then the initial weights (:func:`init_state`)

The loop itself (resume, steps, evaluation, checkpoints) is :mod:`hfa_jax.train.loop`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfa_jax.data import beyondgloss_io, pipeline
from hfa_jax.errors import ConfigError
from hfa_jax.models import hfa
from hfa_jax.models.beyondgloss import BeyondGlossConfig
from hfa_jax.text import pseudo_glosses as pg_lib
from hfa_jax.text import tokenizer as text_lib
from hfa_jax.train import checkpoint as ckpt_lib
from hfa_jax.train import distributed
from hfa_jax.train import freeze
from hfa_jax.train import initial_weights
from hfa_jax.train import logs
from hfa_jax.train import microbatch
from hfa_jax.train import mesh as mesh_lib
from hfa_jax.train import optim as optim_lib
from hfa_jax.train import schema
from hfa_jax.train.settings import model_config  # also imported from here by tests and tools
from hfa_jax.train import state as state_lib
from hfa_jax.train import steps
from hfa_jax.train.freeze import STAGES

PyTree = Any
log = logging.getLogger("hfa_jax.train")


# ---------------------------------------------------------------------------------------------
# 2. data

@dataclasses.dataclass
class StageData:
    """What a stage reads before training: the tokenizer, the pseudo-glosses (pretraining), and
    per split the random-access source, its sentences, names and per-example arrays."""

    tokenizer: Any
    pseudo_glosses: Any | None
    sources: dict[str, Any]          # split -> random-access source
    texts: dict[str, list[str]]      # split -> reference sentences by source row
    names: dict[str, list[str]]      # split -> sample names by source row
    fields: dict[str, dict[str, np.ndarray]]  # split -> {field: [N, ...]} per-example arrays


class RowLookup:
    """example_fn: per-example arrays looked up by source row (picklable, no tokenizer inside)."""

    def __init__(self, fields: Mapping[str, np.ndarray]):
        self.fields = dict(fields)

    def __call__(self, example) -> dict[str, np.ndarray]:
        i = int(example["index"])
        return {k: v[i] for k, v in self.fields.items()}


def beyondgloss_config(config) -> BeyondGlossConfig:
    """``config.model.beyondgloss`` as a BeyondGlossConfig (all off when absent)."""
    return BeyondGlossConfig.from_config(config.model.get("beyondgloss", None))


def _read_split_text(source, extra_key: str | None = None):
    """(names, texts) of every row of a source, read without decoding frames; with
    ``extra_key`` also that feature per row (None where absent)."""
    names, texts, extra = [], [], []
    for i in range(len(source)):
        ex = source[i]
        names.append(ex["name"])
        texts.append(ex["text"])
        if extra_key:
            extra.append(ex.get(extra_key))
    return (names, texts, extra) if extra_key else (names, texts)


def example_fn(config, fields: Mapping[str, np.ndarray]):
    """The loaders' example_fn: the per-row fields, plus the per-frame hand-pose targets when
    the BeyondGloss hand-pose objective is on (pretraining)."""
    fn = RowLookup(fields)
    if config.train.stage == "pretrain" and beyondgloss_config(config).hand_pose:
        length = max(int(b) for b in config.data.buckets)
        fn = beyondgloss_io.CombinedExampleFn((fn, beyondgloss_io.HandPoseField(length=length)))
    return fn


def build_stage_data(config, splits: tuple[str, ...]) -> StageData:
    """Tokenizer, pseudo-glosses and every split's source and per-example arrays."""
    dcfg = config.data
    tok = text_lib.load_tokenizer(dcfg.tokenizer_dir, lang=dcfg.get("lang", "de_DE"))
    pg = None
    stage = config.train.stage
    if stage == "pretrain":
        pg = pg_lib.load_pseudo_glosses(dcfg.pseudo_glosses)
    sources, texts, names, fields = {}, {}, {}, {}
    for split in splits:
        src = pipeline.open_split(dcfg.dataset_dir, split)
        sources[split] = src
        bg = beyondgloss_config(config)
        use_desc = stage == "pretrain" and bg.description
        if use_desc:
            desc_key = "description_vec" if bg.description_vectors else "description"
            names[split], texts[split], desc_values = _read_split_text(src, desc_key)
        else:
            names[split], texts[split] = _read_split_text(src)
        L = int(dcfg.max_text_len)
        if stage == "pretrain":
            ids, amask = tok.encode_source(texts[split], L)
            keys = [f"{split}/{n}" for n in names[split]]
            pg.check_keys(keys, where=f"split {split!r} of {dcfg.dataset_dir}")
            fields[split] = {"text_ids": ids.astype(np.int32), "text_mask": amask,
                             "pg_targets": pg.multi_hot(keys).astype(np.float32)}
            if use_desc:
                fields[split].update(beyondgloss_io.description_fields(
                    desc_values, tokenizer=tok, max_len=int(dcfg.max_description_len),
                    vectors=bg.description_vectors, dim=bg.desc_dim or None,
                    where=f"split {split!r} of {dcfg.dataset_dir}"))
        else:
            enc = tok.encode_targets(texts[split], L)
            fields[split] = {k: np.asarray(v) for k, v in enc.items()}
    return StageData(tok, pg, sources, texts, names, fields)


# ---------------------------------------------------------------------------------------------
# The model

def stage_model_config(config, data: StageData) -> hfa.HFAConfig:
    """:func:`model_config` with the sizes taken from the stage's data."""
    pg = data.pseudo_glosses
    return model_config(config, tokenizer=data.tokenizer, num_pseudo_glosses=pg.num_classes if pg else None)


def build_model(config, model_cfg: hfa.HFAConfig) -> nn.Module:
    """The flax module of the stage (``HFAPretrain`` or ``HFATranslate``)."""
    kind = "pretrain" if config.train.stage == "pretrain" else "translate"
    return hfa.build_model(model_cfg, kind)


def root_key(config) -> jax.Array:
    """The stage's root key: the run seed folded with the stage's index."""
    return jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), STAGES.index(config.train.stage))


# ---------------------------------------------------------------------------------------------
# 3. shapes -> shardings -> optimiser

def total_steps_of(config, steps_per_epoch: int) -> int:
    tcfg = config.train
    if int(tcfg.get("num_steps", 0) or 0) > 0:
        return int(tcfg.num_steps)
    return max(1, int(round(float(tcfg.epochs) * steps_per_epoch)))


def warmup_pct(config, total_steps: int, steps_per_epoch: int) -> float:
    tcfg = config.train
    if tcfg.get("warmup_epochs", None) not in (None, 0):  # the paper's "5 epochs" switch
        return min(1.0, float(tcfg.warmup_epochs) * steps_per_epoch / total_steps)
    return float(tcfg.warmup_pct)


def every(n_epochs: float | int | None, num_steps: int | None, steps_per_epoch: int) -> int:
    """A period in steps from a period in steps (wins) or in epochs; 0 = never."""
    if num_steps:
        return int(num_steps)
    if n_epochs:
        return max(1, int(round(float(n_epochs) * steps_per_epoch)))
    return 0


def init_inputs(config, batch: int) -> tuple[jax.Array, ...]:
    """Dummy inputs of the model's ``init``: the first bucket, the crop, the text length."""
    t, crop, L = int(config.data.buckets[0]), int(config.data.crop_size), int(config.data.max_text_len)
    return (jnp.zeros((batch, t, crop, crop, 3), jnp.float32), jnp.ones((batch, t), bool),
            jnp.ones((batch, L), jnp.int32), jnp.ones((batch, L), bool))


@dataclasses.dataclass
class StatePlan:
    """The train state's shapes, shardings and optimiser, known before any array exists."""

    init_variables: Callable[[jax.Array], PyTree]   # rng -> boxed model variables
    root: jax.Array                                  # the stage's root key
    mask: PyTree                                     # trainable mask over the params
    tx: Any                                          # optax transformation
    schedule: Any                                    # optim.OneCycle
    abstract_state: PyTree                           # ShapeDtypeStructs of the train state
    state_shardings: PyTree                          # NamedShardings of the train state
    num_trainable: int
    num_params: int

    def make_state(self, variables: Mapping[str, PyTree], rng: jax.Array) -> dict:
        return state_lib.make_state(variables, rng, mask=self.mask, tx=self.tx)

    def abstract_sharded_state(self) -> PyTree:
        """ShapeDtypeStructs carrying the state's shardings (for restore and ahead-of-time lowering)."""
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self.abstract_state, self.state_shardings)


def plan_state(config, model: nn.Module, mesh, rules, *, total_steps: int, steps_per_epoch: int) -> StatePlan:
    """Phase 3: ``jax.eval_shape`` of the init -> parameter shardings (logical axis rules, else the
    fsdp fallback) -> trainable mask -> optimiser -> the whole state's shapes and shardings."""
    dummy = init_inputs(config, mesh.devices.size)

    def init_variables(rng):
        r1, r2 = jax.random.split(rng)
        return model.init({"params": r1, "dropout": r2}, *dummy, deterministic=True)

    root = root_key(config)
    with mesh, nn.logical_axis_rules(rules):
        boxed_shapes = jax.eval_shape(init_variables, root)
    auto_fsdp = bool(config.mesh.get("auto_fsdp", True))
    var_sh = mesh_lib.variable_shardings(boxed_shapes, mesh, rules, auto_fsdp=auto_fsdp)
    abstract_vars = nn.meta.unbox(boxed_shapes)
    mask = freeze.trainable_mask(abstract_vars["params"], [tuple(r) for r in config.train.trainable])
    abs_tr, _ = state_lib.split_params(abstract_vars["params"], mask)
    if not jax.tree.leaves(abs_tr):
        raise ConfigError(f"config.train.trainable leaves no trainable parameter in stage {config.train.stage}")
    tx, schedule = optim_lib.make_optimizer(
        peak_lr=float(config.train.lr), total_steps=total_steps,
        pct_start=warmup_pct(config, total_steps, steps_per_epoch),
        weight_decay=float(config.train.weight_decay), clip_norm=config.train.clip_norm,
        cycle_momentum=bool(config.train.cycle_momentum))
    abstract_state = jax.eval_shape(functools.partial(state_lib.make_state, mask=mask, tx=tx), abstract_vars, root)
    # Train-state paths end with the variable's path inside its collection (trainable/<p>,
    # frozen/<p>, opt_state/.../mu/<p>, batch_stats/<p>, buffers/<col>/<p>): match on that.
    by_path = {}
    for k, v in mesh_lib.shardings_by_path(abstract_vars, var_sh).items():
        by_path[k[1:]] = v
        by_path[k] = v
    state_sh = mesh_lib.state_shardings(abstract_state, by_path, mesh, auto_fsdp=auto_fsdp)
    return StatePlan(init_variables=init_variables, root=root, mask=mask, tx=tx, schedule=schedule,
                     abstract_state=abstract_state, state_shardings=state_sh,
                     num_trainable=freeze.count_params(abs_tr), num_params=freeze.count_params(abstract_vars["params"]))


# ---------------------------------------------------------------------------------------------
# 4. steps

@dataclasses.dataclass
class StageSteps:
    """The stage's step functions, bound to its model, config and optimiser (not yet jitted)."""

    train: Callable      # (state, batch) -> (state, metrics, finite)
    eval: Callable       # (state, batch) -> (loss parts, extra)
    generate: Callable | None  # (state, batch) -> token ids; None in pretraining


def bind_steps(config, model: nn.Module, plan: StatePlan) -> StageSteps:
    generate = None
    if config.train.stage != "pretrain":
        generate = functools.partial(steps.generate_step, model=model, config=config)
    return StageSteps(
        train=functools.partial(steps.train_step, model=model, config=config, tx=plan.tx, schedule=plan.schedule),
        eval=functools.partial(steps.eval_step, model=model, config=config),
        generate=generate)


# ---------------------------------------------------------------------------------------------
# The trainer

@dataclasses.dataclass
class Trainer:
    """Everything a stage needs before its loop; tests and tools reuse it."""

    config: Any
    workdir: str
    stage: str
    mesh: Any
    rules: Any
    data: StageData
    model: nn.Module
    plan: StatePlan
    steps: StageSteps
    steps_per_epoch: int
    total_steps: int
    finite_names: list[str]       # names of the train step's finiteness flags, without loss parts
    ckpt: ckpt_lib.Checkpointer
    writer: logs.MetricsWriter

    @property
    def state_shardings(self) -> PyTree:
        return self.plan.state_shardings


def build_trainer(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    """Phases 0-4: everything up to (not including) the state's initialisation."""
    # ---- 0. setup --------------------------------------------------------------------------
    schema.validate(config)
    stage = config.train.stage
    distributed.initialize(config.mesh)
    os.makedirs(workdir, exist_ok=True)
    logs.setup_logging(workdir)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    writer = logs.MetricsWriter(workdir, enabled=bool(config.train.get("tensorboard", True)))

    # ---- 1. mesh ---------------------------------------------------------------------------
    mesh = mesh_lib.make_mesh(config.mesh)
    rules = mesh_lib.rules_from_config(config.mesh)
    log.info("stage %s: mesh %s over %d devices (%s)", stage, dict(mesh.shape), jax.device_count(),
             jax.devices()[0].platform)

    # ---- 2. data ---------------------------------------------------------------------------
    splits = tuple(dict.fromkeys([config.data.train_split, *config.eval.splits]))
    data = build_stage_data(config, splits)
    gbs = int(config.train.batch_size)
    n_dev = jax.device_count()
    if gbs % n_dev:
        raise ConfigError(f"config.train.batch_size={gbs} is not a multiple of the {n_dev} devices")
    n_train = len(data.sources[config.data.train_split])
    if n_train < gbs:
        raise ConfigError(f"config.train.batch_size={gbs} > {n_train} training videos; lower it")
    microbatch.check_microbatches(gbs, int(config.train.get("microbatches", 1)), n_dev)
    steps_per_epoch = n_train // gbs
    total_steps = total_steps_of(config, steps_per_epoch)
    log.info("data: %d train videos, %d steps/epoch, %d steps", n_train, steps_per_epoch, total_steps)

    # ---- 3. shapes -> shardings ------------------------------------------------------------
    model = build_model(config, stage_model_config(config, data))
    plan = plan_state(config, model, mesh, rules, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    log.info("parameters: %s trainable / %s total", f"{plan.num_trainable:,}", f"{plan.num_params:,}")

    # ---- 4. the step functions (compiled by the loop once the first batch shape is known) ----
    abs_tr = plan.abstract_state["trainable"]
    ckpt = ckpt_lib.Checkpointer(workdir, keep=int(config.train.keep_checkpoints),
                                 use_async=bool(config.train.get("async_checkpoints", True)),
                                 best_mode="min" if stage == "pretrain" else "max")
    return Trainer(config=config, workdir=workdir, stage=stage, mesh=mesh, rules=rules, data=data, model=model,
                   plan=plan, steps=bind_steps(config, model, plan), steps_per_epoch=steps_per_epoch,
                   total_steps=total_steps, finite_names=steps.finite_names([], abs_tr), ckpt=ckpt, writer=writer)


def init_state(tr: Trainer) -> PyTree:
    """Phase 5: jit-compiled init with out_shardings, then imported / previous-stage weights."""
    config, mesh, plan = tr.config, tr.mesh, tr.plan
    with mesh, nn.logical_axis_rules(tr.rules):
        def init_fn(rng):
            return plan.make_state(nn.meta.unbox(plan.init_variables(rng)), rng)

        state = jax.jit(init_fn, out_shardings=plan.state_shardings)(plan.root)
    w = config.get("weights", None)
    needs_load = (bool(config.train.init_from) or (w is not None and any(w.values()))
                  or (tr.stage == "pretrain" and bool(config.data.prototypes)))
    if needs_load:
        host = jax.device_get(state)
        variables = state_lib.variables_from_state(host)
        variables, lines = initial_weights.load_initial_params(config, tr.stage, variables)
        for line in lines:
            log.info("%s", line)
        host_state = jax.device_get(plan.make_state(variables, jax.device_get(plan.root)))
        state = jax.device_put(host_state, plan.state_shardings)
    return state
