"""Setting up a training stage: everything :func:`hfa_jax.train.loop.run` needs before its first step.

Phases (big_vision's ``train.py`` order)::

    0. setup    config check, the config read once into settings and the stage's task
                (:mod:`hfa_jax.train.settings`, :mod:`hfa_jax.train.tasks`), multi-host init,
                workdir, log file, TensorBoard writer
    1. mesh     the (data, fsdp) device mesh and the logical-axis rules
    2. data     tokenizer, pseudo-glosses, per-example token ids / targets, sources per split
    3. shapes   jax.eval_shape of the model init -> parameter and state shardings, trainable mask,
                optimiser (:func:`plan_state`, also used by :mod:`hfa_jax.aot` without any data)
    4. steps    the train / eval / generate steps of :mod:`hfa_jax.train.steps`, bound to the model
    5. init     jit-compiled init with out_shardings, then the initial weights and, where the task
                caches them, the frozen text encoder's sentence vectors (:func:`init_state`)

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

from hfa_jax.data import pipeline
from hfa_jax.errors import ConfigError
from hfa_jax.models import hfa
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
from hfa_jax.train import state as state_lib
from hfa_jax.train import steps
from hfa_jax.train import tasks as tasks_lib
from hfa_jax.train import text_vectors
from hfa_jax.train.freeze import STAGES
from hfa_jax.train.schema import resolve
from hfa_jax.train.settings import Settings, TrainSettings, model_config  # model_config: also for tools

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


def _read_split_text(source, extra_key: str | None = None) -> tuple[list[str], list[str], list[Any]]:
    """(names, texts, extra) of every row of a source, read without decoding frames; ``extra``
    holds the feature ``extra_key`` per row (None where absent; all None without a key)."""
    names, texts, extra = [], [], []
    for i in range(len(source)):
        ex = source[i]
        names.append(ex["name"])
        texts.append(ex["text"])
        extra.append(ex.get(extra_key) if extra_key else None)
    return names, texts, extra


def example_fn(task: tasks_lib.Task, fields: Mapping[str, np.ndarray]):
    """The loaders' example_fn: the per-row fields, plus the task's per-frame fields."""
    return task.example_fn(RowLookup(fields))


def build_stage_data(task: tasks_lib.Task, splits: tuple[str, ...]) -> StageData:
    """Tokenizer, pseudo-glosses (if the task uses them) and every split's source and per-example
    arrays (:meth:`hfa_jax.train.tasks.Task.example_fields`)."""
    d = task.settings.data
    tok = text_lib.load_tokenizer(d.tokenizer_dir, lang=d.lang)
    pg = pg_lib.load_pseudo_glosses(d.pseudo_glosses) if task.uses_pseudo_glosses else None
    sources, texts, names, fields = {}, {}, {}, {}
    for split in splits:
        src = pipeline.open_split(d.dataset_dir, split)
        sources[split] = src
        names[split], texts[split], extra = _read_split_text(src, task.row_feature)
        fields[split] = task.example_fields(texts[split], [f"{split}/{n}" for n in names[split]], extra,
                                            tokenizer=tok, pseudo_glosses=pg,
                                            where=f"split {split!r} of {d.dataset_dir}")
    return StageData(tok, pg, sources, texts, names, fields)


# ---------------------------------------------------------------------------------------------
# The model

def stage_model_config(settings: Settings, data: StageData) -> hfa.HFAConfig:
    """:func:`model_config` with the sizes taken from the stage's data."""
    pg = data.pseudo_glosses
    return model_config(settings, tokenizer=data.tokenizer, num_pseudo_glosses=pg.num_classes if pg else None)


def build_model(task: tasks_lib.Task, model_cfg: hfa.HFAConfig) -> nn.Module:
    """The flax module of the task (``HFAPretrain`` or ``HFATranslate``)."""
    return hfa.build_model(model_cfg, task.model_kind)


def root_key(settings: Settings) -> jax.Array:
    """The stage's root key: the run seed folded with the stage's index."""
    return jax.random.fold_in(jax.random.PRNGKey(settings.seed), STAGES.index(settings.train.stage))


# ---------------------------------------------------------------------------------------------
# 3. shapes -> shardings -> optimiser

def total_steps_of(train: TrainSettings, steps_per_epoch: int) -> int:
    if train.num_steps > 0:
        return train.num_steps
    return max(1, int(round(train.epochs * steps_per_epoch)))


