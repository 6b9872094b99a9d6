"""hfa_jax.compile_cache: the command-line tools' persistent compilation + autotuning cache."""

from __future__ import annotations

import os
import subprocess
import sys

from hfa_jax import compile_cache


def test_the_setting_names_the_folder_or_turns_the_cache_off(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    assert compile_cache.resolve() == str(tmp_path / "xdg" / "hfa_jax" / "jax")  # default: auto
    assert compile_cache.resolve("auto") == compile_cache.default_dir()
    assert compile_cache.resolve(str(tmp_path / "c")) == str(tmp_path / "c")
    for off in ("off", "OFF", "0", "false", "none"):
        assert compile_cache.resolve(off) is None
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.resolve() is None              # the environment, when no flag is given
    assert compile_cache.resolve(str(tmp_path)) == str(tmp_path)  # the flag wins


def _run(code: str, **env) -> subprocess.CompletedProcess:
    # A fresh process as a user starts it: without the suite's shared cache (tests/conftest.py),
    # which a configured jax_compilation_cache_dir would otherwise keep.
    base = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**base, "JAX_PLATFORMS": "cpu", **env}, cwd=os.getcwd())


def test_enable_stores_compiled_programs_in_the_folder_and_off_stores_nothing(tmp_path):
    code = ("import sys, jax; from hfa_jax import compile_cache as c; "
            "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0); "
            "p = c.enable(sys.argv[1] if len(sys.argv) > 1 else None); print(p); "
            "print(jax.config.jax_persistent_cache_enable_xla_caches); "
            "jax.jit(lambda x: x * 2 + 1)(jax.numpy.ones(3)).block_until_ready()")
    folder = tmp_path / "cache"
    r = _run(code.replace("sys.argv[1] if len(sys.argv) > 1 else None", repr(str(folder))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:2] == [str(folder), compile_cache.XLA_CACHES]
    assert any(n.endswith("-cache") for n in os.listdir(folder)), os.listdir(folder)
    r = _run(code.replace("sys.argv[1] if len(sys.argv) > 1 else None", "None"),
             HFA_JAX_COMPILE_CACHE="off", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert r.returncode == 0 and r.stdout.split()[0] == "None", r.stderr
    assert not (tmp_path / "xdg").exists()


def test_a_folder_that_cannot_be_made_is_one_warning(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _run(f"from hfa_jax import compile_cache as c; print(c.enable({str(blocker / 'sub')!r}))")
    assert r.returncode == 0 and r.stdout.strip() == "None"
    assert r.stderr.strip().splitlines()[-1].startswith("warning: compilation cache off: cannot create")
