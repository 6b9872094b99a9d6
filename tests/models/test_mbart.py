"""Parity of hfa_jax.models.mbart with transformers' MBartForConditionalGeneration (PyTorch, fp32,
CPU, random weights built from configs: nothing is downloaded)."""

from __future__ import annotations

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import MBartConfig as HFConfig
from transformers import MBartForConditionalGeneration

from hfa_jax.errors import CheckpointError
from hfa_jax.models import mbart
from hfa_jax.weights import mbart as mbart_weights

TOL = 1e-4


@functools.lru_cache(maxsize=None)
def _jitted(module, method, static):
    fn = lambda variables, *args, **kw: module.apply(variables, *args, method=method, **kw)  # noqa: E731
    return jax.jit(fn, static_argnames=static)


def _apply(module, variables, *args, method=None, **kw):
    """module.apply under jit (op-by-op dispatch is slow on a shared 2-core CI machine)."""
    static = ("deterministic",) if "deterministic" in kw else ()
    if method is not None and not isinstance(method, str):
        method = method.__name__
    return _jitted(module, method, static)(variables, *args, **kw)


def _hf_model(tmp_path, seed=0, **kw) -> tuple[MBartForConditionalGeneration, str]:
    """A random HF mBART with non-trivial LayerNorms and final_logits_bias, saved as safetensors."""
    cfg = dict(
        vocab_size=101, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=40,
        scale_embedding=True, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=5,
        dropout=0.1, attention_dropout=0.1,
    )
    cfg.update(kw)
    torch.manual_seed(seed)
    model = MBartForConditionalGeneration(HFConfig(**cfg)).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    path = str(tmp_path / f"hf_mbart_{seed}")
    model.save_pretrained(path, safe_serialization=True)
    return model, path


def _inputs(rng, b, s, l, vocab):
    ids = rng.integers(3, vocab, (b, s))
    mask = np.ones((b, s), bool)
    mask[1, s - 3:] = False
    mask[-1, 2:] = False
    dec = rng.integers(3, vocab, (b, l))
    dec_mask = np.ones((b, l), bool)
    dec_mask[0, l - 2:] = False
    return ids, mask, dec, dec_mask


def _hf_forward(model, ids, mask, dec, dec_mask=None, inputs_embeds=None):
    with torch.no_grad():
        kw = dict(attention_mask=torch.tensor(mask.astype(np.int64)), decoder_input_ids=torch.tensor(dec))
        if dec_mask is not None:
            kw["decoder_attention_mask"] = torch.tensor(dec_mask.astype(np.int64))
        if inputs_embeds is not None:
            kw["inputs_embeds"] = torch.tensor(inputs_embeds)
        else:
            kw["input_ids"] = torch.tensor(ids)
        out = model(**kw, output_hidden_states=False)
        return out.logits.numpy(), out.encoder_last_hidden_state.numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, path = _hf_model(tmp_path_factory.mktemp("tiny"))
    module, variables = mbart_weights.from_hf(path, lora_rank=0)
    return model, path, module, variables


def test_tiny_logits_and_encoder_states_match_hf(tiny):
    model, _, module, variables = tiny
    ids, mask, dec, dec_mask = _inputs(np.random.default_rng(1), 3, 9, 6, 101)
    ref_logits, ref_enc = _hf_forward(model, ids, mask, dec, dec_mask)
    logits = _apply(module, variables, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec), jnp.asarray(dec_mask))
    enc = _apply(module, variables, jnp.asarray(ids), jnp.asarray(mask), method=module.encode)
    assert logits.shape == (3, 6, 101) and logits.dtype == jnp.float32
    err_l = float(np.abs(np.asarray(logits) - ref_logits)[dec_mask].max())
    err_e = float(np.abs(np.asarray(enc) - ref_enc)[mask].max())
    print(f"tiny mBART max abs error: logits {err_l:.2e}, encoder states {err_e:.2e}")
    assert err_l < TOL and err_e < TOL


