"""The model folder that travels: export, load, same tokens as the workdir; incomplete folders
refused in one line; ``from hfa_jax import Translator`` without loading JAX at import."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from hfa_jax.errors import CheckpointError

# One xdist worker runs the application tests: they share the session's trained model.
pytestmark = pytest.mark.xdist_group("apps")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_export_round_trip_gives_the_workdirs_tokens(exported, translator, clips, encoded, png_tokens):
    from hfa_jax import Translator

    names = set(os.listdir(exported))
    assert {"README.md", "config.json", "hfa_export.json", "model.safetensors", "preprocessing.json",
            "tokenizer", "pseudo_glosses.json"} <= names
    info = json.load(open(os.path.join(exported, "hfa_export.json")))
    assert info["lora_merged"] and info["pseudo_gloss_head"]
    from safetensors.numpy import load_file

    keys = load_file(os.path.join(exported, "model.safetensors")).keys()
    assert not any("lora_" in k for k in keys)                       # adapters merged
    assert any(k.startswith("pretrain_head/pg_head/") for k in keys)
    prep = json.load(open(os.path.join(exported, "preprocessing.json")))
    assert (prep["fps"], prep["source_width"], prep["source_height"], prep["size"], prep["crop_size"]) == \
        (25.0, 210, 260, 55, 48)
    card = open(os.path.join(exported, "README.md")).read()
    for words in ("## Use it", "## Input", "## Data", "## Training", "## Results", "## Package versions",
                  "jax:", "python -m hfa_jax.export --workdir"):
        assert words in card, words

    t = Translator.from_pretrained(exported)
    assert t.preprocessing == translator.preprocessing and t.has_pseudo_gloss_head
    got = [list(map(int, s)) for s in t.translate_clips([t.read(d) for d, _ in clips])]
    assert got == png_tokens                                          # token for token
    assert t(encoded["mp4"]) == translator(encoded["mp4"])
    # one compiled program per shape, reused by later calls of that shape
    shapes = t.compiled_shapes
    assert shapes == [("generate", (4, 32, 55, 55, 3), (4, 32))]
    t(encoded["webm"])
    assert t.compiled_shapes == shapes


def test_kept_lora_and_incomplete_folders(tmp_path, workdirs, exported):
    from hfa_jax import export
    from hfa_jax.translator import Translator

    kept = str(tmp_path / "kept")
    export.export(workdirs["finetune2"], kept, merge=False)
    from safetensors.numpy import load_file

    assert any("lora_a" in k for k in load_file(os.path.join(kept, "model.safetensors")))
    with pytest.raises(Exception, match="not empty"):
        export.export(workdirs["finetune2"], kept)
    for missing in ("model.safetensors", "preprocessing.json", os.path.join("tokenizer", "sentencepiece.bpe.model")):
        broken = str(tmp_path / f"broken_{os.path.basename(missing)}")
        shutil.copytree(exported, broken)
        os.remove(os.path.join(broken, missing))
        with pytest.raises(CheckpointError, match=f"incomplete model folder, {missing} is missing") as e:
            Translator.from_pretrained(broken)
        assert broken in str(e.value) and "\n" not in str(e.value)
    cut = str(tmp_path / "cut")
    shutil.copytree(exported, cut)
    w = os.path.join(cut, "model.safetensors")
    data = open(w, "rb").read()
    open(w, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read the weights"):
        Translator.from_pretrained(cut)
    r = subprocess.run([sys.executable, "-m", "hfa_jax.translate", "--model", str(tmp_path / "broken_model.safetensors"),
                        "--input", kept], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in r.stderr


def test_import_is_light_and_translator_is_lazy():
    code = ("import sys, hfa_jax; assert 'jax' not in sys.modules and 'flax' not in sys.modules, 'heavy import'; "
            "from hfa_jax import Translator; assert Translator.__module__ == 'hfa_jax.translator'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
