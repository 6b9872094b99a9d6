"""The ``--config`` flag's user errors as one line.

``ml_collections.config_flags`` loads ``--config=path.py[:variant]`` and applies
``--config.a.b=value`` overrides while absl parses the command line; what goes wrong there (a
misspelt field, a missing or broken config file, a value of the wrong type) surfaces as a
traceback of the flag machinery. :func:`parse_flags`, the ``flags_parser`` that
``absl.app.run`` calls, parses as usual; only when that fails does it work out the cause itself
(:func:`explain`) and print ``error: <one line>`` with exit status 2, the
:func:`hfa_jax.errors.cli_main` convention. A misspelt field is named with the closest valid
one (:mod:`difflib`).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
import traceback
from typing import Any, Sequence

from absl import flags
from ml_collections.config_flags.config_flags import is_config_flag

from hfa_jax.errors import ConfigError

__all__ = ["parse_flags", "explain", "load_config", "check_field"]


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """``absl.app.run(main, flags_parser=parse_flags)``: parses ``argv`` into ``flag_values``
    and returns the arguments left over; a user error prints one line and exits with status 2."""
    try:
        rest = flag_values(list(argv))
        for name in _config_flag_names(flag_values):
            value = flag_values[name].value  # a config file that failed to load raises on first use
            if value is not None:
                getattr(value, "keys", None)
            elif _flag_value(argv, name) is not None:
                raise ConfigError(f"--{name}={_flag_value(argv, name)}: get_config() returned None")
        return rest
    except ConfigError as e:
        message = str(e)
    except Exception as e:  # flags.Error, or whatever loading the config file raised
        message = explain(argv, e, flag_values)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def explain(argv: Sequence[str], error: BaseException, flag_values: flags.FlagValues = flags.FLAGS) -> str:
    """One line saying why parsing ``argv`` raised ``error``: the config file is missing or
    broken, an override names an unknown field, or (otherwise) the first line of the error."""
    try:
        for name in _config_flag_names(flag_values):
            spec = _flag_value(argv, name)
            if spec is None:
                continue
            config = load_config(spec, flag=name)
            for field in _overrides(argv, name):
                check_field(config, field, flag=name, spec=spec)
    except ConfigError as e:
        return str(e)
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if not isinstance(error, flags.Error):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return _short(text)


def load_config(spec: str, flag: str = "config") -> Any:
    """``path.py[:variant]`` -> ``get_config([variant])``, as config_flags does, with every
    failure a ConfigError line naming the file (and the line of a syntax error)."""
    path, sep, variant = spec.partition(":")
    where = f"--{flag}={spec}"
    if not path:
        raise ConfigError(f"{where}: no config file given; pass --{flag}=configs/NAME.py[:variant]")
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: no such file {path!r} (from {os.getcwd()}); pass a config file such as "
                          "configs/demo.py")
    try:
        module_spec = importlib.util.spec_from_file_location(f"_hfa_config_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{where}: {e.filename or path}, line {e.lineno}: {e.msg}") from None
    except Exception as e:
        raise ConfigError(f"{where}: {_where_in(path, e)}{type(e).__name__}: {_short(e)}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"{where}: {path} defines no get_config(); a config file returns its config from it")
    try:
        return get_config(variant) if sep else get_config()
    except Exception as e:  # an unknown variant, usually: the config's own message says which exist
        kind = "" if isinstance(e, (ValueError, ConfigError)) else f"{type(e).__name__}: "
        raise ConfigError(f"{where}: {_where_in(path, e)}{kind}{_short(e)}") from None


def check_field(config: Any, field: str, flag: str = "config", spec: str = "") -> None:
    """Raises ConfigError when ``--{flag}.{field}`` names no field of ``config``, with the
    closest valid field. Indexed paths (``a.b[0]``) and fields under a non-config value are
    left to config_flags."""
    parts = field.split(".")
    node = config
    for i, part in enumerate(parts):
        if "[" in part or not _is_group(node):
            if i and not _is_group(node) and "[" not in part:
                raise ConfigError(f"--{flag}.{field}: {flag}.{'.'.join(parts[:i])} is a "
                                  f"{type(node).__name__}, not a group of fields")
            return
        keys = [str(k) for k in node.keys()]
        if part not in keys:
            raise ConfigError(f"--{flag}.{field}: {spec or 'the config'} has no field "
                              f"{'.'.join(parts[:i + 1])}; {_suggest(config, parts, i, keys, flag)}")
        node = node[part]


def _suggest(config: Any, parts: list[str], i: int, siblings: list[str], flag: str) -> str:
    """'did you mean --config.x.y?': a close sibling; else a field of that name (or close to
    it) elsewhere in the config; else the closest sibling, however far."""
    close = difflib.get_close_matches(parts[i], siblings, n=1, cutoff=0.6)
    if close:
        return f"did you mean --{flag}.{'.'.join(parts[:i] + close + parts[i + 1:])}?"
    paths = _field_paths(config)
    tail = ".".join(parts[i:])
    moved = [p for p in paths if p == tail or p.endswith("." + tail)]
    if not moved:
        names = {p: p.rsplit(".", 1)[-1] for p in paths}
        near = difflib.get_close_matches(parts[-1], list(set(names.values())), n=1, cutoff=0.75)
        moved = [p for p, n in names.items() if near and n == near[0]]
    if moved:
        return f"did you mean --{flag}.{min(moved, key=len)}?"
    best = difflib.get_close_matches(parts[i], siblings, n=1, cutoff=0.0)
    group = f"{flag}.{'.'.join(parts[:i])}" if i else flag
    if best:
        return f"the closest field of {group} is --{flag}.{'.'.join(parts[:i] + best)}"
    return f"{group} has no fields"


def _field_paths(node: Any, prefix: str = "", depth: int = 0) -> list[str]:
    out = []
    if depth > 16 or not _is_group(node):
        return out
    for k in node.keys():
        path = f"{prefix}{k}"
        out.append(path)
        try:
            child = node[k]
        except Exception:  # a field whose reference cannot be resolved
            continue
        out.extend(_field_paths(child, path + ".", depth + 1))
    return out


def _is_group(node: Any) -> bool:
    return hasattr(node, "keys") and hasattr(node, "__getitem__") and not isinstance(node, type)


def _config_flag_names(flag_values: flags.FlagValues) -> list[str]:
    return [name for name in flag_values if name == flag_values[name].name and is_config_flag(flag_values[name])]


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    """The last ``--name=V`` / ``--name V`` in argv (as absl reads it), or None."""
    value = None
    args = list(argv)[1:]
    for i, a in enumerate(args):
        if a == "--":
            break
        for dash in ("--", "-"):
            if a.startswith(f"{dash}{name}="):
                value = a[len(dash) + len(name) + 1:]
            elif a == f"{dash}{name}" and i + 1 < len(args):
                value = args[i + 1]
    return value


def _overrides(argv: Sequence[str], name: str) -> list[str]:
    """The field paths of every ``--name.a.b[=V]`` in argv."""
    out = []
    for a in list(argv)[1:]:
        if a == "--":
            break
        for dash in ("--", "-"):
            if a.startswith(f"{dash}{name}."):
                out.append(a[len(dash) + len(name) + 1:].split("=", 1)[0])
                break
    return out


def _where_in(path: str, error: BaseException) -> str:
    """'configs/x.py, line 12: ' for the deepest frame of ``error`` inside the config file."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(path)]
    return f"{path}, line {frames[-1].lineno}: " if frames else ""


def _short(text: object, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
