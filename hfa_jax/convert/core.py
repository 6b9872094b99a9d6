"""Converting between the authors' Lightning ``state_dict`` and hfa_jax variables.

``import_state``: author tensors -> ``{"params", "batch_stats", "buffers"...}`` (host NumPy),
checking that every author tensor is used, rebuilt (:class:`~hfa_jax.convert.tables.Constant`),
a tied copy, or listed as dropped (optimiser and loop state live outside ``state_dict``), and
that every one of our leaves is filled with the right shape. ``export_state`` is the inverse.
``model_config_from_state`` reads the model's sizes from the tensor shapes.
"""

from __future__ import annotations

import collections
import functools
import re
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from hfa_jax.convert import tables
from hfa_jax.errors import CheckpointError
from hfa_jax.models import hfa

__all__ = ["detect_class", "check_exportable", "model_config_from_state", "import_state", "export_state",
           "export_shapes", "our_shapes", "our_kind"]


def our_kind(lay: tables.Layout) -> str:
    return "translate" if lay.stage == "finetune" else "pretrain"


def detect_class(sd: Mapping[str, Any]) -> tuple[str, str]:
    """(target, stage) of an author state dict, from its top-level module names."""
    keys = list(sd)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    hamer = any(".hamer_mapper_1." in k for k in keys)
    if has("model.model_images."):
        return ("beyondgloss" if hamer else "hfa"), "pretrain"
    if has("model.backbone."):
        return ("beyondgloss" if hamer else "hfa"), "finetune"
    if has("model.model.conv_2d.") and has("model.trans_encoder."):
        return "beyondgloss", "pretrain_desc"
    raise CheckpointError("the state_dict matches none of the authors' Lightning modules (no 'model.model_images.', "
                          f"'model.backbone.' or 'model.model.' keys; first keys: {keys[:3]})")


def _need(sd: Mapping[str, Any], key: str, what: str) -> np.ndarray:
    if key not in sd:
        raise CheckpointError(f"missing tensor {key!r} ({what}); the checkpoint is not of the expected class")
    return np.asarray(sd[key])


def _indices(sd: Mapping[str, Any], pattern: str) -> list[int]:
    return sorted({int(m[1]) for k in sd for m in [re.match(pattern, k)] if m})


