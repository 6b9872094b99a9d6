"""Beam search as one pure, jit-compiled function over an explicit decoding cache.

Semantics are those of transformers' ``generate(num_beams=K)`` (the vectorised beam search of
``GenerationMixin._beam_search``, transformers >= 4.50, which reproduces the older
``BeamSearchScorer``):

- each step keeps the top ``2K`` continuations over all ``K x V`` candidates (accumulated log-probs);
  those ending in EOS (or reaching ``max_length``) are *finished*; the best ``K`` unfinished ones
  keep running;
- a finished hypothesis (only from the top ``K`` of the ``2K``) scores
  ``sum_logprobs / (generated_length ** length_penalty)`` where ``generated_length`` counts the
  tokens after the decoder prompt, EOS included; the ``K`` best finished hypotheses are kept;
- ``early_stopping``: ``True`` stops a batch item as soon as K hypotheses are finished; ``False``
  stops when the best running beam, scored at the current length, cannot beat the worst
  finished one; ``"never"`` uses the best reachable length (``max_length`` when
  ``length_penalty > 0``) for that bound;
- ``forced_bos_token_id`` forces the first generated token, ``forced_eos_token_id`` the last
  (position ``max_length - 1``), as HF's ``ForcedBOS/EOSTokenLogitsProcessor`` (mBART's config
  sets ``forced_eos_token_id = 2``).

Shapes are static: ``max_length = 1 + max_new_tokens`` (the decoder prompt is the single start
token), and the loop is a ``lax.while_loop`` that stops when every batch item is done. For
speed (measured in bench/RESULTS.md), :func:`generate` grows the self-attention cache in
segments (:func:`cache_schedule`: one loop per segment) and runs the decoding steps with
:func:`decoding_variables` (adapters merged; kernels ``[out, in]`` on CPU).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Literal, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from hfa_jax.models import lora as lora_lib
from hfa_jax.models import mbart as mbart_lib

Array = jax.Array
EarlyStopping = bool | Literal["never"]

__all__ = ["BeamSearchOutput", "beam_search", "cache_schedule", "generate", "decoding_variables",
           "mbart_step_fns", "mbart_generate"]

_NEG = -1.0e9  # HF's "very large negative" for masked beams (not -inf: keeps arithmetic finite)


@flax.struct.dataclass
class BeamSearchOutput:
    """sequences: [B, max_length] int32 (start token first, padded with the pad id after EOS);
    scores: [B] float32 length-penalised score of the returned hypothesis."""

    sequences: Array
    scores: Array


def beam_search(
    step_fn: Callable[[Array, Any], tuple[Array, Any]],
    cache: Any,
    *,
    batch_size: int,
    num_beams: int = 4,
    max_new_tokens: int = 150,
    decoder_start_token_id: int,
    eos_token_id: int,
    pad_token_id: int | None,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    forced_bos_token_id: int | None = None,
    forced_eos_token_id: int | None = None,
    reorder_cache: Callable[[Any, Array], Any] | None = None,
    cache_lengths: Sequence[int] | None = None,
    grow_cache: Callable[[Any, int], Any] | None = None,
) -> BeamSearchOutput:
    """Run beam search (pure; call under ``jax.jit`` with the keyword arguments static).

    Args:
      step_fn: ``(tokens [N, 1] int32, cache) -> (logits [N, V] float, cache)`` with
        ``N = batch_size * num_beams`` (rows ordered batch-major: row ``b * K + k``); it must
        advance the cache by one position.
      cache: the initial cache for N rows (e.g. :meth:`hfa_jax.models.mbart.MBart.init_cache`
        with ``max_length >= max_new_tokens``, or ``cache_lengths[0]`` when those are given).
      reorder_cache: ``(cache, rows [N]) -> cache`` gathering cache rows after beam reordering;
        default :func:`hfa_jax.models.mbart.reorder_cache`.
      cache_lengths: increasing decoder-position capacities of the cache, the last
        ``>= max_length - 1``; the search runs one loop per length and calls ``grow_cache`` in
        between (see :func:`cache_schedule`). None: ``cache`` is used as given for all steps.
      grow_cache: ``(cache, length) -> cache`` with room for ``length`` positions; default
        :func:`hfa_jax.models.mbart.grow_cache`.
      Other arguments: as transformers' ``generate``.

    Returns:
      :class:`BeamSearchOutput` with the best hypothesis per batch item.
    """
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if reorder_cache is None:
        reorder_cache = mbart_lib.reorder_cache
    if grow_cache is None:
        grow_cache = mbart_lib.grow_cache
    b, k = batch_size, num_beams
    keep = 2 * k  # max(2, 1 + n_eos) * K with a single EOS id
    prompt_len = 1
    max_length = prompt_len + max_new_tokens
    # HF: output_fill_value = pad_token_id or eos_token_id (a pad id of 0 is falsy there too).
    fill = pad_token_id if pad_token_id else eos_token_id
    # Length penalties from Python floats (HF divides float32 scores by a Python float).
    pen = np.ones((max_length + 1,), np.float32)
    for n in range(1, max_length + 1):
        pen[n] = np.float32(float(n) ** length_penalty)
    pen = jnp.asarray(pen)
    top_k_mask = jnp.arange(keep) < k  # only the top K of the 2K may be finalised

    seqs0 = jnp.full((b, k, max_length), fill, jnp.int32).at[:, :, 0].set(decoder_start_token_id)
    state = dict(
        cur_len=jnp.asarray(prompt_len, jnp.int32),
        running_seqs=seqs0,
        running_scores=jnp.full((b, k), _NEG, jnp.float32).at[:, 0].set(0.0),
        seqs=seqs0,
        scores=jnp.full((b, k), _NEG, jnp.float32),
        finished=jnp.zeros((b, k), bool),
        unsatisfied=jnp.ones((b, 1), bool),  # HF is_early_stop_heuristic_unsatisfied
        go_on=jnp.asarray(True),
        cache=cache,
    )

    def gather(x, idx):  # x: [B, M, ...], idx: [B, J] -> [B, J, ...]
        return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

    def body(st):
        cur_len = st["cur_len"]
        tokens = jax.lax.dynamic_index_in_dim(st["running_seqs"], cur_len - 1, axis=2, keepdims=False)
        logits, cache = step_fn(tokens.reshape(b * k, 1), st["cache"])
        logits = logits.reshape(b * k, -1).astype(jnp.float32)
        vocab = logits.shape[-1]
        logp = jax.nn.log_softmax(logits, axis=-1)
        if forced_bos_token_id is not None:
            forced = jnp.full_like(logp, -jnp.inf).at[:, forced_bos_token_id].set(0.0)
            logp = jnp.where(cur_len == 1, forced, logp)
        if forced_eos_token_id is not None:
            forced = jnp.full_like(logp, -jnp.inf).at[:, forced_eos_token_id].set(0.0)
            logp = jnp.where(cur_len == max_length - 1, forced, logp)
        logp = logp.reshape(b, k, vocab) + st["running_scores"][:, :, None]
        logp = logp.reshape(b, k * vocab)

        # c. top-2K continuations over all beams
        topk_logp, topk_idx = jax.lax.top_k(logp, keep)
        topk_beam = topk_idx // vocab
        topk_tok = (topk_idx % vocab).astype(jnp.int32)
        topk_seqs = gather(st["running_seqs"], topk_beam)
        topk_seqs = jax.lax.dynamic_update_index_in_dim(topk_seqs, topk_tok, cur_len, axis=2)

        # d. which of them are finished (EOS, or the max length reached)
        hits = (topk_tok == eos_token_id) | (cur_len + 1 >= max_length)

        # e. best K unfinished continue
        run_logp = topk_logp + hits.astype(jnp.float32) * _NEG
        _, next_idx = jax.lax.top_k(run_logp, k)
        running_seqs = gather(topk_seqs, next_idx)
        running_scores = gather(run_logp, next_idx)
        src_beam = gather(topk_beam, next_idx)  # [B, K] beam each new running beam came from

        # f. update finished hypotheses
        just_done = hits & top_k_mask[None, :]
        fin = topk_logp / pen[cur_len + 1 - prompt_len]
        if early_stopping is True:
            full = jnp.all(st["finished"], axis=-1, keepdims=True)
            fin = fin + full.astype(jnp.float32) * _NEG
        fin = fin + (~st["unsatisfied"]).astype(jnp.float32) * _NEG
        fin = fin + (~just_done).astype(jnp.float32) * _NEG
        m_seqs = jnp.concatenate([st["seqs"], topk_seqs], axis=1)
        m_scores = jnp.concatenate([st["scores"], fin], axis=1)
        m_fin = jnp.concatenate([st["finished"], just_done], axis=1)
        _, best = jax.lax.top_k(m_scores, k)
        seqs, scores, finished = gather(m_seqs, best), gather(m_scores, best), gather(m_fin, best)

        # g. reorder the cache, advance, and test the stopping conditions
        rows = (jnp.arange(b)[:, None] * k + src_beam).reshape(-1)
        cache = reorder_cache(cache, rows)
        cur_len = cur_len + 1
        if early_stopping == "never" and length_penalty > 0.0:
            best_len_pen = pen[max_length - prompt_len]
        else:
            best_len_pen = pen[cur_len - prompt_len]
        best_running = running_scores[:, :1] / best_len_pen
        worst_fin = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), _NEG)
        unsatisfied = st["unsatisfied"] & jnp.any(best_running > worst_fin, axis=-1, keepdims=True)
        go_on = jnp.any(unsatisfied) & ~jnp.all(hits)
        if early_stopping is True:
            go_on = go_on & ~jnp.all(finished)
        return dict(
            cur_len=cur_len, running_seqs=running_seqs, running_scores=running_scores, seqs=seqs,
            scores=scores, finished=finished, unsatisfied=unsatisfied, go_on=go_on, cache=cache,
        )

    if cache_lengths is None:
        final = jax.lax.while_loop(lambda st: st["go_on"], body, state)
    else:
        lengths = tuple(int(n) for n in cache_lengths)
        if not lengths or list(lengths) != sorted(set(lengths)) or lengths[-1] < max_length - 1:
            raise ValueError(f"cache_lengths must increase and end at >= max_length - 1 = {max_length - 1}, "
                             f"got {lengths}")
        final = state
        for i, length in enumerate(lengths):
            if i > 0:
                final = {**final, "cache": grow_cache(final["cache"], length)}
            # A step at cur_len writes cache position cur_len - 1: this loop runs while that fits.
            final = jax.lax.while_loop(lambda st, n=length: st["go_on"] & (st["cur_len"] <= n), body, final)
    return BeamSearchOutput(sequences=final["seqs"][:, 0], scores=final["scores"][:, 0])


def cache_schedule(max_length: int, first: int = 32) -> tuple[int, ...]:
    """Cache capacities for a search of at most ``max_length`` tokens: ``first``, doubling, then
    ``max_length - 1`` (the positions ever written).

    Why segments: a decoding step's cache work (beam reordering, self-attention) is proportional
    to the cache's static length, not to the tokens decoded so far. One cache of the maximum
    length makes every step of a 20-token sentence pay for 150 positions; with this schedule a
    step pays for at most twice what it uses, at the price of one more compiled loop body per
    segment (4 for ``max_length`` 151). transformers grows its cache by concatenation every step.
    """
    last = max(int(max_length) - 1, 1)
    out, n = [], int(first)
    while n < last:
        out.append(n)
        n *= 2
    return tuple(out) + (last,)


def decoding_variables(
    variables: Any,
    *,
    mbart_path: tuple[str, ...] = (),
    lora_scale: float | None = None,
    transpose_kernels: bool | None = None,
) -> Any:
    """The variables the cached decoding steps run with: the mBART decoder's LoRA adapters merged
    into its kernels and, on CPU, the kernels stored transposed.

    Why: a decoding step multiplies only ``batch x beams`` rows by every decoder weight, so its
    time is the weight matrices' and every extra matrix counts. Merged adapters (computed once
    per call, :func:`hfa_jax.models.lora.merge_lora`) remove the two rank-r products per LoRA
    projection and step; with ``[out, in]`` kernels (:func:`hfa_jax.models.lora.decoding_layout`)
    XLA:CPU's beam search over a d=1024 decoder ran 1.26x faster (bench/RESULTS.md). On GPU/TPU
    both operand orders run at the same speed, so ``transpose_kernels=None`` (auto) transposes
    on CPU only. Values are unchanged up
    to float32 rounding of the merge.

    Args:
      variables: the model's variables; ``variables["params"][mbart_path...]`` is the MBart
        params tree (``()`` for a standalone :class:`~hfa_jax.models.mbart.MBart`).
      lora_scale: the mBART adapters' ``alpha / r`` (required when the decoder has adapters).
      transpose_kernels: True / False, or None for "on CPU".
    """
    if transpose_kernels is None:
        transpose_kernels = jax.default_backend() == "cpu"
    params = variables["params"]
    node = params
    for key in mbart_path:
        node = node[key]
    decoder = node["decoder"]
    paths = jax.tree_util.tree_flatten_with_path(decoder)[0]
    if any(getattr(path[-1], "key", None) == "lora_a" for path, _ in paths):
        if lora_scale is None:
            raise ValueError("decoding_variables: the mBART decoder has LoRA adapters; pass "
                             "lora_scale = alpha / r (mbart_step_fns reads it from the model config)")
        decoder = lora_lib.merge_lora(decoder, lora_scale)
    if transpose_kernels:
        decoder = lora_lib.decoding_layout(decoder)

    def replace(tree: Any, path: tuple[str, ...]) -> Any:
        tree = dict(tree)
        if not path:
            tree["decoder"] = decoder
        else:
            tree[path[0]] = replace(tree[path[0]], path[1:])
        return tree

    return {**variables, "params": replace(params, tuple(mbart_path))}


def mbart_step_fns(
    module,
    variables,
    method_owner: Callable | None = None,
    *,
    mbart_path: tuple[str, ...] = (),
    lora_scale: float | None = None,
    transpose_kernels: bool | None = None,
):
    """``(init_cache_fn, decode_fn)`` for an :class:`~hfa_jax.models.mbart.MBart` held directly
    (``method_owner=None``) or as a submodule: ``method_owner(m)`` returns the MBart inside the
    bound module ``m`` (e.g. ``lambda m: m.mbart`` for the translation model) and ``mbart_path``
    its params (``("mbart",)``).

    init_cache_fn(encoder_states [G, S, D], max_length, beams=1) -> cache for ``N = G * beams``
    decoder rows (cross-attention keys/values once per clip);
    decode_fn(tokens [N, L], cache, encoder_mask [G, S]) -> (logits [N, L, V], cache).
    ``decode_fn`` runs with :func:`decoding_variables` (adapters merged, kernels transposed on
    CPU; ``lora_scale`` = the adapters' ``alpha / r``, by default from the MBart's config), built
    once here.
    """
    owner = method_owner or (lambda m: m)
    if lora_scale is None:
        mcfg = owner(module.bind(variables)).cfg
        lora_scale = lora_lib.lora_scale(mcfg.lora_rank, mcfg.lora_alpha)
    step_variables = decoding_variables(
        variables, mbart_path=mbart_path, lora_scale=lora_scale, transpose_kernels=transpose_kernels
    )

    def init_cache_fn(states, max_length, beams=1):
        return module.apply(variables, states, max_length, method=lambda m, s, n: owner(m).init_cache(s, n, beams))

    def decode_fn(tokens, cache, mask):
        return module.apply(step_variables, tokens, cache, mask, method=lambda m, t, c, e: owner(m).decode(t, c, e))

    return init_cache_fn, decode_fn


def generate(
    init_cache_fn: Callable[[Array, int, int], Any],
    decode_fn: Callable[[Array, Any, Array], tuple[Array, Any]],
    encoder_states: Array,
    encoder_mask: Array,
    *,
    num_beams: int = 4,
    max_new_tokens: int = 150,
    decoder_start_token_id: int,
    eos_token_id: int,
    pad_token_id: int | None,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    forced_bos_token_id: int | None = None,
    forced_eos_token_id: int | None = None,
    cache_lengths: Sequence[int] | None = None,
) -> BeamSearchOutput:
    """Beam-search translation from encoder states (pure; jit with the keywords static).

    encoder_states: [B, S, D], encoder_mask: [B, S] bool. ``init_cache_fn``/``decode_fn``: see
    :func:`mbart_step_fns`. The decoder runs ``num_beams`` rows per batch item (batch-major, as
    HF's ``_expand_inputs_for_generation``); the encoder side stays one row per item: the
    cross-attention keys/values are computed and kept once per clip, where HF repeats the
    encoder output per beam (same values, a quarter of the projections and cache at 4 beams).
    ``cache_lengths``: the self-attention cache grows through these capacities (default
    :func:`cache_schedule`; ``(max_new_tokens,)`` for one static cache).
    """
    b = encoder_states.shape[0]
    mask = encoder_mask.astype(bool)
    lengths = cache_schedule(1 + max_new_tokens) if cache_lengths is None else tuple(cache_lengths)
    cache = init_cache_fn(encoder_states, lengths[0], num_beams)

    def step(tokens, c):
        logits, c = decode_fn(tokens, c, mask)
        return logits[:, -1], c

    return beam_search(
        step, cache, batch_size=b, num_beams=num_beams, max_new_tokens=max_new_tokens,
        decoder_start_token_id=decoder_start_token_id, eos_token_id=eos_token_id,
        pad_token_id=pad_token_id, length_penalty=length_penalty, early_stopping=early_stopping,
        forced_bos_token_id=forced_bos_token_id, forced_eos_token_id=forced_eos_token_id,
        cache_lengths=lengths,
    )


@functools.partial(
    jax.jit,
    static_argnames=("module", "num_beams", "max_new_tokens", "length_penalty", "early_stopping",
                     "decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id", "cache_lengths"),
)
def mbart_generate(
    module,
    variables: Any,
    input_ids: Array | None,
    attention_mask: Array,
    inputs_embeds: Array | None = None,
    *,
    num_beams: int = 4,
    max_new_tokens: int = 150,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    decoder_start_token_id: int | None = None,
    forced_bos_token_id: int | None = None,
    forced_eos_token_id: int | None = -1,
    cache_lengths: tuple[int, ...] | None = None,
) -> BeamSearchOutput:
    """Encode and beam-search with a standalone :class:`~hfa_jax.models.mbart.MBart` (jitted).

    input_ids: [B, S] (or inputs_embeds [B, S, D]), attention_mask: [B, S] bool.
    Special ids default to the module config (``forced_eos_token_id=-1`` means "the config's";
    pass None to disable); ``cache_lengths``: see :func:`generate`. Returns :class:`BeamSearchOutput`.
    """
    cfg = module.cfg
    start = cfg.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id
    if start is None:
        raise ValueError("mbart_generate: decoder_start_token_id is not set (e.g. the de_DE id)")
    feos = cfg.forced_eos_token_id if forced_eos_token_id == -1 else forced_eos_token_id
    fbos = cfg.forced_bos_token_id if forced_bos_token_id is None else forced_bos_token_id
    states = module.apply(variables, input_ids, attention_mask, inputs_embeds=inputs_embeds, method=module.encode)
    init_fn, dec_fn = mbart_step_fns(module, variables)
    return generate(
        init_fn, dec_fn, states, attention_mask, num_beams=num_beams, max_new_tokens=max_new_tokens,
        decoder_start_token_id=start, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
        length_penalty=length_penalty, early_stopping=early_stopping,
        forced_bos_token_id=fbos, forced_eos_token_id=feos, cache_lengths=cache_lengths,
    )

