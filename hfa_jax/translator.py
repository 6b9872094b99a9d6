"""A trained translation model as a Python object: videos in, sentences (and their evidence) out.

    from hfa_jax import Translator
    t = Translator.from_pretrained("my_model")      # an exported folder or a fine-tuning workdir
    t(["clip.mp4", "frames_folder/"])               # -> ["...", "..."]

Inputs are read with :mod:`hfa_jax.data.video` (the model's preprocessing), grouped by frame
bucket and translated in batches with the workdir's beam search settings (``config.eval``). One
program is compiled per (batch size, bucket) shape and kept for later calls; batch sizes are
rounded up to a power of two (rows repeated), so few shapes ever compile. With frame packing
(``config.data.pack_frames`` > 0, as in training) the frame encoder runs on the valid frames
only, and a program is compiled per packed capacity level met as well.

:meth:`Translator.explain` adds the evidence: the decoder's cross-attention over the video for
each output word (a teacher-forced pass over the generated tokens) and, when the model carries
the pretraining head, the pseudo-gloss timeline.

Model folders (written by :mod:`hfa_jax.export`) hold ``hfa_export.json``; anything else is read
as a fine-tuning workdir (``config.json`` + ``best/`` or ``checkpoints/``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hfa_jax.data import augment
from hfa_jax.data import video as video_lib
from hfa_jax.data.pipeline import bucket_length
from hfa_jax.model_folder import EXPORT_MARKER, ModelBundle, load_export, load_workdir
from hfa_jax.models import hfa
from hfa_jax.models import packing
from hfa_jax.models.heads import PseudoGlossHead
from hfa_jax.text import tokenizer as text_lib

# Compiled programs of every Translator in this process, by model configuration, decoding
# settings and argument shapes (the weights are arguments, so equal models share programs).
_COMPILED: dict[tuple, Any] = {}
# One compile at a time: the web page translates two requests at once, and both may need a shape.
_COMPILE_LOCK = threading.Lock()


@dataclasses.dataclass
class Alignment:
    """Word x time cross-attention: ``weights [W, S]`` (rows sum to 1 over the valid encoder
    positions), ``times [S]`` the start (s) of each encoder position's frames."""

    words: list[str]
    weights: np.ndarray
    times: np.ndarray


@dataclasses.dataclass
class Timeline:
    """Pseudo-gloss timeline: ``scores [K, S]`` cosine similarity of the K most likely
    pseudo-glosses of the clip at each encoder position; ``probs [K]`` their clip scores."""

    labels: list[str]
    probs: np.ndarray
    scores: np.ndarray
    times: np.ndarray
    exact: bool


@dataclasses.dataclass
class Explanation:
    text: str
    alignment: Alignment
    timeline: Timeline | None
    seconds: dict[str, float]