def model_config_from_state(sd: Mapping[str, Any], lay: tables.Layout, base: Mapping[str, Any]) -> dict:
    """``config.model`` for this checkpoint: ``base`` (a model config dict, e.g. the paper's) with
    every size the tensors determine replaced, and the authors' forward-pass switches set.

    Head counts and LoRA alphas are not recorded in a state dict: they come from ``base`` (the
    paper config has the authors' values: ViT 6 heads, LoRA alpha 4; mBART 16 heads, alpha 32)."""
    m = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    sp = lay.dino + "spatial_model."
    d, _, p, _ = _need(sd, sp + "patch_embed.proj.weight", "DINOv2 patch embedding").shape
    blocks = _indices(sd, re.escape(sp) + r"blocks\.(\d+)\.")
    lora_blocks = _indices(sd, re.escape(sp) + r"blocks\.(\d+)\.attn\.lora_w1_l1\.")
    vit = m["vit"]
    vit.update(patch_size=int(p), width=int(d), depth=len(blocks),
               mlp_dim=int(_need(sd, sp + "blocks.0.mlp.fc1.weight", "DINOv2 MLP").shape[0]),
               pos_grid=int(round(np.sqrt(_need(sd, sp + "pos_embed", "DINOv2 positions").shape[1] - 1))),
               num_registers=0, pos_resample="hub", lora_blocks=list(lora_blocks))
    if lora_blocks:
        vit["lora_rank"] = int(sd[sp + f"blocks.{lora_blocks[0]}.attn.lora_w1_l1.weight"].shape[0])
        # clip_models.py dino: adapt_params lora_a 4.0, lora_drop 0.1 (fixed in the code, not in the tensors)
        vit.update(lora_alpha=4.0, lora_dropout=0.1)
    if vit["width"] % vit.get("num_heads", 1):
        raise CheckpointError(f"DINOv2 width {d} is not a multiple of model.vit.num_heads={vit['num_heads']}; "
                              "pass a --config whose model.vit.num_heads fits")
    frame_dim = int(_need(sd, lay.dino + "lin.weight", "frame projection").shape[0])
    t = lay.temporal
    layers = _indices(sd, re.escape(t) + r"layers\.(\d+)\.attention\.query_proj\.weight")
    gaps = [i for i in range(max(layers) + 1) if i not in layers] if layers else []
    if len(gaps) != 1:
        raise CheckpointError(f"{t}layers: expected the blocks with one Downsampler between them, found blocks {layers}")
    sin = _need(sd, t + f"layers.{layers[0]}.attention.rotary_emb.sin", "temporal RoPE table")
    temporal = m["temporal"]
    temporal.update(width=frame_dim, num_heads=frame_dim // (2 * int(sin.shape[-1])),
                    mlp_dim=int(_need(sd, t + f"layers.{layers[0]}.ffn.linear1.weight", "temporal FFN").shape[0]),
                    blocks_before=gaps[0], blocks_after=len(layers) - gaps[0],
                    out_dim=int(_need(sd, t + "output_proj.weight", "temporal output projection").shape[0]),
                    # the authors' forward pass (docs/coming_from_pytorch.md)
                    zero_padding_before_pool=False, ffn_output_dropout=False, zero_padded_inputs=True)
    if lay.video_encoder or lay.mbart:
        mb = m["mbart"]
        if lay.mbart:
            stack = lay.mbart + "model."
            emb = _need(sd, stack + "shared.weight", "mBART shared embedding")
            enc, dec = stack + "encoder.", stack + "decoder."
        else:
            enc, dec = lay.video_encoder, None
            emb = _need(sd, enc + "embed_tokens.weight", "mBART token embedding")
        mb.update(vocab_size=int(emb.shape[0]), d_model=int(emb.shape[1]),
                  encoder_layers=len(_indices(sd, re.escape(enc) + r"layers\.(\d+)\.")),
                  encoder_ffn_dim=int(_need(sd, enc + "layers.0.fc1.weight", "mBART FFN").shape[0]),
                  max_position_embeddings=int(_need(sd, enc + "embed_positions.weight", "mBART positions").shape[0]) - 2)
        if dec:
            mb.update(decoder_layers=len(_indices(sd, re.escape(dec) + r"layers\.(\d+)\.")),
                      decoder_ffn_dim=int(_need(sd, dec + "layers.0.fc1.weight", "mBART FFN").shape[0]))
        else:
            mb["decoder_ffn_dim"] = mb["encoder_ffn_dim"]
        lora = [k for k in sd if k.startswith(enc) and k.endswith("q_proj.lora_A.default.weight")]
        mb["lora_rank"] = int(sd[lora[0]].shape[0]) if lora else 0
        # clip_models.py: LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
        mb.update(lora_alpha=32.0, lora_dropout=0.1)
    if lay.head:
        protos = _need(sd, lay.head + "vocab_embedding", "pseudo-gloss prototypes")
        m.update(num_pseudo_glosses=int(protos.shape[1]), proto_dim=int(protos.shape[0]))
        tc = _need(sd, lay.head + "class_temperature", "class temperature")
        tt = _need(sd, lay.head + "time_temperature", "time temperature")
        # HeadModel clamps both to [0.01, 1] before use; a [1] tensor is the dynamic (learnable) variant.
        m.update(learnable_tau=tc.ndim == 1 or tt.ndim == 1,
                 tau_class=float(np.clip(tc.reshape(-1)[0], 0.01, 1.0)),
                 tau_time=float(np.clip(tt.reshape(-1)[0], 0.01, 1.0)))
    m.update(frame_dim=frame_dim, masked_mean=False,
             # TextCLIP's frozen mBART encoder runs in train mode (dropout on) while pretraining
             text_encoder_dropout=lay.text_encoder is not None)
    bg = {**dict(m.get("beyondgloss") or {}), "description": False, "hand_pose": False, "description_vectors": False}
    if lay.extracter:
        bg.update(_beyondgloss_switches(sd, lay))
        if bg["description_from"] == "video_encoder" and bg["desc_dim"] != m["mbart"]["d_model"]:
            # Desc_Clip aligns the video encoder's mean with the description vectors, and hfa_jax's
            # desc_dim is both their width and mapper_1's (1024 = mBART-large's width in their code).
            raise CheckpointError(f"{lay.extracter}mapper_1 is {bg['desc_dim']} wide but the video encoder "
                                  f"{m['mbart']['d_model']}: hfa_jax needs them equal for Desc_Clip")
    m["beyondgloss"] = bg
    return m


def _beyondgloss_switches(sd: Mapping[str, Any], lay: tables.Layout) -> dict:
    """``config.model.beyondgloss`` for the authors' BeyondGloss classes (slt_framework/models/clip_models.py
    ``FeatureExtracter``, ``ImageCLIP``, ``Desc_Clip``, ``gloss_free_model``): the HaMeR branch and the
    description feedback are in every class; the pretraining ones align precomputed description vectors."""
    fe = lay.extracter
    hamer = _need(sd, fe + "hamer_mapper_1.weight", "BeyondGloss HaMeR student (FeatureExtracter.hamer_mapper_1)")
    desc = _need(sd, fe + "mapper_1.weight", "BeyondGloss description features (FeatureExtracter.mapper_1)")
    pretraining = lay.stage != "finetune"
    return dict(
        hand_pose=True, hand_dim=int(hamer.shape[0]), feedback_dropout=0.1,  # hamer_mapper_1_drop, mapper_1_drop
        desc_feedback=True, desc_dim=int(desc.shape[0]),
        description=pretraining, description_vectors=pretraining,  # offline mBART-large-50 vectors (desc_path)
        pseudo_gloss_head=lay.head is not None, cls_token=lay.cls_token is not None,
        text_encoder=lay.text_encoder is not None or not pretraining,
        description_from="video_encoder" if lay.stage == "pretrain_desc" else "features",
        # gloss_free_model.sign_emb is V_encoder only with sign_proj: True (their configs: False)
        mapper=bool(lay.mapper) and any(k.startswith(lay.mapper) for k in sd),
    )