def warmup_pct(train: TrainSettings, total_steps: int, steps_per_epoch: int) -> float:
    if train.warmup_epochs:  # the paper's "5 epochs" switch
        return min(1.0, train.warmup_epochs * steps_per_epoch / total_steps)
    return train.warmup_pct


def every(n_epochs: float | int | None, num_steps: int | None, steps_per_epoch: int) -> int:
    """A period in steps from a period in steps (wins) or in epochs; 0 = never."""
    if num_steps:
        return int(num_steps)
    if n_epochs:
        return max(1, int(round(float(n_epochs) * steps_per_epoch)))
    return 0


def init_inputs(task: tasks_lib.Task, batch: int) -> tuple[jax.Array, ...]:
    """Dummy inputs of the model's ``init``: the first bucket, the crop, the text length."""
    d = task.settings.data
    t, crop, L = d.buckets[0], d.crop_size, d.max_text_len
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
    bf16_frozen: PyTree | None = None                # frozen leaves stored in bfloat16 (state.py)

    def make_state(self, variables: Mapping[str, PyTree], rng: jax.Array) -> dict:
        return state_lib.make_state(variables, rng, mask=self.mask, tx=self.tx, bf16_frozen=self.bf16_frozen)

    def abstract_sharded_state(self) -> PyTree:
        """ShapeDtypeStructs carrying the state's shardings (for restore and ahead-of-time lowering)."""
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self.abstract_state, self.state_shardings)


def _check_fused_kernels(model: nn.Module, mask) -> None:
    """The ViT's fused LoRA MLP kernel trains only the adapters: refuse it (one line) where the
    freezing table also trains the LoRA blocks' MLP base weights."""
    vit = getattr(getattr(model, "cfg", None), "vit", None)
    if vit is None or not vit.fused_lora_mlp or vit.lora_rank <= 0:
        return
    if not vit.runs_kernels(jnp.bfloat16):
        return
    trained = freeze.trained_vit_mlp_weights(mask)
    if trained:
        raise ConfigError(f"config.train.trainable trains {trained[0]} (and {len(trained) - 1} more), but the fused "
                          "LoRA MLP kernel gives the ViT's MLP base weights no gradient; set "
                          "--config.model.vit.fused_lora_mlp=False")


def plan_state(task: tasks_lib.Task, model: nn.Module, mesh, rules, *, total_steps: int,
               steps_per_epoch: int) -> StatePlan:
    """Phase 3: ``jax.eval_shape`` of the init -> parameter shardings (logical axis rules, else the
    fsdp fallback) -> trainable mask -> optimiser -> the whole state's shapes and shardings."""
    s = task.settings
    t = s.train
    dummy = init_inputs(task, mesh.devices.size)

    def init_variables(rng):
        r1, r2 = jax.random.split(rng)
        return model.init({"params": r1, "dropout": r2}, *dummy, deterministic=True)

    root = root_key(s)
    with mesh, nn.logical_axis_rules(rules):
        boxed_shapes = jax.eval_shape(init_variables, root)
    auto_fsdp = s.mesh.auto_fsdp
    var_sh = mesh_lib.variable_shardings(boxed_shapes, mesh, rules, auto_fsdp=auto_fsdp)
    abstract_vars = nn.meta.unbox(boxed_shapes)
    mask = freeze.trainable_mask(abstract_vars["params"], t.trainable)
    _check_fused_kernels(model, mask)
    abs_tr, _ = state_lib.split_params(abstract_vars["params"], mask)
    if not jax.tree.leaves(abs_tr):
        raise ConfigError(f"config.train.trainable leaves no trainable parameter in stage {t.stage}")
    tx, schedule = optim_lib.make_optimizer(
        peak_lr=t.lr, total_steps=total_steps, pct_start=warmup_pct(t, total_steps, steps_per_epoch),
        weight_decay=t.weight_decay, clip_norm=t.clip_norm, cycle_momentum=t.cycle_momentum)
    abstract_state = jax.eval_shape(functools.partial(state_lib.make_state, mask=mask, tx=tx), abstract_vars, root)
    bf16_frozen = _bf16_frozen(task, model, abstract_state, tx, schedule, mesh.devices.size)
    if bf16_frozen is not None:  # frozen weights read only through a bf16 cast: stored in bf16
        abstract_state = jax.eval_shape(functools.partial(state_lib.make_state, mask=mask, tx=tx,
                                                          bf16_frozen=bf16_frozen), abstract_vars, root)
    # Train-state paths end with the variable's path inside its collection (trainable/<p>,
    # frozen/<p>, opt_state/.../mu/<p>, batch_stats/<p>, buffers/<col>/<p>): match on that.
    by_path = {}
    for k, v in mesh_lib.shardings_by_path(abstract_vars, var_sh).items():
        by_path[k[1:]] = v
        by_path[k] = v
    state_sh = mesh_lib.state_shardings(abstract_state, by_path, mesh, auto_fsdp=auto_fsdp)
    return StatePlan(init_variables=init_variables, root=root, mask=mask, tx=tx, schedule=schedule,
                     abstract_state=abstract_state, state_shardings=state_sh,
                     num_trainable=freeze.count_params(abs_tr), num_params=freeze.count_params(abstract_vars["params"]),
                     bf16_frozen=bf16_frozen)


