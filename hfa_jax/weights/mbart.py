"""mBART weights: a Hugging Face ``MBartForConditionalGeneration`` / ``MBartModel`` folder ->
:class:`~hfa_jax.models.mbart.MBart` (:func:`from_hf`) or a standalone
:class:`~hfa_jax.models.mbart.MBartEncoder` (:func:`encoder_from_hf`) variables, without torch;
and the imported variables as a small orbax checkpoint (:func:`save_imported` /
:func:`load_imported`), so paper runs do not re-read the 2.4 GB folder.

The folder holds ``config.json`` (mapped field by field onto :class:`MBartConfig`; architecture
switches this implementation hard-codes are checked) and ``model.safetensors`` (or shards with
``model.safetensors.index.json``, or a zip-format ``pytorch_model.bin``), read by
:mod:`hfa_jax.weights.torch_io`. HF names map one to one onto the parameter tree documented in
:mod:`hfa_jax.models.mbart` (``layers.{i}`` -> ``layers_{i}``, ``weight`` -> ``kernel`` transposed
or ``scale``); ``final_logits_bias`` becomes the ``buffers`` entry. A vocabulary map (from
``data_prep.trim_vocab``) slices the embedding rows and the bias and remaps the special ids.
LoRA adapters, absent from HF checkpoints, are initialised fresh (A ~ N(0, 0.02), B = 0).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hfa_jax.errors import CheckpointError, ConfigError
from hfa_jax.models.mbart import POSITION_OFFSET, MBart, MBartConfig, MBartEncoder, encoder_variables
from hfa_jax.weights.torch_io import read_safetensors, read_torch_zip

Array = jax.Array
_log = logging.getLogger(__name__)

__all__ = ["from_hf", "encoder_from_hf", "load_hf_state", "save_imported", "load_imported"]

# --------------------------------------------------------------------------- Hugging Face import
_HF_REQUIRED = ("d_model", "encoder_layers", "decoder_layers", "vocab_size")
_HF_FIELD_MAP = {  # HF config.json key -> MBartConfig field
    "vocab_size": "vocab_size",
    "d_model": "d_model",
    "encoder_layers": "encoder_layers",
    "decoder_layers": "decoder_layers",
    "encoder_attention_heads": "encoder_attention_heads",
    "decoder_attention_heads": "decoder_attention_heads",
    "encoder_ffn_dim": "encoder_ffn_dim",
    "decoder_ffn_dim": "decoder_ffn_dim",
    "max_position_embeddings": "max_position_embeddings",
    "scale_embedding": "scale_embedding",
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
    "activation_dropout": "activation_dropout",
    "activation_function": "activation_function",
    "init_std": "init_std",
    "pad_token_id": "pad_token_id",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "decoder_start_token_id": "decoder_start_token_id",
    "forced_bos_token_id": "forced_bos_token_id",
    "forced_eos_token_id": "forced_eos_token_id",
}
_SPECIAL_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
                   "forced_bos_token_id", "forced_eos_token_id")


def _config_from_hf(path: str, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict]:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{path}: no config.json; pass a Hugging Face mBART folder (config.json + model.safetensors)")
    try:
        with open(cfg_path) as f:
            hf = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: cannot read JSON ({e}); re-download or re-save the checkpoint") from e
    if hf.get("model_type") != "mbart":
        raise CheckpointError(
            f"{cfg_path}: model_type is {hf.get('model_type')!r}, not 'mbart'; pass an mBART checkpoint folder"
        )
    missing = [k for k in _HF_REQUIRED if k not in hf]
    if missing:
        raise CheckpointError(f"{cfg_path}: missing config fields {missing}; the folder is not a complete mBART checkpoint")
    # Architecture switches this implementation hard-codes (mBART = pre-LN with final norms).
    for key, want in (("normalize_before", True), ("add_final_layer_norm", True), ("normalize_embedding", True),
                      ("tie_word_embeddings", True), ("static_position_embeddings", False),
                      ("add_bias_logits", False)):
        if key in hf and hf[key] != want:
            raise CheckpointError(f"{cfg_path}: {key}={hf[key]!r} is not supported (mBART needs {want!r})")
    for key in ("encoder_layerdrop", "decoder_layerdrop"):
        if float(hf.get(key, 0.0) or 0.0) != 0.0:
            _log.warning("%s: %s=%s ignored (LayerDrop is not implemented)", cfg_path, key, hf[key])
    fields = {}
    for hk, field in _HF_FIELD_MAP.items():
        if hk in hf:
            val = hf[hk]
            if field in ("eos_token_id", "forced_eos_token_id") and isinstance(val, list):
                if len(val) != 1:
                    raise CheckpointError(f"{cfg_path}: {hk}={val} (several EOS ids) is not supported")
                val = val[0]
            fields[field] = val
    for k in ("dropout", "attention_dropout", "activation_dropout", "init_std"):
        if k in fields:
            fields[k] = float(fields[k])
    names = {f.name for f in dataclasses.fields(MBartConfig)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ConfigError(f"from_hf: unknown MBartConfig overrides {bad}")
    fields.update(overrides)
    return fields, hf


def _read_safetensors(files: Sequence[str]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for fn in files:
        out.update(read_safetensors(fn))
    return out


def load_hf_state(path: str) -> dict[str, np.ndarray]:
    """Read the tensors of a Hugging Face folder without torch: ``model.safetensors``, a sharded
    ``model.safetensors.index.json``, or a zip-format ``pytorch_model.bin`` (restricted unpickler:
    plain tensors only; legacy pre-1.6 pickles are refused with a conversion hint). Keys keep
    their HF names."""
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return _read_safetensors([single])
    if os.path.isfile(index):
        with open(index) as f:
            shard_names = sorted(set(json.load(f)["weight_map"].values()))
        return _read_safetensors([os.path.join(path, s) for s in shard_names])
    bin_path = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(bin_path):
        # torch zip archive read by a restricted unpickler (tensors/OrderedDict only, no torch).
        return read_torch_zip(bin_path)
    raise CheckpointError(f"{path}: no model.safetensors (or sharded index) found; pass a Hugging Face mBART folder")


def _load_vocab_map(vocab_map: Any, old_vocab: int) -> np.ndarray:
    where = "vocab_map"
    if isinstance(vocab_map, (str, os.PathLike)):
        where = str(vocab_map)
        try:
            with open(vocab_map) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{where}: cannot read vocabulary map JSON ({e})") from e
        vocab_map = data
    if isinstance(vocab_map, Mapping):  # data_prep.trim_vocab's vocab_map.json: {"old_ids": [...], ...}
        if not isinstance(vocab_map.get("old_ids"), list):
            raise CheckpointError(
                f"{where}: mapping has no 'old_ids' list; expected old token ids in new-id order"
            )
        vocab_map = vocab_map["old_ids"]
    arr = np.asarray(vocab_map)
    if arr.ndim != 1 or arr.size == 0:
        raise CheckpointError(f"{where}: vocabulary map must be a non-empty 1-D list of old ids, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise CheckpointError(f"{where}: vocabulary map entries must be integer token ids (dtype {arr.dtype})")
    bad = np.nonzero((arr < 0) | (arr >= old_vocab))[0]
    if bad.size:
        i = int(bad[0])
        raise CheckpointError(
            f"{where}: entry [{i}] = {int(arr[i])} is outside the checkpoint vocabulary [0, {old_vocab}); "
            "the map does not belong to this checkpoint"
        )
    return arr.astype(np.int64)


def _hf_linear(state: Mapping[str, np.ndarray], key: str, d_in: int, d_out: int) -> dict[str, np.ndarray]:
    w = _get(state, key + ".weight", (d_out, d_in))
    b = _get(state, key + ".bias", (d_out,))
    return {"kernel": np.ascontiguousarray(w.T), "bias": b}


def _hf_ln(state: Mapping[str, np.ndarray], key: str, d: int) -> dict[str, np.ndarray]:
    return {"scale": _get(state, key + ".weight", (d,)), "bias": _get(state, key + ".bias", (d,))}


def _get(state: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in state:
        raise CheckpointError(f"checkpoint tensor {key!r} is missing; the folder is not a complete mBART checkpoint")
    arr = np.asarray(state[key])
    if tuple(arr.shape) != tuple(shape):
        raise CheckpointError(f"checkpoint tensor {key!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
    return arr.astype(np.float32)


def _normalise_keys(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strip the ``model.`` prefix of ``MBartForConditionalGeneration`` (``MBartModel`` has none)."""
    out = {}
    for k, v in state.items():
        out[k[len("model."):] if k.startswith("model.") else k] = v
    return out


