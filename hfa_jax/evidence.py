"""Pictures of a translation's evidence (matplotlib's object API on the Agg canvas: no display,
no pyplot state, so the web page can draw for two requests at once).

* :func:`alignment_figure`: the word x time cross-attention (:class:`hfa_jax.translator.Alignment`),
  one row per output word, time in seconds along x, with a strip of frames above it and a colour
  scale below;
* :func:`timeline_figure`: the pseudo-gloss timeline (:class:`hfa_jax.translator.Timeline`);
* :func:`frame_strip`: evenly spaced frames of a clip side by side, as one uint8 image.

Words are drawn in DejaVu Sans (matplotlib's own) with a CJK font as the fallback for Chinese
(CSL-Daily): the first installed of :data:`CJK_FAMILIES` (Debian: ``apt-get install
fonts-noto-cjk``, or the smaller ``fonts-droid-fallback``). Nothing is downloaded; without one,
Chinese words show as boxes and matplotlib warns about the missing glyphs.

Used by ``translate --explain`` (PNG per input) and the web page (:mod:`hfa_jax.serve`).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

# Fonts that draw Chinese, by family name, in order of preference (Debian packages: fonts-noto-cjk,
# fonts-wqy-zenhei, fonts-wqy-microhei, fonts-droid-fallback, fonts-arphic-uming).
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "Source Han Sans CN",
                "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing CN",
                "Microsoft YaHei", "SimHei", "PingFang SC", "Heiti SC")
# Font file names of the same fonts, to register one that the font cache predates.
_CJK_FILES = ("notosanscjk", "sourcehansans", "wqy-zenhei", "wqy-microhei", "droidsansfallback", "uming",
              "msyh", "simhei", "pingfang")
_FAMILIES: list[str] | None = None
_LOCK = threading.Lock()


def font_families() -> list[str]:
    """``["DejaVu Sans", <the installed CJK families>]``: matplotlib draws each glyph with the
    first family that has it."""
    global _FAMILIES
    with _LOCK:
        if _FAMILIES is None:
            from matplotlib import font_manager

            def installed() -> list[str]:
                names = {f.name for f in font_manager.fontManager.ttflist}
                return [n for n in CJK_FAMILIES if n in names]

            found = installed()
            if not found:  # installed after matplotlib's font cache was built: register the files
                for path in font_manager.findSystemFonts():
                    if any(k in path.lower().replace("_", "").replace(" ", "") for k in _CJK_FILES):
                        try:
                            font_manager.fontManager.addfont(path)
                        except (OSError, RuntimeError, ValueError):
                            pass
                found = installed()
            _FAMILIES = ["DejaVu Sans"] + found[:1]
        return list(_FAMILIES)


def _font(size: float):
    from matplotlib.font_manager import FontProperties

    return FontProperties(family=font_families(), size=size)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def frame_strip(frames: np.ndarray, n: int = 8) -> np.ndarray:
    """``frames [T, H, W, 3] uint8`` -> ``[H, n' * W, 3]``: ``n' = min(n, T)`` evenly spaced frames."""
    idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int)
    return np.concatenate([frames[i] for i in idx], axis=1)


def _strip_axis(ax, frames: np.ndarray, seconds: float) -> None:
    strip = frame_strip(frames, 8)
    ax.imshow(strip, extent=(0, seconds, 0, 1), aspect="auto")
    ax.set_yticks([])
    # the x axis is shared with the plot below: hide this axis' ticks, not the shared locator
    ax.tick_params(axis="x", bottom=False, labelbottom=False)


def alignment_figure(explanation, frames: np.ndarray, fps: float, title: str = ""):
    """The figure: frames on top, the word x time cross-attention below (time in seconds), its
    colour scale at the bottom."""
    al = explanation.alignment
    seconds = len(frames) / fps
    rows = max(len(al.words), 1)
    fig = _figure(8, 2.4 + 0.32 * rows)
    top, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1.2, max(1.0, 0.3 * rows)]})
    _strip_axis(top, frames, seconds)
    top.set_title(title or explanation.text or "(empty translation)", fontproperties=_font(10))
    if al.words:
        step = (al.times[1] - al.times[0]) if len(al.times) > 1 else seconds
        im = ax.imshow(al.weights, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0,
                       extent=(0, step * len(al.times), rows - 0.5, -0.5))
        ax.set_yticks(range(rows))
        ax.set_yticklabels(al.words, fontproperties=_font(9))
        fig.colorbar(im, ax=ax, location="bottom", shrink=0.6, aspect=40,
                     label="attention weight (each word's row sums to 1 over time)")
    else:
        ax.text(0.5, 0.5, "no words generated", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlim(0, seconds)
    ax.set_xlabel("time (s): decoder cross-attention, mean over heads and layers")
    return fig


def timeline_figure(timeline, seconds: float):
    """Pseudo-gloss timeline: one row per pseudo-gloss (clip score in the label), the cosine
    similarity to its prototype over time (s), its colour scale at the bottom."""
    k = len(timeline.labels)
    fig = _figure(8, 1.6 + 0.32 * max(k, 1))
    ax = fig.subplots()
    step = (timeline.times[1] - timeline.times[0]) if len(timeline.times) > 1 else seconds
    im = ax.imshow(timeline.scores, aspect="auto", cmap="magma", interpolation="nearest",
                   extent=(0, step * len(timeline.times), k - 0.5, -0.5))
    ax.set_yticks(range(k))
    ax.set_yticklabels([f"{l} ({p:.2f})" for l, p in zip(timeline.labels, timeline.probs)], fontproperties=_font(9))
    ax.set_xlim(0, seconds)
    ax.set_xlabel("time (s): pseudo-gloss similarity" + ("" if timeline.exact else
                                                         " (visual side fine-tuned since: indicative)"))
    fig.colorbar(im, ax=ax, location="bottom", shrink=0.6, aspect=40, label="cosine similarity to the prototype")
    return fig


def to_image(fig: Any) -> np.ndarray:
    """A figure -> ``[H, W, 3] uint8``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_alignment(explanation, clip, path: str, title: str | None = None) -> str:
    """Writes the alignment figure of ``clip`` (a :class:`hfa_jax.data.video.Clip`) as a PNG,
    titled ``title`` (default: the clip's name) and the translation; with a pseudo-gloss
    timeline, it is appended below."""
    from PIL import Image

    img = to_image(alignment_figure(explanation, clip.frames, clip.fps_out,
                                    f"{title or clip.name}: {explanation.text}"))
    if explanation.timeline is not None:
        tl = to_image(timeline_figure(explanation.timeline, len(clip.frames) / clip.fps_out))
        w = max(img.shape[1], tl.shape[1])
        pad = lambda a: np.pad(a, ((0, 0), (0, w - a.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
        img = np.concatenate([pad(img), pad(tl)], axis=0)
    Image.fromarray(img).save(path)
    return path
