"""SynthSign: shipped corpus, official layout, determinism, gloss -> motion consistency, extras, CLI."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_prep.synthsign import corpus, lexicon, renderer, writer
from data_prep.synthsign.__main__ import main as cli
from data_prep.synthsign.corpus import load_corpus, load_table
from hfa_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[2]

# sha256 of the ORIGINAL nslt files Data/phoenix2014T.{split}.{de,gloss,sign} (github.com/neccam/nslt @
# 06951580), computed from the real files; the shipped table must reproduce them byte for byte.
NSLT_SHA256 = {
    ("train", "de"): "c7222f16420e11d862d74d0d41e2fdb59f0fbd2cb6565823520772dac0ca497c",
    ("dev", "de"): "e5da3b1283bd8758ce3474862d24df377cc2bf5447555a6a3e38dda91fbcde96",
    ("test", "de"): "8c53e6ec80783891ffd5f6c960678fc3f0c5384c930e6781cd132efe4d78d5fd",
    ("train", "gloss"): "32e74e2917398ec305c04072a57f018b6627665447bf586ed12f14b532f228b7",
    ("dev", "gloss"): "6c3ed43ef53eb7e2b6770108331bad7dcd98b0ce530dcad3733e8747448ef6a5",
    ("test", "gloss"): "c53e81b5d0410aa4fee98c4c4f01c874d498ff189308545bbd32aeb5c5667b8d",
    ("train", "sign"): "c4924c4cb7a12eb7e38b8f183862cd6c55d6391de8be436629f09fb94cfed901",
    ("dev", "sign"): "02b5b97903ef9a9e74b3b4e4afa997ab276407a314f04f532c07728f02e3e484",
    ("test", "sign"): "c13968fa7bdaf5d4482b74194fe2710e2c5f16f0788223a368ca8bd0ce5a099f",
}
# A real row of the official PHOENIX-2014-T corpus CSV (sign-language-datasets 0.4.0 dummy data, which
# copies the official annotation of this sample verbatim).
OFFICIAL_ROW = (
    "25October_2010_Monday_tagesschau-17|25October_2010_Monday_tagesschau-17/1/*.png|-1|-1|Signer01|"
    "REGEN SCHNEE REGION VERSCHWINDEN NORD REGEN KOENNEN REGION STERN KOENNEN SEHEN|"
    "regen und schnee lassen an den alpen in der nacht nach im norden und nordosten fallen hier und da "
    "schauer sonst ist das klar"
)


# ----------------------------------------------------------------------------------------------
# Shipped corpus.


def test_shipped_corpus_counts_and_texts_match_the_original_files():
    c = load_corpus()
    assert {s: len(v) for s, v in c.items()} == {"train": 7096, "dev": 519, "test": 642}
    for split in corpus.SPLITS:
        entries = c[split]
        name, gloss, translation = entries[0]  # interface: (name, gloss, translation) tuples
        assert isinstance(name, str) and gloss and translation
        assert len({e.name for e in entries}) == len(entries)
        rebuilt = {
            "de": "".join(e.translation + " .\n" for e in entries),
            "gloss": "".join(e.gloss + "\n" for e in entries),
            "sign": "".join(
                f"<PATH_TO_EXTRACTED_AND_RESIZED_FRAMES>/features/fullFrame-227x227px/{split}/{e.name}/\n"
                for e in entries
            ),
        }
        for ext, text in rebuilt.items():
            assert hashlib.sha256(text.encode("utf-8")).hexdigest() == NSLT_SHA256[(split, ext)], (split, ext)
    fields = OFFICIAL_ROW.split("|")
    test_by_name = {e.name: e for e in c["test"]}
    assert test_by_name[fields[0]].gloss == fields[5]
    assert test_by_name[fields[0]].translation == fields[6]
    assert all(r.num_frames >= 16 for r in load_table())  # real frame counts (docs/data.md: 16-475)


# ----------------------------------------------------------------------------------------------
# Lexicon.


def test_lexicon_is_deterministic_across_processes_and_follows_annotation_conventions():
    code = "import dataclasses; from data_prep.synthsign.lexicon import sign_for; print(dataclasses.astuple(sign_for('REGEN')))"
    outs = set()
    for hashseed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        outs.add(subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1
    base = lexicon.sign_for("REGEN")
    strip = lambda s: (s.handshape, s.left_handshape, s.start, s.end, s.movement, s.hands, s.orientation)  # noqa: E731
    assert (base.repeat, base.loc_shift, base.headshake) == (1, False, False)
    for tok, field, value in (("REGEN-PLUSPLUS", "repeat", 2), ("loc-REGEN", "loc_shift", True),
                              ("neg-REGEN", "headshake", True)):
        s = lexicon.sign_for(tok)
        assert s.key == "REGEN" and strip(s) == strip(base)
        assert getattr(s, field) is value or getattr(s, field) == value != 1
    assert lexicon.sign_for("__ON__").kind == "rest" and lexicon.sign_for("__EMP__").kind == "hold"
    # Distinct glosses should mostly look distinct (hash collisions of the visible parameters are rare).
    keys = sorted({k for e in load_corpus()["train"] for k in lexicon.lexical_keys(e.gloss)})
    def look(s):  # what is visible: the bulge side / circling sense matters for arcs, zigzags, circles
        return strip(s) + ((s.direction,) if s.movement in ("arc", "zigzag", "circle") else ())

    looks = collections.Counter(look(lexicon.sign_for(k)) for k in keys)
    assert len(keys) > 1000 and len(looks) / len(keys) > 0.98  # measured: 1008 looks for 1020 signs


def test_movements_follow_their_definition():
    def sign(**kw):
        return lexicon.Sign(token="X", key="X", **kw)

    s, e = np.array(lexicon.LOCATIONS["chin"]), np.array(lexicon.LOCATIONS["stomach"])
    p = renderer.dominant_path(sign(start="chin", end="stomach", movement="straight"), 9)
    np.testing.assert_allclose(p[0], s)
    np.testing.assert_allclose(p[-1], e)
    np.testing.assert_allclose(np.cross(p - s, e - s), 0.0, atol=1e-9)  # on the segment
    arc = renderer.dominant_path(sign(start="chin", end="stomach", movement="arc"), 9)
    assert np.abs(np.cross(arc - s, (e - s) / np.linalg.norm(e - s))).max() > 10.0  # bulges off the line
    circ = renderer.dominant_path(sign(start="chest", end="chest", movement="circle"), 17)
    centre = circ[:-1].mean(axis=0)  # 16 equally spaced angles (the last point closes the circle)
    radii = np.linalg.norm(circ[:-1] - centre, axis=1)
    np.testing.assert_allclose(radii, radii.mean(), rtol=0.05)
    rep = renderer.dominant_path(sign(start="chin", end="stomach", movement="straight", repeat=2), 31)
    ends = np.linalg.norm(rep - e, axis=1)
    assert (ends < 1e-6).sum() == 2  # reaches the end twice: forth, back, forth


# ----------------------------------------------------------------------------------------------
# Generated trees.

SMALL = dict(max_per_split=3, max_glosses=4)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthsign")
    a = writer.generate(root / "a", seed=3, workers=2, progress=False, **SMALL)
    b = writer.generate(root / "b", seed=3, workers=1, progress=False, **SMALL)
    c = writer.generate(root / "c", seed=4, workers=1, progress=False, splits=("dev",), **SMALL)
    return root, a, b, c


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tree_has_the_official_layout(trees):
    root, summary, _, _ = trees
    out = root / "a"
    real = load_corpus()
    for split in corpus.SPLITS:
        lines = (out / "annotations" / "manual" / f"PHOENIX-2014-T.{split}.corpus.csv").read_text("utf-8").splitlines()
        assert lines[0] == "name|video|start|end|speaker|orth|translation"
        assert len(lines) - 1 == summary["splits"][split]["videos"] == 3
        by_name = {e.name: e for e in real[split]}
        for line in lines[1:]:
            name, video, start, end, speaker, orth, translation = line.split("|")
            assert video == f"{name}/1/*.png" and (start, end) == ("-1", "-1") and speaker
            assert (orth, translation) == (by_name[name].gloss, by_name[name].translation)
            assert len(orth.split()) <= 4 + orth.count("__")  # markers are not counted as signs
            fdir = out / "features" / "fullFrame-210x260px" / split / name
            pngs = sorted(p.name for p in fdir.iterdir())
            n = len(pngs)
            assert pngs == [f"images{i:04d}.png" for i in range(1, n + 1)] and n >= 8
            for p in (pngs[0], pngs[-1]):
                with Image.open(fdir / p) as im:
                    assert im.format == "PNG" and im.mode == "RGB" and im.size == (210, 260)
            ex = json.loads((out / "extras" / split / f"{name}.json").read_text("utf-8"))
            traj = np.asarray(ex["hand_traj"])
            assert traj.shape == (n, 2, 2) and traj.min() >= 0.0 and traj.max() <= 1.0
            shapes = np.asarray(ex["handshape"])
            assert shapes.shape == (n, 2) and shapes.min() >= 0 and shapes.max() < len(lexicon.HANDSHAPES)
            assert np.asarray(ex["hand_orient"]).shape == (n, 2)
            assert isinstance(ex["description"], str) and len(ex["description"]) > 20
            toks = [t for t, _, _ in ex["segments"]]
            assert toks == orth.split()
            assert all(0 <= s0 < s1 <= n for _, s0, s1 in ex["segments"])
    meta = json.loads((out / "synthsign.json").read_text())
    assert meta["seed"] == 3 and meta["splits"] == summary["splits"]


def test_same_seed_gives_a_byte_identical_tree_for_any_worker_count(trees):
    root, _, _, _ = trees
    fa, fb = _files(root / "a"), _files(root / "b")
    assert fa.keys() == fb.keys() and len(fa) > 30
    assert all(fa[k] == fb[k] for k in fa)
    # Another seed: same sentences and CSV, different videos.
    fc = _files(root / "c")
    csv = "annotations/manual/PHOENIX-2014-T.dev.corpus.csv"
    assert fc[csv] == fa[csv]
    frames = [k for k in fc if k.endswith("images0001.png")]
    assert frames and all(fc[k] != fa[k] for k in frames)


def test_written_pngs_decode_to_the_rendered_frames(trees):
    root, _, _, _ = trees
    out = root / "a"
    name = (out / "annotations/manual/PHOENIX-2014-T.dev.corpus.csv").read_text().splitlines()[1].split("|")[0]
    entry = next(e for e in load_corpus()["dev"] if e.name == name)
    frames, extras = writer.render_video(3, "dev", entry)
    assert json.loads((out / "extras" / "dev" / f"{name}.json").read_text()) == extras
    for i, frame in enumerate(frames, start=1):
        with Image.open(out / "features/fullFrame-210x260px/dev" / name / f"images{i:04d}.png") as im:
            im.load()
            assert im.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(im), np.asarray(frame))
    assert not (out / "features/fullFrame-210x260px/dev" / name / f"images{len(frames) + 1:04d}.png").exists()
    with pytest.raises(ValueError):
        writer.encode_png(np.zeros((4, 4), np.uint8))


def test_hand_trajectory_matches_the_drawn_pixels(trees):
    root, _, _, _ = trees
    out = root / "a"
    line = (out / "annotations/manual/PHOENIX-2014-T.train.corpus.csv").read_text().splitlines()[1]
    name = line.split("|")[0]
    app = renderer.draw_appearance(writer.video_rng(3, "train", name))
    ex = json.loads((out / "extras" / "train" / f"{name}.json").read_text())
    for t, ((_, _), (rx, ry)) in enumerate(ex["hand_traj"]):
        with Image.open(out / "features/fullFrame-210x260px/train" / name / f"images{t + 1:04d}.png") as im:
            px = np.asarray(im)
        x, y = int(rx * 210), int(ry * 260)
        # The right (dominant) hand is drawn last: its palm centre shows the skin colour.
        assert tuple(px[y, x]) == app.skin, t


def _canonical_segment(ex: dict, token: str) -> tuple[np.ndarray, np.ndarray]:
    (a, b) = next((s0, s1) for t, s0, s1 in ex["segments"] if t == token)
    pl = ex["placement"]
    img = np.asarray(ex["hand_traj"])[a:b] * np.array([210.0, 260.0])
    canon = renderer.PIVOT + (img - np.array([pl["dx"], pl["dy"]]) - renderer.PIVOT) / pl["scale"]
    return canon, np.asarray(ex["handshape"])[a:b]


def _resample(x: np.ndarray, n: int = 20) -> np.ndarray:
    src = np.linspace(0.0, 1.0, len(x))
    dst = np.linspace(0.0, 1.0, n)
    return np.stack([[np.interp(dst, src, x[:, h, d]) for d in range(2)] for h in range(2)]).transpose(2, 0, 1)


def test_same_gloss_renders_the_same_motion_in_different_videos():
    real = load_corpus()["train"]
    with_regen = [e for e in real if "REGEN" in e.gloss.split() and "SONNE" in e.gloss.split()][:2]
    assert len(with_regen) == 2
    paths, others = [], []
    for e in with_regen:
        _, ex = writer.render_video(11, "train", e)
        canon, shapes = _canonical_segment(ex, "REGEN")
        want = renderer.sign_motion(lexicon.sign_for("REGEN"), len(canon))
        # Up to the video's placement (undone above), body sway (<= 1.5 px) and hand jitter.
        err = np.abs(canon - want.pos)
        assert err.mean() < 2.0 and err.max() < 7.0
        assert (shapes == want.shape).all()
        paths.append(_resample(canon))
        others.append(_resample(_canonical_segment(ex, "SONNE")[0]))
    same = np.abs(paths[0] - paths[1]).mean()
    different = np.abs(paths[0] - others[1]).mean()
    assert same < 2.5 and different > 4 * same
    assert len(paths) == 2


# ----------------------------------------------------------------------------------------------
# Subset selection and command line.


def test_small_subset_favours_frequent_glosses_and_train_covers_test():
    c = load_corpus()
    sel = writer.select_sentences(c, max_per_split=40, max_glosses=5)
    train_keys = {k for e in sel["train"] for k in lexicon.lexical_keys(e.gloss)}
    for split in ("train", "dev", "test"):
        assert len(sel[split]) == 40
        assert len({e.translation for e in sel[split]}) == 40
        assert all(1 <= len(lexicon.lexical_keys(e.gloss)) <= 5 for e in sel[split])
    for split in ("dev", "test"):
        assert all(set(lexicon.lexical_keys(e.gloss)) <= train_keys for e in sel[split]), split
    # Frequent glosses: every dev/test sign is among the most frequent ones of the filtered train pool
    # (451 distinct signs), and train holds no duplicate sentence.
    pool = [e for e in c["train"] if 1 <= len(lexicon.lexical_keys(e.gloss)) <= 5]
    freq = collections.Counter(k for e in pool for k in lexicon.lexical_keys(e.gloss))
    rank = {k: i for i, (k, _) in enumerate(freq.most_common())}
    eval_keys = {k for s in ("dev", "test") for e in sel[s] for k in lexicon.lexical_keys(e.gloss)}
    assert len(rank) > 400 and max(rank[k] for k in eval_keys) < 100
    assert len({tuple(lexicon.lexical_keys(e.gloss)) for e in sel["train"]}) == 40
    # The dev/test choice does not depend on which splits are written; no cap -> whole filtered pool.
    assert writer.select_sentences(c, max_per_split=40, max_glosses=5, splits=("test",))["test"] == sel["test"]
    full = writer.select_sentences(c, max_glosses=5, max_words=8)
    assert full["dev"] == [
        e for e in c["dev"] if 1 <= len(lexicon.lexical_keys(e.gloss)) <= 5 and len(e.translation.split()) <= 8
    ]


def test_closed_domain_subset():
    """The demo's subset: every dev/test sign set was signed in some training sentence, training
    uses only dev/test signs, at most CLOSED_MAX_PER_SIGN_SET sentences per sign set, and dev/test
    repeat no sign sequence, sign set or translation."""
    c = load_corpus()
    caps = {"train": 480, "dev": 50, "test": 50}
    sel = writer.select_sentences(c, max_per_split=caps, max_glosses=5, max_words=12, domain="closed")
    keys = lambda e: frozenset(lexicon.lexical_keys(e.gloss))  # noqa: E731
    pool = [e for e in c["train"] if 1 <= len(lexicon.lexical_keys(e.gloss)) <= 5 and len(e.translation.split()) <= 12]
    pool_sets = {keys(e) for e in pool}
    eval_signs = set()
    for split in ("dev", "test"):
        assert 10 <= len(sel[split]) <= 50
        assert all(keys(e) in pool_sets for e in sel[split])
        assert len({keys(e) for e in sel[split]}) == len({e.translation for e in sel[split]}) == len(sel[split])
        eval_signs |= {k for e in sel[split] for k in keys(e)}
    assert sel["train"] and all(keys(e) <= eval_signs for e in sel["train"])
    per_set = collections.Counter(keys(e) for e in sel["train"])
    assert max(per_set.values()) == writer.CLOSED_MAX_PER_SIGN_SET
    # every dev/test sign set is in the (capped) training subset, not just in the pool
    train_sets = set(per_set)
    assert all(keys(e) in train_sets for s in ("dev", "test") for e in sel[s])
    # the same subset whichever splits are written; an unknown domain is refused
    assert writer.select_sentences(c, max_per_split=caps, max_glosses=5, max_words=12, domain="closed",
                                   splits=("test",))["test"] == sel["test"]
    with pytest.raises(ConfigError, match="domain"):
        writer.select_sentences(c, max_per_split=caps, domain="open")


def test_command_line(tmp_path, capsys):
    summary = cli(["--out", str(tmp_path / "t"), "--seed", "1", "--max_per_split", "train=2,dev=1", "--splits", "dev",
                   "--workers", "1", "--max_glosses", "3"])
    assert summary["videos"] == 1 and summary["splits"]["dev"]["frames"] > 0
    assert (tmp_path / "t/annotations/manual/PHOENIX-2014-T.dev.corpus.csv").is_file()
    assert not (tmp_path / "t/annotations/manual/PHOENIX-2014-T.train.corpus.csv").exists()
    capsys.readouterr()  # drop the progress bar
    with pytest.raises(SystemExit) as exc:
        cli(["--out", str(tmp_path / "u"), "--seed", "-1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed" in err[0]
