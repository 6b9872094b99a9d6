"""Settings read once (train/settings.py, schema.resolve) and the tasks (train/tasks.py): every
config field has one default and one typed home; the stage's task holds its objective, in order."""

import ast
import dataclasses
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from configs import demo, finetune, pretrain
from hfa_jax.train import schema, settings, tasks
from hfa_jax.train.freeze import STAGES

REPO = pathlib.Path(__file__).resolve().parents[2]
_SECTIONS = {"data": settings.DataSettings, "train": settings.TrainSettings, "eval": settings.EvalSettings,
             "mesh": settings.MeshSettings, "weights": settings.WeightsSettings}


def test_every_schema_field_has_one_typed_setting_without_a_second_default():
    base = schema.base()
    for name, cls in _SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields == set(base[name].keys()), name
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(cls)), name
    assert {f.name for f in dataclasses.fields(settings.AugmentSettings)} == set(base.data.augment.keys())


def test_resolve_casts_and_fills_what_a_config_lacks_from_the_schema():
    c = pretrain.get_config("tiny")
    s = schema.resolve(c)
    assert s.train.trainable == tuple(tuple(r) for r in c.train.trainable)
    assert isinstance(s.data.buckets, tuple) and s.data.buckets == tuple(c.data.buckets)
    assert s.train.stage == "pretrain" and isinstance(s.train.lr, float)
    # an older run's config.json without data.pack_frames and train.microbatches
    d = c.to_dict()
    del d["data"]["pack_frames"], d["train"]["microbatches"]
    old = schema.resolve(ml_collections.ConfigDict(d))
    assert old.data.pack_frames == schema.base().data.pack_frames
    assert old.train.microbatches == schema.base().train.microbatches


def test_each_stage_has_a_task_and_each_task_its_objective_in_order():
    assert set(tasks.TASK_OF_STAGE) == set(STAGES)
    pre = tasks.make(schema.resolve(pretrain.get_config("csl_daily")))
    terms = pre.objective().terms
    assert [(t.name, t.weight) for t in terms] == [("align_loss", 1.0), ("pg_loss", 0.0), ("desc_loss", 0.5),
                                                   ("hand_loss", 0.3)]
    assert (pre.best_metric, pre.best_mode, pre.generates) == ("val_loss", "min", False)
    plain = tasks.make(schema.resolve(demo.get_config(None)))
    assert [(t.name, t.weight) for t in plain.objective().terms] == [("align_loss", 1.0), ("pg_loss", 20.0)]
    tr = tasks.make(schema.resolve(finetune.get_config("stage1_tiny")))
    assert [(t.name, t.weight) for t in tr.objective().terms] == [("loss", 1.0)]
    assert (tr.best_metric, tr.best_mode, tr.generates) == ("bleu4", "max", True)
    assert set(tr.label_shapes(2, 0)) == {"labels", "decoder_input_ids", "target_mask"}
    assert set(pre.label_shapes(2, 5)) == {"text_ids", "text_mask", "pg_targets", "text_vec", "desc_vec",
                                           "hand_pose"}


def _imports(path: pathlib.Path) -> set[str]:
    """The modules a file imports (at any depth of the file: lazy imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.update([node.module] + [f"{node.module}.{a.name}" for a in node.names])
    return out


def test_imports_run_downward():
    """The models import neither data/, weights/ nor train/; inference does not import the
    trainer; the library never imports configs/ or data_prep/ (the demo job excepted)."""
    pkg = REPO / "hfa_jax"
    for path in (pkg / "models").glob("*.py"):
        bad = {m for m in _imports(path) if m.startswith(("hfa_jax.data", "hfa_jax.weights", "hfa_jax.train"))}
        assert not bad, (path.name, bad)
    for name in ("model_folder.py", "translator.py", "translate.py", "serve.py", "export.py"):
        bad = {m for m in _imports(pkg / name) if m.startswith(("hfa_jax.train.trainer", "hfa_jax.train.loop"))}
        assert not bad, (name, bad)
    for path in pkg.rglob("*.py"):
        if path.name != "demo.py":
            assert not {m for m in _imports(path) if m.startswith(("configs", "data_prep"))}, path


def test_training_entry_point_does_not_load_the_demo():
    code = ("import sys, hfa_jax.main; bad = sorted(m for m in sys.modules if m.startswith(('data_prep', "
            "'hfa_jax.demo', 'hfa_jax.train'))); print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


@pytest.mark.parametrize("job", ["nope"])
def test_unknown_job_is_one_config_error(job):
    from hfa_jax import main
    from hfa_jax.errors import ConfigError

    c = pretrain.get_config("tiny")
    c.unlock()
    c.job = job
    with pytest.raises(ConfigError, match=r"config\.job='nope' is not one of \['demo', 'train'\]"):
        main.run(c, "/nonexistent")
