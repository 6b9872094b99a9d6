"""What maps to what: hfa_jax variables <-> the HFA authors' PyTorch Lightning ``state_dict``.

Sources (read for the key names and shapes; cited next to each rule):

- HFA: ``elsobhano/MLLM``, branch ``psp-dino``. ``models/Pretrain_Model.py`` (``PreTrainModel``:
  ``self.model = SLRCLIP``), ``models/Finetune_Model.py`` (``FineTuneModel``:
  ``self.model = gloss_free_model``), ``models/clip_models.py`` (``SLRCLIP``, ``ImageCLIP``,
  ``TextCLIP``, ``FeatureExtracter``, ``dino``, ``Transformer``, ``TransformerBlock``,
  ``MultiHeadAttention``, ``RotaryPositionalEmbedding``, ``FeedForward``,
  ``SinusoidalPositionalEmbedding``, ``Downsampler``, ``V_encoder``, ``gloss_free_model``),
  ``psp_head.py`` (``HeadModel``), ``models/spatial_models/frame_models/dino_adaptor_model.py``
  (``Model``: ``spatial_model``, ``lin``, ``bn``), ``models/dinov2/layers/{attention,mlp,block}.py``
  (``Attention``/``Mlp`` LoRA ``lora_w{1,2}_l{1,2}``, ``Block`` ``ls1``/``ls2``).
- BeyondGloss: ``elsobhano/BeyondGloss`` ``slt_framework/models/``: ``Pretrain_Model.py``
  (``PreTrainModel.model = SLRCLIP``), ``Pretrain_desc.py`` (``PreTrainModel.model = Desc_Clip``),
  ``Finetune_Model.py`` (``FineTuneModel.model = gloss_free_model``) and ``clip_models.py``
  (``FeatureExtracter``: ``conv_2d``, ``hamer_mapper_1``, ``hamer_mapper_2``,
  ``mapper_1_downsample``, ``conv_1d = Transformer(512, 8, [2, 2], d_llm=512)``, ``mapper_1``,
  ``mapper_2``; ``ImageCLIP`` without ``head_model`` and ``cls_token``; ``SLRCLIP.logit_scale_desc``;
  ``Desc_Clip``; ``gloss_free_model`` with ``sign_emb = nn.Identity`` under ``sign_proj: False``).
  The DINOv2, adaptor, temporal and mBART parts are the HFA ones under other prefixes.
- Hugging Face ``MBartEncoder`` / ``MBartForConditionalGeneration`` names, wrapped by peft
  ``get_peft_model`` (``base_model.model.`` prefix; LoRA on every ``q_proj``/``v_proj`` as
  ``<proj>.base_layer.{weight,bias}``, ``<proj>.lora_A.default.weight [r, in]``,
  ``<proj>.lora_B.default.weight [out, r]``; peft < 0.7 wrote ``<proj>.{weight,bias}``).

Note: on ``psp-dino`` the temporal encoder is the ``Transformer`` class of ``clip_models.py``
(``FeatureExtracter.conv_1d``); the ``models/metaformer/`` package is only used by
``models/Sign_Encoder.py``, which no Lightning module of that branch instantiates.

A :class:`Rule` ties one of our leaves (``collection/path``) to one or more author keys and a
layout change; :class:`Constant` lists author buffers we rebuild rather than store (checked on
import, written on export); :class:`Tied` lists author keys that repeat another tensor.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import numpy as np

from hfa_jax.errors import CheckpointError

__all__ = ["Rule", "Constant", "Tied", "Layout", "MODEL_CLASSES", "layout_for", "rules_for", "constants_for",
           "rope_tables", "sinusoid_table"]

# The authors' model classes, by --stage / --target.
MODEL_CLASSES = {
    ("hfa", "pretrain"): "PreTrainModel (SLRCLIP)",
    ("hfa", "finetune"): "FineTuneModel (gloss_free_model)",
    ("beyondgloss", "pretrain"): "Pretrain_Model (SLRCLIP with HaMeR + description heads)",
    ("beyondgloss", "pretrain_desc"): "Pretrain_desc (Desc_Clip)",
    ("beyondgloss", "finetune"): "Finetune_Model (gloss_free_model, BeyondGloss FeatureExtracter)",
}

# Table lengths fixed in the authors' code (clip_models.py: Transformer(... ) builds
# SinusoidalPositionalEmbedding(d_model, max_seq_len=300) and MultiHeadAttention(max_seq_len=300)).
AUTHORS_MAX_SEQ_LEN = 300


@dataclasses.dataclass(frozen=True)
class Rule:
    """``ours`` (``params/...``) <-> ``theirs`` (author keys) with layout ``kind``:

    ``copy`` same array; ``linear`` ``weight [out, in]`` <-> ``kernel [in, out]``; ``conv``
    ``[D, C, p, p]`` <-> ``[p, p, C, D]``; ``concat3`` three ``nn.Linear`` (q, k, v) <-> one fused
    ``[in, 3 out]`` kernel (or ``[3 out]`` bias); ``protos`` ``vocab_embedding [C, V, 1]`` <->
    ``[V, C]``; ``row`` ``[1, V]`` <-> ``[V]``."""

    ours: str
    theirs: tuple[str, ...]
    kind: str
    cite: str

    def to_ours(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        a = [np.asarray(x) for x in arrays]
        if self.kind == "copy":
            return a[0]
        if self.kind == "linear":
            return a[0].T
        if self.kind == "conv":
            return a[0].transpose(2, 3, 1, 0)
        if self.kind == "concat3":
            return np.concatenate([x.T for x in a], axis=-1) if a[0].ndim == 2 else np.concatenate(a)
        if self.kind == "protos":
            return a[0][..., 0].T
        if self.kind == "row":
            return a[0][0]
        raise ValueError(self.kind)

    def to_theirs(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.asarray(x)
        if self.kind == "copy":
            return [x]
        if self.kind == "linear":
            return [np.ascontiguousarray(x.T)]
        if self.kind == "conv":
            return [np.ascontiguousarray(x.transpose(3, 2, 0, 1))]
        if self.kind == "concat3":
            parts = np.split(x, 3, axis=-1)
            return [np.ascontiguousarray(p.T) if p.ndim == 2 else p for p in parts]
        if self.kind == "protos":
            return [np.ascontiguousarray(x.T[..., None])]
        if self.kind == "row":
            return [x[None]]
        raise ValueError(self.kind)

    def their_shapes(self, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The author shapes for our ``shape`` (no arrays allocated: paper widths are cheap)."""
        return _shapes_only(self.kind, tuple(shape))