def test_inputs_embeds_path_is_unscaled_like_hf(tiny):
    """HF scales only inside the token embedding: inputs_embeds get positions + layernorm_embedding."""
    model, _, module, variables = tiny
    rng = np.random.default_rng(2)
    ids, mask, dec, _ = _inputs(rng, 3, 7, 5, 101)
    embeds = rng.normal(size=(3, 7, 64)).astype(np.float32)
    ref_logits, ref_enc = _hf_forward(model, None, mask, dec, inputs_embeds=embeds)
    logits = _apply(module, variables, None, jnp.asarray(mask), jnp.asarray(dec), inputs_embeds=jnp.asarray(embeds))
    enc = _apply(module, variables, None, jnp.asarray(mask), inputs_embeds=jnp.asarray(embeds), method=module.encode)
    err_l = float(np.abs(np.asarray(logits) - ref_logits).max())
    err_e = float(np.abs(np.asarray(enc) - ref_enc)[mask].max())
    print(f"inputs_embeds max abs error: logits {err_l:.2e}, encoder states {err_e:.2e}")
    assert err_l < TOL and err_e < TOL
    # The same vectors through the token path differ by the sqrt(d) scaling (sanity of the switch).
    scaled = _apply(module, variables, None, jnp.asarray(mask), inputs_embeds=jnp.asarray(embeds) * 8.0,
                          method=module.encode)
    emb = np.asarray(variables["params"]["shared"]["embedding"])
    tok = _apply(module, variables, jnp.asarray(ids), jnp.asarray(mask), method=module.encode)
    via_embeds = _apply(module, variables, None, jnp.asarray(mask), inputs_embeds=jnp.asarray(emb[ids] * 8.0),
                              method=module.encode)
    assert float(np.abs(np.asarray(tok) - np.asarray(via_embeds)).max()) < TOL
    assert not np.allclose(np.asarray(scaled), np.asarray(enc), atol=1e-3)


def test_incremental_cached_decoding_matches_teacher_forcing(tiny):
    _, _, module, variables = tiny
    ids, mask, dec, _ = _inputs(np.random.default_rng(3), 2, 8, 7, 101)
    full = _apply(module, variables, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec))
    states = _apply(module, variables, jnp.asarray(ids), jnp.asarray(mask), method=module.encode)
    cache = module.apply(variables, states, 10, method=module.init_cache)  # max_length is static
    step = jax.jit(lambda t, c: _apply(module, variables, t, c, jnp.asarray(mask), method=module.decode))
    outs = []
    # two tokens in one call, then one at a time: the cache handles multi-token steps too
    logits, cache = step(jnp.asarray(dec[:, :2]), cache)
    outs.append(logits)
    for t in range(2, dec.shape[1]):
        logits, cache = step(jnp.asarray(dec[:, t:t + 1]), cache)
        outs.append(logits)
    inc = np.concatenate([np.asarray(o) for o in outs], axis=1)
    assert int(cache["index"]) == dec.shape[1]
    assert float(np.abs(inc - np.asarray(full)).max()) < 1e-5


def test_real_layer_shape_matches_hf(tmp_path):
    """d_model 1024, 16 heads, FFN 4096 (mbart-large layers), 1+1 layers, small vocabulary."""
    model, path = _hf_model(tmp_path, seed=3, vocab_size=64, d_model=1024, encoder_layers=1, decoder_layers=1,
                            encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                            decoder_ffn_dim=4096, max_position_embeddings=32)
    module, variables = mbart_weights.from_hf(path)  # default config: LoRA r16 with B = 0 -> same function
    assert "lora_a" in variables["params"]["encoder"]["layers_0"]["self_attn"]["q_proj"]
    ids, mask, dec, dec_mask = _inputs(np.random.default_rng(4), 2, 12, 8, 64)
    ref_logits, ref_enc = _hf_forward(model, ids, mask, dec, dec_mask)
    logits = _apply(module, variables, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec), jnp.asarray(dec_mask))
    enc = _apply(module, variables, jnp.asarray(ids), jnp.asarray(mask), method=module.encode)
    err_l = float(np.abs(np.asarray(logits) - ref_logits)[dec_mask].max())
    err_e = float(np.abs(np.asarray(enc) - ref_enc)[mask].max())
    print(f"d=1024 mBART layer max abs error: logits {err_l:.2e}, encoder states {err_e:.2e}")
    assert err_l < TOL and err_e < TOL


