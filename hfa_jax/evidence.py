"""Pictures of a translation's evidence (matplotlib, Agg backend: no display needed).

* :func:`alignment_figure`: the word x time cross-attention (:class:`hfa_jax.translator.Alignment`),
  one row per output word, time in seconds along x, with a strip of frames above it;
* :func:`timeline_figure`: the pseudo-gloss timeline (:class:`hfa_jax.translator.Timeline`);
* :func:`frame_strip`: evenly spaced frames of a clip side by side, as one uint8 image.

Used by ``translate --explain`` (PNG per input) and the web page (:mod:`hfa_jax.serve`).
"""

from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def frame_strip(frames: np.ndarray, n: int = 8) -> np.ndarray:
    """``frames [T, H, W, 3] uint8`` -> ``[H, n' * W, 3]``: ``n' = min(n, T)`` evenly spaced frames."""
    idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int)
    return np.concatenate([frames[i] for i in idx], axis=1)


def _strip_axis(ax, frames: np.ndarray, seconds: float) -> None:
    strip = frame_strip(frames, 8)
    ax.imshow(strip, extent=(0, seconds, 0, 1), aspect="auto")
    ax.set_yticks([])
    ax.set_xticks([])


def alignment_figure(explanation, frames: np.ndarray, fps: float, title: str = ""):
    """The figure: frames on top, the word x time cross-attention below."""
    plt = _plt()
    al = explanation.alignment
    seconds = len(frames) / fps
    rows = max(len(al.words), 1)
    fig, (top, ax) = plt.subplots(2, 1, figsize=(8, 1.6 + 0.32 * rows), sharex=True,
                                  gridspec_kw={"height_ratios": [1.2, max(1.0, 0.3 * rows)]})
    _strip_axis(top, frames, seconds)
    top.set_title(title or explanation.text or "(empty translation)", fontsize=10)
    if al.words:
        step = (al.times[1] - al.times[0]) if len(al.times) > 1 else seconds
        ax.imshow(al.weights, aspect="auto", cmap="viridis", interpolation="nearest",
                  extent=(0, step * len(al.times), rows - 0.5, -0.5))
        ax.set_yticks(range(rows))
        ax.set_yticklabels(al.words, fontsize=9)
    else:
        ax.text(0.5, 0.5, "no words generated", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlim(0, seconds)
    ax.set_xlabel("time (s): decoder cross-attention, mean over heads and layers")
    fig.tight_layout()
    return fig


def timeline_figure(timeline, seconds: float):
    """Pseudo-gloss timeline: one row per pseudo-gloss (clip score in the label), the cosine
    similarity to its prototype over time."""
    plt = _plt()
    k = len(timeline.labels)
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.32 * max(k, 1)))
    step = (timeline.times[1] - timeline.times[0]) if len(timeline.times) > 1 else seconds
    ax.imshow(timeline.scores, aspect="auto", cmap="magma", interpolation="nearest",
              extent=(0, step * len(timeline.times), k - 0.5, -0.5))
    ax.set_yticks(range(k))
    ax.set_yticklabels([f"{l} ({p:.2f})" for l, p in zip(timeline.labels, timeline.probs)], fontsize=9)
    ax.set_xlim(0, seconds)
    ax.set_xlabel("time (s): pseudo-gloss similarity" + ("" if timeline.exact else
                                                         " (visual side fine-tuned since: indicative)"))
    fig.tight_layout()
    return fig


def to_image(fig) -> np.ndarray:
    """A figure -> ``[H, W, 3] uint8`` (then closed)."""
    plt = _plt()
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


def save_alignment(explanation, clip, path: str) -> str:
    """Writes the alignment figure of ``clip`` (a :class:`hfa_jax.data.video.Clip`) as a PNG;
    with a pseudo-gloss timeline, it is appended below."""
    from PIL import Image

    img = to_image(alignment_figure(explanation, clip.frames, clip.fps_out, f"{clip.name}: {explanation.text}"))
    if explanation.timeline is not None:
        tl = to_image(timeline_figure(explanation.timeline, len(clip.frames) / clip.fps_out))
        w = max(img.shape[1], tl.shape[1])
        pad = lambda a: np.pad(a, ((0, 0), (0, w - a.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
        img = np.concatenate([pad(img), pad(tl)], axis=0)
    Image.fromarray(img).save(path)
    return path