def _stack_params(state, prefix: str, cfg: MBartConfig, decoder: bool) -> dict:
    d = cfg.d_model
    ffn = cfg.decoder_ffn_dim if decoder else cfg.encoder_ffn_dim
    n = cfg.decoder_layers if decoder else cfg.encoder_layers
    p: dict[str, Any] = {
        "embed_positions": {"embedding": _get(state, f"{prefix}.embed_positions.weight",
                                              (cfg.max_position_embeddings + POSITION_OFFSET, d))},
        "layernorm_embedding": _hf_ln(state, f"{prefix}.layernorm_embedding", d),
        "layer_norm": _hf_ln(state, f"{prefix}.layer_norm", d),
    }
    attn_blocks = ("self_attn", "encoder_attn") if decoder else ("self_attn",)
    for i in range(n):
        lp = f"{prefix}.layers.{i}"
        layer: dict[str, Any] = {}
        for blk in attn_blocks:
            layer[blk] = {proj: _hf_linear(state, f"{lp}.{blk}.{proj}", d, d) for proj in
                          ("q_proj", "k_proj", "v_proj", "out_proj")}
            layer[f"{blk}_layer_norm"] = _hf_ln(state, f"{lp}.{blk}_layer_norm", d)
        layer["fc1"] = _hf_linear(state, f"{lp}.fc1", d, ffn)
        layer["fc2"] = _hf_linear(state, f"{lp}.fc2", ffn, d)
        layer["final_layer_norm"] = _hf_ln(state, f"{lp}.final_layer_norm", d)
        p[f"layers_{i}"] = layer
    extra = sorted(k for k in state if k.startswith(f"{prefix}.layers.") and int(k.split(".")[2]) >= n)
    if extra:
        raise CheckpointError(f"checkpoint tensor {extra[0]!r} belongs to a layer beyond {prefix}_layers={n} in config.json")
    return p