def test_vocab_map_slices_embeddings_and_bias(tiny, tmp_path):
    model, path, _, _ = tiny
    rng = np.random.default_rng(5)
    old_ids = [0, 1, 2, 3] + sorted(rng.choice(np.arange(6, 101), 30, replace=False).tolist()) + [5]
    # special ids and the decoder start id are remapped to their new positions
    as_file = tmp_path / "vocab_map.json"
    as_file.write_text(json.dumps({"old_ids": old_ids, "new_vocab_size": len(old_ids)}))
    for vm in (old_ids, np.asarray(old_ids), str(as_file)):
        module, variables = mbart_weights.from_hf(path, vm, lora_rank=0)
        assert module.cfg.vocab_size == len(old_ids)
        assert module.cfg.decoder_start_token_id == len(old_ids) - 1  # old id 5 sits last
        new_ids = rng.integers(0, len(old_ids), (2, 6))
        new_dec = rng.integers(0, len(old_ids), (2, 4))
        mask = np.ones((2, 6), bool)
        ref_logits, _ = _hf_forward(model, np.asarray(old_ids)[new_ids], mask, np.asarray(old_ids)[new_dec])
        logits = _apply(module, variables, jnp.asarray(new_ids), jnp.asarray(mask), jnp.asarray(new_dec))
        err = float(np.abs(np.asarray(logits) - ref_logits[..., old_ids]).max())
        assert err < TOL, err
        bias = model.final_logits_bias.detach().numpy()[0]
        np.testing.assert_array_equal(variables["buffers"]["final_logits_bias"], bias[old_ids])


def test_vocab_map_that_does_not_fit_names_the_entry(tiny):
    _, path, _, _ = tiny
    with pytest.raises(CheckpointError, match=r"\[3\] = 101"):
        mbart_weights.from_hf(path, [0, 1, 2, 101])
    with pytest.raises(CheckpointError, match="pad_token_id"):
        mbart_weights.from_hf(path, [0, 2, 3, 4])


def test_lora_matches_peft(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, path = _hf_model(tmp_path, seed=7)
    rank, alpha = 4, 8.0
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    ).eval()
    module, variables = mbart_weights.from_hf(path, lora_rank=rank, lora_alpha=alpha)
    params = jax.tree.map(np.asarray, variables["params"])
    torch.manual_seed(8)
    n = 0
    with torch.no_grad():
        for name, mod in peft_model.named_modules():
            if not hasattr(mod, "lora_A") or "default" not in getattr(mod, "lora_A", {}):
                continue
            mod.lora_B["default"].weight.normal_(0.0, 0.1)  # peft initialises B = 0: make it non-zero
            stack, layer, block, proj = re.search(r"(encoder|decoder)\.layers\.(\d+)\.(\w+)\.(\w+)$", name).groups()
            node = params[stack][f"layers_{layer}"][block][proj]
            node["lora_a"] = mod.lora_A["default"].weight.numpy().T.copy()  # [r, in] -> [in, r]
            node["lora_b"] = mod.lora_B["default"].weight.numpy().T.copy()  # [out, r] -> [r, out]
            n += 1
    assert n == 2 * 2 + 4 * 2  # q,v in enc self-attn (2 layers); dec self + cross (2 layers)
    ids, mask, dec, dec_mask = _inputs(np.random.default_rng(9), 3, 8, 5, 101)
    ref_logits, ref_enc = _hf_forward(peft_model, ids, mask, dec, dec_mask)
    variables = {"params": params, "buffers": variables["buffers"]}
    logits = _apply(module, variables, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec), jnp.asarray(dec_mask))
    err = float(np.abs(np.asarray(logits) - ref_logits)[dec_mask].max())
    print(f"LoRA vs peft max abs logits error: {err:.2e}")
    assert err < TOL
    # the adapters matter (the comparison is not vacuous)
    with peft_model.disable_adapter():
        plain, _ = _hf_forward(peft_model, ids, mask, dec, dec_mask)
    assert np.abs(plain - ref_logits).max() > 1e-2


