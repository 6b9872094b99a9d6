"""What a kind of training is: its model, inputs, batch fields, objective and best metric (seqio's
``Task`` habit: the training code asks the task and never branches on the stage's name).

Two tasks cover the three stages (:data:`TASK_OF_STAGE`):

* :class:`Pretraining` (stage ``pretrain``): ``HFAPretrain`` on the frames and the sentence (for
  the frozen text encoder, or that encoder's sentence vector, computed once per sentence:
  :attr:`Pretraining.caches_text_vectors`); objective ``L_align + pg_weight L_pg`` plus the
  BeyondGloss terms that are on; the kept checkpoint has the lowest validation loss.
* :class:`Translation` (stages ``finetune1``, ``finetune2``): ``HFATranslate`` on the frames and
  the decoder inputs; objective the label-smoothed cross-entropy; evaluated by beam search, the
  kept checkpoint has the best dev BLEU-4.

The objective is an ordered list of weighted loss terms (:class:`~hfa_jax.train.microbatch.ExampleTerm`
for means over examples, tokens or frames; :class:`~hfa_jax.train.microbatch.BatchTerm` for the
contrastive terms over the whole batch). :func:`hfa_jax.train.microbatch.value_and_grad` evaluates
it on one batch or on K micro-batches, and :func:`hfa_jax.train.microbatch.full_batch_loss` in
evaluation: a new loss term is one entry in :meth:`Task.objective`, with its weight.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hfa_jax.data import beyondgloss_io
from hfa_jax.hand_pose import HAND_POSE_DIM
from hfa_jax.models import hfa
from hfa_jax.models.mbart import MBartEncoder
from hfa_jax.train import beyondgloss_losses as bg_losses
from hfa_jax.train import freeze
from hfa_jax.train import losses as losses_lib
from hfa_jax.train.microbatch import BatchTerm, ExampleTerm, LossTerms

if TYPE_CHECKING:  # a type only: settings (and the schema it reads) import this module's table
    from hfa_jax.train.settings import Settings

__all__ = ["Task", "Pretraining", "Translation", "TASK_OF_STAGE", "make", "of_stage"]

Batch = Mapping[str, jax.Array]


def _sds(shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))


def _valid_examples(batch: Batch) -> jax.Array:
    """Rows the losses count: ``example_mask`` (filler rows of an evaluation batch) or all."""
    mask = batch.get("example_mask")
    if mask is None:
        return jnp.float32(batch["frame_mask"].shape[0])
    return jnp.sum(mask.astype(jnp.float32))


def _valid_frames(batch: Batch) -> jax.Array:
    """Valid frames of valid rows, times the hand-pose width: what the hand-pose MSE divides by."""
    m = batch["frame_mask"].astype(jnp.float32)
    if batch.get("example_mask") is not None:
        m = m * batch["example_mask"].astype(jnp.float32)[:, None]
    return jnp.sum(m) * batch["hand_pose"].shape[-1]


@dataclasses.dataclass(frozen=True)
class Task:
    """A kind of training, bound to the run's settings. Subclasses fill the class attributes and
    the methods; the trainer, the steps, the evaluation and :mod:`hfa_jax.aot` only call them."""

    settings: Settings

    name: ClassVar[str]
    model_kind: ClassVar[str]            # hfa_jax.models.hfa.build_model's kind
    text_inputs: ClassVar[tuple[str, str]]  # batch fields after (pixels, frame_mask) in the model's inputs
    best_metric: ClassVar[str]           # the evaluation value that selects the kept checkpoint ...
    best_mode: ClassVar[str]             # ... lowest ("min") or highest ("max")
    generates: ClassVar[bool]            # evaluated by beam search (else by its loss parts)
    uses_pseudo_glosses: ClassVar[bool]  # reads data.pseudo_glosses (targets) and data.prototypes
    eval_outputs: ClassVar[tuple[str, ...]] = ()  # model outputs the eval step returns (plots)
    # Where an imported mBART goes: encoder-only copies under these prefixes, or (False) the
    # whole model under them, buffers included.
    mbart_targets: ClassVar[tuple[str, ...]]
    mbart_encoder_only: ClassVar[bool]

    # ---- the model's inputs --------------------------------------------------------------------

    def model_inputs(self, batch: Batch, pixels: jax.Array) -> tuple[jax.Array, ...]:
        """The model's positional inputs: pixels, frame mask and the task's text side."""
        return (pixels, batch["frame_mask"], *(batch[k] for k in self.text_inputs))

    def model_kwargs(self, batch: Batch) -> dict[str, jax.Array]:
        """Optional keyword inputs the batch carries (none by default)."""
        return {}

    # ---- the objective -------------------------------------------------------------------------

    def objective(self) -> LossTerms:
        """The loss as an ordered list of weighted terms (their sum, in this order, is the loss)."""
        raise NotImplementedError

    # ---- the data ------------------------------------------------------------------------------

    @property
    def row_feature(self) -> str | None:
        """A per-row dataset feature the task reads besides name and text (None: none)."""
        return None

    @property
    def caches_text_vectors(self) -> bool:
        """Whether the batches carry the frozen text encoder's sentence vectors (``text_vec``),
        computed once per sentence from the initial weights (:mod:`hfa_jax.train.text_vectors`)."""
        return False

    def example_fields(self, texts: Sequence[str], keys: Sequence[str], extra: Sequence[Any], *, tokenizer,
                       pseudo_glosses, where: str) -> dict[str, np.ndarray]:
        """Per-example arrays ``{field: [N, ...]}`` of a split's rows (``keys``: ``split/name``;
        ``extra``: the rows' :attr:`row_feature`)."""
        raise NotImplementedError

    def example_fn(self, lookup):
        """The loaders' ``example_fn``: ``lookup`` (the per-row fields), plus per-frame fields."""
        return lookup

    def label_shapes(self, batch_size: int, num_pseudo_glosses: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The batch fields besides frames and masks, as shapes (what the loaders yield)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Pretraining(Task):
    """Pseudo-gloss + video-text alignment pretraining (docs/training.md), with the BeyondGloss
    description and hand-pose objectives when ``model.beyondgloss`` switches them on."""

    name = "pretraining"
    model_kind, text_inputs = "pretrain", ("text_ids", "text_mask")  # the sentence, for the text encoder
    best_metric, best_mode = "val_loss", "min"
    generates, uses_pseudo_glosses = False, True
    eval_outputs = ("pg_sim", "temporal_mask")  # the pseudo-gloss alignment plot
    # mBART's encoder initialises both the video encoder and the frozen text encoder.
    mbart_targets, mbart_encoder_only = ("video_encoder/", "text_encoder/"), True

    def model_kwargs(self, batch: Batch) -> dict[str, jax.Array]:
        return {k: batch[k] for k in ("desc_ids", "desc_mask", "desc_vec", "text_vec") if k in batch}

    @functools.cached_property
    def caches_text_vectors(self) -> bool:
        """With the text encoder on, without its dropout (``model.text_encoder_dropout``: a new
        vector every step) and frozen by ``train.trainable`` (a trained encoder, or one that
        weight decay moves, changes its vectors), unless ``train.cache_text_vectors=False``: the
        sentence vector then depends on the sentence alone."""
        s = self.settings
        cfg = hfa.HFAConfig.from_config(s.model)
        if not (s.train.cache_text_vectors and s.beyondgloss.text_encoder) or cfg.text_encoder_dropout:
            return False
        ids = jnp.zeros((1, 1), jnp.int32)
        shapes = jax.eval_shape(lambda r: MBartEncoder(cfg.text_encoder_cfg).init(r, ids, ids > 0),
                                jax.random.PRNGKey(0))
        mask = freeze.trainable_mask({"text_encoder": nn.meta.unbox(shapes["params"])}, s.train.trainable)
        return not any(jax.tree.leaves(mask))

    def text_vector_dim(self) -> int:
        """The width of the sentence vectors (the text encoder's ``d_model``)."""
        return hfa.HFAConfig.from_config(self.settings.model).text_encoder_cfg.d_model

    def objective(self) -> LossTerms:
        """``align_loss`` (batch term, weight 1), ``pg_loss`` (example term, ``train.pg_weight``,
        mean over the valid examples' ``V+1`` classes), ``desc_loss`` (batch term,
        ``train.lambda_desc``) and ``hand_loss`` (example term, ``train.lambda_hand``, mean over the
        valid frames' 288 values) when BeyondGloss turns them on. The contrastive terms read the
        rows ``video_vec/text_vec`` and ``video_desc_vec/desc_vec`` and the shared ``logit_scale``."""
        t, bg = self.settings.train, self.settings.beyondgloss
        terms: list[ExampleTerm | BatchTerm] = [
            BatchTerm("align_loss", 1.0,
                      lambda e, b: losses_lib.alignment_loss(e["video_vec"], e["text_vec"], e["logit_scale"],
                                                             example_mask=b.get("example_mask")),
                      rows=("video_vec", "text_vec"), shared=("logit_scale",)),
            ExampleTerm("pg_loss", t.pg_weight,
                        lambda out, b: losses_lib.pseudo_gloss_loss(out["pg_scores"], b["pg_targets"], mode=t.pg_loss,
                                                                    example_mask=b.get("example_mask")),
                        lambda b: _valid_examples(b) * b["pg_targets"].shape[1]),
        ]
        if bg.description:
            terms.append(BatchTerm(
                "desc_loss", t.lambda_desc,
                lambda e, b: bg_losses.description_loss(e["video_desc_vec"], e["desc_vec"], e["logit_scale"],
                                                        example_mask=b.get("example_mask")),
                rows=("video_desc_vec", "desc_vec"), shared=("logit_scale",)))
        if bg.hand_pose:
            def hand(out, b):
                pred = out["hand_pred"]
                return bg_losses.hand_pose_loss(pred, b["hand_pose"][:, :pred.shape[1]], b["frame_mask"],
                                                example_mask=b.get("example_mask"))
            terms.append(ExampleTerm("hand_loss", t.lambda_hand, hand, _valid_frames))
        return LossTerms(tuple(terms))

    @property
    def row_feature(self) -> str | None:
        bg = self.settings.beyondgloss
        if not bg.description:
            return None
        return "description_vec" if bg.description_vectors else "description"

    def example_fields(self, texts, keys, extra, *, tokenizer, pseudo_glosses, where):
        """The sentence as the frozen text encoder's source, the multi-hot pseudo-gloss targets,
        and the BeyondGloss descriptions (tokens or precomputed vectors) when on."""
        s = self.settings
        ids, amask = tokenizer.encode_source(texts, s.data.max_text_len)
        pseudo_glosses.check_keys(keys, where=where)
        fields = {"text_ids": ids.astype(np.int32), "text_mask": amask,
                  "pg_targets": pseudo_glosses.multi_hot(keys).astype(np.float32)}
        if self.row_feature is not None:
            bg = s.beyondgloss
            fields.update(beyondgloss_io.description_fields(
                list(extra), tokenizer=tokenizer, max_len=s.data.max_description_len,
                vectors=bg.description_vectors, dim=bg.desc_dim or None, where=where))
        return fields

    def example_fn(self, lookup):
        """With the hand-pose objective, also the per-frame hand-pose targets at the largest bucket."""
        if not self.settings.beyondgloss.hand_pose:
            return lookup
        length = max(self.settings.data.buckets)
        return beyondgloss_io.CombinedExampleFn((lookup, beyondgloss_io.HandPoseField(length=length)))

    def label_shapes(self, batch_size, num_pseudo_glosses):
        b, L, s = batch_size, self.settings.data.max_text_len, self.settings
        out = {"text_ids": _sds((b, L), jnp.int32), "text_mask": _sds((b, L), bool),
               "pg_targets": _sds((b, num_pseudo_glosses + 1), jnp.float32)}  # column 0: the blank
        if self.caches_text_vectors:  # the frozen text encoder's vectors, once per sentence
            out["text_vec"] = _sds((b, self.text_vector_dim()), jnp.float32)
        bg = s.beyondgloss
        if bg.description and bg.description_vectors:
            out["desc_vec"] = _sds((b, bg.desc_dim), jnp.float32)
        elif bg.description:
            n = s.data.max_description_len
            out.update(desc_ids=_sds((b, n), jnp.int32), desc_mask=_sds((b, n), bool))
        if bg.hand_pose:
            out["hand_pose"] = _sds((b, max(s.data.buckets), HAND_POSE_DIM), jnp.float32)
        return out


@dataclasses.dataclass(frozen=True)
class Translation(Task):
    """Sign-to-text fine-tuning (stages 1 and 2): teacher-forced decoding, beam search in evaluation."""

    name = "translation"
    model_kind, text_inputs = "translate", ("decoder_input_ids", "target_mask")  # teacher forcing
    best_metric, best_mode = "bleu4", "max"
    generates, uses_pseudo_glosses = True, False
    mbart_targets, mbart_encoder_only = ("mbart/",), False  # the whole model, buffers included

    def objective(self) -> LossTerms:
        """``loss``: the label-smoothed cross-entropy, a mean over the batch's target tokens."""
        smoothing = self.settings.train.label_smoothing
        return LossTerms((ExampleTerm(
            "loss", 1.0,
            lambda out, b: losses_lib.translation_loss(out, b["labels"], b["target_mask"], label_smoothing=smoothing),
            lambda b: jnp.sum(b["target_mask"].astype(jnp.float32))),))

    def example_fields(self, texts, keys, extra, *, tokenizer, pseudo_glosses, where):
        """Decoder inputs, labels and target mask of the sentences."""
        enc = tokenizer.encode_targets(texts, self.settings.data.max_text_len)
        return {k: np.asarray(v) for k, v in enc.items()}

    def label_shapes(self, batch_size, num_pseudo_glosses):
        b, L = batch_size, self.settings.data.max_text_len
        return {"labels": _sds((b, L), jnp.int32), "decoder_input_ids": _sds((b, L), jnp.int32),
                "target_mask": _sds((b, L), bool)}


# The training stages (hfa_jax.train.freeze.STAGES) and the task each trains.
TASK_OF_STAGE: dict[str, type[Task]] = {"pretrain": Pretraining, "finetune1": Translation, "finetune2": Translation}


def of_stage(stage: str) -> type[Task]:
    """The task class of a training stage (``config.train.stage``)."""
    return TASK_OF_STAGE[stage]


def make(settings: Settings) -> Task:
    """The task of the run's stage, bound to its settings."""
    return of_stage(settings.train.stage)(settings)
