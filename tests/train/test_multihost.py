"""Multi-host training with real processes on this machine (``hfa_jax.launch``: a coordinator on
127.0.0.1, gloo CPU collectives, emulated devices per process), against single-process runs:

(a) pretraining on 2 processes x 2 devices equals 1 process x 4 devices, each process reading only
    its rows of every global batch; (b) stage-2 fine-tuning with FSDP and a beam-search evaluation
    on 2 processes equals 1 process: losses, parameters, every dev hypothesis and its scores;
(c) kill -9 of one process of a 2-process run after step 2 stops the other, with one line naming
    it; the checkpoint those 2 processes wrote then resumes in 1 process and ends at the
    uninterrupted run; (d) a checkpoint written by 1 process resumes in 2 and ends there too.

Every launch starts Python, JAX and the trainer and compiles (about a minute on a 2-core CPU), so
each run serves as many checks as it can: 8 launches in all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from hfa_jax.train import checkpoint as ckpt_lib
from hfa_jax.train import state as state_lib

# Minutes in all: the second test command runs them (tests/conftest.py: -m slow). One xdist worker
# runs them all (pytest.ini: --dist loadgroup): they share the data, the reference run and the
# compilation cache, and two multi-process runs at once would starve each other.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multihost")]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The stage config every process loads (``--config=<file>:<stage>``); paths come from the env.
TINY_CONFIG = textwrap.dedent('''
    import json, os
    from configs import demo as demo_cfg
    from hfa_jax.train import schema

    def get_config(arg=None):
        stage = arg or "pretrain"
        paths = json.load(open(os.environ["HFA_TEST_PATHS"]))
        c = schema.base()
        c.name = "tiny"
        c.model = demo_cfg.demo_model()
        c.model.vit.update(dict(width=16, depth=1, num_heads=2, mlp_dim=32, pos_grid=4, lora_blocks=(0,)))
        c.model.temporal.update(dict(width=16, num_heads=2, mlp_dim=32, out_dim=16))
        c.model.mbart.update(dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                  decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32))
        c.model.frame_dim = 16
        c.model.proto_dim = 8
        c.data.update(dict(crop_size=32, max_frames=32, buckets=(32,), max_text_len=16))
        c.data.dataset_dir = paths["dataset_dir"]
        c.data.tokenizer_dir = paths["tokenizer_dir"]
        c.data.pseudo_glosses = paths["pseudo_glosses"] if stage == "pretrain" else ""
        c.data.prototypes = paths["prototypes"] if stage == "pretrain" else ""
        c.train.stage = stage
        c.train.trainable = demo_cfg.DEMO_RULES[stage]
        c.train.batch_size = 4
        c.train.num_steps = 4
        c.train.lr = 1e-3
        c.train.log_every_steps = 1
        c.train.checkpoint_every_steps = 2  # steps 2 and 4: (c) and (d) resume from step 2
        c.train.keep_checkpoints = 2
        c.train.progress_bar = False
        c.train.tensorboard = False
        c.eval.splits = ("dev",)
        c.eval.at_end = False
        c.eval.final_on_best = False
        c.eval.batch_size = 4
        c.eval.num_beams = 2
        c.eval.max_new_tokens = 6
        # The launcher stops the others when a process is lost (test c); the coordination service's
        # own check would only abort live processes that a loaded machine starves of CPU for minutes.
        c.mesh.heartbeat_timeout_s = 900
        return c
''')


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny SynthSign data, the config file, and the environment of every launch (the suite's
    persistent compilation cache, tests/conftest.py: a 1-process launch reuses the programs of the
    ones before it; 2-process programs were seen to get new cache keys at every launch)."""
    from configs import demo as demo_cfg
    from hfa_jax import demo

    root = tmp_path_factory.mktemp("multihost")
    c = demo_cfg.get_config("smoke")
    c.demo.update(dict(num_train=8, num_eval=6, max_glosses=2, frame_size=36, fasttext_dim=8, workers=1,
                       domain="frequent", pretrain_frame_encoder=False))
    paths = demo.prepare_data(c, str(root / "data"))
    with open(root / "paths.json", "w") as f:
        json.dump(paths, f)
    (root / "tiny.py").write_text(TINY_CONFIG)
    e = dict(os.environ, HFA_TEST_PATHS=str(root / "paths.json"), JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             # only shorten XLA's CPU compile of these tiny programs
             XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    return {"root": root, "config": str(root / "tiny.py"), "env": e}


def launch_cmd(env, procs, devices, workdir, stage="pretrain", *flags):
    return [sys.executable, "-m", "hfa_jax.launch", f"--num_processes={procs}", f"--devices_per_process={devices}",
            "--grace_s=5", "--", f"--config={env['config']}:{stage}", f"--workdir={workdir}", *flags]


def launch(env, procs, devices, workdir, stage="pretrain", *flags, check=True):
    r = subprocess.run(launch_cmd(env, procs, devices, workdir, stage, *flags), cwd=REPO, env=env["env"],
                       capture_output=True, text=True, timeout=1800)
    with open(workdir + ".log", "a") as f:  # the whole output, for a failure's first lines
        f.write(r.stdout + r.stderr)
    if check:
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return r


def losses(workdir, key="loss"):
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == "train":
                out[row["step"]] = row[key]
    return out


def final_params(workdir):
    state, meta = ckpt_lib.load_state_arrays(workdir, best=False)
    return state_lib.merge_params(state["trainable"], state["frozen"]), meta


def assert_same_run(a, b, steps=4):
    """Per-step losses within 1e-5 (relative) and the final parameters within 1e-5."""
    la, lb = losses(a), losses(b)
    for s in range(1, steps + 1):
        assert lb[s] == pytest.approx(la[s], rel=1e-5, abs=1e-6), (b, s, la, lb)
    pa, ma = final_params(a)
    pb, mb = final_params(b)
    assert ma["step"] == mb["step"] == steps
    for (k, x), y in zip(jax.tree_util.tree_flatten_with_path(pa)[0], jax.tree.leaves(pb)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5, err_msg=f"{b} {jax.tree_util.keystr(k)}")


@pytest.fixture(scope="module")
def reference(env):
    """The uninterrupted single-process run: 1 process x 4 devices."""
    wd = str(env["root"] / "one")
    launch(env, 1, 4, wd)
    return wd


@pytest.fixture(scope="module")
def two(env, reference):
    """The same run on 2 processes x 2 devices, each recording the rows it read."""
    wd = str(env["root"] / "two")
    r = launch(env, 2, 2, wd, "pretrain", "--config.train.debug_record_batches=True")
    assert "[p0]" in r.stdout and "[p1]" in r.stdout
    return wd


def test_a_two_processes_equal_one_and_read_only_their_rows(reference, two):
    assert_same_run(reference, two)
    rows = []
    for p in range(2):
        with open(os.path.join(two, f"batches.p{p}.jsonl")) as f:
            rows.append([json.loads(line)["index"] for line in f])
    assert [len(x) for x in rows] == [4, 4]
    for step in range(4):  # 2 rows each, disjoint; together the global batch of 4
        a, b = rows[0][step], rows[1][step]
        assert len(a) == len(b) == 2 and not set(a) & set(b)


def test_b_stage2_with_fsdp_and_beam_search_on_two_processes_equals_one(env, reference):
    stage1 = str(env["root"] / "stage1")  # only the start of stage 2: one step
    launch(env, 1, 4, stage1, "finetune1", f"--config.train.init_from={reference}", "--config.train.num_steps=1")
    flags = (f"--config.train.init_from={stage1}", "--config.mesh.fsdp=2", "--config.eval.at_end=True")
    one, two = str(env["root"] / "stage2_one"), str(env["root"] / "stage2_two")
    launch(env, 1, 4, one, "finetune2", *flags)
    r = launch(env, 2, 2, two, "finetune2", *flags)
    assert "mesh {'data': 2, 'fsdp': 2}" in r.stdout
    assert_same_run(one, two)

    def hypotheses(wd):  # the dev beam search after the last step, gathered from both processes
        with open(os.path.join(wd, "translations", "dev_step4.hyp.txt"), encoding="utf-8") as f:
            return f.read().splitlines()

    assert len(hypotheses(one)) == 6 and hypotheses(two) == hypotheses(one)

    def dev_scores(wd):  # the scores of that evaluation (BLEU, ROUGE-L, chrF ...) and its losses
        with open(os.path.join(wd, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        return [r for r in rows if r["split"] == "dev"]

    ref_scores = dev_scores(one)
    assert ref_scores and len(dev_scores(two)) == len(ref_scores)
    assert any(k.startswith("bleu") for k in ref_scores[-1]), ref_scores[-1]
    for a, b in zip(ref_scores, dev_scores(two)):
        assert set(a) == set(b)
        for k, v in a.items():
            if isinstance(v, float):
                assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
            else:
                assert b[k] == v, k


def stopped_at(source: str, workdir: str, step: int = 2) -> str:
    """A workdir as ``source``'s run left it had it stopped after ``step``: that checkpoint and
    the metrics logged up to it."""
    shutil.copytree(os.path.join(source, "checkpoints", str(step)), os.path.join(workdir, "checkpoints", str(step)))
    with open(os.path.join(source, "metrics.jsonl")) as f:
        rows = [line for line in f if json.loads(line)["step"] <= step]
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(rows)
    return workdir


def training_processes(workdir: str, launcher: subprocess.Popen) -> dict[int, int]:
    """{JAX process id: pid} of the ``hfa_jax.main`` processes ``launcher`` started for ``workdir``."""
    out = subprocess.run(["pgrep", "-f", f"workdir={workdir}"], capture_output=True, text=True).stdout.split()
    found = {}
    for pid in (int(x) for x in out if int(x) != launcher.pid):
        with open(f"/proc/{pid}/environ") as f:
            ids = [v.split("=", 1)[1] for v in f.read().split("\0") if v.startswith("JAX_PROCESS_ID=")]
        if ids:
            found[int(ids[0])] = pid
    return found


def pid_gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie not yet reaped counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_c_a_lost_process_stops_the_other_and_its_checkpoint_resumes_on_one_process(env, reference):
    wd = str(env["root"] / "lost")
    log_path = env["root"] / "lost.log"
    flags = ("--config.train.debug_hold_after_step=2",)  # each process waits to be killed after step 2
    with open(log_path, "w") as log:  # a file, not a pipe: a full pipe would stall the training processes
        p = subprocess.Popen(launch_cmd(env, 2, 2, wd, "pretrain", *flags), cwd=REPO, env=env["env"],
                             stdout=log, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 1800  # a loaded machine; idle, the hold comes within about a minute
        while (time.time() < deadline and p.poll() is None
               and log_path.read_text().count("debug hold after step 2") < 2):
            time.sleep(0.5)
        children = training_processes(wd, p)
        assert sorted(children) == [0, 1], log_path.read_text()[-3000:]
        t0 = time.time()
        os.kill(children[1], signal.SIGKILL)
        p.wait(timeout=300)
        assert time.time() - t0 < 120  # the launcher's 5 s grace plus process teardown on a busy machine
    text = log_path.read_text()
    assert p.returncode != 0
    lines = [line for line in text.splitlines() if line.startswith("hfa_jax.launch:")]
    # Process 0 may already have aborted on its own (its peer is gone) by the time the line is written.
    assert len(lines) == 1 and re.fullmatch(r"hfa_jax\.launch: process 1 was killed by signal 9 \(SIGKILL\)"
                                            r"(; stopping the other 1 process\(es\))?", lines[0]), lines
    assert all(pid_gone(pid) for pid in children.values())
    # What the 2 processes left (the step-2 checkpoint) resumes in 1 process at step 3.
    assert ckpt_lib.Checkpointer(wd).latest_step() == 2
    r = launch(env, 1, 4, wd, "pretrain", *flags)
    assert "resumed from step 2" in r.stdout
    assert_same_run(reference, wd)


def test_d_a_checkpoint_of_one_process_resumes_on_two(env, reference):
    wd = stopped_at(reference, str(env["root"] / "one_then_two"))
    assert ckpt_lib.Checkpointer(wd).latest_step() == 2
    r = launch(env, 2, 2, wd)  # the same command on another layout resumes at step 3
    assert "resumed from step 2" in r.stdout
    assert_same_run(reference, wd)
