"""The HFA authors' PyTorch modules, rebuilt with their attribute names (so ``state_dict()`` has
their exact keys) and their forward passes, at any width.

Written from reading ``elsobhano/MLLM`` branch ``psp-dino`` (not copied); each class names the
file and class it stands for. Only the eval-mode forward pass is reproduced (dropout, DropPath
and LoRA dropout are identities in ``eval()``), plus the two pretraining losses. The mBART parts
are the real Hugging Face modules wrapped by the real ``peft.get_peft_model``, as in the
authors' ``clip_models.py``.

The BeyondGloss classes (``elsobhano/BeyondGloss`` ``slt_framework/models/``: ``Pretrain_Model.py``,
``Pretrain_desc.py``, ``Finetune_Model.py``, ``clip_models.py``) are at the end, built from the same
DINOv2 / temporal / mBART parts with BeyondGloss's attribute names.

Used by ``tests/convert`` to check ``python -m hfa_jax.convert`` against the authors' layout and
arithmetic. Imports torch; never imported by ``hfa_jax``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Sizes", "PreTrainModel", "FineTuneModel", "kl_loss", "pg_loss", "frames_to_authors",
           "BeyondGlossPreTrainModel", "BeyondGlossPretrainDesc", "BeyondGlossFineTuneModel", "masked_l2_loss"]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Widths of one authors' model (paper: ViT-S/14 384/6 heads/12 blocks, LoRA 9-11 r4;
    temporal 512/8 heads [2, 2]; mBART 1024/16 heads/12+12 layers; 2322 (V) prototypes)."""

    vit_width: int = 32
    vit_depth: int = 3
    vit_heads: int = 2
    vit_mlp: int = 64
    vit_img: int = 56  # pos_embed grid = vit_img / 14
    lora_blocks: tuple[int, ...] = (2,)
    frame_dim: int = 32
    t_heads: int = 4
    t_layers: tuple[int, int] = (1, 1)
    d_model: int = 32
    m_heads: int = 4
    enc_layers: int = 2
    dec_layers: int = 2
    m_ffn: int = 64
    vocab: int = 50
    max_pos: int = 256
    num_pg: int = 7  # len(dict_lem_to_id)
    proto_dim: int = 300
    hand_dim: int = 288  # BeyondGloss hamer_mapper_1 width (HaMeR MANO rotations)
    desc_dim: int = 1024  # BeyondGloss mapper_1 width (the mBART-large-50 description vectors)


# ---------------------------------------------------------------- models/dinov2 + dino_adaptor_model.py
class _LayerScale(nn.Module):  # models/dinov2/layers/layer_scale.py LayerScale
    def __init__(self, d: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * self.gamma


class _DinoAttention(nn.Module):  # models/dinov2/layers/attention.py Attention (old-style LoRA: w1 on qkv, w2 on proj)
    def __init__(self, d: int, heads: int, adapt: bool, rank: int = 4, alpha: float = 4.0):
        super().__init__()
        self.heads, self.adapt = heads, adapt
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        if adapt:
            self.lora_w1_l1, self.lora_w1_l2 = nn.Linear(d, rank, bias=False), nn.Linear(rank, 3 * d, bias=False)
            self.lora_w2_l1, self.lora_w2_l2 = nn.Linear(d, rank, bias=False), nn.Linear(rank, d, bias=False)
            self.lora_scaling = alpha / rank

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x)
        if self.adapt:
            qkv = qkv + self.lora_w1_l2(self.lora_w1_l1(x)) * self.lora_scaling
        q, k, v = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        out = self.proj(x)
        if self.adapt:
            out = out + self.lora_w2_l2(self.lora_w2_l1(x)) * self.lora_scaling
        return out


class _DinoMlp(nn.Module):  # models/dinov2/layers/mlp.py Mlp
    def __init__(self, d: int, hidden: int, adapt: bool, rank: int = 4, alpha: float = 4.0):
        super().__init__()
        self.adapt = adapt
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
        if adapt:
            self.lora_w1_l1, self.lora_w1_l2 = nn.Linear(d, rank, bias=False), nn.Linear(rank, hidden, bias=False)
            self.lora_w2_l1, self.lora_w2_l2 = nn.Linear(hidden, rank, bias=False), nn.Linear(rank, d, bias=False)
            self.lora_scaling = alpha / rank

    def forward(self, x):
        h = self.fc1(x)
        if self.adapt:
            h = h + self.lora_w1_l2(self.lora_w1_l1(x)) * self.lora_scaling
        h = F.gelu(h)
        y = self.fc2(h)
        if self.adapt:
            y = y + self.lora_w2_l2(self.lora_w2_l1(h)) * self.lora_scaling
        return y


