"""Write a SynthSign PHOENIX14T-layout tree: CSVs, PNG frames and per-video extras.

Layout (identical to the official release, so every PHOENIX14T reader works on it):
    OUT/annotations/manual/PHOENIX-2014-T.{split}.corpus.csv   header name|video|start|end|speaker|orth|translation
    OUT/features/fullFrame-210x260px/{split}/{name}/images0001.png ...   210 wide x 260 high RGB
plus SynthSign's own files:
    OUT/extras/{split}/{name}.json   {"description", "hand_traj" [T][2][2], "handshape" [T][2],
                                      "segments" [[token, start, end)...], "placement" {scale, dx, dy}}
    OUT/synthsign.json               generation parameters and counts (no timings: the tree is reproducible)

Determinism: every video draws its appearance, speed and noise from its own generator, seeded by
SHA-256 of (seed, split, name) — independent of the selection, the worker count and the order —
so the same seed gives a byte-identical tree.

Subset selection (`max_per_split`, `max_glosses`, `max_words`): see `select_sentences`.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import time
from typing import Iterable, Sequence

import numpy as np

from data_prep.synthsign import lexicon, renderer
from data_prep.synthsign.corpus import SPLITS, CorpusEntry, load_corpus
from hfa_jax.errors import ConfigError, DataError

CSV_HEADER = "name|video|start|end|speaker|orth|translation"
FRAMES_DIR = "fullFrame-210x260px"
SPEAKER = "SynthSign"
FORMAT_VERSION = 1


def csv_path(out_dir: str | os.PathLike, split: str) -> pathlib.Path:
    return pathlib.Path(out_dir) / "annotations" / "manual" / f"PHOENIX-2014-T.{split}.corpus.csv"


def frames_dir(out_dir: str | os.PathLike, split: str, name: str) -> pathlib.Path:
    return pathlib.Path(out_dir) / "features" / FRAMES_DIR / split / name


def extras_path(out_dir: str | os.PathLike, split: str, name: str) -> pathlib.Path:
    return pathlib.Path(out_dir) / "extras" / split / f"{name}.json"


# ----------------------------------------------------------------------------------------------
# Subset selection.


def _words(text: str) -> list[str]:
    return text.split()


def select_sentences(
    corpus: dict[str, list[CorpusEntry]],
    *,
    splits: Sequence[str] = SPLITS,
    max_per_split: int | None = None,
    max_glosses: int | None = None,
    max_words: int | None = None,
) -> dict[str, list[CorpusEntry]]:
    """Pick the sentences to render.

    1. Filter: keep sentences with 1..`max_glosses` lexical signs (annotation markers such as
       `__ON__` are not signs) and at most `max_words` translation words.
    2. Without `max_per_split`: every filtered sentence, in corpus order.
    3. With `max_per_split = N` (a small demo subset), favour sentences made of frequent glosses so
       that the train subset covers what dev/test show, and avoid duplicates:
       - train: rank by the corpus frequency (over the filtered train pool, counted per lexicon key,
         so `loc-NORD` counts for `NORD`) of the sentence's rarest sign, then by its mean sign
         frequency, then by name; skip a sentence whose sign sequence or translation is already
         taken; keep the first N. (The train subset is computed even when "train" is not
         requested, so dev/test subsets do not depend on `splits`.)
       - dev/test: rank by the fraction of signs seen in the train subset, then the fraction of
         translation words seen in the train subset's translations, then the rarest sign's train
         subset frequency, then name; skip duplicates within the split; keep the first N.
    """
    for s in splits:
        if s not in SPLITS:
            raise ConfigError(f"split {s!r} is not one of {SPLITS}; pass --splits with train/dev/test")
    if max_per_split is not None and max_per_split < 1:
        raise ConfigError(f"max_per_split={max_per_split} must be >= 1 (or omitted for all sentences)")
    if max_glosses is not None and max_glosses < 1:
        raise ConfigError(f"max_glosses={max_glosses} must be >= 1 (or omitted for no limit)")

    keys_of = {}

    def keys(e: CorpusEntry) -> list[str]:
        k = keys_of.get(e.gloss)
        if k is None:
            k = keys_of[e.gloss] = lexicon.lexical_keys(e.gloss)
        return k

    def keep(e: CorpusEntry) -> bool:
        n = len(keys(e))
        if n == 0 or (max_glosses is not None and n > max_glosses):
            return False
        return max_words is None or len(_words(e.translation)) <= max_words

    pool = {s: [e for e in corpus[s] if keep(e)] for s in SPLITS}
    if max_per_split is None:
        return {s: pool[s] for s in splits}

    def dedup_take(ranked: Iterable[CorpusEntry], n: int) -> list[CorpusEntry]:
        out, seen_k, seen_t = [], set(), set()
        for e in ranked:
            k = tuple(keys(e))
            if k in seen_k or e.translation in seen_t:
                continue
            seen_k.add(k)
            seen_t.add(e.translation)
            out.append(e)
            if len(out) == n:
                break
        return out

    freq = collections.Counter(k for e in pool["train"] for k in keys(e))
    train_ranked = sorted(
        pool["train"],
        key=lambda e: (-min(freq[k] for k in keys(e)), -sum(freq[k] for k in keys(e)) / len(keys(e)), e.name),
    )
    train = dedup_take(train_ranked, max_per_split)
    tfreq = collections.Counter(k for e in train for k in keys(e))
    twords = {w for e in train for w in _words(e.translation)}

    def eval_rank(e: CorpusEntry):
        ks, ws = keys(e), _words(e.translation)
        cov = sum(k in tfreq for k in ks) / len(ks)
        wcov = sum(w in twords for w in ws) / max(1, len(ws))
        return (-cov, -wcov, -min(tfreq[k] for k in ks), e.name)

    out = {"train": train}
    for s in ("dev", "test"):
        out[s] = dedup_take(sorted(pool[s], key=eval_rank), max_per_split)
    return {s: out[s] for s in splits}


# ----------------------------------------------------------------------------------------------
# One video.


def video_rng(seed: int, split: str, name: str) -> np.random.Generator:
    """The video's own generator: SHA-256 of (seed, split, name), independent of selection and order."""
    digest = hashlib.sha256(f"synthsign/v{FORMAT_VERSION}/{seed}/{split}/{name}".encode("utf-8")).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype="<u4").astype(np.uint64).tolist())