def _bf16_frozen(task: tasks_lib.Task, model: nn.Module, abstract_state: PyTree, tx, schedule,
                 batch: int) -> PyTree | None:
    """The frozen leaves the stage's train, eval and generate steps read only through a bf16 cast
    (:func:`hfa_jax.train.initial_weights.bf16_frozen_mask`), traced at a small batch. None (no
    tracing) for a float32-compute model or with ``train.bf16_frozen=False``."""
    s = task.settings
    compute_dtype = model.cfg.dtype
    if jnp.dtype(compute_dtype) != jnp.bfloat16 or not s.train.bf16_frozen:
        return None
    programs = {"train": functools.partial(steps.train_step, model=model, task=task, tx=tx, schedule=schedule),
                "eval": functools.partial(steps.eval_step, model=model, task=task)}
    if task.generates:
        programs["generate"] = functools.partial(steps.generate_step, model=model, task=task)
    crop, t = s.data.crop_size, s.data.buckets[0]
    npg = int(model.cfg.num_pseudo_glosses)
    fns, batches = [], []
    for i, (kind, fn) in enumerate(programs.items()):
        fns.append(lambda fr, states, bs, _fn=fn, _i=i: _fn({**states[_i], "frozen": fr}, bs[_i]))
        batches.append(steps.batch_shapes(task, batch_size=batch, num_frames=t, frame_size=crop, kind=kind,
                                          num_pseudo_glosses=npg))
    if task.caches_text_vectors:  # the sentence vectors' program reads the text encoder
        fns.append(lambda fr, states, bs: model.apply({"params": state_lib.merge_params(states[-1]["trainable"], fr)},
                                                      bs[-1], bs[-1] > 0, method=hfa.HFAPretrain.encode_text))
        batches.append(jax.ShapeDtypeStruct((batch, s.data.max_text_len), jnp.int32))
    states = [{k: v for k, v in abstract_state.items() if k != "frozen"}] * len(fns)
    return initial_weights.bf16_frozen_mask(s, compute_dtype, fns, abstract_state["frozen"], states, batches)


# ---------------------------------------------------------------------------------------------
# 4. steps

@dataclasses.dataclass
class StageSteps:
    """The stage's step functions, bound to its model, task and optimiser (not yet jitted)."""

    train: Callable      # (state, batch) -> (state, metrics, finite)
    eval: Callable       # (state, batch) -> (loss parts, extra)
    generate: Callable | None  # (state, batch) -> token ids; None for a task that does not generate


def bind_steps(task: tasks_lib.Task, model: nn.Module, plan: StatePlan) -> StageSteps:
    return StageSteps(
        train=functools.partial(steps.train_step, model=model, task=task, tx=plan.tx, schedule=plan.schedule),
        eval=functools.partial(steps.eval_step, model=model, task=task),
        generate=functools.partial(steps.generate_step, model=model, task=task) if task.generates else None)


# ---------------------------------------------------------------------------------------------
# The trainer

@dataclasses.dataclass
class Trainer:
    """Everything a stage needs before its loop; tests and tools reuse it."""

    config: Any                   # as given (written to config.json); read only through settings
    settings: Settings
    task: tasks_lib.Task
    workdir: str
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
    def stage(self) -> str:
        return self.settings.train.stage

    @property
    def state_shardings(self) -> PyTree:
        return self.plan.state_shardings