class _DinoBlock(nn.Module):  # models/dinov2/layers/block.py Block
    def __init__(self, s: Sizes, adapt: bool):
        super().__init__()
        d = s.vit_width
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.attn = _DinoAttention(d, s.vit_heads, adapt)
        self.ls1, self.ls2 = _LayerScale(d), _LayerScale(d)
        self.mlp = _DinoMlp(d, s.vit_mlp, adapt)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):  # models/dinov2/layers/patch_embed.py PatchEmbed
    def __init__(self, d: int):
        super().__init__()
        self.proj = nn.Conv2d(3, d, 14, 14)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _DinoViT(nn.Module):  # models/dinov2/model/vision_transformer.py DinoVisionTransformer (vit_small)
    def __init__(self, s: Sizes):
        super().__init__()
        d, g = s.vit_width, s.vit_img // 14
        self.patch_embed = _PatchEmbed(d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + g * g, d))
        self.blocks = nn.ModuleList([_DinoBlock(s, i in s.lora_blocks) for i in range(s.vit_depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, d))

    def _pos(self, w: int, h: int):  # interpolate_pos_encoding: scale_factor (w0 + 0.1) / sqrt(N)
        n = self.pos_embed.shape[1] - 1
        g = int(math.sqrt(n))
        w0, h0 = w // 14, h // 14
        if w0 * h0 == n and w == h:
            return self.pos_embed
        patch = self.pos_embed[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, scale_factor=((w0 + 0.1) / g, (h0 + 0.1) / g), mode="bicubic")
        return torch.cat([self.pos_embed[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, patch.shape[1])], 1)

    def cls_features(self, x):  # forward_features(x)["x_norm_clstoken"]
        b, _, w, h = x.shape
        t = torch.cat([self.cls_token.expand(b, -1, -1), self.patch_embed(x)], 1) + self._pos(w, h)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)[:, 0]


class _DinoAdaptor(nn.Module):  # models/spatial_models/frame_models/dino_adaptor_model.py Model
    def __init__(self, s: Sizes):
        super().__init__()
        self.spatial_model = _DinoViT(s)
        self.lin = nn.Linear(s.vit_width, s.frame_dim)
        self.bn = nn.BatchNorm1d(s.frame_dim)

    def forward(self, frames, lengths):
        y = self.bn(self.lin(self.spatial_model.cls_features(frames)))
        t = max(lengths)
        out = y.new_zeros(len(lengths), t, y.shape[1])
        mask = torch.zeros(len(lengths), t, dtype=torch.bool)
        start = 0
        for i, n in enumerate(lengths):
            out[i, :n], mask[i, :n] = y[start:start + n], True
            start += n
        return out, mask


class _Dino(nn.Module):  # models/clip_models.py dino
    def __init__(self, s: Sizes):
        super().__init__()
        self.dino = _DinoAdaptor(s)

    def forward(self, x, lengths):
        return self.dino(x, lengths)


# ---------------------------------------------------------------- models/clip_models.py temporal Transformer
class RotaryPositionalEmbedding(nn.Module):
    def __init__(self, dim: int, max_seq_len: int = 300):
        super().__init__()
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        ang = torch.einsum("i,j->ij", torch.arange(max_seq_len).float(), inv)
        self.register_buffer("sin", ang.sin()[:, None, None])
        self.register_buffer("cos", ang.cos()[:, None, None])

    def forward(self, q, k, t):
        sin, cos = self.sin[:t, 0, 0], self.cos[:t, 0, 0]  # [t, dim/2]

        def rot(x):  # pairs (2j, 2j+1); output [evens' ..., odds' ...] as the authors concatenate
            x0, x1 = x[..., 0::2], x[..., 1::2]
            return torch.cat([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1)

        return rot(q), rot(k)


class MultiHeadAttention(nn.Module):
    def __init__(self, d: int, heads: int, window_size: int = 7):
        super().__init__()
        self.heads, self.hd, self.window = heads, d // heads, window_size
        self.query_proj, self.key_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.value_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.rotary_emb = RotaryPositionalEmbedding(self.hd, 300)
        self.dropout = nn.Dropout(0.1)
        self.layer_scale = nn.Parameter(1e-5 * torch.ones(d))

    def forward(self, x, mask):
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, self.hd).transpose(1, 2)
                   for p in (self.query_proj, self.key_proj, self.value_proj))
        q, k = self.rotary_emb(q, k, t)
        scores = q @ k.transpose(-2, -1) / self.hd ** 0.5
        i = torch.arange(t)
        local = (i[:, None] - i[None, :]).abs() <= self.window // 2  # utils.local_1d_pattern
        allowed = (local[None, None] & mask[:, None, None, :]) | torch.eye(t, dtype=torch.bool)[None, None]
        out = (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        return self.dropout(self.out_proj(out)) * self.layer_scale


class FeedForward(nn.Module):
    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)
        self.activation, self.dropout = nn.GELU(), nn.Dropout(0.1)

    def forward(self, x):
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class TransformerBlock(nn.Module):  # post-LN; DropPath is the identity in eval
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.attention, self.ffn = MultiHeadAttention(d, heads), FeedForward(d, 4 * d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x, mask):
        x = self.norm1(x + self.attention(x, mask))
        return self.norm2(x + self.ffn(x)), mask


