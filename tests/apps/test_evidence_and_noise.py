"""The ``--explain`` picture (a time axis in seconds, colour scales, Chinese drawn with a CJK
font where one is installed) and a quiet start: no libtpu errors on a machine without a TPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from hfa_jax import evidence

pytestmark = pytest.mark.xdist_group("apps")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _explanation(words: list[str]) -> SimpleNamespace:
    weights = np.random.default_rng(0).random((len(words), 12))
    weights /= weights.sum(1, keepdims=True)
    times = np.arange(12) * 4 / 25   # an encoder position every 4 frames at 25 fps
    al = SimpleNamespace(words=words, weights=weights, times=times)
    tl = SimpleNamespace(labels=["regen", "wind"], probs=np.array([0.8, 0.3]),
                         scores=np.random.default_rng(1).random((2, 12)), times=times, exact=True)
    return SimpleNamespace(alignment=al, timeline=tl, text=" ".join(words))


def test_alignment_has_a_time_axis_in_seconds_and_colour_scales():
    frames = np.random.default_rng(2).integers(0, 255, (48, 54, 54, 3), dtype=np.uint8)
    exp = _explanation(["morgen", "regen", "im", "norden"])
    fig = evidence.alignment_figure(exp, frames, 25.0)
    evidence.to_image(fig)  # draws the ticks
    top, ax, bar = fig.axes
    assert bar.get_label() == "<colorbar>" and "attention weight" in bar.get_xlabel()
    ticks = [float(t.get_text().replace("\u2212", "-")) for t in ax.get_xticklabels() if t.get_text()]
    assert {0.0, 0.5, 1.0, 1.5} <= set(ticks) and ax.get_xlim() == (0.0, 48 / 25)   # seconds, not frames
    assert ax.get_xlabel().startswith("time (s)")
    assert not [t for t in top.get_xticklabels() if t.get_text() and t.get_visible()]   # the strip has none
    assert [t.get_text() for t in ax.get_yticklabels()] == exp.alignment.words
    fig = evidence.timeline_figure(exp.timeline, 48 / 25)
    assert len(fig.axes) == 2 and "cosine similarity" in fig.axes[1].get_xlabel()


def test_chinese_words_are_drawn_with_a_cjk_font():
    families = evidence.font_families()
    assert families[0] == "DejaVu Sans"
    if len(families) < 2:
        pytest.skip("no CJK font installed here (Debian: apt-get install fonts-noto-cjk or fonts-droid-fallback)")
    frames = np.zeros((16, 54, 54, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # matplotlib warns "Glyph ... missing from font(s)" for a box
        img = evidence.to_image(evidence.alignment_figure(_explanation(["今天", "天气", "很好"]), frames, 30.0,
                                                          "今天天气很好"))
    assert img.shape[2] == 3


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
def test_no_libtpu_errors_without_a_tpu():
    import hfa_jax

    if hfa_jax._tpu_present():
        pytest.skip("this machine has a TPU: the probe is real and not silenced")
    # ALLOW_MULTIPLE_LIBTPU_LOAD: reach the probe even while another JAX process holds libtpu's lock
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "JAX_PLATFORMS"))}
    env.update(ALLOW_MULTIPLE_LIBTPU_LOAD="1", PYTHONPATH=REPO)
    code = "import jax; jax.devices()"
    plain = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    if "TPU" not in plain.stderr:
        pytest.skip("libtpu prints nothing on this machine even without hfa_jax")
    quiet = subprocess.run([sys.executable, "-c", "import hfa_jax; " + code], env=env, cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr.strip() == "", quiet.stderr
    # never where a TPU is asked for, and never over what the user set
    shown = "import hfa_jax, os; print(os.environ.get('TPU_WORKER_HOSTNAMES'), os.environ.get('TPU_HOST_BOUNDS'))"
    for extra, want in (({}, "localhost 1,1,1"), ({"JAX_PLATFORMS": "tpu"}, "None None"),
                        ({"TPU_HOST_BOUNDS": "2,2,1"}, "localhost 2,2,1")):
        out = subprocess.run([sys.executable, "-c", shown], env={**env, **extra}, cwd=REPO, capture_output=True,
                             text=True, timeout=60)
        assert out.stdout.strip() == want, (extra, out.stdout, out.stderr)
