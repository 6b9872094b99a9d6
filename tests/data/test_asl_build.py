"""How2Sign, OpenASL and YouTube-ASL through the Beam builder; PHOENIX14T unchanged; exact resume.

The fixtures are made here, in each corpus's published layout (hfa_jax/data/asl_annotations.py
cites the documentation): short encoded mp4 clips whose frame k is a flat grey of level
``LEVELS[k]``, so the frames that a cut keeps can be read back from the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from data_prep import build_dataset as bd
from hfa_jax.data import asl_annotations as asl
from hfa_jax.data.source import open_split
from hfa_jax.errors import DataError

REPO = pathlib.Path(__file__).resolve().parents[2]
FPS = 10
LEVELS = [16 + 8 * k for k in range(28)]  # frame k of every fixture video: grey level LEVELS[k]


def write_video(path: pathlib.Path, num_frames: int, fps: int = FPS, size=(48, 32)) -> None:
    """A tiny H.264 mp4: frame k is flat grey LEVELS[k] (decodes back within a few levels)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": "0", "preset": "ultrafast", "g": "5"}
        for k in range(num_frames):
            img = np.full((size[1], size[0], 3), LEVELS[k], np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _levels(example) -> list[int]:
    """Index of each stored frame's grey level among the fixture levels (nearest)."""
    import io

    means = [float(np.asarray(Image.open(io.BytesIO(fr)).convert("RGB")).mean())
             for fr in example["frames"]]
    return [int(np.argmin([abs(m - v) for v in LEVELS])) for m in means]


def _read(out: pathlib.Path, name: str, split: str) -> dict[str, dict]:
    src = open_split(str(out / name), split)
    return {src[i]["name"]: src[i] for i in range(len(src))}


# ------------------------------------------------------------------------------- readers


def test_caption_parsing_and_rules(tmp_path):
    vtt = tmp_path / "v.en.vtt"
    vtt.write_text("WEBVTT\nKind: captions\n\n"
                   "00:00:00.500 --> 00:00:01.500 align:start\n<c>Hello</c> there\n\n"
                   "00:00:01.500 --> 00:00:02.000\nHello there\n\n"  # rolling caption: merged
                   "00:00:02.000 --> 00:00:02.100\ntoo short\n\n"
                   "00:00:03.000 --> 00:00:04.000\n[Music]\n\n"
                   "00:00:04.000 --> 00:01:10.000\nfar too long\n", "utf-8")
    cues = asl.parse_captions(str(vtt))
    assert [c[:2] for c in cues] == [(0.5, 1.5), (1.5, 2.0), (2.0, 2.1), (3.0, 4.0), (4.0, 70.0)]
    assert asl.clean_caption("<c.colorE5E5E5>it&#39;s</c> [applause] (laughs)  ok") == "it's ok"
    assert asl.parse_time("01:02:03.5") == 3723.5 and asl.parse_time("00:01,250") == 1.25
    for bad in ("", "1:2:3:4", "-1", "nan", "x"):
        with pytest.raises(ValueError):
            asl.parse_time(bad)
    ids = tmp_path / "ids.txt"
    ids.write_text("v\n", "utf-8")
    write_video(tmp_path / "v.mp4", 5)
    recs = asl.read_youtube_asl(str(ids), str(tmp_path), "train")
    assert [(r.name, r.start, r.end, r.translation) for r in recs] == [("v-00000500", 0.5, 2.0, "Hello there")]
    # Held-out videos go to dev by a stable hash of the id.
    assert asl.youtube_asl_split("v", 0.0) == "train"
    assert {asl.youtube_asl_split(f"id{i}", 0.5) for i in range(20)} == {"train", "dev"}


def test_reader_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="how2sign_realigned_train.csv not found"):
        asl.read_how2sign(str(tmp_path), "train")
    (tmp_path / "how2sign_realigned_train.csv").write_text("a\tb\n", "utf-8")
    with pytest.raises(DataError, match="header is"):
        asl.read_how2sign(str(tmp_path), "train")
    tsv = tmp_path / "openasl.tsv"
    tsv.write_text("vid\tyid\tstart\n", "utf-8")
    with pytest.raises(DataError, match="header lacks"):
        asl.read_openasl(str(tsv), str(tmp_path), "train")
    with pytest.raises(DataError, match="id list not found"):
        asl.read_youtube_asl(str(tmp_path / "nope.txt"), str(tmp_path), "train")


