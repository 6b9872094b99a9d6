"""A very reduced demo run end to end (``configs/demo.py:smoke``): SynthSign -> dataset ->
tokenizer -> pseudo-glosses -> prototypes -> three training stages -> test + video-blind
control -> results.json; then ``hfa_jax.translate`` on one generated test video.

One run (a module fixture) is read by every test here; they stay on one xdist worker. Minutes in
all: the second test command runs them (tests/conftest.py: -m slow)."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo")]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "rouge_l_f1", "chrf"}
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The smoke demo's workdir and the command's result."""
    wd = str(tmp_path_factory.mktemp("demo") / "demo")
    r = subprocess.run([sys.executable, "-m", "hfa_jax.main", "--config=configs/demo.py:smoke",
                        f"--workdir={wd}"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    return wd, r


def test_results_score_the_test_split_and_the_video_blind_control(demo):
    wd, r = demo
    with open(os.path.join(wd, "results.json")) as f:
        res = json.load(f)
    assert METRICS <= set(res["test"]) and METRICS <= set(res["test_video_blind"])
    assert res["seconds"] > 0
    assert "video-blind control" in r.stdout and "BLEU-4 gap" in r.stdout
    hyps = open(os.path.join(wd, "finetune2", "translations", "test_best.hyp.txt")).read().splitlines()
    refs = open(os.path.join(wd, "finetune2", "translations", "test_best.ref.txt")).read().splitlines()
    assert len(hyps) == len(refs) == 8


def test_logs_plots_and_tensorboard(demo):
    wd, r = demo
    # our stage log reaches stderr; the libraries' absl INFO lines (orbax, tfds) do not
    assert "INFO stage pretrain" in r.stderr
    assert not re.search(r"^I\d{4} [\d:.]+ +\d+ \w+\.py:\d+\]", r.stderr, re.M), r.stderr[-3000:]
    for stage in ("pretrain", "finetune1", "finetune2"):
        assert os.path.isfile(os.path.join(wd, stage, "loss_curves.png")), stage
        assert glob.glob(os.path.join(wd, stage, "tensorboard", "events.out.tfevents.*")), stage
    assert os.path.isfile(os.path.join(wd, "pretrain", "pg_alignment.png"))


def test_translate_reproduces_the_batched_evaluation(demo):
    wd, _ = demo
    # the shortest test video: no frame subsampling, so translate must reproduce the batched eval
    frames = min(glob.glob(os.path.join(wd, "synthsign", "features", "fullFrame-210x260px", "test", "*")),
                 key=lambda d: len(os.listdir(d)))
    t = subprocess.run([sys.executable, "-m", "hfa_jax.translate", "--workdir", os.path.join(wd, "finetune2"),
                        "--frames", frames], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert t.returncode == 0, t.stderr[-3000:]
    name = os.path.basename(frames)
    with open(os.path.join(wd, "finetune2", "translations", "test_best.tsv")) as f:
        rows = dict(line.split("\t")[:2] for line in f.read().splitlines()[1:])
    # the last stdout line is the translation (possibly empty for this barely trained model)
    assert t.stdout.rstrip("\n").split("\n")[-1].strip() == rows[name].strip()
