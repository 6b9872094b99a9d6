"""Evaluation during and after training: validation losses (pretraining), beam-search
translation of a split and its metrics (fine-tuning), the best checkpoint's final evaluation with
the video-blind control, and the files they write.

Every process runs the same evaluation over its shard of each batch (the loaders split the rows
of every batch by process); process 0 writes the files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from hfa_jax import metrics
from hfa_jax.data import pipeline
from hfa_jax.train import logs
from hfa_jax.train import plots
from hfa_jax.train import steps as steps_lib
from hfa_jax.train.trainer import Trainer, example_fn

log = logging.getLogger("hfa_jax.train")


def eval_loader(tr: Trainer, split: str):
    """One ordered pass over ``split``; the last batch is filled with masked rows (index -1)."""
    d = tr.settings.data
    return pipeline.make_loader(tr.data.sources[split], batch_size=tr.settings.eval.batch_size, seed=0,
                                shuffle=False, num_epochs=1, frame_selection=d.frame_selection,
                                max_frames=d.max_frames, buckets=d.buckets, drop_remainder=False,
                                worker_count=d.eval_worker_count,
                                example_fn=example_fn(tr.task, tr.data.fields[split]), fill_last_batch=True)


def write_translations(path_prefix: str, names, hyps, refs) -> None:
    """``PREFIX.hyp.txt``, ``PREFIX.ref.txt`` (a sentence a line) and ``PREFIX.tsv``."""
    with open(path_prefix + ".hyp.txt", "w", encoding="utf-8") as f:
        f.writelines(h + "\n" for h in hyps)
    with open(path_prefix + ".ref.txt", "w", encoding="utf-8") as f:
        f.writelines(r + "\n" for r in refs)
    with open(path_prefix + ".tsv", "w", encoding="utf-8") as f:
        f.write("name\thypothesis\treference\n")
        for n, h, r in zip(names, hyps, refs):
            f.write(f"{n}\t{h}\t{r}\n")


def video_blind_permutation(n: int, seed: int = 0) -> np.ndarray:
    """A derangement of range(n) (no video keeps its own sentence), seeded."""
    if n < 2:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            return p


def global_value(x) -> np.ndarray:
    """A batch-sharded global array, or this process's rows of one, as one host array in the
    order of the global batch (every process gets all rows; a plain device_get on one process)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def evaluate_loss(tr: Trainer, state, split: str, eval_jit: Callable) -> tuple[dict, dict | None]:
    """Mean loss parts over a split (filler rows of the last batch masked out). Also returns the
    first video's pseudo-gloss map for the plot (pretraining)."""
    loader = eval_loader(tr, split)
    sums: dict[str, float] = {}
    n = 0
    first = None
    for batch in loader:
        valid = batch["index"] >= 0
        batch = dict(batch)
        batch["example_mask"] = valid
        dev = steps_lib.to_device(batch, tr.mesh, [k for k in batch if k != "index"],
                                  pack_levels=tr.settings.data.pack_frames)
        parts, extra = eval_jit(state, dev)
        k = int(global_value(valid).sum())
        for name, v in parts.items():
            sums[name] = sums.get(name, 0.0) + float(v) * k
        n += k
        if first is None and extra and extra.get("pg_sim") is not None:
            first = {"pg_sim": global_value(extra["pg_sim"])[0], "mask": global_value(extra["temporal_mask"])[0],
                     "index": int(global_value(batch["index"])[0])}
    return {k: v / max(n, 1) for k, v in sums.items()}, first


def translate_split(tr: Trainer, state, split: str, gen_jit: Callable, *, desc: str = ""
                    ) -> tuple[list[str], list[str], list[str]]:
    """Beam search over a split. Returns (names, hypotheses, references) in source order."""
    bs = tr.settings.eval.batch_size
    src = tr.data.sources[split]
    loader = eval_loader(tr, split)
    hyps: dict[int, str] = {}
    n_batches = math.ceil(len(src) / bs)
    for batch in tqdm(loader, total=n_batches, desc=desc or f"beam search {split}", leave=False,
                      disable=jax.process_index() != 0):
        dev = steps_lib.to_device(batch, tr.mesh, ["frames", "frame_mask"], pack_levels=tr.settings.data.pack_frames)
        ids = global_value(gen_jit(state, dev))
        texts = tr.data.tokenizer.decode(ids)
        for i, t in zip(global_value(batch["index"]), texts):
            if i >= 0:
                hyps[int(i)] = t
    order = range(len(src))
    return ([tr.data.names[split][i] for i in order], [hyps[i] for i in order],
            [tr.data.texts[split][i] for i in order])