# ------------------------------------------------------------------------------- corpora


def make_how2sign(root: pathlib.Path) -> None:
    """Realigned CSVs + raw front videos + rgb_front sentence clips (train and val)."""
    header = "\t".join(asl.HOW2SIGN_HEADER)
    rows = {"train": [("vidA", "vidA-1-rgb_front", "vidA_0-1-rgb_front", 0.3, 1.0, "Hello world."),
                      ("vidA", "vidA-1-rgb_front", "vidA_1-1-rgb_front", 1.2, 2.0, "Second one."),
                      ("vidB", "vidB-1-rgb_front", "vidB_0-1-rgb_front", 0.0, 0.5, "Missing raw."),
                      ("vidA", "vidA-1-rgb_front", "vidA_2-1-rgb_front", 5.0, 6.0, "Beyond end.")],
            "val": [("vidC", "vidC-1-rgb_front", "vidC_0-1-rgb_front", 0.1, 0.9, "Val sentence.")]}
    for split, rs in rows.items():
        lines = [header] + ["\t".join([v, vn, f"{sn.split('-')[0]}", sn, f"{a:.2f}", f"{b:.2f}", t])
                            for v, vn, sn, a, b, t in rs]
        (root / f"how2sign_realigned_{split}.csv").parent.mkdir(parents=True, exist_ok=True)
        (root / f"how2sign_realigned_{split}.csv").write_text("\n".join(lines) + "\n", "utf-8")
        for v, vn, sn, a, b, _ in rs:
            if vn != "vidB-1-rgb_front":
                write_video(root / f"{split}_raw_videos" / "raw_videos" / f"{vn}.mp4", 25)
            write_video(root / f"{split}_rgb_front_clips" / "raw_videos" / f"{sn}.mp4",
                        max(1, round((b - a) * FPS)))


def test_how2sign_clips_and_raw(tmp_path):
    make_how2sign(tmp_path / "h2s")
    for source in ("raw", "clips"):
        out = tmp_path / f"out_{source}"
        summary = bd.main(["--format", "how2sign", "--root", str(tmp_path / "h2s"), "--out",
                           str(out), "--splits", "train,dev", "--size", "16", "--workers", "1",
                           "--how2sign_source", source, "--videos_per_shard", "2"])
        train = _read(out, "how2sign", "train")
        dev = _read(out, "how2sign", "dev")
        assert list(dev) == ["vidC_0-1-rgb_front"]
        if source == "raw":
            # Cut at the realigned times: frames with timestamps in [start, end) at 10 fps.
            assert sorted(train) == ["vidA_0-1-rgb_front", "vidA_1-1-rgb_front"]
            assert _levels(train["vidA_0-1-rgb_front"]) == list(range(3, 10))
            assert _levels(train["vidA_1-1-rgb_front"]) == list(range(12, 20))
            assert train["vidA_0-1-rgb_front"]["text"] == "Hello world."
            reasons = {b.name: b.reason for b in summary["bad"]}
            assert reasons["vidB_0-1-rgb_front"].startswith("video missing")
            assert reasons["vidA_2-1-rgb_front"].startswith("start time 5.00s is beyond")
        else:
            assert len(train) == 4 and _levels(train["vidA_0-1-rgb_front"]) == list(range(7))
        report = json.loads((out / "build_summary.json").read_text())
        assert report["splits"]["train"]["videos"] == len(train)
        assert report["bad_count"] == (2 if source == "raw" else 0)
        assert (out / "bad_videos.tsv").read_text().count("\n") == 1 + report["bad_count"]