def render_video(seed: int, split: str, entry: CorpusEntry):
    """Render one sentence. Returns (frames: list of PIL RGB 210x260 images, extras: dict)."""
    rng = video_rng(seed, split, entry.name)
    appearance = renderer.draw_appearance(rng)
    signs = lexicon.signs_for(entry.gloss)
    plan = renderer.plan_video(signs, appearance, rng)
    frames, hands = renderer.render_plan(plan, appearance, rng)
    norm = hands / np.array([renderer.W, renderer.H], np.float64)
    extras = {
        "description": lexicon.describe(signs, appearance.style),
        "hand_traj": [[[round(float(v), 5) for v in hand] for hand in frame] for frame in norm],
        "handshape": [[int(v) for v in row] for row in plan.motion.shape],
        "segments": [[tok, int(a), int(b)] for tok, a, b in plan.segments],
        "placement": {
            "scale": round(appearance.scale, 6),
            "dx": round(appearance.dx, 6),
            "dy": round(appearance.dy, 6),
            "pivot": [float(v) for v in renderer.PIVOT],
        },
    }
    return frames, extras


def _write_video(job: tuple[str, int, str, CorpusEntry, int]) -> tuple[str, str, int]:
    out_dir, seed, split, entry, compress_level = job
    frames, extras = render_video(seed, split, entry)
    fdir = frames_dir(out_dir, split, entry.name)
    if fdir.exists():
        shutil.rmtree(fdir)  # stale frames of an earlier run would otherwise linger
    fdir.mkdir(parents=True)
    for i, img in enumerate(frames, start=1):
        img.save(fdir / f"images{i:04d}.png", format="PNG", compress_level=compress_level)
    ep = extras_path(out_dir, split, entry.name)
    ep.parent.mkdir(parents=True, exist_ok=True)
    ep.write_text(json.dumps(extras, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    return split, entry.name, len(frames)


def _csv_row(entry: CorpusEntry) -> str:
    fields = [entry.name, f"{entry.name}/1/*.png", "-1", "-1", SPEAKER, entry.gloss, entry.translation]
    for f in fields:
        if "|" in f or "\n" in f:
            raise DataError(f"corpus entry {entry.name}: a field contains '|' or a newline; fix the corpus table")
    return "|".join(fields)


def generate(
    out_dir: str | os.PathLike,
    *,
    seed: int,
    max_per_split: int | None = None,
    max_glosses: int | None = None,
    max_words: int | None = None,
    splits: Sequence[str] = SPLITS,
    workers: int | None = None,
    compress_level: int = 1,
    progress: bool = True,
) -> dict:
    """Render the selected real PHOENIX14T sentences as a SynthSign tree under `out_dir`.

    Returns a summary: `{"out_dir", "seed", "splits": {split: {"videos", "frames"}}, "videos",
    "frames", "seconds", "frames_per_second", "signs"}` (`signs`: distinct lexicon keys rendered).
    `workers=None` uses every core (`os.cpu_count()`); `workers=1` renders in this process.
    `compress_level` is the PNG zlib level (1 = fast; the pixels are identical at any level).
    """
    from tqdm import tqdm

    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    seed = int(seed)
    splits = tuple(splits)
    selection = select_sentences(
        load_corpus(), splits=splits, max_per_split=max_per_split, max_glosses=max_glosses, max_words=max_words
    )
    out = pathlib.Path(out_dir)
    jobs = [(str(out), seed, s, e, compress_level) for s in splits for e in selection[s]]
    # Longest first keeps the pool busy to the end; results are keyed, so order does not matter.
    jobs.sort(key=lambda j: -len(j[3].gloss.split()))
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    t0 = time.perf_counter()
    counts: dict[tuple[str, str], int] = {}
    bar = tqdm(total=len(jobs), desc="synthsign", unit="video", disable=not progress)
    if workers == 1:
        for j in jobs:
            s, n, k = _write_video(j)
            counts[(s, n)] = k
            bar.update()
    else:
        # spawn: safe even when the caller already imported JAX (fork after threads is not).
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
            for s, n, k in pool.imap_unordered(_write_video, jobs, chunksize=max(1, len(jobs) // (workers * 16))):
                counts[(s, n)] = k
                bar.update()
    bar.close()
    seconds = time.perf_counter() - t0

    split_summary = {}
    for s in splits:
        p = csv_path(out, s)
        p.parent.mkdir(parents=True, exist_ok=True)
        lines = [CSV_HEADER] + [_csv_row(e) for e in selection[s]]
        p.write_text("\n".join(lines) + "\n", encoding="utf-8")
        split_summary[s] = {"videos": len(selection[s]), "frames": sum(counts[(s, e.name)] for e in selection[s])}
    keys = sorted({k for s in splits for e in selection[s] for k in lexicon.lexical_keys(e.gloss)})
    meta = {
        "generator": "data_prep.synthsign",
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "max_per_split": max_per_split,
        "max_glosses": max_glosses,
        "max_words": max_words,
        "splits": split_summary,
        "signs": len(keys),
        "handshapes": list(lexicon.HANDSHAPES),
        "hand_order": ["left", "right"],
    }
    (out / "synthsign.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    frames = sum(v["frames"] for v in split_summary.values())
    return {
        "out_dir": str(out),
        "seed": seed,
        "splits": split_summary,
        "videos": sum(v["videos"] for v in split_summary.values()),
        "frames": frames,
        "signs": len(keys),
        "seconds": seconds,
        "frames_per_second": frames / seconds if seconds > 0 else math.inf,
        "workers": workers,
    }