def _fill_missing(module: nn.Module, imported: dict, rng: Array, sample_args: tuple, method=None) -> dict:
    """Add freshly initialised LoRA adapters (absent from HF checkpoints) to imported params,
    checking every imported tensor against the module's own shapes."""
    kw = {} if method is None else {"method": method}
    # unbox: under logical axis rules init returns named boxes (hfa_jax.models.axes)
    shapes = nn.meta.unbox(jax.eval_shape(lambda r: module.init(r, *sample_args, **kw), rng))["params"]
    flat_shapes = _flatten(shapes)
    flat_imp = _flatten(imported)
    for k, arr in flat_imp.items():
        if k not in flat_shapes:
            raise CheckpointError(f"internal: imported tensor {k} has no place in the module")
        if tuple(flat_shapes[k].shape) != tuple(arr.shape):
            raise CheckpointError(f"imported tensor {k} has shape {arr.shape}, module expects {flat_shapes[k].shape}")
    missing = sorted(k for k in flat_shapes if k not in flat_imp)
    if missing:
        not_lora = [k for k in missing if not k.endswith(("/lora_a", "/lora_b"))]
        if not_lora:
            raise CheckpointError(f"checkpoint provides no tensor for parameter {not_lora[0]}")

        def init_missing(r):  # jit + returning only the adapters lets XLA drop the rest of init
            full = _flatten(nn.meta.unbox(module.init(r, *sample_args, **kw))["params"])
            return {k: full[k] for k in missing}

        fresh = jax.jit(init_missing)(rng)
        flat_imp.update({k: np.asarray(v) for k, v in fresh.items()})
    return _unflatten(flat_imp)


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        p = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, p))
        else:
            out[p] = v
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for k, v in flat.items():
        node = out
        parts = k.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def _import(path: str, vocab_map, overrides) -> tuple[MBartConfig, dict, dict, np.ndarray]:
    fields, _ = _config_from_hf(path, overrides)
    state = _normalise_keys(load_hf_state(path))
    old_v, d = int(fields["vocab_size"]), int(fields["d_model"])
    emb_key = "shared.weight" if "shared.weight" in state else "encoder.embed_tokens.weight"
    shared = _get(state, emb_key, (old_v, d))
    if "final_logits_bias" in state:
        bias = _get(state, "final_logits_bias", (1, old_v))[0]
    else:  # transformers re-creates it as zeros when absent (_keys_to_ignore_on_load_missing)
        bias = np.zeros((old_v,), np.float32)
    if vocab_map is not None:
        ids = _load_vocab_map(vocab_map, old_v)
        shared, bias = shared[ids], bias[ids]
        fields["vocab_size"] = int(ids.size)
        pos = {int(o): n for n, o in reversed(list(enumerate(ids.tolist())))}
        for k in _SPECIAL_FIELDS:
            if k in overrides or fields.get(k) is None:
                continue
            if int(fields[k]) not in pos:
                raise CheckpointError(
                    f"vocab_map does not keep special token {k}={fields[k]}; the trimmed vocabulary must keep all specials"
                )
            fields[k] = pos[int(fields[k])]
    cfg = MBartConfig(**fields)
    state_params = {
        "shared": {"embedding": shared},
        "encoder": _stack_params(state, "encoder", cfg, decoder=False),
        "decoder": _stack_params(state, "decoder", cfg, decoder=True),
    }
    return cfg, state_params, state, bias