def test_openasl_tsv(tmp_path):
    videos = tmp_path / "videos"
    for yid in ("y1", "y2"):
        write_video(videos / f"{yid}.mp4", 20)
    rows = ["vid\tyid\tstart\tend\traw-text\ttokenized-text\tsplit",
            "c1\ty1\t00:00:00.000\t00:00:00.800\tThe first.\tthe first .\ttrain",
            "c2\ty2\t00:00:01.000\t00:00:01.500\tThe second.\tthe second .\ttrain",
            "c3\ty3\t00:00:00.000\t00:00:01.000\tGone.\tgone .\ttrain",        # vanished video
            "c4\ty1\t00:00:09.000\t00:00:10.000\tToo late.\ttoo late .\ttrain",  # beyond its end
            "c5\ty1\t00:00:01.000\t00:00:00.500\tBackwards.\tbackwards .\ttrain",
            "c6\ty2\t00:00:00.000\t00:00:01.000\tValid one.\tvalid one .\tvalid"]
    (tmp_path / "openasl-v1.0.tsv").write_text("\n".join(rows) + "\n", "utf-8")
    out = tmp_path / "out"
    summary = bd.main(["--format", "openasl", "--labels", str(tmp_path / "openasl-v1.0.tsv"),
                       "--root", str(videos), "--out", str(out), "--splits", "train,dev",
                       "--size", "16", "--workers", "1"])
    train, dev = _read(out, "openasl", "train"), _read(out, "openasl", "dev")
    assert sorted(train) == ["c1", "c2"] and list(dev) == ["c6"]
    assert _levels(train["c1"]) == list(range(8)) and _levels(train["c2"]) == list(range(10, 15))
    assert train["c2"]["text"] == "The second."
    assert sorted(b.name for b in summary["bad"]) == ["c3", "c4", "c5"]
    report = json.loads((out / "build_summary.json").read_text())
    assert report["bad_by_reason"]["video missing"] == 1 and report["bad_count"] == 3


def test_youtube_asl_with_vanished_videos(tmp_path):
    """3 of 4 videos downloaded: the corpus builds, the vanished one is counted and listed."""
    videos = tmp_path / "yt"
    ids = [f"vid{i}" for i in range(4)]
    for i, vid in enumerate(ids[:3]):
        write_video(videos / f"{vid}.mp4", 24)
        (videos / f"{vid}.en.vtt").write_text(
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nFirst caption of video %d.\n\n"
            "00:00:01.000 --> 00:00:01.100\nblink\n\n"
            "00:00:01.200 --> 00:00:02.000\n[Music]\n\n"
            "00:00:01.500 --> 00:00:02.300\nSecond caption.\n" % i, "utf-8")
    (tmp_path / "youtube_asl_video_ids.txt").write_text("\n".join(ids) + "\n", "utf-8")
    out = tmp_path / "out"
    summary = bd.main(["--format", "youtube_asl", "--labels",
                       str(tmp_path / "youtube_asl_video_ids.txt"), "--root", str(videos),
                       "--out", str(out), "--size", "16", "--workers", "1", "--fps", "5"])
    train = _read(out, "youtube_asl", "train")
    assert sorted(train) == [f"vid{i}-{ms:08d}" for i in range(3) for ms in (0, 1500)]
    # --fps 5 keeps every second frame of the 10 fps source.
    assert _levels(train["vid0-00000000"]) == [0, 2, 4, 6, 8]
    assert _levels(train["vid1-00001500"]) == [15, 17, 19, 21]
    assert train["vid2-00000000"]["text"] == "First caption of video 2."
    assert [b.name for b in summary["bad"]] == ["vid3"]
    assert summary["splits"]["train"] == {"videos": 6, "frames": 27, "bad": 1}
    # English pseudo-glosses straight from the built dataset.
    from data_prep import pseudo_glosses as pg_tool
    from hfa_jax.text.pseudo_glosses import load_pseudo_glosses

    pg_tool.main(["--dataset", str(out), "--language", "en", "--out", str(tmp_path / "pg.json"),
                  "--no_progress"])
    pg = load_pseudo_glosses(str(tmp_path / "pg.json"))
    assert list(pg.vocab) == ["0", "1", "2", "caption", "first", "second", "video"]
    assert sorted(pg.targets) == sorted(f"train/{name}" for name in train)
    # An English tokenizer from the same dataset: en_XX closes every label.
    from data_prep import trim_vocab
    from hfa_jax.text.tokenizer import load_tokenizer

    trim_vocab.main(["--dataset", str(out), "--train_sentencepiece", "--vocab_size", "40",
                     "--out", str(tmp_path / "tok")])
    tok = load_tokenizer(str(tmp_path / "tok"), "en_XX")
    labels = tok.encode_targets(["Second caption."], 16)["labels"][0]
    assert tok.decode([labels])[0] == "Second caption."
    assert labels[list(labels).index(tok.eos_id) + 1] == tok.lang_id