def _pow2_at_least(n: int, cap: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return min(p, max(cap, n))


class Translator:
    """A loaded translation model. Build with :meth:`from_pretrained`."""

    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.config = bundle.config
        self.preprocessing = bundle.preprocessing
        self.model = hfa.build_model(bundle.model_cfg, "translate")
        self.variables = jax.device_put(bundle.variables)
        self.tokenizer = text_lib.load_tokenizer(bundle.tokenizer_dir, lang=self.config.data.get("lang", "de_DE"))
        self.step = bundle.step
        self.buckets = tuple(int(b) for b in self.config.data.buckets)
        ev = self.config.eval
        self.decoding = dict(num_beams=int(ev.num_beams), max_new_tokens=int(ev.max_new_tokens),
                             length_penalty=float(ev.get("length_penalty", 1.0)))
        self.pack_levels = int(self.config.data.get("pack_frames", 0))
        self._programs: dict[tuple, Any] = {}

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str) -> "Translator":
        """An exported model folder (:mod:`hfa_jax.export`) or a fine-tuning workdir."""
        if os.path.isfile(os.path.join(path, EXPORT_MARKER)):
            return cls(load_export(path))
        return cls(load_workdir(path))

    @property
    def compiled_shapes(self) -> list[tuple]:
        """The (kind, batch, frames) shapes compiled so far."""
        return sorted(self._programs)

    @property
    def has_pseudo_gloss_head(self) -> bool:
        return self.bundle.pg_head is not None

    # -- reading ---------------------------------------------------------------------------
    def read(self, path: str) -> video_lib.Clip:
        """A video file or frame folder -> :class:`hfa_jax.data.video.Clip` (raises DataError)."""
        return video_lib.read_clip(path, self.preprocessing)

    def _batch(self, clips: Sequence[video_lib.Clip], rows: int) -> tuple[np.ndarray, np.ndarray, int]:
        """clips -> (frames [rows, T, s, s, 3] uint8, mask [rows, T] bool, T); rows past the
        clips repeat the first clip (their outputs are dropped)."""
        frames = [video_lib.select_frames(c.frames, self.preprocessing) for c in clips]
        t = bucket_length(max(len(f) for f in frames), self.buckets)
        s = self.preprocessing.size
        x = np.zeros((rows, t, s, s, 3), np.uint8)
        mask = np.zeros((rows, t), bool)
        for i in range(rows):
            f = frames[i] if i < len(frames) else frames[0]
            x[i, : len(f)] = f
            mask[i, : len(f)] = True
        return x, mask, t

    def _program(self, kind: str, fn: Callable, weights: tuple, data: tuple) -> Any:
        """``fn(*weights, *data)`` compiled for these shapes, kept for later calls (and shared by
        the Translators of one model configuration in this process: the weights are arguments)."""
        args = weights + data
        shapes = tuple((tuple(np.shape(a)), str(a.dtype)) for a in jax.tree.leaves(args))
        shared = (kind, self.bundle.model_cfg, tuple(sorted(self.decoding.items())), self.preprocessing.crop_size,
                  jax.tree.structure(args), shapes)
        with _COMPILE_LOCK:
            if shared not in _COMPILED:
                _COMPILED[shared] = jax.jit(fn).lower(*args).compile()
        self._programs[(kind,) + tuple(tuple(np.shape(d)) for d in data)] = _COMPILED[shared]
        return _COMPILED[shared]

    def _generate_fn(self, variables, frames, mask, frame_index=None):
        pixels = augment.augment(None, frames, train=False, crop_size=self.preprocessing.crop_size)
        return self.model.generate(variables, pixels, mask, frame_index=frame_index, **self.decoding).sequences

    def _generate_inputs(self, x: np.ndarray, mask: np.ndarray, clips: int) -> tuple[np.ndarray, ...]:
        """The data arguments of the generate program: ``(frames, mask)``, plus the packed-frame
        index (:func:`hfa_jax.models.packing.pack_index`, one group: one device) when frame
        packing is on and leaves frames out. Packed, the filler rows past ``clips`` are masked
        out, so the frame encoder skips them too (their outputs are dropped either way)."""
        if self.pack_levels <= 0:
            return x, mask
        mask = mask.copy()
        mask[clips:] = False
        index = packing.pack_index(mask, 1, self.pack_levels)
        if not packing.leaves_out_frames(index, mask):
            return x, mask
        return x, mask, index

    # -- translating -----------------------------------------------------------------------
    def translate_clips(self, clips: Sequence[video_lib.Clip], batch_size: int = 8) -> list[np.ndarray]:
        """Clips -> generated token ids (each ``[1 + max_new_tokens]``, start token first)."""
        out: list[np.ndarray | None] = [None] * len(clips)
        by_bucket: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            n = len(video_lib.select_frames(c.frames, self.preprocessing))
            by_bucket.setdefault(bucket_length(n, self.buckets), []).append(i)
        for _, idx in sorted(by_bucket.items()):
            for start in range(0, len(idx), batch_size):
                part = idx[start: start + batch_size]
                rows = _pow2_at_least(len(part), batch_size)
                x, mask, _ = self._batch([clips[i] for i in part], rows)
                data = self._generate_inputs(x, mask, len(part))
                prog = self._program("generate", self._generate_fn, (self.variables,), data)
                seqs = np.asarray(prog(self.variables, *data))
                for j, i in enumerate(part):
                    out[i] = seqs[j]
        return out  # type: ignore[return-value]

    def decode(self, ids: np.ndarray) -> str:
        return self.tokenizer.decode(np.asarray(ids)[None])[0]

    def __call__(self, inputs: Sequence[str | video_lib.Clip], batch_size: int = 8) -> list[str]:
        """Video files / frame folders (or read clips) -> their translations, in order."""
        clips = [c if isinstance(c, video_lib.Clip) else self.read(c) for c in inputs]
        return [self.decode(s) for s in self.translate_clips(clips, batch_size)]

    # -- evidence --------------------------------------------------------------------------
    def _content_positions(self, ids: np.ndarray) -> list[int]:
        """Positions (in the generated sequence, start token = 0) of the content tokens: no
        special tokens (start/language, EOS, pad)."""
        out = []
        for i in range(1, len(ids)):  # as Tokenizer.decode: up to the first EOS
            if int(ids[i]) == self.tokenizer.eos_id:
                break
            if int(ids[i]) not in self.tokenizer.special_ids:
                out.append(i)
        return out

    def _cross_attention_fn(self, variables, frames, mask, dec_in):
        """Teacher-forced decoder pass; returns the cross-attention ``[B, L, S]`` averaged over
        heads and layers, and the encoder mask ``[B, S]``. The queries and keys are captured
        from ``encoder_attn.query`` / ``encoder_attn.key_value`` (no change to the model)."""
        pixels = augment.augment(None, frames, train=False, crop_size=self.preprocessing.crop_size)
        states, tmask = self.model.apply(variables, pixels, mask, method=hfa.HFATranslate.encode)

        def want(mdl, method):
            return mdl.name == "encoder_attn" and method in ("query", "key_value")

        _, inter = self.model.apply(
            variables, dec_in, states, tmask, capture_intermediates=want, mutable=["intermediates"],
            method=lambda m, d, s, e: m.mbart.decode_full(d, s, e))
        layers = inter["intermediates"]["mbart"]["decoder"]
        maps = []
        for name in sorted(layers):
            att = layers[name]["encoder_attn"]
            q = att["query"][0].astype(jnp.float32)            # [B, L, H, Dh]
            k = att["key_value"][0][0].astype(jnp.float32)     # [B, S, H, Dh]
            logits = jnp.einsum("blhd,bshd->bhls", q, k) / np.sqrt(q.shape[-1])
            logits = jnp.where(tmask[:, None, None, :], logits, -jnp.inf)
            maps.append(jax.nn.softmax(logits, axis=-1).mean(axis=1))
        return jnp.mean(jnp.stack(maps), axis=0), tmask

    def _pg_fn(self, variables, head_params, protos, frames, mask):
        pixels = augment.augment(None, frames, train=False, crop_size=self.preprocessing.crop_size)
        y, tmask = self.model.apply(variables, pixels, mask, method=hfa.HFATranslate.encode_frames)
        cfg = self.bundle.model_cfg
        head = PseudoGlossHead(proto_dim=cfg.proto_dim, dropout=cfg.pg_dropout, tau_class=cfg.tau_class,
                               tau_time=cfg.tau_time, learnable_tau=cfg.learnable_tau, dtype=cfg.compute_dtype)
        full = jnp.concatenate([jnp.zeros((1, protos.shape[1]), protos.dtype), protos], 0)
        p, sim = head.apply({"params": head_params}, y, tmask, full, True)
        return p, sim, tmask

    def explain(self, clip: video_lib.Clip | str, top_k: int = 5) -> Explanation:
        """One clip -> its translation, the word x time alignment and (with the pretraining head)
        the pseudo-gloss timeline; ``seconds``: time spent in each part."""
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        if not isinstance(clip, video_lib.Clip):
            clip = self.read(clip)
            seconds["read video"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids = self.translate_clips([clip])[0]
        text = self.decode(ids)
        seconds["translate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        x, mask, t = self._batch([clip], 1)
        keep = self._content_positions(ids)
        dec_in = jnp.asarray(ids[None, :-1].astype(np.int32))
        prog = self._program("attention", self._cross_attention_fn, (self.variables,), (x, mask, dec_in))
        att, tmask = (np.asarray(a) for a in prog(self.variables, x, mask, dec_in))
        s_valid = int(tmask[0].sum())
        frames_per_step = t / tmask.shape[1]
        times = np.arange(s_valid) * frames_per_step / self.preprocessing.fps
        # the token at sequence position i was predicted from decoder input position i - 1
        rows = att[0][[i - 1 for i in keep]][:, :s_valid]
        words, weights = self._words(ids, keep, rows)
        alignment = Alignment(words, weights, times)
        seconds["alignment"] = time.perf_counter() - t0

        timeline = None
        pg = self.bundle.pg_head
        if pg is not None:
            t0 = time.perf_counter()
            prog = self._program("pseudo_glosses", self._pg_fn, (self.variables, pg.params, pg.prototypes), (x, mask))
            p, sim, _ = (np.asarray(a) for a in prog(self.variables, pg.params, pg.prototypes, x, mask))
            order = [int(i) for i in np.argsort(-p[0]) if i != 0][:top_k]  # not the blank
            timeline = Timeline([pg.vocab[i] for i in order], p[0][order], sim[0][:s_valid][:, order].T,
                                times, pg.exact)
            seconds["pseudo-glosses"] = time.perf_counter() - t0
        return Explanation(text, alignment, timeline, seconds)

    def _words(self, ids: np.ndarray, keep: list[int], rows: np.ndarray) -> tuple[list[str], np.ndarray]:
        """SentencePiece pieces -> words ("▁" starts a word); a word's row is the mean of its
        pieces' rows."""
        pieces = self.tokenizer.hf.convert_ids_to_tokens([int(ids[i]) for i in keep])
        words: list[str] = []
        groups: list[list[int]] = []
        for j, piece in enumerate(pieces):
            if piece.startswith("\u2581") or not words:
                words.append(piece.lstrip("\u2581"))
                groups.append([j])
            else:
                words[-1] += piece
                groups[-1].append(j)
        if not words:
            return [], np.zeros((0, rows.shape[1] if rows.ndim == 2 else 0), np.float32)
        return words, np.stack([rows[g].mean(axis=0) for g in groups])