def from_hf(path: str, vocab_map: Any = None, *, rng: Array | None = None, **overrides) -> tuple[MBart, dict]:
    """Import a Hugging Face mBART folder (``config.json`` + ``model.safetensors``), no torch.

    Args:
      path: folder written by ``save_pretrained`` (``MBartForConditionalGeneration`` or ``MBartModel``):
        ``config.json`` + ``model.safetensors`` (or shards, or a zip-format ``pytorch_model.bin``).
      vocab_map: optional trimming map: old token ids in new-id order (list / int array), or the
        path of a JSON file holding such a list (or ``{"old_ids": [...]}``). Embedding rows and
        ``final_logits_bias`` are sliced; the special token ids of the config are remapped.
      rng: key for the fresh LoRA adapters (A ~ N(0, 0.02), B = 0); default PRNGKey(0).
      **overrides: :class:`MBartConfig` fields to override (``lora_rank=0``, ``dtype="bfloat16"``,
        ``dropout=0.3`` ...).

    Returns:
      ``(module, variables)`` with ``variables = {"params": ..., "buffers": {"final_logits_bias"}}``;
      ``module.apply(variables, input_ids, attention_mask, decoder_input_ids)`` -> logits [B, L, V].

    Raises:
      CheckpointError: not an mBART folder, missing or mis-shaped tensors, a vocab map that does not fit.
    """
    cfg, params, _, bias = _import(path, vocab_map, overrides)
    module = MBart(cfg)
    sample = (jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool), jnp.zeros((1, 2), jnp.int32))
    params = _fill_missing(module, params, jax.random.PRNGKey(0) if rng is None else rng, sample)
    return module, {"params": params, "buffers": {"final_logits_bias": bias}}


def encoder_from_hf(path: str, vocab_map: Any = None, *, rng: Array | None = None, **overrides) -> tuple[MBartEncoder, dict]:
    """Import only the encoder of a Hugging Face mBART folder as a standalone :class:`MBartEncoder`
    (the frozen text encoder / the LoRA video encoder of pretraining). Same arguments as
    :func:`from_hf`; ``apply(vars, input_ids, attention_mask)`` -> [B, S, D]."""
    cfg, params, _, _ = _import(path, vocab_map, overrides)
    module = MBartEncoder(cfg)
    enc = encoder_variables({"params": params})["params"]
    sample = (jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool))
    enc = _fill_missing(module, enc, jax.random.PRNGKey(0) if rng is None else rng, sample)
    return module, {"params": enc}


# --------------------------------------------------------------------------- imported weights as a small orbax checkpoint

_CONFIG_FILE = "mbart_config.json"


def save_imported(variables: Mapping[str, Any], out_dir: str, cfg: MBartConfig | None = None) -> str:
    """Store imported variables (and the config, when given) as an orbax checkpoint under
    ``out_dir`` (``out_dir/variables`` + ``out_dir/mbart_config.json``). Returns ``out_dir``."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, "variables")
    if os.path.exists(target):
        raise CheckpointError(f"{target} already exists; choose an empty output folder")
    tree = jax.tree.map(np.asarray, dict(variables))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target, tree)
    if cfg is not None:
        with open(os.path.join(out_dir, _CONFIG_FILE), "w") as f:
            json.dump(cfg.to_dict(), f, indent=1)
    return out_dir


def load_imported(out_dir: str) -> tuple[MBartConfig | None, dict]:
    """Load what :func:`save_imported` wrote: ``(config or None, variables)`` (numpy arrays)."""
    out_dir = os.path.abspath(out_dir)
    target = os.path.join(out_dir, "variables")
    if not os.path.isdir(target):
        raise CheckpointError(f"{out_dir}: no 'variables' checkpoint inside; write one with save_imported")
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(target)
    cfg = None
    cfg_file = os.path.join(out_dir, _CONFIG_FILE)
    if os.path.isfile(cfg_file):
        with open(cfg_file) as f:
            cfg = MBartConfig.from_dict(json.load(f))
    return cfg, tree
