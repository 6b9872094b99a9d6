"""The PyTorch way of building and training HFA (the baseline the benchmarks compare against).

Built the way the PyTorch implementations (elsobhano/MLLM ``psp-dino``, GFSLT-VLP) do it, from
configs with random weights (no downloads; speed does not depend on the weights):

- frame encoder: transformers ``Dinov2Model`` (SDPA attention), LoRA from ``peft`` on blocks
  9-11 (r 4, alpha 4, dropout 0.1). Difference from ours: Hugging Face's DINOv2 has
  separate ``q_proj``/``k_proj``/``v_proj`` linears where torch-hub (and hfa_jax) have one fused
  ``qkv``; LoRA goes on ``q_proj, k_proj, v_proj, o_proj, fc1, fc2`` (9,216 instead of 6,144
  adapter parameters on the attention input per block: same rank, same FLOP class). Blocks 0-8
  run under ``torch.no_grad()`` (a competent baseline: no activations kept for frozen blocks).
  Only the valid frames go through it (``pixels[frame_mask]``: GFSLT-VLP likewise concatenates
  the clips' frames before its CNN), then the features are scattered back to ``[B, T]``.
- Linear(384->512) -> BatchNorm1d over the valid frames only.
- temporal encoder written here to docs/models_and_weights.md: post-LN blocks, local attention |t-s| <= 3 (+ self)
  as a dense boolean mask into ``F.scaled_dot_product_attention`` (what the xformers
  ``local_mask`` path degrades to without xformers), interleaved RoPE, LayerScale on the
  attention branch, DropPath, AvgPool1d(3, 2, 1) downsampling, Linear(512->1024).
- pretraining: Dropout+Linear(1024->300) pseudo-gloss head against prototypes, CLS + LoRA'd HF
  ``MBartEncoder`` (``inputs_embeds``) for the video vector, a frozen ``MBartEncoder`` (no_grad)
  for the text vector, KL-to-softmax(10 I) alignment loss + BCE-with-logits on the clamped scores.
- fine-tuning (stage 2): mapper (Linear, LayerNorm, GELU) -> ``MBartForConditionalGeneration``
  with ``peft`` LoRA r16 alpha 32 on q_proj/v_proj of encoder self-attention, decoder
  self-attention and cross-attention; cross-entropy with label smoothing 0.2, padding ignored.
- AdamW(weight_decay=0.01) + ``OneCycleLR(pct_start=0.05)`` + ``clip_grad_norm_(1.0)``.

Trainable sets are the paper's: pretrain = ViT LoRA, Linear+BN, temporal, head, prototypes, CLS,
logit scale, video-encoder LoRA; finetune2 = ViT LoRA, Linear+BN, temporal, mapper, mBART LoRA.

Bench code only (imports torch); never imported by ``hfa_jax``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__ in (None, ""):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import Shapes  # noqa: E402  (shared with our side)

__all__ = [
    "Shapes",
    "RefTemporalEncoder",
    "RefHFAPretrain",
    "RefHFATranslate",
    "build",
    "make_batch",
    "train_step",
    "hf_mbart_config",
    "trainable_count",
]


# ----------------------------------------------------------------------------------------------
# Temporal encoder (docs/models_and_weights.md)
# ----------------------------------------------------------------------------------------------


def _rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """x: [B, N, T, H] -> RoPE with interleaved pairs (x[2i], x[2i+1])."""
    t, h = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, h, 2, dtype=torch.float32, device=x.device) / h)
    ang = torch.arange(t, dtype=torch.float32, device=x.device)[:, None] * inv[None]  # [T, H/2]
    sin, cos = ang.sin().to(x.dtype), ang.cos().to(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


def _sinusoid(t: int, d: int) -> torch.Tensor:
    pos = torch.arange(t, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(t, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class _DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], 1, 1).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class RefTemporalBlock(nn.Module):
    def __init__(self, d: int, heads: int, mlp: int, drop_path: float, window: int = 3, n_blocks: int = 4):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.layer_scale = nn.Parameter(torch.full((d,), 1e-5))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, mlp), nn.Linear(mlp, d)
        self.drop = nn.Dropout(0.1)
        self.dp = _DropPath(drop_path)
        for lin in (self.qkv, self.fc1, self.fc2):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.out.weight, std=0.02 / math.sqrt(2 * n_blocks))
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = _rope(q), _rope(k)
        idx = torch.arange(t, device=x.device)
        diff = idx[:, None] - idx[None, :]
        allowed = ((diff.abs() <= self.window)[None] & mask[:, None, :]) | (diff == 0)[None]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        h = self.drop(self.out(h.transpose(1, 2).reshape(b, t, d)))
        x = self.norm1(x + self.dp(h * self.layer_scale))
        h = self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))
        return self.norm2(x + self.dp(h))


class RefTemporalEncoder(nn.Module):
    """x [B, T, 512], mask [B, T] bool -> (y [B, ceil(T/2), out], mask')."""

    def __init__(self, d: int = 512, heads: int = 8, mlp: int = 2048, out_dim: int = 1024):
        super().__init__()
        rates = [0.1 * i / 3 for i in range(4)]
        self.blocks = nn.ModuleList([RefTemporalBlock(d, heads, mlp, r) for r in rates])
        self.pool = nn.AvgPool1d(3, 2, 1, count_include_pad=True)
        self.out_proj = nn.Linear(d, out_dim)

    def forward(self, x, mask):
        x = x + _sinusoid(x.shape[1], x.shape[2]).to(x.device)[None]
        for i, blk in enumerate(self.blocks):
            if i == 2:
                x = self.pool((x * mask[..., None]).transpose(1, 2)).transpose(1, 2)
                m = F.max_pool1d(mask[:, None].float(), 3, 2, 1)[:, 0] > 0
                m[:, 0] = True
                mask = m
            x = blk(x, mask)
        return self.out_proj(x), mask


# ----------------------------------------------------------------------------------------------
# HF models + peft LoRA
# ----------------------------------------------------------------------------------------------


def _dinov2(s: Shapes):
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=s.vit_width, num_hidden_layers=s.vit_depth, num_attention_heads=s.vit_heads,
                       mlp_ratio=s.vit_mlp // s.vit_width, image_size=518, patch_size=14, layer_norm_eps=1e-6,
                       attn_implementation="sdpa")
    m = Dinov2Model(cfg)
    blocks = "|".join(str(b) for b in s.lora_blocks)
    _lora(m, rf"encoder\.layer\.({blocks})\.(attention\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(fc1|fc2))", 4, 4.0)
    return m