class Downsampler(nn.Module):
    def forward(self, x, mask):
        x = F.avg_pool1d(x.permute(0, 2, 1), 3, stride=2, padding=1).permute(0, 2, 1)
        m = F.avg_pool1d(mask.float(), 3, stride=2, padding=1, count_include_pad=False)
        m[:, 0] = 1.0
        return x, m > 0


class SinusoidalPositionalEmbedding(nn.Module):
    def __init__(self, d: int, max_seq_len: int = 300):
        super().__init__()
        pos = torch.arange(max_seq_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d, 2) * (-torch.log(torch.tensor(10000.0)) / d))
        pe = torch.zeros(max_seq_len, d)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe)

    def forward(self, x):
        return x + self.pe[: x.shape[1]]


class Transformer(nn.Module):
    def __init__(self, d: int, heads: int, layers: tuple[int, ...], d_llm: int):
        super().__init__()
        self.pos_embedding = SinusoidalPositionalEmbedding(d, 300)
        self.layers = nn.ModuleList()
        for i, n in enumerate(layers):
            self.layers.extend(TransformerBlock(d, heads) for _ in range(n))
            if i != len(layers) - 1:
                self.layers.append(Downsampler())
        self.output_proj = nn.Linear(d, d_llm)

    def forward(self, x, mask):
        x = self.pos_embedding(x)
        for layer in self.layers:
            x, mask = layer(x, mask)
        return self.output_proj(x), mask


class FeatureExtracter(nn.Module):
    def __init__(self, s: Sizes):
        super().__init__()
        self.conv_2d = _Dino(s)
        self.conv_1d = Transformer(s.frame_dim, s.t_heads, s.t_layers, s.d_model)

    def forward(self, frames, lengths):
        x, mask = self.conv_2d(frames, lengths)
        return self.conv_1d(x, mask)


# ---------------------------------------------------------------- psp_head.py HeadModel
class HeadModel(nn.Module):
    def __init__(self, s: Sizes, class_temperature: float = 0.1, time_temperature: float = 0.1):
        super().__init__()
        self.register_buffer("time_temperature", torch.tensor(time_temperature))
        self.register_buffer("class_temperature", torch.tensor(class_temperature))
        self.fc_hidden = nn.Linear(s.d_model, s.proto_dim)
        self.vocab_embedding = nn.Parameter(torch.randn(s.proto_dim, s.num_pg, 1))
        self.register_buffer("zero_embedding", torch.zeros(s.proto_dim, 1, 1))
        self.dropout = nn.Dropout(0.2)

    def forward(self, x, mask):
        y = F.normalize(self.fc_hidden(self.dropout(x)), dim=-1)
        vocab = F.normalize(torch.cat([self.vocab_embedding, self.zero_embedding], 1), dim=0)[..., 0]  # [C, V+1]
        res = y @ vocab  # [B, T, V+1]; the blank class is the LAST one
        cls = (res / self.class_temperature.clamp(0.01, 1.0)).softmax(-1)
        time_mask = (~mask).float().masked_fill(~mask, torch.finfo(res.dtype).min)[..., None]
        tim = (res / self.time_temperature.clamp(0.01, 1.0) + time_mask).softmax(-2)
        return (cls * tim).sum(-2)


