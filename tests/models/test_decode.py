"""Beam search (hfa_jax.models.decode) against transformers' ``generate`` with the same beam
settings, on a random reduced mBART (fp32, CPU, nothing downloaded)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import MBartConfig as HFConfig
from transformers import MBartForConditionalGeneration

from hfa_jax.models import decode, mbart
from hfa_jax.weights import mbart as mbart_weights

VOCAB, D, START, EOS, PAD = 61, 32, 5, 2, 1
N_INPUTS = 20


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    cfg = HFConfig(
        vocab_size=VOCAB, d_model=D, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=40,
        scale_embedding=False, pad_token_id=PAD, bos_token_id=0, eos_token_id=EOS, decoder_start_token_id=START,
    )
    model = MBartForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        # Input-dependent, peaked next-token distributions (large random weights, no sqrt(d) token
        # scaling so the previous token does not dominate the residual stream) so that beams diverge
        # and top-k gaps are far above float32 noise; a raised EOS bias gives hypotheses of many
        # different lengths (checked below).
        for name, p in model.named_parameters():
            if p.ndim == 2 and "shared" not in name and "positions" not in name:
                p.normal_(0.0, 0.5)
        model.model.shared.weight.normal_(0.0, 1.0)
        model.model.decoder.embed_positions.weight.normal_(0.0, 1.0)
        model.final_logits_bias.normal_(0.0, 0.5)
        model.final_logits_bias[0, EOS] += 5.0
    path = str(tmp_path_factory.mktemp("beam") / "hf")
    model.save_pretrained(path, safe_serialization=True)
    module, variables = mbart_weights.from_hf(path, lora_rank=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, (N_INPUTS, 8))
    mask = np.ones((N_INPUTS, 8), bool)
    for i in range(N_INPUTS):
        mask[i, rng.integers(2, 9):] = False
    return model, module, variables, ids, mask


def _hf_generate(model, ids, mask, embeds=None, **kw):
    with torch.no_grad():
        src = {"inputs_embeds": torch.tensor(embeds)} if embeds is not None else {"input_ids": torch.tensor(ids)}
        return model.generate(**src, attention_mask=torch.tensor(mask.astype(np.int64)), num_beams=4,
                              decoder_start_token_id=START, **kw).numpy()


@pytest.mark.parametrize(
    "settings",
    [
        dict(max_new_tokens=16, length_penalty=1.0, early_stopping=False),
        dict(max_new_tokens=12, length_penalty=0.6, early_stopping=True),
        dict(max_new_tokens=10, length_penalty=1.5, early_stopping="never", forced_bos_token_id=7, embeds=True),
        # The self-attention cache grown in segments (decode.cache_schedule) gives the same search.
        dict(max_new_tokens=16, length_penalty=1.0, early_stopping=False, cache_lengths=(3, 4, 9, 16)),
    ],
    ids=["lp1.0-es_false", "lp0.6-es_true", "lp1.5-es_never-forced_bos-embeds", "segmented-cache"],
)
def test_beam_search_matches_hf_generate(models, settings):
    model, module, variables, ids, mask = models
    settings = dict(settings)
    embeds = None
    if settings.pop("embeds", False):
        embeds = np.random.default_rng(1).normal(size=(N_INPUTS, 8, D)).astype(np.float32)
    cache_lengths = settings.pop("cache_lengths", None)
    ref = _hf_generate(model, ids, mask, embeds, **settings)
    out = decode.mbart_generate(
        module, variables, None if embeds is not None else jnp.asarray(ids), jnp.asarray(mask),
        None if embeds is None else jnp.asarray(embeds), num_beams=4, decoder_start_token_id=START,
        cache_lengths=cache_lengths, **settings,
    )
    seqs = np.asarray(out.sequences)
    assert seqs.shape == (N_INPUTS, 1 + settings["max_new_tokens"])
    # HF crops to the longest returned hypothesis; ours is static-length and pad-filled.
    assert np.all(seqs[:, ref.shape[1]:] == PAD)
    np.testing.assert_array_equal(seqs[:, :ref.shape[1]], ref)
    # Non-degenerate: hypotheses of several lengths and many distinct outputs.
    lengths = [(row != PAD).sum() for row in ref]
    assert len(set(lengths)) >= 3 and len({tuple(r) for r in ref}) >= N_INPUTS // 2
    if "forced_bos_token_id" in settings:
        assert np.all(seqs[:, 1] == settings["forced_bos_token_id"])


def test_beam_search_scores_follow_length_penalty(models):
    """The returned score equals sum of token log-probs / generated_length ** length_penalty,
    recomputed here by teacher forcing the returned sequences."""
    _, module, variables, ids, mask = models
    lp = 0.8
    out = decode.mbart_generate(module, variables, jnp.asarray(ids[:4]), jnp.asarray(mask[:4]), num_beams=4,
                                max_new_tokens=8, length_penalty=lp, decoder_start_token_id=START)
    seqs = np.asarray(out.sequences)
    logits = jax.jit(module.apply)(variables, jnp.asarray(ids[:4]), jnp.asarray(mask[:4]), jnp.asarray(seqs[:, :-1]))
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    for i in range(4):
        row = seqs[i]
        n = int(np.argmax(row[1:] == EOS)) + 1 if (row[1:] == EOS).any() else len(row) - 1
        total = sum(logp[i, t, row[t + 1]] for t in range(n - 1))
        if n == len(row) - 1 and row[n] == EOS:  # last position: forced EOS gives log-prob 0
            pass
        else:
            total += logp[i, n - 1, row[n]]
        np.testing.assert_allclose(float(out.scores[i]), total / n ** lp, rtol=1e-4, atol=1e-4)


def test_beam_search_rejects_bad_early_stopping():
    with pytest.raises(ValueError, match="early_stopping"):
        decode.beam_search(lambda t, c: (None, c), {}, batch_size=1, decoder_start_token_id=0, eos_token_id=2,
                           pad_token_id=1, early_stopping="sometimes")


@pytest.mark.parametrize("transpose", [True, False])
def test_decoding_variables_merge_adapters_same_logits(transpose):
    """The decoding steps run with merged adapters (and [out, in] kernels on CPU): same logits
    as the unmerged model, step after step through the cache."""
    cfg = mbart.MBartConfig(vocab_size=VOCAB, d_model=D, encoder_layers=1, decoder_layers=2,
                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                            decoder_ffn_dim=64, max_position_embeddings=40, lora_rank=4, lora_alpha=8.0,
                            lora_targets=("decoder.self_attn.q_proj", "decoder.self_attn.v_proj",
                                          "decoder.encoder_attn.q_proj", "decoder.encoder_attn.v_proj"))
    module = mbart.MBart(cfg)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, VOCAB, (3, 6)))
    mask = jnp.ones((3, 6), bool).at[2, 4:].set(False)
    variables = module.init(jax.random.key(0), ids, mask, ids[:, :2])
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map_with_path(  # non-zero adapters, else merging is a no-op
        lambda p, a: jnp.asarray(rng.normal(0, 3.0, a.shape), a.dtype) if "lora_b" in jax.tree_util.keystr(p) else a,
        variables)
    step_vars = decode.decoding_variables(variables, lora_scale=2.0, transpose_kernels=transpose)
    names = {jax.tree_util.keystr(p).split("'")[-2]
             for p, _ in jax.tree_util.tree_flatten_with_path(step_vars["params"]["decoder"])[0]}
    assert "lora_a" not in names and ("kernel_t" in names) == transpose and ("kernel" in names) != transpose
    init_fn, dec_fn = decode.mbart_step_fns(module, variables, lora_scale=2.0, transpose_kernels=transpose)
    states = module.apply(variables, ids, mask, method=module.encode)
    cache = init_fn(states, 5)
    ref_cache = module.apply(variables, states, 5, method=lambda m, s, n: m.init_cache(s, n))
    tokens = jnp.asarray([[START]] * 3)
    for step in range(4):
        logits, cache = dec_fn(tokens, cache, mask)
        ref, ref_cache = module.apply(variables, tokens, ref_cache, mask, method=lambda m, t, c, e: m.decode(t, c, e))
        np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4, err_msg=f"step {step}")
        tokens = jnp.argmax(logits[:, -1:], axis=-1).astype(jnp.int32)
    # mbart_step_fns reads alpha / r = 2 from the config; decoding_variables alone needs it.
    default_fn = decode.mbart_step_fns(module, variables, transpose_kernels=transpose)[1]
    np.testing.assert_array_equal(default_fn(jnp.asarray([[START]] * 3), init_fn(states, 5), mask)[0],
                                  dec_fn(jnp.asarray([[START]] * 3), init_fn(states, 5), mask)[0])
    with pytest.raises(ValueError, match="pass lora_scale"):
        decode.decoding_variables(variables)
    # A wrong scale gives different logits: the merge is really in the decoding path.
    _, bad_fn = decode.mbart_step_fns(module, variables, lora_scale=1.0, transpose_kernels=transpose)
    bad, _ = bad_fn(jnp.asarray([[START]] * 3), init_fn(states, 5), mask)
    good, _ = dec_fn(jnp.asarray([[START]] * 3), init_fn(states, 5), mask)
    assert float(jnp.abs(bad - good).max()) > 1e-2


def test_cache_schedule_and_growth():
    assert decode.cache_schedule(151) == (32, 64, 128, 150)
    assert decode.cache_schedule(31) == (30,)
    assert decode.cache_schedule(17, first=4) == (4, 8, 16)
    cache = {"index": jnp.asarray(3), "self": {"layers_0": {"k": jnp.ones((2, 4, 5, 8)), "v": jnp.ones((2, 4, 5, 8))}},
             "cross": {"layers_0": {"k": jnp.ones((2, 4, 7, 8)), "v": jnp.ones((2, 4, 7, 8))}}}
    grown = mbart.grow_cache(cache, 9)
    assert grown["self"]["layers_0"]["k"].shape == (2, 4, 9, 8) and grown["cross"] is cache["cross"]
    np.testing.assert_array_equal(grown["self"]["layers_0"]["v"][:, :, :5], 1.0)
    np.testing.assert_array_equal(grown["self"]["layers_0"]["v"][:, :, 5:], 0.0)
    with pytest.raises(ValueError, match="cannot shrink"):
        mbart.grow_cache(cache, 4)
    with pytest.raises(ValueError, match="cache_lengths must increase"):
        decode.beam_search(lambda t, c: (None, c), {}, batch_size=1, max_new_tokens=10, decoder_start_token_id=0,
                           eos_token_id=2, pad_token_id=1, cache_lengths=(4, 8))


def test_cross_cache_once_per_clip_same_logits(models, monkeypatch):
    """A cache for G clips x K beams holds the cross-attention keys/values once per clip: logits
    equal the per-row cache's (the encoder output repeated per beam) step after step, on the
    CPU's one-product-per-beam path and on the accelerators' one-product-per-clip path."""
    _, module, variables, ids, mask = models
    g, k = 3, 4
    ids, mask = jnp.asarray(ids[:g]), jnp.asarray(mask[:g])
    states = module.apply(variables, ids, mask, method=module.encode)
    init_fn, dec_fn = decode.mbart_step_fns(module, variables)
    shared = init_fn(states, 6, k)
    per_row = init_fn(jnp.repeat(states, k, axis=0), 6)
    assert shared["cross"]["layers_0"]["k"].shape[0] == g and shared["self"]["layers_0"]["k"].shape[0] == g * k
    assert per_row["cross"]["layers_0"]["k"].shape[0] == g * k
    tokens = jnp.asarray(np.random.default_rng(2).integers(3, VOCAB, (g * k, 5)), jnp.int32)
    for backend in ("cpu", "gpu"):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        a, b = shared, per_row
        for step in range(5):
            la, a = dec_fn(tokens[:, step:step + 1], a, mask)
            lb, b = dec_fn(tokens[:, step:step + 1], b, jnp.repeat(mask, k, axis=0))
            np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-5, err_msg=f"{backend} step {step}")
        assert not np.allclose(la[0], la[k])  # clips differ: each beam read its own clip's keys
    att = mbart.MBartAttention(module.cfg, 4, "decoder", "encoder_attn")
    q, kv = jnp.zeros((7, 1, 4, D // 4)), jnp.zeros((g, 4, 5, D // 4))
    att_vars = att.init(jax.random.key(0), jnp.zeros((1, 1, D)), jnp.zeros((1, 1, D)), None)
    with pytest.raises(ValueError, match="7 query rows do not split into 3 clips"):
        att.apply(att_vars, q, kv, kv, None, method=att.attend_beams)


def _tiny_translate():
    from hfa_jax.models.hfa import HFATranslate
    from tests.models.test_hfa import _cfg, _nonzero_lora

    model = HFATranslate(_cfg())
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (4, 6, 28, 28, 3), dtype=np.uint8)
    fmask = np.arange(6)[None, :] < np.asarray([6, 2, 4, 1])[:, None]
    pixels = jnp.asarray(frames, jnp.float32) / 255.0
    ids = jnp.ones((4, 3), jnp.int32)
    v = jax.jit(model.init)(jax.random.key(0), pixels, jnp.asarray(fmask), ids, ids > 0)
    v = {**v, "params": _nonzero_lora(v["params"]),
         "batch_stats": {"frame_bn": {"mean": jnp.full((32,), 0.1), "var": jnp.full((32,), 2.0)}}}
    return model, v, frames, fmask


def test_generate_with_packed_frames_equals_unpacked():
    """Beam search with the frame encoder on the packed valid frames only (frame packing, as the
    evaluation steps run it): the same tokens as over the padded frames; a wrong index changes
    the scores (the index is really used)."""
    from hfa_jax.models import packing

    model, v, frames, fmask = _tiny_translate()
    pixels = jnp.asarray(frames, jnp.float32) / 255.0
    index = packing.pack_index(fmask, 2, levels=4)
    assert index.size < fmask.size  # frames are really left out

    def run(frame_index):
        return jax.jit(lambda v, i: model.generate(v, pixels, jnp.asarray(fmask), num_beams=3, max_new_tokens=6,
                                                   frame_index=i))(v, frame_index)

    full, packed = run(None), run(jnp.asarray(index))
    np.testing.assert_array_equal(packed.sequences, full.sequences)
    np.testing.assert_allclose(packed.scores, full.scores, rtol=1e-5, atol=1e-6)
    wrong = index.copy()  # the last valid frame of group 0 left out (filler: a zero feature)
    n_valid = int(fmask.reshape(2, -1)[0].sum())
    wrong[0, n_valid - 1] = fmask.size // 2
    assert not np.allclose(run(jnp.asarray(wrong)).scores, full.scores, rtol=1e-5, atol=1e-6)


def test_evaluation_steps_pack_frames(monkeypatch):
    """The generate step passes the batch's packing index to the model, and the evaluation
    passes data.pack_frames to the host->device step (which builds the index)."""
    import types

    from hfa_jax.models import packing
    from hfa_jax.train import evaluation, schema
    from hfa_jax.train import steps as steps_lib
    from hfa_jax.train import tasks as tasks_lib

    from configs import common

    config = schema.base()
    config.model = common.model_config("tiny")
    config.data.crop_size = 28
    config.eval.num_beams, config.eval.max_new_tokens = 3, 6
    model, v, frames, fmask = _tiny_translate()
    state = {"trainable": v["params"], "frozen": {}, "batch_stats": v["batch_stats"],
             "buffers": {"buffers": v["buffers"]}}
    seen = {}

    class Recorder:
        def generate(self, variables, pixels, mask, **kw):
            seen.update(kw)
            return model.generate(variables, pixels, mask, **kw)

    batch = {"frames": jnp.asarray(frames), "frame_mask": jnp.asarray(fmask)}
    config.train.stage = "finetune2"
    task = tasks_lib.make(schema.resolve(config))
    plain = steps_lib.generate_step(state, batch, model=Recorder(), task=task)
    assert seen["frame_index"] is None
    index = jnp.asarray(packing.pack_index(fmask, 1, levels=4))
    packed = steps_lib.generate_step(state, {**batch, "frame_index": index}, model=Recorder(), task=task)
    assert seen["frame_index"] is index
    np.testing.assert_array_equal(packed, plain)

    calls = []
    monkeypatch.setattr(steps_lib, "to_device", lambda b, mesh, keys, pack_levels=0: calls.append(pack_levels) or b)
    monkeypatch.setattr(evaluation, "eval_loader", lambda *a, **k: [{"index": np.asarray([0]), "frames": 0,
                                                                   "frame_mask": 0}])
    data = types.SimpleNamespace(sources={"dev": [0]}, fields={"dev": None}, names={"dev": ["a"]},
                                 texts={"dev": ["ref"]},
                                 tokenizer=types.SimpleNamespace(decode=lambda ids: ["hyp"]))
    for levels in (0, 5):
        config.data.pack_frames = levels
        tr = types.SimpleNamespace(config=config, settings=schema.resolve(config), data=data, mesh=None,
                                   task=task)
        assert evaluation.translate_split(tr, None, "dev", lambda s, b: np.zeros((1, 2))) == (["a"], ["hyp"], ["ref"])
        evaluation.evaluate_loss(tr, None, "dev", lambda s, b: ({"loss": 1.0}, {}))
    assert calls == [0, 0, 5, 5]