def hf_mbart_config(s: Shapes, **kw):
    from transformers import MBartConfig

    base = dict(vocab_size=s.vocab, d_model=s.d_model, encoder_layers=s.enc_layers, decoder_layers=s.dec_layers,
                encoder_attention_heads=s.m_heads, decoder_attention_heads=s.m_heads,
                encoder_ffn_dim=s.m_ffn, decoder_ffn_dim=s.m_ffn, max_position_embeddings=s.max_pos,
                scale_embedding=True, dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
                activation_function="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                decoder_start_token_id=3, forced_eos_token_id=2, attn_implementation="sdpa")
    base.update(kw)
    return MBartConfig(**base)


def _lora(module: nn.Module, target_regex: str, r: int, alpha: float) -> None:
    """peft LoRA injected in place (A ~ kaiming-uniform by peft default, B = 0; init does not
    matter for speed)."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.1, target_modules=target_regex), module)


_MBART_LORA = r".*(encoder\.layers\.\d+\.self_attn|decoder\.layers\.\d+\.(self_attn|encoder_attn))\.(q_proj|v_proj)"


def _mbart_encoder(s: Shapes, lora: bool):
    from transformers.models.mbart.modeling_mbart import MBartEncoder

    enc = MBartEncoder(hf_mbart_config(s))
    if lora:
        _lora(enc, r".*layers\.\d+\.self_attn\.(q_proj|v_proj)", 16, 32.0)
    return enc


class _Trunk(nn.Module):
    def _trunk_init(self, s: Shapes):
        self.s = s
        self.frame_encoder = _dinov2(s)
        self.frame_proj = nn.Linear(s.vit_width, s.t_width)
        self.frame_bn = nn.BatchNorm1d(s.t_width)
        self.temporal = RefTemporalEncoder(s.t_width, s.t_heads, s.t_mlp, s.d_model)

    def encode_frames(self, pixels: torch.Tensor, frame_mask: torch.Tensor):
        """pixels [B, T, 3, H, W] -> (y [B, T', D], mask')."""
        b, t = pixels.shape[:2]
        vit = self.frame_encoder
        first = min(self.s.lora_blocks)
        with torch.no_grad():
            x = vit.embeddings(pixels[frame_mask])  # valid frames only: [N_valid, 3, H, W]
            for layer in vit.encoder.layer[:first]:
                x = _block(layer, x)
        for layer in vit.encoder.layer[first:]:
            x = _block(layer, x)
        h = self.frame_proj(vit.layernorm(x)[:, 0])
        out = h.new_zeros(b, t, h.shape[-1])
        out[frame_mask] = self.frame_bn(h)
        return self.temporal(out, frame_mask)


def _block(layer, x: torch.Tensor) -> torch.Tensor:
    """One ``Dinov2Layer``: its forward takes the hidden states alone (transformers 5.17 refuses
    a positional mask) and returns a tensor (older versions: a one-tuple)."""
    out = layer(x)
    return out[0] if isinstance(out, tuple) else out


class RefHFAPretrain(_Trunk):
    def __init__(self, s: Shapes):
        super().__init__()
        self._trunk_init(s)
        self.pg_drop = nn.Dropout(0.2)
        self.pg_proj = nn.Linear(s.d_model, 300)
        self.prototypes = nn.Parameter(torch.randn(s.num_pg, 300))
        self.cls_token = nn.Parameter(torch.randn(1, 1, s.d_model) * 0.02)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.video_encoder = _mbart_encoder(s, lora=True)
        self.text_encoder = _mbart_encoder(s, lora=False)

    def forward(self, pixels, frame_mask, text_ids, text_mask, pg_targets):
        y, tmask = self.encode_frames(pixels, frame_mask)
        protos = torch.cat([self.prototypes.new_zeros(1, 300), self.prototypes], 0)
        h = F.normalize(self.pg_proj(self.pg_drop(y)), dim=-1)
        sim = h @ F.normalize(protos, dim=-1).T  # [B, T', V+1]
        class_p = sim.div(0.1).softmax(-1)
        time_p = sim.div(0.1).masked_fill(~tmask[..., None], torch.finfo(sim.dtype).min).softmax(1)
        scores = (class_p * time_p).sum(1).clamp(1e-8, 1 - 1e-8)
        pg_loss = F.binary_cross_entropy_with_logits(scores, pg_targets)

        b = y.shape[0]
        vin = torch.cat([self.cls_token.expand(b, -1, -1), y], 1)
        vmask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=y.device), tmask], 1)
        video = self.video_encoder(inputs_embeds=vin, attention_mask=vmask.long()).last_hidden_state.mean(1)
        with torch.no_grad():
            text = self.text_encoder(input_ids=text_ids, attention_mask=text_mask.long()).last_hidden_state.mean(1)
        video, text = F.normalize(video, dim=-1), F.normalize(text, dim=-1)
        lpv = self.logit_scale.exp() * video @ text.T
        target = F.softmax(10 * torch.eye(b, device=y.device), 1)
        kl = lambda lg: F.kl_div(F.log_softmax(lg, 1), target, reduction="batchmean")  # noqa: E731
        return 0.5 * (kl(lpv) + kl(lpv.T)) + pg_loss


class RefHFATranslate(_Trunk):
    def __init__(self, s: Shapes):
        super().__init__()
        from transformers import MBartForConditionalGeneration

        self._trunk_init(s)
        self.mapper = nn.Sequential(nn.Linear(s.d_model, s.d_model), nn.LayerNorm(s.d_model), nn.GELU())
        self.mbart = MBartForConditionalGeneration(hf_mbart_config(s))
        _lora(self.mbart, _MBART_LORA, 16, 32.0)

    def forward(self, pixels, frame_mask, decoder_input_ids, target_mask, labels):
        y, tmask = self.encode_frames(pixels, frame_mask)
        logits = self.mbart(inputs_embeds=self.mapper(y), attention_mask=tmask.long(),
                            decoder_input_ids=decoder_input_ids,
                            decoder_attention_mask=target_mask.long()).logits
        lab = labels.masked_fill(~target_mask, -100)
        return F.cross_entropy(logits.flatten(0, 1), lab.flatten(), ignore_index=-100, label_smoothing=0.2)


_TRAINABLE = {
    "pretrain": r"(lora_[AB]|^frame_proj|^frame_bn|^temporal|^pg_proj|^prototypes|^cls_token|^logit_scale)",
    "finetune": r"(lora_[AB]|^frame_proj|^frame_bn|^temporal|^mapper)",
}


def _freeze(model: nn.Module, kind: str) -> None:
    import re

    pat = re.compile(_TRAINABLE[kind])
    for name, p in model.named_parameters():
        trainable = bool(pat.search(name))
        if name.startswith("text_encoder"):
            trainable = False
        p.requires_grad_(trainable)


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build(kind: str, s: Shapes, *, total_steps: int = 1000, seed: int = 0, device: str = "cpu"):
    """kind "pretrain" | "finetune" -> (model in train mode on ``device``, optimizer, scheduler)."""
    torch.manual_seed(seed)
    model = RefHFAPretrain(s) if kind == "pretrain" else RefHFATranslate(s)
    model = model.to(device)
    _freeze(model, kind)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=total_steps, pct_start=0.05,
                                                anneal_strategy="cos")
    return model, opt, sched


def make_batch(kind: str, s: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    """Normalised pixels [B, T, 3, H, W] (channels-first, as torch models take them) + text; the
    last clip is 3/4 long so padding paths are exercised."""
    g = torch.Generator().manual_seed(seed)
    b, t = s.batch, s.frames
    fm = torch.ones(b, t, dtype=torch.bool)
    if b > 1:
        fm[-1, (3 * t) // 4:] = False
    ids = torch.randint(4, s.vocab, (b, s.text_len), generator=g)
    tm = torch.ones(b, s.text_len, dtype=torch.bool)
    tm[-1, s.text_len // 2:] = False
    out = {"pixels": torch.randn(b, t, 3, s.image, s.image, generator=g), "frame_mask": fm}
    if kind == "pretrain":
        pg = torch.zeros(b, s.num_pg + 1)
        pg[:, 1:6] = 1.0
        out.update(text_ids=ids, text_mask=tm, pg_targets=pg)
    else:
        out.update(decoder_input_ids=ids, target_mask=tm, labels=ids)
    return out


class Amp:
    """Mixed precision the way PyTorch training scripts do it: ``torch.autocast`` around the
    forward and, for float16, a ``GradScaler`` (unscale before clipping). ``dtype`` None = fp32.
    The accelerator rows use float16 on CUDA (the issue's "fp16 autocast"); CPU autocast only
    supports bfloat16, which is what the CPU smoke test of this path uses."""

    def __init__(self, device: str, dtype: torch.dtype | None):
        self.device_type = torch.device(device).type
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(self.device_type) if dtype == torch.float16 else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def move_batch(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def train_step(model, opt, sched, batch: dict[str, torch.Tensor], amp: Amp | None = None) -> float:
    """One optimiser step (forward, backward, clip 1.0, AdamW, OneCycleLR). Returns the loss
    (``float`` waits for the device)."""
    opt.zero_grad(set_to_none=True)
    params = [p for p in model.parameters() if p.requires_grad]
    if amp is None or amp.dtype is None:
        loss = model(**batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    else:
        with amp.autocast():
            loss = model(**batch)
        if amp.scaler is not None:
            amp.scaler.scale(loss).backward()
            amp.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            amp.scaler.step(opt)
            amp.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    sched.step()
    return float(loss.detach())


def compiled_step(model, opt, sched, amp: Amp | None = None):
    """``torch.compile`` on the model forward (the optimizer step stays eager, as is usual);
    returns a train-step callable like :func:`train_step`."""
    cmodel = torch.compile(model)

    def step(batch):
        return train_step(cmodel, opt, sched, batch, amp)

    return step


def _demo(kind: str = "finetune") -> dict[str, Any]:  # pragma: no cover - manual check
    s = Shapes(batch=1, frames=4, image=28, enc_layers=1, dec_layers=1, d_model=64, m_heads=4, m_ffn=128)
    model, opt, sched = build(kind, s)
    return {"loss": train_step(model, opt, sched, make_batch(kind, s)), "trainable": trainable_count(model)}


if __name__ == "__main__":  # pragma: no cover
    print(_demo("pretrain"), _demo("finetune"))