@functools.lru_cache(maxsize=8)
def _our_leaves(cfg: hfa.HFAConfig, kind: str) -> dict[str, tuple[int, ...]]:
    """Our variables as {'collection/path': shape}, from abstract shapes (no arrays; cached per
    config, as tracing the paper model takes seconds). Do not mutate the result."""
    shapes = hfa.init_shapes(cfg, kind, image=2 * cfg.vit.patch_size)
    flat = traverse_util.flatten_dict(jax.tree.map(lambda s: tuple(s.shape), shapes,
                                                   is_leaf=lambda x: hasattr(x, "shape")), sep="/")
    return {k: tuple(v) for k, v in flat.items()}


def _plan(cfg: hfa.HFAConfig, lay: tables.Layout, leaves: Mapping[str, tuple[int, ...]], peft_base_layer: bool):
    rules, unmatched = tables.rules_for(lay, list(leaves), blocks_before=cfg.temporal.blocks_before,
                                        peft_base_layer=peft_base_layer)
    taus = [u for u in unmatched if u in ("params/pg_head/tau_class", "params/pg_head/tau_time")]
    rest = [u for u in unmatched if u not in taus]
    if rest:
        raise CheckpointError(f"hfa_jax tensor {rest[0]} has no counterpart in the authors' "
                              f"{tables.MODEL_CLASSES[(lay.target, lay.stage)]}; the model config does not match")
    consts = tables.constants_for(
        lay, width=cfg.temporal.width, num_heads=cfg.temporal.num_heads, num_blocks=cfg.temporal.num_blocks,
        blocks_before=cfg.temporal.blocks_before, proto_dim=cfg.proto_dim,
        tau_class=None if cfg.learnable_tau else cfg.tau_class, tau_time=None if cfg.learnable_tau else cfg.tau_time)
    return rules, taus, consts, tables.tied_for(lay)


def _tau_key(lay: tables.Layout, leaf: str) -> str:
    return lay.head + ("class_temperature" if leaf.endswith("tau_class") else "time_temperature")