# ---------------------------------------------------------------- mBART + peft (clip_models.py)
def hf_mbart_config(s: Sizes):
    from transformers import MBartConfig

    return MBartConfig(vocab_size=s.vocab, d_model=s.d_model, encoder_layers=s.enc_layers, decoder_layers=s.dec_layers,
                       encoder_attention_heads=s.m_heads, decoder_attention_heads=s.m_heads, encoder_ffn_dim=s.m_ffn,
                       decoder_ffn_dim=s.m_ffn, max_position_embeddings=s.max_pos, scale_embedding=True, dropout=0.1,
                       attention_dropout=0.0, activation_dropout=0.0, activation_function="gelu", pad_token_id=1,
                       bos_token_id=0, eos_token_id=2, decoder_start_token_id=3, forced_eos_token_id=2,
                       attn_implementation="eager")


def _peft(module):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(module, LoraConfig(inference_mode=False, r=16, lora_alpha=32, lora_dropout=0.1,
                                             target_modules=["q_proj", "v_proj"]))


def _mbart_encoder(s: Sizes):
    from transformers import MBartForConditionalGeneration

    return MBartForConditionalGeneration(hf_mbart_config(s)).get_encoder()


class TextCLIP(nn.Module):
    def __init__(self, s: Sizes):
        super().__init__()
        self.model_txt = _mbart_encoder(s)

    def forward(self, ids, mask):
        return self.model_txt(input_ids=ids, attention_mask=mask)[0].mean(1)


class ImageCLIP(nn.Module):
    def __init__(self, s: Sizes):
        super().__init__()
        self.model = FeatureExtracter(s)
        self.head_model = HeadModel(s)
        self.trans_encoder = _peft(_mbart_encoder(s))
        self.cls_token = nn.Parameter(torch.randn(1, 1, s.d_model))

    def forward(self, frames, lengths):
        x, mask = self.model(frames, lengths)
        psp = self.head_model(x, mask)
        x = torch.cat([self.cls_token.repeat(x.shape[0], 1, 1), x], 1)
        mask = F.pad(mask.flatten(1), (1, 0), value=1.0)
        h = self.trans_encoder(inputs_embeds=x, attention_mask=mask, return_dict=True)["last_hidden_state"]
        return h.mean(1), psp


class SLRCLIP(nn.Module):
    def __init__(self, s: Sizes):
        super().__init__()
        self.model_txt = TextCLIP(s)
        self.model_images = ImageCLIP(s)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def forward(self, frames, lengths, ids, mask):
        img, psp = self.model_images(frames, lengths)
        txt = self.model_txt(ids, mask)
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        lpi = self.logit_scale.exp() * img @ txt.t()
        return lpi, lpi.t(), torch.eye(lpi.shape[0]), psp


class PreTrainModel(nn.Module):  # models/Pretrain_Model.py PreTrainModel (the LightningModule's attributes)
    def __init__(self, s: Sizes):
        super().__init__()
        self.model = SLRCLIP(s)

    def losses(self, frames, lengths, ids, mask, pg_labels):
        """(clip, psp, total) as ``training_step``: KLLoss both ways averaged, PG_Loss, landa 1."""
        lpi, lpt, gt, psp = self.model(frames, lengths, ids, mask)
        clip = (kl_loss(lpi, gt) + kl_loss(lpt, gt)) / 2.0
        pg = pg_loss(psp, pg_labels)
        return clip, pg, clip + pg


def kl_loss(prediction, label):  # models/utils.py KLLoss (KLDivLoss size_average=True) * batch
    return F.kl_div(F.log_softmax(prediction, 1), F.softmax(label * 10, 1), reduction="mean") * prediction.shape[0]


def pg_loss(src, tgt):  # models/utils.py PG_Loss: BCE-with-logits on the clamped probabilities
    targets = torch.zeros_like(src)
    for i, t in enumerate(tgt):
        for j in t:
            targets[i, j] = 1.0
    return F.binary_cross_entropy_with_logits(src.clamp(1e-8, 1 - 1e-8), targets)


class V_encoder(nn.Module):  # noqa: N801  (clip_models.py V_encoder)
    def __init__(self, d: int):
        super().__init__()
        self.src_emb = nn.Linear(d, d)
        self.bn_ac = nn.Sequential(nn.LayerNorm(d), nn.GELU())

    def forward(self, x):
        return self.bn_ac(self.src_emb(x))