# ------------------------------------------------------------------------------- PHOENIX14T

# Content digests of every record the frame-folder builder wrote before it ran on Beam (commit
# e7b9fb3, multiprocessing pool), for the deterministic trees below: name, text, gloss, signer,
# num_frames and each stored frame's bytes (tf.Example map order is not stable across processes,
# so records are compared by content, not by raw bytes).
PREVIOUS_BUILDER = {   'sample_jpeg64': {   'phoenix14t-dev.array_record-00000-of-00001': ['6d22d7fa6664edc1'],
                         'phoenix14t-test.array_record-00000-of-00001': ['6d22d7fa6664edc1'],
                         'phoenix14t-train.array_record-00000-of-00001': ['6d22d7fa6664edc1']},
    'synthetic_jpeg16': {   'phoenix14t-dev.array_record-00000-of-00001': [   'a40d242491c34197',
                                                                              '13b4c7d18e5885bd'],
                            'phoenix14t-train.array_record-00000-of-00003': [   '54e98824828631b8',
                                                                                '7ba4e3bdb0b21150'],
                            'phoenix14t-train.array_record-00001-of-00003': [   '4fefbd652fddc860',
                                                                                'd8f993b78a1b09fe'],
                            'phoenix14t-train.array_record-00002-of-00003': ['7207eb2c3179f561']},
    'synthetic_png16': {   'phoenix14t-dev.array_record-00000-of-00001': [   '6248e6b596751e1a',
                                                                             '97d7991f83531389'],
                           'phoenix14t-train.array_record-00000-of-00003': [   'da87b30e73a3b9b4',
                                                                               '4f16fc7b1fca8ec3'],
                           'phoenix14t-train.array_record-00001-of-00003': [   '019740320022c480',
                                                                               '4288c28c14b1ba07'],
                           'phoenix14t-train.array_record-00002-of-00003': ['fb48af2227266ee1']}}
HEADER = "name|video|start|end|speaker|orth|translation"


def make_phoenix_tree(root: pathlib.Path, n: int = 5, t: int = 3) -> None:
    """Official-layout PHOENIX14T tree with seeded random PNG frames (train: n videos, dev: 2)."""
    for split in ("train", "dev"):
        man = root / "annotations" / "manual"
        man.mkdir(parents=True, exist_ok=True)
        names = [f"{split}{i}" for i in range(n if split == "train" else 2)]
        rows = [HEADER] + [f"{nm}|{nm}/1/*.png|-1|-1|Signer0{k % 3}|GLOSS{k} X|satz nummer {k}"
                           for k, nm in enumerate(names)]
        (man / f"PHOENIX-2014-T.{split}.corpus.csv").write_text("\n".join(rows) + "\n", "utf-8")
        for k, nm in enumerate(names):
            d = root / "features" / "fullFrame-210x260px" / split / nm
            d.mkdir(parents=True)
            rng = np.random.default_rng(1000 * (split == "dev") + k)
            for i in range(t + k % 2):
                Image.fromarray(rng.integers(0, 256, (26, 21, 3), dtype=np.uint8)).save(
                    d / f"images{i + 1:04d}.png")


