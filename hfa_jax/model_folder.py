"""A trained translation model on disk, read into one object (:class:`ModelBundle`).

Two layouts hold one:

* a **fine-tuning workdir** (``config.json`` + ``best/`` or ``checkpoints/``, written by
  :mod:`hfa_jax.main`): :func:`load_workdir`;
* an **exported model folder** (``hfa_export.json``, written by :mod:`hfa_jax.export`):
  :func:`load_export`. Its file names and format version are defined here, next to the reader,
  so the writer and :class:`hfa_jax.translator.Translator` both import them from below.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError
from safetensors.numpy import load_file

from hfa_jax.data import formats, pipeline
from hfa_jax.data import video as video_lib
from hfa_jax.errors import CheckpointError, ConfigError, DataError
from hfa_jax.models import hfa
from hfa_jax.text import pseudo_glosses as pg_lib
from hfa_jax.text import tokenizer as text_lib
from hfa_jax.train import checkpoint as ckpt_lib
from hfa_jax.train.state import variables_from_state
from hfa_jax.train import tasks
from hfa_jax.train.schema import resolve
from hfa_jax.train.settings import Settings, model_config

__all__ = ["EXPORT_MARKER", "FORMAT_VERSION", "ModelBundle", "PseudoGlossHeadBundle", "load_workdir",
           "load_export", "read_config", "resolve_path", "training_preprocessing", "find_pretrain_head"]

EXPORT_MARKER = "hfa_export.json"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
PREPROCESSING = "preprocessing.json"
TOKENIZER_DIR = "tokenizer"
PSEUDO_GLOSSES = "pseudo_glosses.json"
REQUIRED = ("config.json", EXPORT_MARKER, WEIGHTS, PREPROCESSING, os.path.join(TOKENIZER_DIR, "sentencepiece.bpe.model"))


@dataclasses.dataclass
class PseudoGlossHeadBundle:
    """The pretraining head, to show which pseudo-glosses the video side sees over time.

    params: ``PseudoGlossHead`` params; prototypes: ``[V, proto_dim]`` (row 0, the blank, is
    prepended as zeros, as in :class:`hfa_jax.models.hfa.HFAPretrain`); vocab: V + 1 names
    (index 0 the blank); exact: the visual side is the one the head was trained on."""

    params: dict
    prototypes: np.ndarray
    vocab: list[str]
    exact: bool


@dataclasses.dataclass
class ModelBundle:
    """Everything a :class:`hfa_jax.translator.Translator` is built from (what :mod:`hfa_jax.export` writes)."""

    config: ml_collections.ConfigDict  # the training config (config.json)
    model_cfg: hfa.HFAConfig
    variables: dict                    # params, batch_stats, buffers (host arrays)
    tokenizer_dir: str
    preprocessing: video_lib.Preprocessing
    step: int | None = None
    pg_head: PseudoGlossHeadBundle | None = None
    source: str = ""


# ------------------------------------------------------------------------------------------
# An exported model folder


def flatten_weights(tree: dict, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}/" + "/".join(k): np.ascontiguousarray(np.asarray(v))
            for k, v in traverse_util.flatten_dict(tree).items()}


def unflatten_weights(flat: dict[str, np.ndarray]) -> dict:
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def load_export(folder: str) -> ModelBundle:
    """An exported model folder -> :class:`ModelBundle`."""

    for name in REQUIRED:
        if not os.path.isfile(os.path.join(folder, name)):
            raise CheckpointError(f"{folder}: incomplete model folder, {name} is missing; export it again with "
                                  "python -m hfa_jax.export --workdir WORKDIR --out FOLDER")
    info = read_json(os.path.join(folder, EXPORT_MARKER), EXPORT_FIELDS)
    config_path = os.path.join(folder, "config.json")
    config = config_dict(read_json(config_path, CONFIG_FIELDS), config_path)
    if info["format"] != FORMAT_VERSION:
        raise CheckpointError(f"{folder}: model folder format {info.get('format')} is not {FORMAT_VERSION}; "
                              "export it again with this version of hfa_jax")
    try:
        flat = load_file(os.path.join(folder, WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{folder}/{WEIGHTS}: cannot read the weights ({e}); the file is incomplete or "
                              "corrupt, export it again") from None
    tree = unflatten_weights(flat)
    head = tree.pop("pretrain_head", None)
    pg = None
    if head is not None and os.path.isfile(os.path.join(folder, PSEUDO_GLOSSES)):
        pg = _pseudo_gloss_head(head, os.path.join(folder, PSEUDO_GLOSSES))
    return ModelBundle(config=config, model_cfg=model_config_from_export(info, os.path.join(folder, EXPORT_MARKER)),
                       variables=tree, tokenizer_dir=os.path.join(folder, TOKENIZER_DIR),
                       preprocessing=read_preprocessing(os.path.join(folder, PREPROCESSING)),
                       step=info.get("step"), pg_head=pg, source=os.path.abspath(folder))


# ------------------------------------------------------------------------------------------
# Loading a fine-tuning workdir


def resolve_path(path: str, folder: str) -> str:
    """A relative path that ``folder``'s config.json names, found from any current directory.

    Training writes the paths as it was given them: relative to the directory it ran in, which
    is ``folder`` or one of its parents when the workdir was named relative to it (``runs/demo``
    names ``runs/demo/tokenizer``). The nearest of ``folder`` and its parents under which the
    path exists is taken; else the path as given (relative to here, as before). Absolute and
    empty paths are returned unchanged."""
    if not path or os.path.isabs(path):
        return path
    base = os.path.abspath(folder)
    while True:
        candidate = os.path.join(base, path)
        if os.path.exists(candidate):
            return candidate
        parent = os.path.dirname(base)
        if parent == base:
            return path
        base = parent


def _settings(config) -> Settings:
    """A run's settings from its config.json (fields it lacks take the schema's defaults)."""
    stage = config.train.stage if "train" in config and "stage" in config.train else None
    if stage not in tasks.TASK_OF_STAGE:
        raise ConfigError(f"config.json: train.stage={stage!r} is not one of {sorted(tasks.TASK_OF_STAGE)}; "
                          "pass a workdir written by hfa_jax.main")
    return resolve(config)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{workdir}: no config.json; pass a fine-tuning workdir or an exported model folder")
    hint = "the workdir's config.json is damaged; restore it"
    return config_dict(read_json(path, WORKDIR_CONFIG_FIELDS, ConfigError, hint), path, ConfigError, hint)


def training_preprocessing(config, folder: str = "") -> video_lib.Preprocessing:
    """The preprocessing a workdir's model was trained with: the source videos' frame rate and frame
    size (of the dataset's source format, :func:`hfa_jax.data.formats.of_dataset`, by the tfds
    builder's name), its stored square size (from the dataset's features, else the 256/224
    convention of docs/data.md), the crop and the frame limit. ``folder``: the workdir whose config
    this is (its relative paths are resolved against it)."""
    crop = int(config.data.crop_size)
    size, name = int(round(crop * 256 / 224)), "phoenix14t"
    try:
        src = pipeline.open_split(resolve_path(str(config.data.dataset_dir), folder) if folder
                                  else config.data.dataset_dir, config.data.train_split)
        size = int(src.features["frames"].feature.shape[0])
        name = os.path.basename(os.path.dirname(src.builder_dir))
    except Exception:  # the dataset is not on this machine: keep the convention
        pass
    corpus = formats.of_dataset(name)
    return video_lib.Preprocessing(fps=corpus.fps, source_width=corpus.width, source_height=corpus.height,
                                   size=size, crop_size=crop,
                                   max_frames=int(config.data.max_frames),
                                   frame_selection=str(config.data.frame_selection))


def _load_state(workdir: str) -> tuple[dict, dict]:
    try:
        return ckpt_lib.load_state_arrays(workdir, best=True)
    except CheckpointError:
        return ckpt_lib.load_state_arrays(workdir, best=False)


_TRUNK = ("frame_encoder", "frame_proj", "frame_bn", "temporal", "hand_pose")


def _same_trunk(a: dict, b: dict) -> bool:
    for coll in ("params", "batch_stats"):
        fa = traverse_util.flatten_dict({k: v for k, v in a.get(coll, {}).items() if k in _TRUNK})
        fb = traverse_util.flatten_dict({k: v for k, v in b.get(coll, {}).items() if k in _TRUNK})
        if fa.keys() != fb.keys() or any(not np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa):
            return False
    return True


def find_pretrain_head(config, variables: dict, folder: str = "") -> PseudoGlossHeadBundle | None:
    """The pseudo-gloss head of the pretraining stage this model descends from
    (``config.train.init_from``, followed back; relative paths resolved against the workdir that
    names them, ``folder`` for ``config``), or None where any piece is missing."""
    seen = set()
    wd = resolve_path(_settings(config).train.init_from or "", folder or ".")
    while wd and wd not in seen and os.path.isfile(os.path.join(wd, "config.json")):
        seen.add(wd)
        c = read_config(wd)
        s = _settings(c)
        if not tasks.of_stage(s.train.stage).uses_pseudo_glosses:  # not the pretraining stage
            wd = resolve_path(s.train.init_from or "", wd)
            continue
        try:
            state, _ = _load_state(wd)
            pv = variables_from_state(state)
            pg_path = resolve_path(str(s.data.pseudo_glosses), wd)
            vocab = ["<blank>"] + list(pg_lib.load_pseudo_glosses(pg_path).vocab)
        except (CheckpointError, DataError, OSError):
            return None
        params = pv["params"]
        if "pg_head" not in params or "prototypes" not in params:
            return None
        protos = np.asarray(params["prototypes"])
        if len(vocab) != protos.shape[0] + 1:
            return None
        return PseudoGlossHeadBundle(jax.tree.map(np.asarray, params["pg_head"]), protos, vocab,
                                     _same_trunk(pv, variables))
    return None


def load_workdir(workdir: str) -> ModelBundle:
    """A fine-tuning workdir -> :class:`ModelBundle` (its best checkpoint, else its latest)."""
    if not os.path.isdir(workdir):
        raise ConfigError(f"{workdir}: no such folder; pass a fine-tuning workdir or an exported model folder")
    config = read_config(workdir)
    settings = _settings(config)
    if not tasks.of_stage(settings.train.stage).generates:
        raise ConfigError(f"{workdir} is a pretraining run; translate with a fine-tuning workdir")
    tok_dir = resolve_path(str(settings.data.tokenizer_dir), workdir)
    if not os.path.isdir(tok_dir):
        raise ConfigError(f"{workdir}: its tokenizer folder {tok_dir} (config.data.tokenizer_dir) is missing")
    tokenizer = text_lib.load_tokenizer(tok_dir, lang=settings.data.lang)
    state, meta = _load_state(workdir)
    variables = variables_from_state(state)
    return ModelBundle(config=config, model_cfg=model_config(config, tokenizer=tokenizer), variables=variables,
                       tokenizer_dir=tok_dir, preprocessing=training_preprocessing(config, workdir),
                       step=meta.get("step"), pg_head=find_pretrain_head(config, variables, workdir),
                       source=os.path.abspath(workdir))


# ------------------------------------------------------------------------------------------
# Checking the JSON files of a model folder or workdir before anything reads a field of them.
# Each file's fields are a table: dotted key -> (what it must be, a test, required). A file
# that is not JSON, not an object, misses a required key or has a value outside its range
# raises one line naming the file and the key; nothing past the check meets a wrong shape.

_MAX_JSON_BYTES = 64 << 20  # the largest config.json / vocabulary hfa_jax writes is under 1 MiB


def _number(lo: float, hi: float) -> tuple[str, object]:
    return (f"a number in [{lo:g}, {hi:g}]",
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi)


def _integer(lo: int, hi: int) -> tuple[str, object]:
    return f"an integer in [{lo}, {hi}]", lambda v: type(v) is int and lo <= v <= hi


_OBJECT = ("an object", lambda v: isinstance(v, dict))
_STRING = ("a string", lambda v: isinstance(v, str))
_OPT_STRING = ("a string or null", lambda v: v is None or isinstance(v, str))
_BUCKETS = ("a non-empty list of positive integers",
            lambda v: isinstance(v, list) and 0 < len(v) <= 1024
            and all(type(b) is int and 0 < b <= 1_000_000 for b in v))

# hfa_export.json
EXPORT_FIELDS: dict[str, tuple[tuple[str, object], bool]] = {
    "format": (_integer(0, 1_000_000), True),
    "model": (_OBJECT, True),
    "step": (("an integer or null", lambda v: v is None or type(v) is int), False),
}
# config.json: what Translator and the model card read (an exported folder's and a workdir's)
CONFIG_FIELDS: dict[str, tuple[tuple[str, object], bool]] = {
    "data": (_OBJECT, True),
    "data.buckets": (_BUCKETS, True),
    "data.lang": (_STRING, False),
    "eval": (_OBJECT, True),
    "eval.num_beams": (_integer(1, 64), True),
    "eval.max_new_tokens": (_integer(1, 4096), True),
    "eval.length_penalty": (_number(-100, 100), False),
}
# ... and what loading a workdir reads besides (training_preprocessing, load_workdir)
WORKDIR_CONFIG_FIELDS: dict[str, tuple[tuple[str, object], bool]] = {
    **CONFIG_FIELDS,
    "model": (_OBJECT, True),
    "train": (_OBJECT, True),
    "train.stage": (_STRING, True),
    "train.init_from": (_OPT_STRING, False),
    "data.tokenizer_dir": (_STRING, True),
    "data.dataset_dir": (_STRING, False),
    "data.train_split": (_STRING, False),
    "data.crop_size": (_integer(16, 1024), True),
    "data.max_frames": (_integer(1, 4096), True),
    "data.frame_selection": (("one of " + "|".join(pipeline.FRAME_SELECTIONS),
                              lambda v: v in pipeline.FRAME_SELECTIONS), True),
}
# preprocessing.json: sane ranges, so that no file can ask for gigabytes per clip (a frame rate
# of 1e9, a 100000-pixel square); the training data of every supported dataset sits well inside.
PREPROCESSING_FIELDS: dict[str, tuple[tuple[str, object], bool]] = {
    # The ranges have one owner, the Preprocessing dataclass (hfa_jax.data.video.RANGES); the
    # reading limits added later are optional (older folders get the defaults).
    **{name: ((_integer if isinstance(lo, int) and isinstance(hi, int) else _number)(lo, hi),
              name not in video_lib.OPTIONAL_FIELDS)
       for name, (lo, hi) in video_lib.RANGES.items()},
    "frame_selection": (("one of " + "|".join(pipeline.FRAME_SELECTIONS),
                         lambda v: v in pipeline.FRAME_SELECTIONS), True),
}
# pseudo_glosses.json
PSEUDO_GLOSS_FIELDS: dict[str, tuple[tuple[str, object], bool]] = {
    "vocab": (("a non-empty list of strings",
               lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(s, str) for s in v)), True),
    "exact": (("true or false", lambda v: isinstance(v, bool)), True),
}


def _describe(v: object) -> str:
    text = json.dumps(v) if isinstance(v, (int, float, str, bool)) or v is None else type(v).__name__
    text = {"dict": "an object", "list": "a list"}.get(text, text)
    return text if len(text) <= 60 else text[:57] + "..."


def read_json(path: str, fields: dict[str, tuple[tuple[str, object], bool]], error: type = CheckpointError,
              hint: str = "export the model again") -> dict:
    """The JSON object in ``path``, checked against ``fields`` (dotted key -> ((what, test),
    required)). Raises ``error`` (one line naming the file and the key, then ``hint``)."""
    try:
        if os.path.getsize(path) > _MAX_JSON_BYTES:
            raise error(f"{path}: {os.path.getsize(path)} bytes, more than any hfa_jax JSON file; {hint}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise error(f"{path}: cannot read it ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:  # (also a file that is not UTF-8)
        raise error(f"{path}: not valid JSON ({' '.join(str(e).split())[:120]}); {hint}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: holds {_describe(data)}, not a JSON object; {hint}")
    for key, ((what, test), required) in fields.items():
        node: object = data
        for part in key.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is _MISSING:
            if required:
                raise error(f"{path}: key {key!r} is missing; {hint}")
            continue
        if not test(node):
            raise error(f"{path}: key {key!r} is {_describe(node)}, expected {what}; {hint}")
    return data


_MISSING = object()


def config_dict(data: dict, path: str, error: type = CheckpointError,
                hint: str = "export the model again") -> ml_collections.ConfigDict:
    """``data`` (a checked JSON object) as a ConfigDict; field names it refuses (a dot, a
    method's name) are one ``error`` line naming the file."""
    try:
        return ml_collections.ConfigDict(data)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise error(f"{path}: cannot be a config ({' '.join(str(e).split())[:160]}); {hint}") from None


def read_preprocessing(path: str) -> video_lib.Preprocessing:
    """``preprocessing.json`` -> :class:`hfa_jax.data.video.Preprocessing`, every field checked
    against :data:`PREPROCESSING_FIELDS` (and the crop inside the frame)."""
    d = read_json(path, PREPROCESSING_FIELDS)
    if d["crop_size"] > d["size"]:
        raise CheckpointError(f"{path}: key 'crop_size' is {d['crop_size']}, larger than key 'size' ({d['size']}); "
                              "export the model again")
    return video_lib.Preprocessing.from_dict(d, path)


def _pseudo_gloss_head(head: dict, path: str) -> PseudoGlossHeadBundle:
    """The carried pretraining head: the weights' ``pretrain_head/`` and ``pseudo_glosses.json``
    (V + 1 names for V prototypes)."""
    names = read_json(path, PSEUDO_GLOSS_FIELDS)
    protos = head.get("prototypes") if isinstance(head, dict) else None
    if not isinstance(head.get("pg_head") if isinstance(head, dict) else None, dict) or \
            not isinstance(protos, np.ndarray) or protos.ndim != 2:
        raise CheckpointError(f"{os.path.dirname(path)}/{WEIGHTS}: pretrain_head lacks pg_head/ or a 2-D "
                              "prototypes tensor; export the model again")
    if len(names["vocab"]) != protos.shape[0] + 1:
        raise CheckpointError(f"{path}: key 'vocab' has {len(names['vocab'])} names for {protos.shape[0]} prototypes "
                              "(expected one more, the blank); export the model again")
    return PseudoGlossHeadBundle(head["pg_head"], protos, list(names["vocab"]), names["exact"])


def model_config_from_export(info: dict, path: str) -> hfa.HFAConfig:
    """``hfa_export.json``'s ``model`` -> HFAConfig; a field of the wrong kind is one line naming the file."""
    try:
        cfg = hfa.HFAConfig.from_config(info["model"])
    except (ConfigError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: key 'model' is not a model config ({' '.join(str(e).split())[:160]}); "
                              "export the model again") from None
    bad = _mistyped(cfg, "model")
    if bad:
        key, value, want = bad
        raise CheckpointError(f"{path}: key {key!r} is {_describe(value)}, expected {want}; export the model again")
    return cfg


def _mistyped(cfg: object, prefix: str) -> tuple[str, object, str] | None:
    """The first field of the (nested) config dataclass ``cfg`` whose value is not of its
    default's kind (bool, int, float, str, or a nested config), as (key, value, wanted)."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}.{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(value):
            hit = _mistyped(value, key)
            if hit:
                return hit
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                return key, value, "true or false"
        elif isinstance(default, int):
            if type(value) is not int:
                return key, value, "an integer"
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return key, value, "a number"
        elif isinstance(default, str) and not isinstance(value, str):
            return key, value, "a string"
    return None
