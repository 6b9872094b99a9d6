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
           "load_export", "read_config", "training_preprocessing", "find_pretrain_head"]

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
    try:
        with open(os.path.join(folder, EXPORT_MARKER)) as f:
            info = json.load(f)
        with open(os.path.join(folder, "config.json")) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except ValueError as e:
        raise CheckpointError(f"{folder}: {EXPORT_MARKER} or config.json is not valid JSON ({e})") from None
    if int(info.get("format", -1)) != FORMAT_VERSION:
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
        with open(os.path.join(folder, PSEUDO_GLOSSES)) as f:
            names = json.load(f)
        pg = PseudoGlossHeadBundle(head["pg_head"], head["prototypes"], list(names["vocab"]), bool(names["exact"]))
    return ModelBundle(config=config, model_cfg=hfa.HFAConfig.from_config(info["model"]), variables=tree,
                       tokenizer_dir=os.path.join(folder, TOKENIZER_DIR),
                       preprocessing=video_lib.Preprocessing.load(os.path.join(folder, PREPROCESSING)),
                       step=info.get("step"), pg_head=pg, source=os.path.abspath(folder))


# ------------------------------------------------------------------------------------------
# Loading a fine-tuning workdir


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
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def training_preprocessing(config) -> video_lib.Preprocessing:
    """The preprocessing a workdir's model was trained with: the source videos' frame rate and frame
    size (of the dataset's source format, :func:`hfa_jax.data.formats.of_dataset`, by the tfds
    builder's name), its stored square size (from the dataset's features, else the 256/224
    convention of docs/data.md), the crop and the frame limit."""
    crop = int(config.data.crop_size)
    size, name = int(round(crop * 256 / 224)), "phoenix14t"
    try:
        src = pipeline.open_split(config.data.dataset_dir, config.data.train_split)
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


def find_pretrain_head(config, variables: dict) -> PseudoGlossHeadBundle | None:
    """The pseudo-gloss head of the pretraining stage this model descends from
    (``config.train.init_from``, followed back), or None where any piece is missing."""
    seen = set()
    wd = _settings(config).train.init_from
    while wd and wd not in seen and os.path.isfile(os.path.join(wd, "config.json")):
        seen.add(wd)
        c = read_config(wd)
        s = _settings(c)
        if not tasks.of_stage(s.train.stage).uses_pseudo_glosses:  # not the pretraining stage
            wd = s.train.init_from
            continue
        try:
            state, _ = _load_state(wd)
            pv = variables_from_state(state)
            vocab = ["<blank>"] + list(pg_lib.load_pseudo_glosses(s.data.pseudo_glosses).vocab)
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
    tok_dir = settings.data.tokenizer_dir
    if not os.path.isdir(tok_dir):
        raise ConfigError(f"{workdir}: its tokenizer folder {tok_dir} (config.data.tokenizer_dir) is missing")
    tokenizer = text_lib.load_tokenizer(tok_dir, lang=settings.data.lang)
    state, meta = _load_state(workdir)
    variables = variables_from_state(state)
    return ModelBundle(config=config, model_cfg=model_config(config, tokenizer=tokenizer), variables=variables,
                       tokenizer_dir=tok_dir, preprocessing=training_preprocessing(config),
                       step=meta.get("step"), pg_head=find_pretrain_head(config, variables),
                       source=os.path.abspath(workdir))