def build_trainer(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    """Phases 0-4: everything up to (not including) the state's initialisation."""
    # ---- 0. setup: the config is checked and read, once --------------------------------------
    schema.validate(config)
    settings = resolve(config)
    task = tasks_lib.make(settings)
    t, d = settings.train, settings.data
    distributed.initialize(settings.mesh)
    os.makedirs(workdir, exist_ok=True)
    logs.setup_logging(workdir)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    writer = logs.MetricsWriter(workdir, enabled=t.tensorboard)

    # ---- 1. mesh ---------------------------------------------------------------------------
    mesh = mesh_lib.make_mesh(data=settings.mesh.data, fsdp=settings.mesh.fsdp)
    rules = mesh_lib.logical_rules(settings.mesh.rules)
    log.info("stage %s: mesh %s over %d devices (%s)", t.stage, dict(mesh.shape), jax.device_count(),
             jax.devices()[0].platform)

    # ---- 2. data ---------------------------------------------------------------------------
    splits = tuple(dict.fromkeys([d.train_split, *settings.eval.splits]))
    data = build_stage_data(task, splits)
    gbs = t.batch_size
    n_dev = jax.device_count()
    if gbs % n_dev:
        raise ConfigError(f"config.train.batch_size={gbs} is not a multiple of the {n_dev} devices")
    n_train = len(data.sources[d.train_split])
    if n_train < gbs:
        raise ConfigError(f"config.train.batch_size={gbs} > {n_train} training videos; lower it")
    microbatch.check_microbatches(gbs, t.microbatches, n_dev)
    steps_per_epoch = n_train // gbs
    total_steps = total_steps_of(t, steps_per_epoch)
    log.info("data: %d train videos, %d steps/epoch, %d steps", n_train, steps_per_epoch, total_steps)

    # ---- 3. shapes -> shardings ------------------------------------------------------------
    model = build_model(task, stage_model_config(settings, data))
    plan = plan_state(task, model, mesh, rules, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    log.info("parameters: %s trainable / %s total", f"{plan.num_trainable:,}", f"{plan.num_params:,}")

    # ---- 4. the step functions (compiled by the loop once the first batch shape is known) ----
    abs_tr = plan.abstract_state["trainable"]
    ckpt = ckpt_lib.Checkpointer(workdir, keep=t.keep_checkpoints, use_async=t.async_checkpoints,
                                 best_mode=task.best_mode)
    return Trainer(config=config, settings=settings, task=task, workdir=workdir, mesh=mesh, rules=rules, data=data,
                   model=model, plan=plan, steps=bind_steps(task, model, plan), steps_per_epoch=steps_per_epoch,
                   total_steps=total_steps, finite_names=steps.finite_names([], abs_tr), ckpt=ckpt, writer=writer)


def init_state(tr: Trainer) -> PyTree:
    """Phase 5: jit-compiled init with out_shardings, then imported / previous-stage weights."""
    s, mesh, plan = tr.settings, tr.mesh, tr.plan
    with mesh, nn.logical_axis_rules(tr.rules):
        def init_fn(rng):
            return plan.make_state(nn.meta.unbox(plan.init_variables(rng)), rng)

        state = jax.jit(init_fn, out_shardings=plan.state_shardings)(plan.root)
    w = s.weights
    needs_load = (bool(s.train.init_from) or bool(w.vit or w.mbart or w.vocab_map)
                  or (tr.task.uses_pseudo_glosses and bool(s.data.prototypes)))
    if needs_load:
        host = jax.device_get(state)
        variables = state_lib.variables_from_state(host)
        variables, lines = initial_weights.load_initial_params(s, tr.task, variables)
        for line in lines:
            log.info("%s", line)
        host_state = jax.device_get(plan.make_state(variables, jax.device_get(plan.root)))
        state = jax.device_put(host_state, plan.state_shardings)
    # The frozen text encoder's sentence vectors, once per sentence (the steps then skip it).
    n = text_vectors.add_text_vectors(tr.task, tr.model, state_lib.merge_params(state["trainable"], state["frozen"]),
                                      tr.data.fields, mesh=mesh, rules=tr.rules)
    if n:
        log.info("text encoder: %d sentence vectors computed once for the run", n)
    return state
