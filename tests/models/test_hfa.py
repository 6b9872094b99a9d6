"""The composed HFA models on a tiny config: output contract (INTERFACES.md), the pseudo-gloss
head and the pooled vectors against their definitions, BatchNorm over valid frames only,
LoRA merging, beam search wired to the forward pass, bf16, and weight grafting."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import model_config
from hfa_jax.errors import CheckpointError, ConfigError
from hfa_jax.models.hfa import HFAConfig, HFAPretrain, HFATranslate, _mean, graft, lora_scale_rules
from hfa_jax.models.lora import merge_lora
from hfa_jax.models.mbart import MBartEncoder

B, T, IMG = 2, 5, 28
V = 10  # pseudo-gloss classes (+ the blank row 0)


def _cfg(**kw) -> HFAConfig:
    mc = model_config("tiny")
    mc.num_pseudo_glosses = V
    mc.mbart.vocab_size = 40
    mc.mbart.decoder_start_token_id = 3
    # smaller than "tiny" to keep compile times low: 2 ViT blocks (LoRA on the last), 1+1 mBART layers
    mc.vit.depth, mc.vit.lora_blocks = 2, (1,)
    mc.mbart.encoder_layers = mc.mbart.decoder_layers = 1
    for k, v in kw.items():
        mc[k] = v
    return HFAConfig.from_config(mc)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    pixels = jnp.asarray(rng.standard_normal((B, T, IMG, IMG, 3)), jnp.float32)
    fmask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    ids = jnp.asarray([[5, 6, 7, 2], [8, 9, 2, 1]], jnp.int32)
    return pixels, fmask, ids, ids != 1


def _nonzero_lora(params, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.asarray(rng.standard_normal(a.shape) * 0.05, a.dtype)
        if "lora_b" in jax.tree_util.keystr(p) else a, params)


@pytest.fixture(scope="module")
def pretrain():
    cfg = _cfg()
    model = HFAPretrain(cfg)
    args = _inputs()
    v = jax.jit(model.init)({"params": jax.random.key(0), "dropout": jax.random.key(1)}, *args)
    v = {**v, "batch_stats": {"frame_bn": {"mean": jnp.full((32,), 0.1), "var": jnp.full((32,), 2.0)}}}
    return cfg, model, v, args, jax.jit(model.apply)


def test_pretrain_outputs_match_definitions(pretrain):
    cfg, model, v, (pixels, fmask, ids, tmask), apply = pretrain
    assert set(v["params"]) == {"frame_encoder", "frame_proj", "frame_bn", "temporal", "pg_head", "prototypes",
                                "cls_token", "logit_scale", "video_encoder", "text_encoder"}
    assert v["params"]["prototypes"].shape == (V, 300)  # the zero row 0 is not a parameter
    assert "embed_tokens" in v["params"]["video_encoder"]  # full encoder, as counted by the paper
    out = apply(v, pixels, fmask, ids, tmask)
    tp = (T + 1) // 2
    assert out["pg_scores"].shape == (B, V + 1) and out["pg_sim"].shape == (B, tp, V + 1)
    assert out["video_vec"].shape == out["text_vec"].shape == (B, 32)
    assert np.asarray(out["temporal_mask"]).tolist() == [[True] * 3, [True, True, False]]
    np.testing.assert_allclose(out["logit_scale"], 1 / 0.07, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out["video_vec"], axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["text_vec"], axis=-1), 1, atol=1e-5)

    # pseudo-gloss score p from S: class softmax (tau 0.1) x masked time softmax (tau 0.1), summed
    s = np.asarray(out["pg_sim"], np.float64)
    assert np.all(s[..., 0] == 0)  # the blank prototype is the zero vector
    m = np.asarray(out["temporal_mask"])
    cls_p = np.exp(s / 0.1) / np.exp(s / 0.1).sum(-1, keepdims=True)
    tl = np.where(m[..., None], s / 0.1, -np.inf)
    time_p = np.exp(tl - tl.max(1, keepdims=True))
    time_p /= time_p.sum(1, keepdims=True)
    np.testing.assert_allclose(out["pg_scores"], (cls_p * time_p).sum(1), atol=1e-5)

    # text vector: plain mean (padding included, the reference) of the frozen encoder's states
    enc = MBartEncoder(cfg.text_encoder_cfg)
    states = jax.jit(enc.apply)({"params": v["params"]["text_encoder"]}, ids, tmask)
    tv = np.asarray(states).mean(1)
    np.testing.assert_allclose(out["text_vec"], tv / np.linalg.norm(tv, axis=-1, keepdims=True), atol=1e-5)
    # video vector: mean over [CLS; temporal features] through the LoRA video encoder
    y, ym = jax.jit(lambda *a: model.apply(*a, method=HFAPretrain.encode_frames))(v, pixels, fmask)
    vin = jnp.concatenate([jnp.broadcast_to(v["params"]["cls_token"], (B, 1, 32)), y], 1)
    vm = jnp.concatenate([jnp.ones((B, 1), bool), ym], 1)
    venc = MBartEncoder(cfg.mbart)
    vs = jax.jit(lambda p, m_, e: venc.apply(p, None, m_, inputs_embeds=e))({"params": v["params"]["video_encoder"]}, vm, vin)
    vv = np.asarray(vs).mean(1)
    np.testing.assert_allclose(out["video_vec"], vv / np.linalg.norm(vv, axis=-1, keepdims=True), atol=1e-5)
    # masked-mean switch: mean over valid positions only
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 3)), jnp.float32)
    mk = jnp.asarray([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    np.testing.assert_allclose(_mean(x, mk, True)[0], np.asarray(x)[0, :2].mean(0), atol=1e-6)
    np.testing.assert_allclose(_mean(x, mk, False)[0], np.asarray(x)[0].mean(0), atol=1e-6)


def test_batchnorm_uses_valid_frames_only(pretrain):
    cfg, model, v, (pixels, fmask, ids, tmask), _ = pretrain

    def train(px):
        return model.apply(v, px, fmask, ids, tmask, deterministic=False, rngs={"dropout": jax.random.key(2)},
                           mutable=["batch_stats", "intermediates"],
                           capture_intermediates=lambda mdl, _: mdl.name == "frame_proj")

    out, upd = jax.jit(train)(pixels)
    # the frame features entering BN (Linear 384->512 output), valid frames only
    f = np.asarray(upd["intermediates"]["frame_proj"]["__call__"][0], np.float64)[np.asarray(fmask)]
    mean, var = f.mean(0), f.var(0)
    n = f.shape[0]
    np.testing.assert_allclose(upd["batch_stats"]["frame_bn"]["mean"], 0.9 * 0.1 + 0.1 * mean, atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["frame_bn"]["var"], 0.9 * 2.0 + 0.1 * var * n / (n - 1), rtol=1e-4)
    # junk in the padded frames changes neither the statistics nor any valid output
    junk = pixels.at[1, 3:].set(50.0)
    out2, upd2 = jax.jit(train)(junk)
    np.testing.assert_allclose(upd2["batch_stats"]["frame_bn"]["mean"], upd["batch_stats"]["frame_bn"]["mean"], atol=1e-6)
    np.testing.assert_allclose(out2["pg_scores"], out["pg_scores"], atol=1e-5)
    np.testing.assert_allclose(out2["text_vec"], out["text_vec"], atol=1e-6)


def test_translate_merge_generate_and_graft():
    cfg = _cfg()
    model = HFATranslate(cfg)
    pixels, fmask, ids, tmask = _inputs(1)
    v = jax.jit(model.init)({"params": jax.random.key(0), "dropout": jax.random.key(1)}, pixels, fmask, ids, tmask)
    assert set(v["params"]) == {"frame_encoder", "frame_proj", "frame_bn", "temporal", "mapper", "mbart"}
    assert v["buffers"]["mbart"]["final_logits_bias"].shape == (40,)  # a buffer, not a param
    v = {**v, "params": _nonzero_lora(v["params"])}
    fwd = jax.jit(lambda vv, d: model.apply(vv, pixels, fmask, d, d != 1))
    logits = fwd(v, ids)
    assert logits.shape == (B, 4, 40) and logits.dtype == jnp.float32
    # merge_lora with the HFA scale rules folds alpha/r per model: ViT r2/a2 -> 1, mBART r4/a8 -> 2
    # (merged == unmerged outputs is tested on a two-scale module in test_lora.py)
    merged = merge_lora(v, lora_scale_rules(cfg))
    assert "lora_a" not in jax.tree_util.keystr(merged)
    for path, scale in (("frame_encoder/block_1/mlp/fc1", 1.0), ("mbart/decoder/layers_0/encoder_attn/q_proj", 2.0)):
        node_v, node_m = v["params"], merged["params"]
        for k in path.split("/"):
            node_v, node_m = node_v[k], node_m[k]
        want = node_v["kernel"] + scale * node_v["lora_a"] @ node_v["lora_b"]
        np.testing.assert_allclose(node_m["kernel"], want, atol=1e-6)

    # beam search on the model's own encoder states: the returned score equals the teacher-forced
    # length-normalised log-probability of the returned sequence under the forward pass
    gen = jax.jit(lambda vv, p, m: model.generate(vv, p, m, num_beams=2, max_new_tokens=3, forced_eos_token_id=None))
    res = gen(v, pixels, fmask)
    seq = np.asarray(res.sequences)
    assert seq.shape == (B, 4) and np.all(seq[:, 0] == 3)
    lp = np.asarray(jax.nn.log_softmax(fwd(v, jnp.asarray(seq[:, :-1]))), np.float64)
    for b in range(B):
        toks = seq[b, 1:]
        end = int(np.argmax(toks == 2)) + 1 if np.any(toks == 2) else len(toks)
        total = sum(lp[b, i, toks[i]] for i in range(end))
        np.testing.assert_allclose(float(res.scores[b]), total / end, rtol=1e-4, atol=1e-4)

    # grafting imported weights: shapes are checked, names must exist
    vit = jax.tree.map(lambda a: a + 1.0, v["params"]["frame_encoder"])
    g = graft(v, vit, "frame_encoder")
    assert float(jnp.abs(g["params"]["frame_encoder"]["norm"]["scale"] - v["params"]["frame_encoder"]["norm"]["scale"] - 1).max()) == 0
    bad = {**vit, "cls_token": jnp.zeros((1, 1, 7))}
    with pytest.raises(CheckpointError, match="cls_token has shape"):
        graft(v, bad, "frame_encoder")


def test_bf16_and_config_errors(pretrain):
    cfg, _, v, args, apply = pretrain
    out32 = apply(v, *args)
    mb = HFAPretrain(_cfg(dtype="bfloat16"))
    out16 = jax.jit(mb.apply)(v, *args)  # same fp32 params, bf16 compute
    for k in ("video_vec", "text_vec", "pg_scores"):
        a = np.asarray(out16[k], np.float32)
        assert np.all(np.isfinite(a))
        assert np.abs(a - np.asarray(out32[k])).max() < 0.1, k
    mc = model_config("tiny")
    mc.unknown_field = 1
    with pytest.raises(ConfigError, match="unknown_field"):
        HFAConfig.from_config(mc)
    mc = model_config("tiny")
    mc.temporal.out_dim = 48
    with pytest.raises(ConfigError, match="out_dim"):
        HFAConfig.from_config(mc)


def test_cosine_similarity_has_finite_gradient_at_zero_vectors():
    from hfa_jax.models.heads import cosine_similarity

    x = jnp.ones((1, 2, 4))
    protos = jnp.zeros((3, 4)).at[1].set(jnp.arange(4.0))
    g = jax.grad(lambda p: cosine_similarity(x, p).sum())(protos)
    assert np.all(np.isfinite(np.asarray(g)))
    s = cosine_similarity(x, protos)
    assert np.allclose(np.asarray(s[..., 0]), 0.0)
    ref = np.arange(4.0).sum() / (2.0 * np.linalg.norm(np.arange(4.0)))
    assert np.allclose(np.asarray(s[..., 1]), ref, atol=1e-6)