def score_translations(tr: Trainer, hyps, refs) -> dict[str, float]:
    return metrics.translation_metrics(hyps, refs, protocol=tr.settings.eval.protocol)


def periodic_eval(tr: Trainer, state, step: int, eval_jit: Callable, gen_jit: Callable | None
                  ) -> tuple[float | None, dict]:
    """A task that generates (translation): dev beam search + BLEU; otherwise (pretraining) the
    validation loss (+ alignment plot). Returns (the value that selects the best checkpoint, the
    scalars written)."""
    split = tr.settings.eval.splits[0]
    if not tr.task.generates:
        scalars, first = evaluate_loss(tr, state, split, eval_jit)
        tr.writer.write(step, split, scalars)
        log.info("step %d: %s %s", step, split, logs.fmt(scalars))
        if first is not None and jax.process_index() == 0 and tr.data.pseudo_glosses is not None:
            name = tr.data.names[split][first["index"]]
            pg = tr.data.pseudo_glosses
            with contextlib.suppress(Exception):
                plots.plot_pg_alignment(first["pg_sim"], first["mask"], pg.vocab,
                                        pg.targets.get(f"{split}/{name}", []),
                                        os.path.join(tr.workdir, "pg_alignment.png"),
                                        title=f"{split}/{name} at step {step}")
        return scalars["loss"], scalars
    names, hyps, refs = translate_split(tr, state, split, gen_jit)
    scores = score_translations(tr, hyps, refs)
    os.makedirs(os.path.join(tr.workdir, "translations"), exist_ok=True)
    if jax.process_index() == 0:
        write_translations(os.path.join(tr.workdir, "translations", f"{split}_step{step}"), names, hyps, refs)
    tr.writer.write(step, split, scores)
    tr.writer.text(step, f"{split}/examples", "\n\n".join(f"H: {h}\nR: {r}" for h, r in zip(hyps[:5], refs[:5])))
    log.info("step %d: %s %s", step, split, logs.fmt(scores))
    return scores["bleu4"], scores


def final_evaluation(tr: Trainer, gen_jit: Callable, *, video_blind: bool = False) -> dict:
    """Restores the best checkpoint and evaluates every ``config.eval.splits`` split (files +
    metrics.json in ``workdir/translations``). With ``video_blind`` also scores each test split
    with the hypotheses shuffled across sentences (the video-blind control)."""
    state, meta = tr.ckpt.restore(tr.plan.abstract_sharded_state(), best=True)
    out = {"best_step": meta["step"]}
    outdir = os.path.join(tr.workdir, "translations")
    os.makedirs(outdir, exist_ok=True)
    for split in tr.settings.eval.splits:
        names, hyps, refs = translate_split(tr, state, split, gen_jit, desc=f"final {split}")
        scores = score_translations(tr, hyps, refs)
        out[split] = scores
        if jax.process_index() == 0:
            write_translations(os.path.join(outdir, f"{split}_best"), names, hyps, refs)
        log.info("best checkpoint (step %s) on %s: %s", meta["step"], split, logs.fmt(scores))
        if video_blind or tr.settings.eval.video_blind:
            perm = video_blind_permutation(len(hyps), seed=tr.settings.seed)
            blind = [hyps[j] for j in perm]
            out[f"{split}_video_blind"] = score_translations(tr, blind, refs)
            if jax.process_index() == 0:
                write_translations(os.path.join(outdir, f"{split}_best_video_blind"), names, blind, refs)
    if jax.process_index() == 0:
        with open(os.path.join(outdir, "metrics.json"), "w") as f:
            json.dump(out, f, indent=2, default=logs.json_default)
    return out