class gloss_free_model(nn.Module):  # noqa: N801  (clip_models.py gloss_free_model, sign_proj=True, no scaling)
    def __init__(self, s: Sizes):
        super().__init__()
        from transformers import MBartForConditionalGeneration

        self.backbone = FeatureExtracter(s)
        self.mbart = _peft(MBartForConditionalGeneration(hf_mbart_config(s)))
        self.sign_emb = V_encoder(s.d_model)

    def share_forward(self, frames, lengths):
        x, mask = self.backbone(frames, lengths)
        return self.sign_emb(x), mask

    def forward(self, frames, lengths, decoder_input_ids, decoder_mask):
        x, mask = self.share_forward(frames, lengths)
        return self.mbart(inputs_embeds=x, attention_mask=mask, decoder_input_ids=decoder_input_ids,
                          decoder_attention_mask=decoder_mask, return_dict=True)["logits"]


class FineTuneModel(nn.Module):  # models/Finetune_Model.py FineTuneModel (the LightningModule's attributes)
    def __init__(self, s: Sizes):
        super().__init__()
        self.model = gloss_free_model(s)


def frames_to_authors(pixels, frame_mask):
    """Our ``pixels [B, T, H, W, 3]`` (normalised) + prefix ``frame_mask [B, T]`` -> the authors'
    ``(frames [N_valid, 3, H, W], lengths)``."""
    p = torch.as_tensor(pixels)
    m = torch.as_tensor(frame_mask)
    return p[m].permute(0, 3, 1, 2).contiguous(), [int(n) for n in m.sum(1)]


# ---------------------------------------------------------------- BeyondGloss (elsobhano/BeyondGloss slt_framework)
class BGFeatureExtracter(nn.Module):
    """clip_models.py ``FeatureExtracter``: dino -> HaMeR student + feedback -> ``mapper_1_downsample``
    -> ``Transformer(..., d_llm = d_model / 2)`` -> description features ``mapper_1`` + feedback
    ``mapper_2``, concatenated. Returns ``(x [B, T', d_model], mask, hamer [B, T, hand], desc [B, T', desc])``."""

    def __init__(self, s: Sizes):
        super().__init__()
        d_llm = s.d_model // 2  # their d_llm=512 with mBART-large's 1024
        self.conv_2d = _Dino(s)
        self.hamer_mapper_1 = nn.Linear(s.frame_dim, s.hand_dim)
        self.hamer_mapper_1_ac_fn, self.hamer_mapper_1_drop = nn.GELU(), nn.Dropout(0.1)
        self.hamer_mapper_2 = nn.Linear(s.hand_dim, s.frame_dim)
        self.mapper_1_downsample = nn.Sequential(nn.Linear(2 * s.frame_dim, s.frame_dim), nn.GELU())
        self.conv_1d = Transformer(s.frame_dim, s.t_heads, s.t_layers, d_llm)
        self.mapper_1 = nn.Linear(d_llm, s.desc_dim)
        self.mapper_1_ac_fn, self.mapper_1_drop = nn.GELU(), nn.Dropout(0.1)
        self.mapper_2 = nn.Linear(s.desc_dim, d_llm)

    def forward(self, frames, lengths):
        x, mask = self.conv_2d(frames, lengths)  # padded frames are zeros here (dino_adaptor_model.py pad)
        hamer = self.hamer_mapper_1_ac_fn(self.hamer_mapper_1(x))
        x = self.mapper_1_downsample(torch.cat([x, self.hamer_mapper_1_drop(self.hamer_mapper_2(hamer))], -1))
        x, mask = self.conv_1d(x, mask)
        desc = self.mapper_1_ac_fn(self.mapper_1(x))
        return torch.cat([x, self.mapper_1_drop(self.mapper_2(desc))], -1), mask, hamer, desc


class BGImageCLIP(nn.Module):
    """clip_models.py ``ImageCLIP`` of BeyondGloss: no ``head_model``, no ``cls_token``."""

    def __init__(self, s: Sizes):
        super().__init__()
        self.model = BGFeatureExtracter(s)
        self.trans_encoder = _peft(_mbart_encoder(s))

    def forward(self, frames, lengths):
        x, mask, hamer, desc = self.model(frames, lengths)
        h = self.trans_encoder(inputs_embeds=x, attention_mask=mask, return_dict=True)["last_hidden_state"]
        return h.mean(1), desc.mean(1), hamer


def _soft_identity_logits(a, b, scale):
    a, b = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    lpi = scale * a @ b.t()
    return lpi, lpi.t(), torch.eye(lpi.shape[0])  # create_soft_target_matrix_with_gradients(scale_off_diag=0)