def test_dropout_rngs_and_remat(tiny):
    model, path, module, variables = tiny
    ids, mask, dec, _ = _inputs(np.random.default_rng(10), 2, 6, 4, 101)
    args = (jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec))
    det = _apply(module, variables, *args)
    a = _apply(module, variables, *args, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    b = _apply(module, variables, *args, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3 and np.abs(np.asarray(a) - np.asarray(det)).max() > 1e-3
    # Rematerialised layers: same function, and gradients flow (static ``deterministic`` arg).
    remat_module, _ = mbart_weights.from_hf(path, lora_rank=0, remat=True)
    loss = lambda p: _apply(remat_module, {**variables, "params": p}, *args).sum()  # noqa: E731
    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    assert abs(float(value) - float(det.sum())) < 1e-3 * max(1.0, abs(float(det.sum())))
    norms = [float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and max(norms) > 0


def test_bfloat16_compute_keeps_fp32_params(tiny):
    _, path, module, variables = tiny
    bf_module, bf_vars = mbart_weights.from_hf(path, lora_rank=0, dtype="bfloat16")
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf_vars))
    ids, mask, dec, _ = _inputs(np.random.default_rng(11), 2, 6, 4, 101)
    args = (jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec))
    lo, hi = _apply(bf_module, bf_vars, *args), _apply(module, variables, *args)
    assert lo.dtype == jnp.float32
    assert float(jnp.abs(lo - hi).max()) < 0.1 * float(jnp.abs(hi).max())


def test_standalone_encoder_import(tiny):
    model, path, _, _ = tiny
    enc_module, enc_vars = mbart_weights.encoder_from_hf(path, lora_rank=0)
    assert set(enc_vars["params"]) == {"embed_tokens", "embed_positions", "layernorm_embedding", "layer_norm",
                                       "layers_0", "layers_1"}
    ids, mask, dec, _ = _inputs(np.random.default_rng(12), 3, 7, 2, 101)
    _, ref_enc = _hf_forward(model, ids, mask, dec)
    enc = _apply(enc_module, enc_vars, jnp.asarray(ids), jnp.asarray(mask))
    assert float(np.abs(np.asarray(enc) - ref_enc)[mask].max()) < TOL


def test_parameter_counts_match_spec():
    """docs/models_and_weights.md: one encoder 152,209,408 (+ embeddings 2172x1024), decoder 202,614,784, LoRA
    786,432 (encoder) and 1,572,864 (decoder); final_logits_bias is a buffer, not a parameter."""
    cfg = mbart.MBartConfig(vocab_size=2172)
    module = mbart.MBart(cfg)
    args = (jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool), jnp.zeros((1, 3), jnp.int32))
    shapes = jax.eval_shape(lambda r: module.init(r, *args), jax.random.PRNGKey(0))
    assert set(shapes) == {"params", "buffers"}
    assert shapes["buffers"]["final_logits_bias"].shape == (2172,)

    def count(tree, lora):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return sum(int(np.prod(x.shape)) for p, x in leaves
                   if any(getattr(k, "key", None) in ("lora_a", "lora_b") for k in p) == lora)

    p = shapes["params"]
    assert count(p["encoder"], False) == 152_209_408
    assert count(p["decoder"], False) == 202_614_784
    assert count(p["shared"], False) == 2172 * 1024
    assert count(p["encoder"], True) == 786_432
    assert count(p["decoder"], True) == 1_572_864
    # The pretraining video encoder only ever sees inputs_embeds; its token embedding still exists.
    enc = mbart.MBartEncoder(cfg)
    embeds = jnp.zeros((1, 4, 1024), jnp.float32)
    enc_shapes = jax.eval_shape(lambda r: enc.init(r, None, args[1], inputs_embeds=embeds), jax.random.PRNGKey(0))
    assert count(enc_shapes["params"], False) == 152_209_408 + 2172 * 1024
    assert count(enc_shapes["params"], True) == 786_432