def import_state(sd: Mapping[str, Any], lay: tables.Layout, model_cfg: Mapping[str, Any]) -> tuple[dict, dict]:
    """Author state dict -> (our variables as nested host NumPy dicts, report).

    The report has ``used`` (author keys read), ``rebuilt`` (buffers checked and dropped) and
    ``tied`` (copies checked and dropped). Raises :class:`CheckpointError` naming the first
    unmapped, missing or mis-shaped tensor."""
    cfg = hfa.HFAConfig.from_config(dict(model_cfg))
    leaves = _our_leaves(cfg, our_kind(lay))
    peft_base_layer = any(".base_layer." in k for k in sd) or not any("lora_A.default" in k for k in sd)
    rules, taus, consts, tied = _plan(cfg, lay, leaves, peft_base_layer)
    flat: dict[str, np.ndarray] = {}
    used: list[str] = []
    for r in rules:
        want = r.their_shapes(leaves[r.ours])
        arrays = []
        for key, shape in zip(r.theirs, want):
            a = _need(sd, key, r.cite)
            if tuple(a.shape) != tuple(shape):
                raise CheckpointError(f"tensor {key!r} has shape {tuple(a.shape)}; hfa_jax's {r.ours} needs "
                                      f"{tuple(shape)} ({r.cite})")
            arrays.append(a)
        out = r.to_ours(arrays)
        flat[r.ours] = np.asarray(out, np.float32) if np.issubdtype(out.dtype, np.floating) else out
        used += r.theirs
    for leaf in taus:
        key = _tau_key(lay, leaf)
        flat[leaf] = np.log(np.clip(_need(sd, key, "learnable temperature").reshape(()), 0.01, 1.0)).astype(np.float32)
        used.append(key)
    rebuilt = []
    for c in consts:
        a = _need(sd, c.theirs, c.cite)
        want = c.make()
        if tuple(a.shape) != tuple(want.shape):
            raise CheckpointError(f"buffer {c.theirs!r} has shape {tuple(a.shape)}, expected {tuple(want.shape)} ({c.cite})")
        if c.atol is not None and not np.allclose(np.asarray(a, np.float64), want, atol=c.atol, rtol=0):
            raise CheckpointError(f"buffer {c.theirs!r} differs from the value hfa_jax rebuilds "
                                  f"(max |diff| {np.max(np.abs(np.asarray(a, np.float64) - want)):.3g}); {c.cite}")
        rebuilt.append(c.theirs)
    for t in tied:
        a = _need(sd, t.theirs, t.cite)
        if not np.array_equal(a, np.asarray(sd[t.same_as])):
            raise CheckpointError(f"tensor {t.theirs!r} differs from {t.same_as!r}; hfa_jax ties them ({t.cite})")
    known = set(used) | set(rebuilt) | {t.theirs for t in tied}
    extra = [k for k in sd if k not in known]
    if extra:
        raise CheckpointError(f"unmapped tensor {extra[0]!r} {tuple(np.shape(sd[extra[0]]))} in the authors' "
                              f"{tables.MODEL_CLASSES[(lay.target, lay.stage)]} checkpoint"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    variables = traverse_util.unflatten_dict(flat, sep="/")
    return variables, {"used": used, "rebuilt": rebuilt, "tied": [t.theirs for t in tied]}


def check_exportable(model_cfg: Mapping[str, Any], lay: tables.Layout) -> None:
    """Raises :class:`CheckpointError` (one line) when the model config lacks a part the authors'
    class has, or has one it lacks, beyond what the per-tensor rules see (a missing module leaves
    no leaf to complain about)."""
    bg = hfa.HFAConfig.from_config(dict(model_cfg)).beyondgloss
    pretraining = lay.stage != "finetune"
    want = {"hand_pose": bool(lay.extracter), "desc_feedback": bool(lay.extracter)}
    if pretraining:
        want.update(pseudo_gloss_head=lay.head is not None, cls_token=lay.cls_token is not None,
                    text_encoder=lay.text_encoder is not None)
    if lay.stage == "pretrain_desc":
        want["description_from"] = "video_encoder"
    if lay.target == "hfa" and not pretraining:
        want["mapper"] = True
    for name, value in want.items():
        if getattr(bg, name) != value:
            raise CheckpointError(f"the model has model.beyondgloss.{name}={getattr(bg, name)!r}; the authors' "
                                  f"{tables.MODEL_CLASSES[(lay.target, lay.stage)]} needs {value!r} "
                                  "(pick the matching --target)")


def export_state(variables: Mapping[str, Any], lay: tables.Layout, model_cfg: Mapping[str, Any], *,
                 peft_base_layer: bool = True) -> "collections.OrderedDict[str, np.ndarray]":
    """Our variables -> the authors' state dict (every key their module's ``load_state_dict(strict=True)``
    expects, float32)."""
    cfg = hfa.HFAConfig.from_config(dict(model_cfg))
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(variables), sep="/").items()}
    leaves = {k: tuple(v.shape) for k, v in flat.items()}
    rules, taus, consts, tied = _plan(cfg, lay, leaves, peft_base_layer)
    sd: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
    for r in rules:
        for key, a in zip(r.theirs, r.to_theirs(flat[r.ours])):
            sd[key] = a
    for leaf in taus:
        sd[_tau_key(lay, leaf)] = np.exp(flat[leaf]).reshape(1).astype(np.float32)
    for c in consts:
        sd[c.theirs] = c.make()
    for t in tied:
        sd[t.theirs] = sd[t.same_as]
    return sd


def export_shapes(leaves: Mapping[str, tuple[int, ...]], lay: tables.Layout, model_cfg: Mapping[str, Any], *,
                  peft_base_layer: bool = True) -> dict[str, tuple[int, ...]]:
    """:func:`export_state` on shapes alone: our ``{'collection/path': shape}`` -> the authors'
    ``{key: shape}`` (for checks at paper widths without allocating the weights)."""
    cfg = hfa.HFAConfig.from_config(dict(model_cfg))
    rules, taus, consts, tied = _plan(cfg, lay, leaves, peft_base_layer)
    out: dict[str, tuple[int, ...]] = {}
    for r in rules:
        out.update(zip(r.theirs, r.their_shapes(tuple(leaves[r.ours]))))
    for leaf in taus:
        out[_tau_key(lay, leaf)] = (1,)
    for c in consts:
        out[c.theirs] = tuple(c.make().shape)
    for t in tied:
        out[t.theirs] = out[t.same_as]
    return out


def our_shapes(model_cfg: Mapping[str, Any], kind: str) -> dict[str, tuple[int, ...]]:
    """Our variables' shapes for a model config (abstract evaluation, no arrays)."""
    return _our_leaves(hfa.HFAConfig.from_config(dict(model_cfg)), kind)
