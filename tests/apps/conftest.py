"""Session fixtures of the application tests: SynthSign clips, the tiny trained workdirs, one
Translator (its compiled programs are shared by every later Translator of the same model), an
exported model folder, and the clips encoded as real video files."""

from __future__ import annotations

import os

import pytest

from tests.apps import fixtures as fx


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """[(PNG frame folder, sentence)] of four SynthSign test clips."""
    return fx.make_clips(str(tmp_path_factory.mktemp("synthsign")))


@pytest.fixture(scope="session")
def workdirs(tmp_path_factory, clips):
    return fx.make_workdirs(str(tmp_path_factory.mktemp("runs")), clips)


@pytest.fixture(scope="session")
def translator(workdirs):
    from hfa_jax.translator import Translator

    return Translator.from_pretrained(workdirs["finetune2"])


@pytest.fixture(scope="session")
def png_tokens(translator, clips):
    """Generated token ids of the PNG folders (the reference every video encode is held to)."""
    return [list(map(int, t)) for t in translator.translate_clips([translator.read(d) for d, _ in clips])]


@pytest.fixture(scope="session")
def encoded(tmp_path_factory, clips):
    """{"mp4"|"webm": [path per clip]} at 25 fps, plus "hd30": the first clip at 30 fps on a
    1280x720 canvas."""
    d = str(tmp_path_factory.mktemp("videos"))
    out = {ext: [fx.encode(f, os.path.join(d, f"{os.path.basename(f)}.{ext}")) for f, _ in clips]
           for ext in ("mp4", "webm")}
    out["hd30"] = [fx.encode(clips[0][0], os.path.join(d, "hd30.mp4"), fps=30.0, canvas=(1280, 720))]
    return out


@pytest.fixture(scope="session")
def exported(tmp_path_factory, workdirs):
    from hfa_jax import export

    out = str(tmp_path_factory.mktemp("export") / "my_model")
    export.main(["--workdir", workdirs["finetune2"], "--out", out])
    return out
