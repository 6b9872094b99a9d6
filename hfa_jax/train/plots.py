"""PNG plots written into the workdir (matplotlib, Agg backend: no display needed).

* ``loss_curves.png``: every logged scalar whose name contains "loss", against the step.
* ``pg_alignment.png``: for one validation video, the pseudo-gloss time x class similarity map
  (the S of docs/models_and_weights.md restricted to the video's target classes plus the best-scoring others).
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_history(path: str) -> dict[str, list[tuple[int, float]]]:
    """Reads ``metrics.jsonl`` (one ``{"step": s, "split": ..., name: value}`` per line)."""
    out: dict[str, list[tuple[int, float]]] = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            step, split = row.pop("step"), row.pop("split", "train")
            for k, v in row.items():
                if isinstance(v, (int, float)) and np.isfinite(v):
                    out.setdefault(f"{split}/{k}", []).append((int(step), float(v)))
    return out


def plot_loss_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: str,
                     title: str = "") -> str | None:
    """One line per scalar whose name contains 'loss'. Returns the path, or None if nothing."""
    keys = sorted(k for k in history if "loss" in k and history[k])
    if not keys:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k in keys:
        pts = sorted(dict(history[k]).items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, marker="o" if len(pts) < 20 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "losses")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pg_alignment(sim: np.ndarray, mask: np.ndarray, vocab: Sequence[str],
                      target_ids: Sequence[int], path: str, *, title: str = "",
                      max_classes: int = 24) -> str:
    """Pseudo-gloss time x class map for one video.

    Args:
      sim: ``[T', V+1]`` cosine similarities of the temporal features with the prototypes.
      mask: ``[T']`` bool, valid temporal positions.
      vocab: the V lemmas (class id c >= 1 is ``vocab[c - 1]``; 0 is the blank class).
      target_ids: the video's pseudo-gloss class ids (1..V).
    """
    sim = np.asarray(sim, np.float32)[np.asarray(mask, bool)]
    targets = [int(c) for c in target_ids]
    best = [int(c) for c in np.argsort(-sim.max(axis=0)) if c not in targets and c != 0]
    classes = (targets + best)[:max_classes]
    names = [("*" if c in targets else "") + (vocab[c - 1] if c >= 1 else "<blank>") for c in classes]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 0.28 * sim.shape[0] + 2), max(3, 0.28 * len(classes) + 1.5)))
    im = ax.imshow(sim[:, classes].T, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_yticks(range(len(classes)))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("time (temporal positions)")
    ax.set_title(title or "pseudo-gloss alignment (* = target)", fontsize=9)
    fig.colorbar(im, ax=ax, label="cosine similarity")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