def _shapes_only(kind: str, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """:meth:`Rule.their_shapes` without allocating (paper widths)."""
    if kind in ("copy",):
        return [shape]
    if kind == "linear":
        return [shape[::-1]]
    if kind == "conv":
        return [(shape[3], shape[2], shape[0], shape[1])]
    if kind == "concat3":
        return [(shape[-1] // 3, shape[0])] * 3 if len(shape) == 2 else [(shape[0] // 3,)] * 3
    if kind == "protos":
        return [(shape[1], shape[0], 1)]
    if kind == "row":
        return [(1,) + tuple(shape)]
    raise ValueError(kind)


@dataclasses.dataclass(frozen=True)
class Constant:
    """An author buffer we rebuild: ``make()`` gives its value (written on export, compared on
    import within ``atol``; ``atol=None``: not compared, e.g. BatchNorm's step counter)."""

    theirs: str
    make: Callable[[], np.ndarray]
    cite: str
    atol: float | None = 1e-5


@dataclasses.dataclass(frozen=True)
class Tied:
    """An author key holding the same tensor as ``same_as`` (shared embeddings)."""

    theirs: str
    same_as: str
    cite: str


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each part sits in one author class's state dict (prefixes end with '.')."""

    target: str
    stage: str
    dino: str  # ... .dino.   (spatial_model., lin., bn.)
    temporal: str  # ... .conv_1d.
    head: str | None = None  # ImageCLIP.head_model.
    cls_token: str | None = None
    logit_scale: str | None = None
    video_encoder: str | None = None  # peft-wrapped MBartEncoder: ... .base_model.model.
    text_encoder: str | None = None
    mbart: str | None = None  # peft-wrapped MBartForConditionalGeneration: ... .base_model.model.
    mapper: str | None = None  # V_encoder
    extracter: str | None = None  # BeyondGloss FeatureExtracter (hamer_mapper_*, mapper_1_downsample, mapper_1/2)
    logit_scale_desc: str | None = None  # BeyondGloss SLRCLIP's unused parameter (rebuilt)


# PreTrainModel.model = SLRCLIP (Pretrain_Model.py); SLRCLIP.model_images = ImageCLIP,
# .model_txt = TextCLIP, .logit_scale; ImageCLIP.model = FeatureExtracter (conv_2d = dino -> .dino = Model;
# conv_1d = Transformer), .head_model = HeadModel, .trans_encoder = peft(MBartEncoder), .cls_token;
# TextCLIP.model_txt = MBartEncoder (clip_models.py).
_HFA_PRETRAIN = Layout(
    target="hfa", stage="pretrain",
    dino="model.model_images.model.conv_2d.dino.",
    temporal="model.model_images.model.conv_1d.",
    head="model.model_images.head_model.",
    cls_token="model.model_images.cls_token",
    logit_scale="model.logit_scale",
    video_encoder="model.model_images.trans_encoder.base_model.model.",
    text_encoder="model.model_txt.model_txt.",
)
# FineTuneModel.model = gloss_free_model (Finetune_Model.py): .backbone = FeatureExtracter,
# .mbart = peft(MBartForConditionalGeneration), .sign_emb = V_encoder (clip_models.py).
_HFA_FINETUNE = Layout(
    target="hfa", stage="finetune",
    dino="model.backbone.conv_2d.dino.",
    temporal="model.backbone.conv_1d.",
    mbart="model.mbart.base_model.model.",
    mapper="model.sign_emb.",
)

# BeyondGloss Pretrain_Model.py: PreTrainModel.model = SLRCLIP (clip_models.py): .model_images =
# ImageCLIP (.model = FeatureExtracter, .trans_encoder = peft(MBartEncoder); no head_model, no
# cls_token), .model_txt = TextCLIP, .logit_scale, .logit_scale_desc (never used).
_BG_PRETRAIN = Layout(
    target="beyondgloss", stage="pretrain",
    dino="model.model_images.model.conv_2d.dino.",
    temporal="model.model_images.model.conv_1d.",
    logit_scale="model.logit_scale",
    video_encoder="model.model_images.trans_encoder.base_model.model.",
    text_encoder="model.model_txt.model_txt.",
    extracter="model.model_images.model.",
    logit_scale_desc="model.logit_scale_desc",
)
# BeyondGloss Pretrain_desc.py: PreTrainModel.model = Desc_Clip (clip_models.py): .model =
# FeatureExtracter, .trans_encoder = peft(MBartEncoder), .logit_scale; no text encoder.
_BG_PRETRAIN_DESC = Layout(
    target="beyondgloss", stage="pretrain_desc",
    dino="model.model.conv_2d.dino.",
    temporal="model.model.conv_1d.",
    logit_scale="model.logit_scale",
    video_encoder="model.trans_encoder.base_model.model.",
    extracter="model.model.",
)
# BeyondGloss Finetune_Model.py: FineTuneModel.model = gloss_free_model (clip_models.py): .backbone =
# FeatureExtracter, .mbart = peft(MBartForConditionalGeneration), .sign_emb = V_encoder only with
# config sign_proj: True (their configs/config.yaml and csldaily.yaml: False, nn.Identity, no tensors).
_BG_FINETUNE = Layout(
    target="beyondgloss", stage="finetune",
    dino="model.backbone.conv_2d.dino.",
    temporal="model.backbone.conv_1d.",
    mbart="model.mbart.base_model.model.",
    mapper="model.sign_emb.",
    extracter="model.backbone.",
)

_LAYOUTS = {("hfa", "pretrain"): _HFA_PRETRAIN, ("hfa", "finetune"): _HFA_FINETUNE,
            ("beyondgloss", "pretrain"): _BG_PRETRAIN, ("beyondgloss", "pretrain_desc"): _BG_PRETRAIN_DESC,
            ("beyondgloss", "finetune"): _BG_FINETUNE}


def layout_for(target: str, stage: str) -> Layout:
    if (target, stage) not in MODEL_CLASSES:
        raise CheckpointError(f"unknown --target {target!r} / --stage {stage!r}; "
                              f"known: {sorted(MODEL_CLASSES)}")
    return _LAYOUTS[(target, stage)]


# --------------------------------------------------------------------------- per-part rules
_DINO = "models/dinov2 (vision_transformer.py DinoVisionTransformer; layers/block.py Block)"
_DINO_LORA = "models/dinov2/layers/attention.py Attention, mlp.py Mlp (lora_w1 = input/qkv/fc1 side, lora_w2 = proj/fc2)"
_ADAPTOR = "models/spatial_models/frame_models/dino_adaptor_model.py Model"
_TEMPORAL = "models/clip_models.py Transformer / TransformerBlock / MultiHeadAttention / FeedForward"
_HEAD = "psp_head.py HeadModel"
_MBART = "transformers MBartEncoder/MBartForConditionalGeneration names under peft get_peft_model (clip_models.py)"
_EXTRACTER = "BeyondGloss slt_framework/models/clip_models.py FeatureExtracter"
# Our BeyondGloss trunk modules -> FeatureExtracter attribute names (hfa_jax/models/beyondgloss.py).
_EXTRACTER_NAMES = {
    "hand_pose/student/proj": "hamer_mapper_1",  # + GELU: the HaMeR prediction
    "hand_pose/feedback/up": "hamer_mapper_2",  # + hamer_mapper_1_drop
    "hand_pose/feedback/fuse": "mapper_1_downsample.0",  # Sequential(Linear 1024->512, GELU)
    "desc_feedback/mapper_1": "mapper_1",  # + mapper_1_ac_fn (GELU): the description features
    "desc_feedback/mapper_2": "mapper_2",  # + mapper_1_drop, concatenated after the temporal output
}


def _vit_rule(path: str, pre: str) -> Rule | None:
    """``frame_encoder/...`` -> ``<dino>spatial_model.<...>``."""
    sp = pre + "spatial_model."
    simple = {"cls_token": "cls_token", "mask_token": "mask_token", "pos_embed": "pos_embed",
              "register_tokens": "register_tokens"}
    if path in simple:
        return Rule("", (sp + simple[path],), "copy", _DINO)
    if path == "patch_embed/kernel":
        return Rule("", (sp + "patch_embed.proj.weight",), "conv", _DINO)
    if path == "patch_embed/bias":
        return Rule("", (sp + "patch_embed.proj.bias",), "copy", _DINO)
    m = re.fullmatch(r"norm/(scale|bias)", path)
    if m:
        return Rule("", (sp + "norm." + _LN[m[1]],), "copy", _DINO)
    m = re.fullmatch(r"block_(\d+)/(.*)", path)
    if not m:
        return None
    b, rest = sp + f"blocks.{m[1]}.", m[2]
    if rest in ("ls1", "ls2"):
        return Rule("", (b + rest + ".gamma",), "copy", _DINO)
    m2 = re.fullmatch(r"(norm1|norm2)/(scale|bias)", rest)
    if m2:
        return Rule("", (b + f"{m2[1]}.{_LN[m2[2]]}",), "copy", _DINO)
    m2 = re.fullmatch(r"(attn|mlp)/(qkv|proj|fc1|fc2)/(kernel|bias|lora_a|lora_b)", rest)
    if m2:
        mod, lin, leaf = m2[1], m2[2], m2[3]
        if leaf == "kernel":
            return Rule("", (b + f"{mod}.{lin}.weight",), "linear", _DINO)
        if leaf == "bias":
            return Rule("", (b + f"{mod}.{lin}.bias",), "copy", _DINO)
        w = "w1" if lin in ("qkv", "fc1") else "w2"
        half = "l1" if leaf == "lora_a" else "l2"
        return Rule("", (b + f"{mod}.lora_{w}_{half}.weight",), "linear", _DINO_LORA)
    return None


_LN = {"scale": "weight", "bias": "bias"}


def _temporal_rule(path: str, pre: str, blocks_before: int) -> Rule | None:
    """``temporal/...`` -> ``<conv_1d>...``. ``Transformer.layers`` holds the blocks with the
    ``Downsampler`` (no parameters) between them, so block i >= blocks_before is layer i + 1."""
    m = re.fullmatch(r"out_proj/(kernel|bias)", path)
    if m:
        return Rule("", (pre + "output_proj." + _W[m[1]],), "linear" if m[1] == "kernel" else "copy", _TEMPORAL)
    m = re.fullmatch(r"block_(\d+)/(.*)", path)
    if not m:
        return None
    i = int(m[1])
    layer = pre + f"layers.{i if i < blocks_before else i + 1}."
    rest = m[2]
    if rest == "layer_scale":
        return Rule("", (layer + "attention.layer_scale",), "copy", _TEMPORAL)
    m2 = re.fullmatch(r"qkv/(kernel|bias)", rest)
    if m2:
        return Rule("", tuple(layer + f"attention.{p}_proj.{_W[m2[1]]}" for p in ("query", "key", "value")),
                    "concat3", _TEMPORAL + " (query_proj, key_proj, value_proj fused)")
    names = {"out": "attention.out_proj", "fc1": "ffn.linear1", "fc2": "ffn.linear2"}
    m2 = re.fullmatch(r"(out|fc1|fc2)/(kernel|bias)", rest)
    if m2:
        return Rule("", (layer + f"{names[m2[1]]}.{_W[m2[2]]}",), "linear" if m2[2] == "kernel" else "copy", _TEMPORAL)
    m2 = re.fullmatch(r"(norm1|norm2)/(scale|bias)", rest)
    if m2:
        return Rule("", (layer + f"{m2[1]}.{_LN[m2[2]]}",), "copy", _TEMPORAL)
    return None


_W = {"kernel": "weight", "bias": "bias"}


def _mbart_stack_rule(path: str, pre: str, peft_base_layer: bool) -> Rule | None:
    """An mBART encoder/decoder stack (our ``layers_i/...`` names mirror Hugging Face's)."""
    m = re.fullmatch(r"embed_positions/embedding", path)
    if m:
        return Rule("", (pre + "embed_positions.weight",), "copy", _MBART)
    m = re.fullmatch(r"(layernorm_embedding|layer_norm)/(scale|bias)", path)
    if m:
        return Rule("", (pre + f"{m[1]}.{_LN[m[2]]}",), "copy", _MBART)
    m = re.fullmatch(r"layers_(\d+)/(.*)", path)
    if not m:
        return None
    layer, rest = pre + f"layers.{m[1]}.", m[2]
    m2 = re.fullmatch(r"(self_attn_layer_norm|encoder_attn_layer_norm|final_layer_norm)/(scale|bias)", rest)
    if m2:
        return Rule("", (layer + f"{m2[1]}.{_LN[m2[2]]}",), "copy", _MBART)
    m2 = re.fullmatch(r"(?:(self_attn|encoder_attn)/)?(q_proj|k_proj|v_proj|out_proj|fc1|fc2)/(kernel|bias|lora_a|lora_b)", rest)
    if not m2:
        return None
    mod = f"{m2[1]}.{m2[2]}" if m2[1] else m2[2]
    leaf = m2[3]
    peft = m2[2] in ("q_proj", "v_proj") and m2[1] is not None
    base = mod + (".base_layer" if peft and peft_base_layer else "")
    if leaf == "kernel":
        return Rule("", (layer + base + ".weight",), "linear", _MBART)
    if leaf == "bias":
        return Rule("", (layer + base + ".bias",), "copy", _MBART)
    ab = "lora_A" if leaf == "lora_a" else "lora_B"
    return Rule("", (layer + f"{mod}.{ab}.default.weight",), "linear", _MBART + " (peft LoRA)")


def _their_rule(ours: str, lay: Layout, blocks_before: int, peft_base_layer: bool) -> Rule | None:
    coll, _, path = ours.partition("/")
    top, _, rest = path.partition("/")
    rule: Rule | None = None
    if coll == "batch_stats" and top == "frame_bn":
        stat = {"mean": "running_mean", "var": "running_var"}.get(rest)
        rule = Rule("", (lay.dino + "bn." + stat,), "copy", _ADAPTOR + " bn (BatchNorm1d)") if stat else None
    elif coll == "buffers" and path == "mbart/final_logits_bias" and lay.mbart:
        rule = Rule("", (lay.mbart + "final_logits_bias",), "row", _MBART + " (buffer [1, V])")
    elif coll != "params":
        rule = None
    elif top == "frame_encoder":
        rule = _vit_rule(rest, lay.dino)
    elif top == "frame_proj":
        rule = Rule("", (lay.dino + "lin." + _W[rest],), "linear" if rest == "kernel" else "copy", _ADAPTOR + " lin")
    elif top == "frame_bn":
        rule = Rule("", (lay.dino + "bn." + _LN[rest],), "copy", _ADAPTOR + " bn")
    elif top == "temporal":
        rule = _temporal_rule(rest, lay.temporal, blocks_before)
    elif top == "pg_head" and lay.head and rest in ("proj/kernel", "proj/bias"):
        leaf = rest.split("/")[1]
        rule = Rule("", (lay.head + "fc_hidden." + _W[leaf],), "linear" if leaf == "kernel" else "copy", _HEAD)
    elif top == "pg_head" and lay.head and rest in ("tau_class", "tau_time"):
        rule = None  # learnable temperatures: handled by convert (log values vs the authors' [1] params)
    elif top == "prototypes" and lay.head:
        # HeadModel.vocab_embedding [300, V, 1]; its blank (zero_embedding) is the LAST class, ours row 0.
        rule = Rule("", (lay.head + "vocab_embedding",), "protos", _HEAD + " vocab_embedding")
    elif top == "cls_token" and lay.cls_token:
        rule = Rule("", (lay.cls_token,), "copy", "models/clip_models.py ImageCLIP.cls_token")
    elif top == "logit_scale" and lay.logit_scale:
        rule = Rule("", (lay.logit_scale,), "copy", "models/clip_models.py SLRCLIP.logit_scale")
    elif top in ("video_encoder", "text_encoder"):
        pre = lay.video_encoder if top == "video_encoder" else lay.text_encoder
        if pre is None:
            return None
        if rest == "embed_tokens/embedding":
            rule = Rule("", (pre + "embed_tokens.weight",), "copy", _MBART)
        else:
            rule = _mbart_stack_rule(rest, pre, peft_base_layer and top == "video_encoder")
    elif top == "mbart" and lay.mbart:
        if rest == "shared/embedding":
            rule = Rule("", (lay.mbart + "model.shared.weight",), "copy", _MBART)
        else:
            stack, _, sub = rest.partition("/")
            if stack in ("encoder", "decoder"):
                rule = _mbart_stack_rule(sub, lay.mbart + f"model.{stack}.", peft_base_layer)
    elif top in ("hand_pose", "desc_feedback") and lay.extracter:
        mod, _, leaf = path.rpartition("/")
        name = _EXTRACTER_NAMES.get(mod)
        if name and leaf in _W:
            rule = Rule("", (lay.extracter + f"{name}.{_W[leaf]}",), "linear" if leaf == "kernel" else "copy",
                        f"{_EXTRACTER}.{name.split('.')[0]}")
    elif top == "mapper" and lay.mapper:
        sub, _, leaf = rest.partition("/")
        name = {"linear": "src_emb.", "norm": "bn_ac.0."}.get(sub)
        if name:
            key = _W.get(leaf) or _LN.get(leaf)
            rule = Rule("", (lay.mapper + name + key,), "linear" if leaf == "kernel" else "copy",
                        "models/clip_models.py V_encoder (src_emb, bn_ac = [LayerNorm, GELU])")
    if rule is None:
        return None
    return dataclasses.replace(rule, ours=ours)


def rules_for(lay: Layout, our_leaves: Sequence[str], *, blocks_before: int, peft_base_layer: bool = True
              ) -> tuple[list[Rule], list[str]]:
    """Rules for our flat leaf names (``collection/path``). Returns (rules, our leaves without
    a rule): the caller decides whether the latter are an error."""
    rules, unmatched = [], []
    for leaf in our_leaves:
        r = _their_rule(leaf, lay, blocks_before, peft_base_layer)
        (rules.append(r) if r else unmatched.append(leaf))
    return rules, unmatched


# --------------------------------------------------------------------------- rebuilt buffers
def sinusoid_table(length: int, dim: int) -> np.ndarray:
    """``SinusoidalPositionalEmbedding.pe`` [length, dim], computed in float32 as torch does."""
    pos = np.arange(length, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, dim, 2, dtype=np.float32) * np.float32(-np.log(np.float32(10000.0)) / dim))
    pe = np.zeros((length, dim), np.float32)
    pe[:, 0::2] = np.sin(pos * div)
    pe[:, 1::2] = np.cos(pos * div)
    return pe


def rope_tables(length: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``RotaryPositionalEmbedding.sin`` / ``.cos`` [length, 1, 1, head_dim / 2] (float32)."""
    inv = (1.0 / (10000.0 ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))).astype(np.float32)
    ang = np.einsum("i,j->ij", np.arange(length, dtype=np.float32), inv).astype(np.float32)
    return np.sin(ang)[:, None, None], np.cos(ang)[:, None, None]


def constants_for(lay: Layout, *, width: int, num_heads: int, num_blocks: int, blocks_before: int,
                  proto_dim: int, tau_class: float | None, tau_time: float | None) -> list[Constant]:
    """The author buffers of this layout that we rebuild (``tau_*`` None: learnable, not buffers)."""
    out = [
        Constant(lay.dino + "bn.num_batches_tracked", lambda: np.array(0, np.int64),
                 _ADAPTOR + " bn (BatchNorm1d step counter; not used with momentum 0.1)", atol=None),
        Constant(lay.temporal + "pos_embedding.pe", lambda: sinusoid_table(AUTHORS_MAX_SEQ_LEN, width),
                 "models/clip_models.py SinusoidalPositionalEmbedding.pe (rebuilt: temporal.sinusoidal_embedding)",
                 atol=1e-4),
    ]
    sin, cos = rope_tables(AUTHORS_MAX_SEQ_LEN, width // num_heads)
    for i in range(num_blocks):
        layer = lay.temporal + f"layers.{i if i < blocks_before else i + 1}.attention.rotary_emb."
        cite = "models/clip_models.py RotaryPositionalEmbedding (rebuilt: attention.apply_rope)"
        out += [Constant(layer + "sin", lambda s=sin: s, cite, atol=1e-4),
                Constant(layer + "cos", lambda c=cos: c, cite, atol=1e-4)]
    if lay.logit_scale_desc:
        # SLRCLIP.logit_scale_desc = log(1/0.07), never used in the forward pass, so no gradient
        # and no AdamW step (torch skips parameters without .grad): it keeps its initial value.
        out.append(Constant(lay.logit_scale_desc, lambda: np.array(np.log(1 / 0.07), np.float32),
                            "BeyondGloss clip_models.py SLRCLIP.logit_scale_desc (unused; its initial value)",
                            atol=1e-6))
    if lay.head:
        out.append(Constant(lay.head + "zero_embedding", lambda: np.zeros((proto_dim, 1, 1), np.float32),
                            _HEAD + " zero_embedding (our fixed prototype row 0)"))
        if tau_class is not None:
            out.append(Constant(lay.head + "class_temperature", lambda: np.array(tau_class, np.float32),
                                _HEAD + " class_temperature buffer -> model.tau_class"))
        if tau_time is not None:
            out.append(Constant(lay.head + "time_temperature", lambda: np.array(tau_time, np.float32),
                                _HEAD + " time_temperature buffer -> model.tau_time"))
    return out


def tied_for(lay: Layout) -> list[Tied]:
    """Keys that repeat another tensor (Hugging Face ties the token embeddings and lm_head)."""
    if not lay.mbart:
        return []
    shared = lay.mbart + "model.shared.weight"
    cite = _MBART + " (tied to model.shared)"
    return [Tied(lay.mbart + "model.encoder.embed_tokens.weight", shared, cite),
            Tied(lay.mbart + "model.decoder.embed_tokens.weight", shared, cite),
            Tied(lay.mbart + "lm_head.weight", shared, cite)]
