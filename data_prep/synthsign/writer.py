"""Write a SynthSign tree in a corpus's release layout: annotations, frames and per-video extras.

Layout of `corpus="phoenix14t"` (identical to the official release, so every PHOENIX14T reader works on it):
    OUT/annotations/manual/PHOENIX-2014-T.{split}.corpus.csv   header name|video|start|end|speaker|orth|translation
    OUT/features/fullFrame-210x260px/{split}/{name}/images0001.png ...   210 wide x 260 high RGB
Layout of `corpus="csl_daily"` (the CSL-Daily release's frame folders plus GFSLT-style label files,
what `hfa_jax.data.annotations.read_csl_daily` and `build_dataset --format csl_daily` read):
    OUT/sentence/frames_512x512/{name}/000000.jpg ...   JPEG frames, one folder per video (no split level)
    OUT/labels/labels.{split}   gzip pickle {name: {"name", "gloss", "text", "length"}}, plain containers
    The frames keep the renderer's 210 x 260 canvas: the folder has the release's name so commands
    written for the real data run unchanged, but SynthSign does not upscale to 512 x 512 (10 ms a
    frame for no information; the dataset converter resizes anyway).
plus SynthSign's own files (both layouts):
    OUT/extras/{split}/{name}.json   {"description": str, "hand_traj": [T][2][2] (x, y in [0, 1] of the
                                      signer's left, right hand), "handshape": [T][2] ids (lexicon.HANDSHAPES),
                                      "hand_orient": [T][2] finger direction, degrees clockwise from up,
                                      "segments": [[token, start, end), ...] frame ranges per gloss token,
                                      "placement": {scale, dx, dy, pivot}: canonical -> image transform}
    OUT/synthsign.json               generation parameters and counts (no timings: the tree is reproducible)

Determinism: every video draws its appearance, speed and noise from its own generator, seeded by
SHA-256 of (seed, split, name) — independent of the selection, the worker count and the order —
so the same seed gives a byte-identical tree.

Subset selection (`max_per_split`, `max_glosses`, `max_words`): see `select_sentences`.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import pickle
import shutil
import struct
import time
import zlib
from typing import Iterable, Mapping, Sequence

import numpy as np

from data_prep.synthsign import lexicon, renderer
from data_prep.synthsign.corpus import SPLITS, CorpusEntry, get_corpus, load_corpus, text_length
from hfa_jax.errors import ConfigError, DataError

CSV_HEADER = "name|video|start|end|speaker|orth|translation"
FRAMES_DIR = "fullFrame-210x260px"
CSL_FRAMES_DIR = os.path.join("sentence", "frames_512x512")  # the CSL-Daily release's folder name
CSL_LABELS_DIR = "labels"
CSL_JPEG_QUALITY = 90
SPEAKER = "SynthSign"
FORMAT_VERSION = 1


def csv_path(out_dir: str | os.PathLike, split: str) -> pathlib.Path:
    return pathlib.Path(out_dir) / "annotations" / "manual" / f"PHOENIX-2014-T.{split}.corpus.csv"


def frames_dir(out_dir: str | os.PathLike, split: str, name: str, corpus: str = "phoenix14t") -> pathlib.Path:
    if corpus == "csl_daily":
        return pathlib.Path(out_dir) / CSL_FRAMES_DIR / name
    return pathlib.Path(out_dir) / "features" / FRAMES_DIR / split / name


def csl_frames_root(out_dir: str | os.PathLike) -> pathlib.Path:
    """The `frames_512x512` folder of a CSL-Daily-layout tree (`read_csl_daily`'s frames_root)."""
    return pathlib.Path(out_dir) / CSL_FRAMES_DIR


def csl_labels_dir(out_dir: str | os.PathLike) -> pathlib.Path:
    """The folder holding `labels.{train,dev,test}` of a CSL-Daily-layout tree."""
    return pathlib.Path(out_dir) / CSL_LABELS_DIR


def extras_path(out_dir: str | os.PathLike, split: str, name: str) -> pathlib.Path:
    return pathlib.Path(out_dir) / "extras" / split / f"{name}.json"


# ----------------------------------------------------------------------------------------------
# Subset selection.


def resolve_caps(max_per_split: int | Mapping[str, int] | None) -> dict[str, int | None] | None:
    """`N` -> the same cap for every split; a mapping -> per-split caps (missing = uncapped)."""
    if max_per_split is None:
        return None
    if isinstance(max_per_split, Mapping):
        unknown = set(max_per_split) - set(SPLITS)
        if unknown:
            raise ConfigError(f"max_per_split names unknown splits {sorted(unknown)}; use train/dev/test")
        caps = {s: max_per_split.get(s) for s in SPLITS}
    else:
        caps = {s: max_per_split for s in SPLITS}
    for s, n in caps.items():
        if n is not None and (not isinstance(n, (int, np.integer)) or n < 1):
            raise ConfigError(f"max_per_split for {s} is {n!r}; it must be an integer >= 1 (or omitted for no cap)")
    return caps


def select_sentences(
    corpus: dict[str, list[CorpusEntry]],
    *,
    splits: Sequence[str] = SPLITS,
    max_per_split: int | Mapping[str, int] | None = None,
    max_glosses: int | None = None,
    max_words: int | None = None,
    domain: str = "frequent",
    char_text: bool = False,
) -> dict[str, list[CorpusEntry]]:
    """Pick the sentences to render.

    1. Filter: keep sentences with 1..`max_glosses` lexical signs (annotation markers such as
       `__ON__` are not signs) and at most `max_words` translation words (`char_text`, for
       Chinese: non-space characters, punctuation included).
    2. Without `max_per_split`: every filtered sentence, in corpus order.
    3. With `max_per_split = N` or a per-split mapping such as `{"train": 300, "dev": 50, "test": 50}`
       (a small demo subset; a split missing from the mapping is not capped), favour sentences made of frequent glosses and
       make the train subset cover the signs that dev/test show; no duplicates within a split:
       - sign frequency = occurrences in the filtered train pool, counted per lexicon key (so
         `loc-NORD` counts for `NORD`); a sentence's score ranks by its rarest sign's frequency,
         then its mean sign frequency, then name;
       - dev and test: the N best-scoring sentences (skipping a repeated sign sequence or translation);
       - train: greedy set cover of the signs of the chosen dev+test sentences (each step takes the
         train sentence adding the most still-uncovered signs, ties broken by score), then filled up
         to N by score.
       Dev/test choices do not depend on `splits` (the train subset is computed even when "train"
       is not written), so the demo's splits always match each other.
    4. `domain="closed"` (with `max_per_split`; what the CPU demo uses): a closed domain a small
       model can learn from a few hundred videos. PHOENIX14T's translations are loose paraphrases
       of the signs, so even a perfect sign recogniser can only translate a test sentence whose
       combination of signs it has seen in training:
       - dev and test: sentences whose *set* of signs is also the sign set of some train-pool
         sentence, in corpus order, skipping a repeated sign sequence, sign set or translation;
       - train: the train-pool sentences made only of signs that dev/test show, those sharing a
         dev/test sign set first, then by score, at most `CLOSED_MAX_PER_SIGN_SET` per sign set
         (the corpus repeats its greetings dozens of times; uncapped, a third of the subset would
         be "guten abend liebe zuschauer" and a small model learns to say only that). Repeated
         translations are otherwise allowed: different recordings in the real corpus, different
         signers here.
       Selection uses glosses only, never the dev/test translations.
    5. `domain="signers"` (with `max_per_split`; the CSL-Daily demo's subset): CSL-Daily's official
       dev/test sentences almost never occur in its training split (2 of the 1077 dev and 2 of the
       1176 test translations do, and 1 dev and 1 test sign set), so `closed` selects at most one
       dev and one test sentence there (none with the demo's limits). This domain draws dev and test
       from the *training* split instead: other signers' recordings of training sentences.
       - training sentences with at least two recordings, ranked by score, skipping a repeated sign
         sequence or translation: the first `max_per_split["test"]` go to test, the next
         `max_per_split["dev"]` to dev; of each, the last recording (corpus order) is held out
         for dev/test and the others stay in train (at most `CLOSED_MAX_PER_SIGN_SET`);
       - train is filled up to its cap with the other training sentences made only of the signs
         of those sentences, by score, at most `CLOSED_MAX_PER_SIGN_SET` per sign set.
       The held-out videos keep their real names (from the training split); dev and test share no
       sentence.
    """
    if domain not in DOMAINS:
        raise ConfigError(f"domain={domain!r} is not one of {', '.join(DOMAINS)}")
    for s in splits:
        if s not in SPLITS:
            raise ConfigError(f"split {s!r} is not one of {SPLITS}; pass --splits with train/dev/test")
    caps = resolve_caps(max_per_split)
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
        return max_words is None or text_length(e.translation, char_text) <= max_words

    pool = {s: [e for e in corpus[s] if keep(e)] for s in SPLITS}
    if caps is None:
        return {s: pool[s] for s in splits}

    def dedup_take(ranked: Iterable[CorpusEntry], n: int | None) -> list[CorpusEntry]:
        out, seen_k, seen_t = [], set(), set()
        for e in ranked:
            k = tuple(keys(e))
            if k in seen_k or e.translation in seen_t:
                continue
            seen_k.add(k)
            seen_t.add(e.translation)
            out.append(e)
            if n is not None and len(out) == n:
                break
        return out

    freq = collections.Counter(k for e in pool["train"] for k in keys(e))

    def score(e: CorpusEntry):
        ks = keys(e)
        return (-min(freq[k] for k in ks), -sum(freq[k] for k in ks) / len(ks), e.name)

    if domain == "closed":
        return {s: v for s, v in _closed_domain(pool, caps, keys, score).items() if s in splits}
    if domain == "signers":
        return {s: v for s, v in _signer_domain(pool, caps, keys, score).items() if s in splits}

    out = {s: dedup_take(sorted(pool[s], key=score), caps[s]) for s in ("dev", "test")}
    needed = {k for s in ("dev", "test") for e in out[s] for k in keys(e)}
    ranked = sorted(pool["train"], key=score)
    train: list[CorpusEntry] = []
    taken: set[str] = set()
    while needed and (caps["train"] is None or len(train) < caps["train"]):
        best, best_gain = None, 0
        for e in ranked:  # ranked order: the first of equal gains has the best score
            if e.name in taken:
                continue
            gain = len(needed.intersection(keys(e)))
            if gain > best_gain:
                best, best_gain = e, gain
        if best is None:
            break  # the remaining signs never occur in the train pool
        train.append(best)
        taken.add(best.name)
        needed.difference_update(keys(best))
    out["train"] = dedup_take(train + [e for e in ranked if e.name not in taken], caps["train"])
    return {s: out[s] for s in splits}


CLOSED_MAX_PER_SIGN_SET = 4
DOMAINS = ("frequent", "closed", "signers")


def _signer_domain(pool, caps, keys, score) -> dict[str, list[CorpusEntry]]:
    """`select_sentences(domain="signers")`: see its docstring."""
    groups: dict[tuple[str, str], list[CorpusEntry]] = collections.defaultdict(list)
    for e in pool["train"]:
        groups[(e.gloss, e.translation)].append(e)
    ranked = sorted((g for g in groups.values() if len(g) >= 2), key=lambda g: score(g[0]))
    out: dict[str, list[CorpusEntry]] = {"test": [], "dev": []}
    per_set: collections.Counter = collections.Counter()
    train: list[CorpusEntry] = []
    seen: set = set()
    for g in ranked:
        split = next((s for s in ("test", "dev") if caps[s] is None or len(out[s]) < caps[s]), None)
        if split is None:
            break
        marks = (tuple(keys(g[0])), g[0].translation)
        if any(m in seen for m in marks):
            continue
        seen.update(marks)
        out[split].append(g[-1])
        for e in g[:-1]:
            k = frozenset(keys(e))
            if per_set[k] < CLOSED_MAX_PER_SIGN_SET:
                per_set[k] += 1
                train.append(e)
    signs = {k for s in ("dev", "test") for e in out[s] for k in keys(e)}
    held = {e.name for s in ("dev", "test") for e in out[s]} | {e.name for e in train}
    for e in sorted((e for e in pool["train"] if e.name not in held and set(keys(e)) <= signs), key=score):
        k = frozenset(keys(e))
        if per_set[k] < CLOSED_MAX_PER_SIGN_SET:
            per_set[k] += 1
            train.append(e)
    out["train"] = train[: caps["train"]] if caps["train"] is not None else train
    return out


def _closed_domain(pool, caps, keys, score) -> dict[str, list[CorpusEntry]]:
    """`select_sentences(domain="closed")`: see its docstring."""
    train_sets = {frozenset(keys(e)) for e in pool["train"]}
    out: dict[str, list[CorpusEntry]] = {}
    for s in ("dev", "test"):
        chosen, seen = [], set()
        for e in pool[s]:
            ks = keys(e)
            marks = (tuple(ks), frozenset(ks), e.translation)
            if frozenset(ks) not in train_sets or any(m in seen for m in marks):
                continue
            seen.update(marks)
            chosen.append(e)
            if caps[s] is not None and len(chosen) == caps[s]:
                break
        out[s] = chosen
    eval_sets = {frozenset(keys(e)) for s in ("dev", "test") for e in out[s]}
    eval_signs = set().union(*eval_sets) if eval_sets else set()
    inside = [e for e in pool["train"] if set(keys(e)) <= eval_signs]
    inside.sort(key=lambda e: (frozenset(keys(e)) not in eval_sets, score(e)))
    per_set: collections.Counter = collections.Counter()
    train = []
    for e in inside:
        k = frozenset(keys(e))
        if per_set[k] < CLOSED_MAX_PER_SIGN_SET:
            per_set[k] += 1
            train.append(e)
    out["train"] = train[: caps["train"]] if caps["train"] is not None else train
    return out


# ----------------------------------------------------------------------------------------------
# One video.


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(rgb: np.ndarray, level: int = 1) -> bytes:
    """`rgb: [H, W, 3] uint8` -> PNG bytes (8-bit truecolour, no interlace, filter 0 on every row).

    A plain PNG per the specification (RFC 2083): SynthSign frames are flat colours, for which row
    filters buy little, so skipping Pillow's adaptive filtering encodes ~2.5x faster at a similar size.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected [H, W, 3] uint8, got {rgb.shape} {rgb.dtype}")
    h, w, _ = rgb.shape
    raw = np.zeros((h, 1 + 3 * w), np.uint8)  # column 0: filter type 0 (None) for each scanline
    raw[:, 1:] = rgb.reshape(h, 3 * w)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)),
            _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), level)),
            _png_chunk(b"IEND", b""),
        )
    )


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
        "hand_orient": [[round(float(v), 3) for v in row] for row in plan.motion.orient],
        "segments": [[tok, int(a), int(b)] for tok, a, b in plan.segments],
        "placement": {
            "scale": round(appearance.scale, 6),
            "dx": round(appearance.dx, 6),
            "dy": round(appearance.dy, 6),
            "pivot": [float(v) for v in renderer.PIVOT],
        },
    }
    return frames, extras


def encode_jpeg(img, quality: int = CSL_JPEG_QUALITY) -> bytes:
    """A PIL image -> baseline JPEG bytes (deterministic for the same Pillow / libjpeg)."""
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write_video(job: tuple[str, int, str, CorpusEntry, int, str]) -> tuple[str, str, int]:
    out_dir, seed, split, entry, compress_level, corpus = job
    frames, extras = render_video(seed, split, entry)
    fdir = frames_dir(out_dir, split, entry.name, corpus)
    if fdir.exists():
        shutil.rmtree(fdir)  # stale frames of an earlier run would otherwise linger
    fdir.mkdir(parents=True)
    for i, img in enumerate(frames, start=1):
        if corpus == "csl_daily":  # the release's frames: 000000.jpg, 000001.jpg, ...
            (fdir / f"{i - 1:06d}.jpg").write_bytes(encode_jpeg(img))
        else:
            (fdir / f"images{i:04d}.png").write_bytes(encode_png(np.asarray(img), compress_level))
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


def write_csl_labels(out_dir: str | os.PathLike, split: str, entries: Sequence[CorpusEntry],
                     lengths: Mapping[str, int]) -> pathlib.Path:
    """`OUT/labels/labels.{split}`: the GFSLT-style gzip pickle of the CSL-Daily labels.

    `{name: {"name", "gloss", "text", "length"}}` in selection order, strings and ints only (what
    the HFA authors' CSL-Daily label files hold; loads with `hfa_jax.data.safe_pickle`). The gzip
    header has no timestamp, so the same selection gives the same bytes.
    """
    labels = {e.name: {"name": e.name, "gloss": e.gloss, "text": e.translation, "length": int(lengths[e.name])}
              for e in entries}
    path = csl_labels_dir(out_dir) / f"labels.{split}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(pickle.dumps(labels, protocol=4), 9, mtime=0))
    return path


def generate(
    out_dir: str | os.PathLike,
    *,
    seed: int,
    corpus: str = "phoenix14t",
    max_per_split: int | Mapping[str, int] | None = None,
    max_glosses: int | None = None,
    max_words: int | None = None,
    domain: str = "frequent",
    splits: Sequence[str] = SPLITS,
    workers: int | None = None,
    compress_level: int = 1,
    progress: bool = True,
) -> dict:
    """Render the selected real sentences of `corpus` ("phoenix14t" or "csl_daily") as a SynthSign
    tree in that corpus's release layout under `out_dir` (module docstring).

    Returns a summary: `{"out_dir", "seed", "splits": {split: {"videos", "frames"}}, "videos",
    "frames", "seconds", "frames_per_second", "signs"}` (`signs`: distinct lexicon keys rendered).
    `workers=None` uses every core this process may run on; `workers=1` renders in this process.
    Byte-identical output for the same seed holds on the same platform and library versions.
    `compress_level` is the PNG zlib level (1 = fast; the pixels are identical at any level).
    """
    from tqdm import tqdm

    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    seed = int(seed)
    splits = tuple(splits)
    spec = get_corpus(corpus)
    selection = select_sentences(
        load_corpus(corpus=corpus), splits=splits, max_per_split=max_per_split, max_glosses=max_glosses,
        max_words=max_words, domain=domain, char_text=spec.char_text,
    )
    out = pathlib.Path(out_dir)
    empty = [s for s in splits if not selection[s]]
    if empty:
        raise ConfigError(f"the selection (corpus {corpus}, domain {domain!r}, max_glosses {max_glosses}, "
                          f"max_words {max_words}) has no {'/'.join(empty)} sentences; relax the limits"
                          + (" or use --domain signers (CSL-Daily's dev/test sentences almost never occur "
                             "in its training split)" if corpus == "csl_daily" and domain == "closed" else ""))
    jobs = [(str(out), seed, s, e, compress_level, corpus) for s in splits for e in selection[s]]
    # Longest first keeps the pool busy to the end; results are keyed, so order does not matter.
    jobs.sort(key=lambda j: -len(j[3].gloss.split()))
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(workers, len(jobs) or 1))
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
        if corpus == "csl_daily":
            write_csl_labels(out, s, selection[s], {e.name: counts[(s, e.name)] for e in selection[s]})
        else:
            p = csv_path(out, s)
            p.parent.mkdir(parents=True, exist_ok=True)
            lines = [CSV_HEADER] + [_csv_row(e) for e in selection[s]]
            p.write_text("\n".join(lines) + "\n", encoding="utf-8")
        split_summary[s] = {"videos": len(selection[s]), "frames": sum(counts[(s, e.name)] for e in selection[s])}
    keys = sorted({k for s in splits for e in selection[s] for k in lexicon.lexical_keys(e.gloss)})
    meta = {
        "generator": "data_prep.synthsign",
        "format_version": FORMAT_VERSION,
        "corpus": corpus,
        "lang": spec.lang,
        "seed": seed,
        "max_per_split": dict(max_per_split) if isinstance(max_per_split, Mapping) else max_per_split,
        "max_glosses": max_glosses,
        "max_words": max_words,
        "domain": domain,
        "splits": split_summary,
        "signs": len(keys),
        "handshapes": list(lexicon.HANDSHAPES),
        "hand_order": ["left", "right"],
    }
    (out / "synthsign.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    frames = sum(v["frames"] for v in split_summary.values())
    return {
        "out_dir": str(out),
        "corpus": corpus,
        "seed": seed,
        "splits": split_summary,
        "videos": sum(v["videos"] for v in split_summary.values()),
        "frames": frames,
        "signs": len(keys),
        "seconds": seconds,
        "frames_per_second": frames / seconds if seconds > 0 else math.inf,
        "workers": workers,
    }