def record_digests(out: pathlib.Path, name: str) -> dict[str, list[str]]:
    """{shard file: [content digest of each record]} of a built dataset."""
    import tensorflow_datasets as tfds
    from array_record.python.array_record_data_source import ArrayRecordDataSource
    from tensorflow_datasets.core.example_parser import ExampleParserNp

    f = tfds.features
    parser = ExampleParserNp(f.FeaturesDict({
        "name": f.Text(), "text": f.Text(), "gloss": f.Text(), "signer": f.Text(),
        "num_frames": f.Scalar(np.int32),
        "frames": f.Sequence(f.Tensor(shape=(), dtype=np.object_))}).get_serialized_info())
    digests = {}
    for shard in sorted((out / name / "1.0.0").glob("*.array_record-*")):
        src = ArrayRecordDataSource([str(shard)])
        rows = []
        for i in range(len(src)):
            ex = parser.parse_example(src[i])
            h = hashlib.sha256()
            for k in ("name", "text", "gloss", "signer"):
                h.update(k.encode() + b"=" + bytes(ex[k]) + b";")
            h.update(b"num_frames=%d;" % int(ex["num_frames"]))
            for fr in ex["frames"]:
                h.update(hashlib.sha256(bytes(fr)).digest())
            rows.append(h.hexdigest()[:16])
        digests[shard.name] = rows
    return digests


def _build_phoenix(src, out, **kw):
    kw.setdefault("progress", False)
    return bd.convert("phoenix14t", str(src), str(out), **kw)


@pytest.mark.parametrize("engine", ["beam", "local"])
def test_phoenix14t_unchanged_record_for_record(tmp_path, engine):
    """Both engines write what the previous builder wrote, shard for shard, record for record
    (PNG and JPEG, a synthetic tree and the real sample tree), with 1 and 2 workers."""
    if engine == "beam":
        pytest.importorskip("apache_beam", reason="apache-beam not installed (docs/asl.md)")
    make_phoenix_tree(tmp_path / "src")
    got = _build_phoenix(tmp_path / "src", tmp_path / "o1", splits=["train", "dev"], size=16,
                         image_format="png", workers=1, videos_per_shard=2, engine=engine)
    assert got["engine"] == engine
    assert record_digests(tmp_path / "o1", "phoenix14t") == PREVIOUS_BUILDER["synthetic_png16"]
    _build_phoenix(tmp_path / "src", tmp_path / "o2", splits=["train", "dev"], size=16,
                   image_format="jpeg", workers=2, videos_per_shard=2, engine=engine)
    assert record_digests(tmp_path / "o2", "phoenix14t") == PREVIOUS_BUILDER["synthetic_jpeg16"]
    sample = REPO / "tests" / "resources" / "phoenix14t" / "sample"
    _build_phoenix(sample, tmp_path / "o3", size=64, workers=1, engine=engine)
    assert record_digests(tmp_path / "o3", "phoenix14t") == PREVIOUS_BUILDER["sample_jpeg64"]


def test_killed_build_resumes_exactly(tmp_path):
    """A build killed (SIGKILL) after its first shard resumes without redoing finished shards,
    and the result equals an uninterrupted build's."""
    make_phoenix_tree(tmp_path / "src", n=8, t=3)
    _build_phoenix(tmp_path / "src", tmp_path / "whole", splits=["train", "dev"], size=16,
                   image_format="png", workers=1, videos_per_shard=1)
    code = (
        "import time\n"
        "from data_prep import build_dataset as bd\n"
        "real = bd.convert_shard\n"
        "def slow(task, *a, **k):\n"
        "    out = real(task, *a, **k)\n"
        "    time.sleep(1.0)\n"
        "    return out\n"
        "bd.convert_shard = slow\n"
        f"bd.convert('phoenix14t', {str(tmp_path / 'src')!r}, {str(tmp_path / 'part')!r},"
        " splits=['train', 'dev'], size=16, image_format='png', workers=1, videos_per_shard=1,"
        " progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ds_dir = tmp_path / "part" / "phoenix14t" / "1.0.0"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(ds_dir.glob("*.array_record-*"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    finished = {p.name: p.stat().st_mtime_ns for p in ds_dir.glob("*.array_record-*")}
    assert 2 <= len(finished) < 10, "the kill should land mid-build"
    summary = _build_phoenix(tmp_path / "src", tmp_path / "part", splits=["train", "dev"],
                             size=16, image_format="png", workers=1, videos_per_shard=1)
    assert summary["videos_converted_now"] == 10 - len(finished)
    assert {n: (ds_dir / n).stat().st_mtime_ns for n in finished} == finished
    assert record_digests(tmp_path / "part", "phoenix14t") == record_digests(tmp_path / "whole", "phoenix14t")
