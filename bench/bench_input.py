"""Input-path benchmark (issue 2): our conversion and training input path vs a PyTorch-style loader.

    python bench/bench_input.py [--quick] [--json FILE] [--workers 2] [--batch_size 2]
    python bench/bench_input.py --augment-cost v5e:2x2     # the augmentation alone, XLA's counts

Measured on one machine, in one run, in frames per second (real frames; padding not counted):

(a) conversion: ``data_prep.build_dataset.convert`` (PNG tree -> 256x256 JPEG ArrayRecord, all
    workers), against the reference loader's per-epoch cost of producing 256x256 frames from the
    same PNGs (PIL decode + resize 256 + ToTensor/Normalize + centre crop; evaluation mode). The
    ratio says what the one-off conversion costs in reference epochs.
(b) training input path, as the trainer runs it on one CPU device: grain (ArrayRecord read, JPEG
    decode of the kept frames in ``--workers`` threads of the main process, bucket padding into
    64-byte-aligned buffers that ``device_put`` aliases) -> ``to_global`` (uint8) -> jit
    ``augment(train=True, frame_mask, padding_chunk=8, normalize_output=False)``: uint8 crops,
    chunks of padding skipped, integer translations sliced; the model normalises the crops
    inside its patch extraction) -> ready device batch, one batch in flight (asynchronous
    dispatch, as in training); against the way the PyTorch references (GFSLT-VLP,
    elsobhano/MLLM ``dataset/slt_dataset.py``) load: PIL decode of the original PNGs, per-clip
    vidaug-style PIL augmentation applied frame by frame (rotate, resize, translate, each
    p=0.5), resize 256x256, ToTensor + Normalize in torch, random crop 224,
    ``torch.utils.data.DataLoader`` with the same worker count and batch size, padding collate.
(b1) (b) with ``--workers`` grain worker processes instead of threads (batches written into shared
    memory by the workers).
(b2) (b) with length-grouped batches (``make_loader(length_grouping=8)``: clips of similar length
    share a batch, so less padding is decoded, moved and augmented).
(b') the host part of (b) alone (no augmentation), to show where time goes.

The tree comes from ``python -m data_prep.synthsign`` (official PHOENIX14T layout, 210x260 PNG);
if that package is missing, a noise-free synthetic tree is drawn here. torchvision is not needed:
its per-frame transforms are written with PIL/NumPy/torch as the references use them.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MAX_FRAMES = 300
GROUPING = 8  # batches per length-grouping window in row (b2)


# ----------------------------------------------------------------------------------------------
# Source tree
# ----------------------------------------------------------------------------------------------


def make_tree(out: str, videos: int, workers: int) -> str:
    """Writes an official-layout PHOENIX14T train split with `videos` clips; returns how."""
    try:
        import data_prep.synthsign  # noqa: F401

        have_synthsign = True
    except ImportError:
        have_synthsign = False
    if have_synthsign:
        cmd = [sys.executable, "-m", "data_prep.synthsign", "--out", out, "--seed", "0",
               "--max_per_split", str(videos), "--splits", "train", "--workers", str(workers)]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        return "python -m data_prep.synthsign --seed 0 --max_per_split %d --splits train" % videos
    _draw_tree(out, videos)
    return "bench-internal synthetic PNGs (data_prep.synthsign not available)"


def _draw_tree(out: str, videos: int) -> None:
    """Noise-free synthetic clips: a gradient background and two moving 'hands'."""
    rng = np.random.default_rng(0)
    ann = os.path.join(out, "annotations", "manual")
    os.makedirs(ann, exist_ok=True)
    yy, xx = np.mgrid[0:260, 0:210]
    rows = []
    for v in range(videos):
        name = f"synthetic_video-{v}"
        folder = os.path.join(out, "features", "fullFrame-210x260px", "train", name)
        os.makedirs(folder, exist_ok=True)
        n = int(rng.integers(40, 160))
        base = np.stack([xx * 255 // 210, yy * 255 // 260, np.full_like(xx, 90 + v % 100)], -1)
        for t in range(n):
            img = base.astype(np.uint8).copy()
            for k, color in enumerate(((230, 180, 150), (200, 160, 140))):
                cy = int(130 + 60 * math.sin(t / 7 + k))
                cx = int(105 + 50 * math.cos(t / 9 + 2 * k))
                img[max(cy - 12, 0) : cy + 12, max(cx - 12, 0) : cx + 12] = color
            Image.fromarray(img).save(os.path.join(folder, f"images{t + 1:04d}.png"))
        rows.append([name, f"{name}/1/*.png", "-1", "-1", "Synthetic", "GLOSS", "ein satz"])
    with open(os.path.join(ann, "PHOENIX-2014-T.train.corpus.csv"), "w", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="|", lineterminator="\n")
        w.writerow(["name", "video", "start", "end", "speaker", "orth", "translation"])
        w.writerows(rows)


# ----------------------------------------------------------------------------------------------
# Reference: PyTorch DataLoader as in the references (PIL per frame)
# ----------------------------------------------------------------------------------------------


class PilClipDataset:
    """torch Dataset: one clip per item, frames decoded and transformed one by one with PIL.

    Mirrors elsobhano/MLLM ``S2T_Dataset.load_imgs``: first 300 frames; in training a vidaug
    sequence drawn once per clip (Sometimes(0.5, RandomRotate(30)), Sometimes(0.5,
    RandomResize(0.2)), Sometimes(0.5, RandomTranslate(10, 10))) applied to every frame; then
    ``img.resize((256, 256))``, ToTensor + Normalize, and a crop 224 (random in training).
    """

    def __init__(self, clips: list[list[str]], train: bool):
        self.clips = clips
        self.train = train

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        import torch

        paths = self.clips[i][:MAX_FRAMES]
        rnd = random.Random()  # per-worker seeded by torch
        rnd.seed(torch.initial_seed() + i)
        angle = rnd.uniform(-30, 30) if rnd.random() < 0.5 else None
        factor = rnd.uniform(0.8, 1.2) if rnd.random() < 0.5 else None
        shift = (rnd.randint(-10, 10), rnd.randint(-10, 10)) if rnd.random() < 0.5 else None
        if self.train:
            oy, ox = rnd.randint(0, 32), rnd.randint(0, 32)
        else:
            oy = ox = 16
        mean = torch.tensor(MEAN).view(3, 1, 1)
        std = torch.tensor(STD).view(3, 1, 1)
        out = torch.zeros(len(paths), 3, 224, 224)
        for t, path in enumerate(paths):
            img = Image.open(path).convert("RGB")
            if self.train:
                if angle is not None:  # vidaug RandomRotate on PIL images: Image.rotate
                    img = img.rotate(angle)
                if factor is not None:  # vidaug RandomResize: resize by a factor
                    w, h = img.size
                    img = img.resize((int(w * factor), int(h * factor)))
                if shift is not None:  # vidaug RandomTranslate: PIL affine transform
                    img = img.transform(img.size, Image.AFFINE, (1, 0, shift[0], 0, 1, shift[1]))
            img = img.resize((256, 256))
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div_(255.0)
            x = (x - mean) / std  # transforms.Normalize
            out[t] = x[:, oy : oy + 224, ox : ox + 224]
        return out


def pad_collate(batch):
    import torch

    t = max(x.shape[0] for x in batch)
    frames = torch.zeros(len(batch), t, 3, 224, 224)
    mask = torch.zeros(len(batch), t, dtype=torch.bool)
    for i, x in enumerate(batch):
        frames[i, : x.shape[0]] = x
        mask[i, : x.shape[0]] = True
    return frames, mask


def reference_rate(clips, *, train: bool, workers: int, batch_size: int, seconds: float,
                   warmup: int = 2) -> tuple[float, int]:
    """Frames/s of the PIL/torch DataLoader after `warmup` batches, over about `seconds`."""
    import torch

    ds = PilClipDataset(clips, train)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=pad_collate,
        drop_last=True, persistent_workers=workers > 0,
        # forkserver: never fork this process, which runs JAX threads (fork is unsafe then).
        multiprocessing_context="forkserver" if workers > 0 else None)
    frames = batches = 0
    start = None
    while True:
        for _, mask in loader:
            batches += 1
            if batches == warmup:
                start = time.perf_counter()
                continue
            if start is not None:
                frames += int(mask.sum())
                if time.perf_counter() - start >= seconds:
                    return frames / (time.perf_counter() - start), frames


# ----------------------------------------------------------------------------------------------
# Ours
# ----------------------------------------------------------------------------------------------


def _augment_as_trainer():
    """``augment(train=True)`` as the trainer calls it on one CPU device: chunked warp that skips
    padding chunks; the crops stay uint8 (the model normalises them inside its patch extraction)."""
    from hfa_jax.data.augment import CPU_PADDING_CHUNK, augment

    return functools.partial(augment, train=True, padding_chunk=CPU_PADDING_CHUNK,
                             normalize_output=False)


def ours_rate(dataset_dir: str, *, workers: int, batch_size: int, seconds: float,
              augment_on: bool, warmup: int = 2, length_grouping: int = 0,
              threads: bool = False) -> tuple[float, float]:
    """(frames/s, fraction of padding in the batches) of grain -> to_global -> jit
    augment(train) -> ready device batch."""
    import jax
    from jax.sharding import Mesh

    from hfa_jax.data.pipeline import DEFAULT_BUCKETS, make_loader, open_split
    from hfa_jax.data.sharding import to_global

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    aug = _augment_as_trainer()
    if augment_on:  # compile every bucket shape up front, as a trainer would
        for t in DEFAULT_BUCKETS:
            z = to_global({"f": np.zeros((batch_size, t, 256, 256, 3), np.uint8),
                           "m": np.ones((batch_size, t), bool)}, mesh)
            aug(jax.random.key(0), z["f"], frame_mask=z["m"]).block_until_ready()
    loader = make_loader(open_split(dataset_dir, "train"), batch_size=batch_size, seed=0,
                         shuffle=True, num_epochs=None, drop_remainder=True,
                         # `workers` decoding threads in this process, or worker processes
                         worker_count=0 if threads else workers, read_threads=workers if threads else 1,
                         shard_index=0, shard_count=1, length_grouping=length_grouping)
    it = iter(loader)
    key = jax.random.key(0)
    frames = slots = 0
    start = None
    in_flight = None
    for step in range(10**9):
        batch = next(it)
        dev = to_global({"frames": batch["frames"], "frame_mask": batch["frame_mask"]}, mesh)
        if augment_on:
            out = aug(jax.random.fold_in(key, step), dev["frames"], frame_mask=dev["frame_mask"])
        else:
            out = dev["frames"]
        # One batch in flight, as a trainer's asynchronous dispatch keeps it: the host fetches
        # batch n+1 while the device works on batch n; a batch counts once it is ready.
        if in_flight is not None:
            in_flight[0].block_until_ready()
            if start is not None:  # the batch that just became ready
                frames += int(in_flight[1].sum())
                slots += in_flight[1].size
                if time.perf_counter() - start >= seconds:
                    return frames / (time.perf_counter() - start), 1.0 - frames / slots
            elif step == warmup:  # warm-up batches done
                start = time.perf_counter()
        in_flight = (out, batch["frame_mask"])
    raise AssertionError("unreachable")


def augment_only_rate(batch_size: int, length: int = 128, iters: int = 4) -> float:
    """Frames/s (padding slots included) of jit augment(train) alone on a resident device batch:
    the device-side cost of (b), for profiling."""
    import jax

    frames = jax.device_put(
        np.random.default_rng(0).integers(0, 256, (batch_size, length, 256, 256, 3), np.uint8))
    mask = jax.device_put(np.ones((batch_size, length), bool))
    aug = _augment_as_trainer()
    aug(jax.random.key(0), frames, frame_mask=mask).block_until_ready()
    start = time.perf_counter()
    for i in range(iters):
        aug(jax.random.key(i), frames, frame_mask=mask).block_until_ready()
    return iters * batch_size * length / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------
# The augmentation alone, compiled for one accelerator chip (XLA's counts, no hardware)
# ----------------------------------------------------------------------------------------------

COST_METHODS = ("gather", "matmul", "matmul_f32")


def augment_cost(topology: str, *, clips: int = 2, frames: int = 300, size: int = 256, crop: int = 224,
                 methods: tuple[str, ...] = COST_METHODS) -> list[dict]:
    """XLA's flops and bytes accessed of ``augment(train=True)`` for one chip of ``topology`` (a
    TPU topology compiled through libtpu on this machine, or ``local``), per method, with the
    uint8 crops as output (what the model normalises in its patch extraction) and with the
    normalised float32 pixels (what ``steps.augment_frames`` hands the model). Padding chunks
    are not skipped (``padding_chunk=0``, as on accelerators)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from hfa_jax.aot import topology_devices
    from hfa_jax.data.augment import augment

    devices, _ = topology_devices(topology)
    mesh = Mesh(np.array(devices[:1]), ("data",))
    rep = NamedSharding(mesh, PartitionSpec())
    shapes = (jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep),
              jax.ShapeDtypeStruct((clips, frames, size, size, 3), jnp.uint8, sharding=rep))
    rows = []
    for method in methods:
        for normalise in (False, True):
            fn = functools.partial(augment, train=True, crop_size=crop, method=method,
                                   normalize_output=normalise)
            start = time.perf_counter()
            compiled = jax.jit(fn).lower(*shapes).compile()
            cost = compiled.cost_analysis()
            cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
            rows.append({"method": method, "output": "float32 normalised" if normalise else "uint8 crops",
                         "gflop": float(cost.get("flops", 0.0)) / 1e9,
                         "gb_accessed": float(cost.get("bytes accessed", 0.0)) / 1e9,
                         "compile_s": time.perf_counter() - start,
                         "device": str(getattr(devices[0], "device_kind", devices[0].platform)),
                         "shape": [clips, frames, size, size, 3]})
    return rows


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import grain
    import jax
    import PIL
    import torch

    out = {"python": platform.python_version(), "jax": jax.__version__, "PIL": PIL.__version__,
           "torch": torch.__version__, "numpy": np.__version__}
    out["grain"] = getattr(grain, "__version__", "0.2.18")
    return out


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{os.cpu_count()} x {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small tree, short measurements (~2 min)")
    p.add_argument("--json", help="write the result rows to this file")
    p.add_argument("--workers", type=int, default=2, help="loader processes, both loaders")
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--videos", type=int, default=None, help="clips in the tree")
    p.add_argument("--seconds", type=float, default=None, help="measurement time per loader")
    p.add_argument("--repeats", type=int, default=None,
                   help="alternate ours/reference this often; the median is reported")
    p.add_argument("--workdir", help="keep the tree and dataset here (default: a temp folder)")
    p.add_argument("--augment-cost", metavar="TOPOLOGY",
                   help="instead: XLA's flops and bytes of the augmentation alone for one chip of "
                        "TOPOLOGY (e.g. v5e:2x2; 2 clips x 300 frames, global batch 16 on 8 chips)")
    args = p.parse_args(argv)
    if args.augment_cost:
        rows = augment_cost(args.augment_cost)
        print(f"{'method':<12} {'output':<20} {'GFLOP':>9} {'GB accessed':>12}  ({rows[0]['device']}, "
              f"frames {rows[0]['shape']} uint8 per chip)")
        for r in rows:
            print(f"{r['method']:<12} {r['output']:<20} {r['gflop']:>9.2f} {r['gb_accessed']:>12.2f}")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(rows, f, indent=1)
        return rows
    videos = args.videos or (16 if args.quick else 48)
    seconds = args.seconds or (12.0 if args.quick else 30.0)
    repeats = args.repeats or (1 if args.quick else 3)

    from tqdm import tqdm

    from data_prep.build_dataset import convert
    from hfa_jax.data.pipeline import DEFAULT_BUCKETS
    from hfa_jax.data.annotations import read_phoenix14t

    work = args.workdir or tempfile.mkdtemp(prefix="bench_input_")
    tree, out = os.path.join(work, "tree"), os.path.join(work, "dataset")
    t0 = time.time()
    load_start = os.getloadavg()
    steps = tqdm(total=2 + 3 * repeats, desc="bench_input", unit="step")
    if not os.path.isdir(os.path.join(tree, "annotations")):
        source = make_tree(tree, videos, args.workers)
    else:
        source = "existing tree in --workdir"
    steps.update()
    clips = [list(r.frame_paths) for r in read_phoenix14t(tree, "train")]
    n_frames = sum(min(len(c), MAX_FRAMES) for c in clips)

    # (a) conversion (fresh each time: the converter is resumable and would skip done shards).
    shutil.rmtree(out, ignore_errors=True)
    summary = convert("phoenix14t", tree, out, splits=["train"], workers=args.workers,
                      image_format="jpeg", progress=False)
    conv_rate = summary["frames_per_second"]
    steps.update()
    dataset_dir = summary["dataset_dir"]

    ref_eval, ref_train, ours_train, ours_host, pad = [], [], [], [], []
    ours_grouped, pad_grouped, ours_procs = [], [], []
    for _ in range(repeats):
        common = dict(workers=args.workers, batch_size=args.batch_size, seconds=seconds, threads=True)
        rate, pad_fraction = ours_rate(dataset_dir, augment_on=True, **common)
        ours_train.append(rate)
        pad.append(pad_fraction)
        rate, pad_fraction = ours_rate(dataset_dir, augment_on=True, length_grouping=GROUPING, **common)
        ours_grouped.append(rate)
        pad_grouped.append(pad_fraction)
        ours_procs.append(ours_rate(dataset_dir, augment_on=True, **{**common, "threads": False})[0])
        ref_train.append(reference_rate(clips, train=True, workers=args.workers,
                                        batch_size=args.batch_size, seconds=seconds)[0])
        steps.update()
        ours_host.append(ours_rate(dataset_dir, augment_on=False, **{**common, "seconds": seconds / 2})[0])
        steps.update()
        ref_eval.append(reference_rate(clips, train=False, workers=args.workers,
                                       batch_size=args.batch_size, seconds=seconds / 2)[0])
        steps.update()
    augment_alone = augment_only_rate(args.batch_size)
    steps.close()
    med = lambda xs: float(np.median(xs))  # noqa: E731

    settings = {
        "workers": args.workers, "batch_size": args.batch_size, "videos": len(clips),
        "frames_in_tree": n_frames, "frame_size_src": "210x260 PNG",
        "stored": "256x256 JPEG q95", "seconds_per_measure": seconds, "repeats": repeats,
        "tree": source, "cpu": _cpu(), "buckets": list(DEFAULT_BUCKETS),
        "padding_fraction_ours": round(float(np.mean(pad)), 3),
        "padding_fraction_ours_grouped": round(float(np.mean(pad_grouped)), 3),
        "length_grouping": GROUPING,
        "augment_alone_slots_per_s": round(augment_alone, 1), "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": _versions(), "jax_backend": __import__("jax").default_backend(),
    }
    rows = [
        {"name": "(a) conversion PNG tree -> ArrayRecord (vs reference eval loader, per epoch)",
         "ours": conv_rate, "reference": med(ref_eval)},
        {"name": f"(b) training input path: grain decode ({args.workers} threads)+pad -> device uint8 -> jit augment",
         "ours": med(ours_train), "reference": med(ref_train)},
        {"name": f"(b1) as (b), decoding in {args.workers} worker processes instead of threads",
         "ours": med(ours_procs), "reference": med(ref_train)},
        {"name": f"(b2) as (b), length-grouped batches (data.length_grouping={GROUPING})",
         "ours": med(ours_grouped), "reference": med(ref_train)},
        {"name": "(b') host part of (b) only: grain decode+pad -> device uint8 (no augment)",
         "ours": med(ours_host), "reference": med(ref_train)},
    ]
    raw = {"ours_train": ours_train, "ours_procs": ours_procs, "ours_grouped": ours_grouped,
           "ref_train": ref_train, "ours_host": ours_host, "ref_eval": ref_eval}
    settings["raw_frames_per_s"] = raw
    for r in rows:
        r["unit"] = "frames/s"
        r["speedup"] = r["ours"] / r["reference"]
        r["settings"] = settings

    print()
    print(f"{'measurement':<80} {'ours':>9} {'reference':>10} {'ratio':>7}")
    for r in rows:
        print(f"{r['name']:<80} {r['ours']:>9.0f} {r['reference']:>10.0f} {r['speedup']:>6.2f}x")
    print(f"unit: frames/s (real frames). raw per repeat: {json.dumps(raw)}")
    print("settings:", json.dumps({k: v for k, v in settings.items() if k != "raw_frames_per_s"}))
    print(f"total time {time.time() - t0:.0f}s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