class BGSLRCLIP(nn.Module):
    """clip_models.py ``SLRCLIP`` of BeyondGloss: the description logits use ``logit_scale``;
    ``logit_scale_desc`` is held but never used."""

    def __init__(self, s: Sizes):
        super().__init__()
        self.model_txt = TextCLIP(s)
        self.model_images = BGImageCLIP(s)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.logit_scale_desc = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def forward(self, frames, lengths, ids, mask, desc_feats):
        img, img_to_desc, hamer = self.model_images(frames, lengths)
        txt = self.model_txt(ids, mask)
        scale = self.logit_scale.exp()
        return _soft_identity_logits(img, txt, scale), _soft_identity_logits(img_to_desc, desc_feats, scale), hamer


def masked_l2_loss(pred, target, mask):  # Pretrain_Model.py PreTrainModel.masked_l2_loss
    return ((pred - target).norm(dim=-1) ** 2 * mask).sum() / (mask.sum() * pred.shape[-1])


class BeyondGlossPreTrainModel(nn.Module):  # Pretrain_Model.py PreTrainModel (the LightningModule's attributes)
    def __init__(self, s: Sizes):
        super().__init__()
        self.model = BGSLRCLIP(s)

    def losses(self, frames, lengths, ids, mask, desc_feats, hamer_feats, hamer_mask, landa_desc, landa_hamer):
        """(clip, clip_desc, hamer, total) as ``training_step``."""
        (lpi, lpt, gt), (lpi_d, lpt_d, gt_d), hamer = self.model(frames, lengths, ids, mask, desc_feats)
        clip = (kl_loss(lpi, gt) + kl_loss(lpt, gt)) / 2.0
        clip_desc = (kl_loss(lpi_d, gt_d) + kl_loss(lpt_d, gt_d)) / 2.0
        hl = masked_l2_loss(hamer, hamer_feats, hamer_mask)
        return clip, clip_desc, hl, clip + landa_desc * clip_desc + landa_hamer * hl


class BGDescClip(nn.Module):
    """clip_models.py ``Desc_Clip``: the video encoder's mean aligned with the description vectors.
    As published, its ``forward`` unpacks two values from ``FeatureExtracter``, which returns four
    (a ValueError); this takes the first two, the evident intent."""

    def __init__(self, s: Sizes):
        super().__init__()
        self.model = BGFeatureExtracter(s)
        self.trans_encoder = _peft(_mbart_encoder(s))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def forward(self, frames, lengths, desc_feats):
        x, mask, *_ = self.model(frames, lengths)
        h = self.trans_encoder(inputs_embeds=x, attention_mask=mask, return_dict=True)["last_hidden_state"]
        return _soft_identity_logits(h.mean(1), desc_feats, self.logit_scale.exp())


class BeyondGlossPretrainDesc(nn.Module):  # Pretrain_desc.py PreTrainModel (self.model = Desc_Clip)
    def __init__(self, s: Sizes):
        super().__init__()
        self.model = BGDescClip(s)

    def losses(self, frames, lengths, desc_feats):
        lpi, lpt, gt = self.model(frames, lengths, desc_feats)
        return (kl_loss(lpi, gt) + kl_loss(lpt, gt)) / 2.0


class BGGlossFreeModel(nn.Module):
    """clip_models.py ``gloss_free_model`` of BeyondGloss; ``sign_proj=False`` (their configs):
    ``sign_emb`` is ``nn.Identity`` and holds no tensors."""

    def __init__(self, s: Sizes, sign_proj: bool = False):
        super().__init__()
        from transformers import MBartForConditionalGeneration

        self.backbone = BGFeatureExtracter(s)
        self.mbart = _peft(MBartForConditionalGeneration(hf_mbart_config(s)))
        self.sign_emb = V_encoder(s.d_model) if sign_proj else nn.Identity()

    def forward(self, frames, lengths, decoder_input_ids, decoder_mask):
        x, mask, *_ = self.backbone(frames, lengths)
        return self.mbart(inputs_embeds=self.sign_emb(x), attention_mask=mask, decoder_input_ids=decoder_input_ids,
                          decoder_attention_mask=decoder_mask, return_dict=True)["logits"]


class BeyondGlossFineTuneModel(nn.Module):  # Finetune_Model.py FineTuneModel (self.model = gloss_free_model)
    def __init__(self, s: Sizes, sign_proj: bool = False):
        super().__init__()
        self.model = BGGlossFreeModel(s, sign_proj)
