"""Frame packing, measured: our training step with the ViT on the packed valid frames
(``data.pack_frames``, the trainer's default) against the same step encoding every padded frame,
on a batch whose clip lengths are drawn from PHOENIX14T's training distribution.

Lengths: four PHOENIX14T training clips' frame counts (GFSLT-VLP ``labels.train``; mean 116.5
frames, 16-475), halved to fit a 2-core CPU, padded to the longest (``T``); a batch of 4 pads
less than the paper's batch of 16 (244.9 slots per clip of 116.5 there). Same model and settings as ``bench_train.py``'s rows otherwise (ViT-S/14, temporal
512, reduced mBART). Values are the same with and without packing (tests/models/test_packing.py);
this measures what leaving out the padding saves.

    python bench/bench_packing.py [--kind finetune] [--image 56]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import Shapes  # noqa: E402

# The first four clips of a seeded shuffle of PHOENIX14T's training lengths
# (``np.random.default_rng(0).permutation`` over GFSLT-VLP ``labels.train``, clipped at 300):
# 141, 88, 130, 170 frames; halved (rounded up) so a step takes seconds on 2 cores: T = 85.
LENGTHS = (71, 44, 65, 85)


def measure(kind: str, s: Shapes, lengths, *, iters: int = 5) -> dict:
    import jax
    import numpy as np

    from bench.bench_train import CompiledStep, concrete_batch, make_step, pack_levels
    from hfa_jax.models.packing import pack_index

    init_state, step = make_step(kind, s)
    base = concrete_batch(kind, s)
    mask = np.arange(s.frames)[None, :] < np.asarray(lengths)[:, None]
    base["frame_mask"] = mask
    base.pop("frame_index", None)
    out = {"lengths": list(lengths), "valid_frames": int(mask.sum()), "slots": int(mask.size)}
    for name, index in (("padded", None), ("packed", pack_index(mask, 1, pack_levels()))):
        batch = dict(base)
        if index is not None:
            batch["frame_index"] = index
            out["packed_frames"] = int(index.size)
        batch = {k: jax.device_put(v) for k, v in batch.items()}
        run = CompiledStep(step, jax.jit(init_state)(jax.random.PRNGKey(0)), batch)
        times = run.time(warmup=2, iters=iters)
        out[f"{name}_s"] = common.median(times)
        out[f"{name}_times"] = times
    out["speedup"] = out["padded_s"] / out["packed_s"]
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=("pretrain", "finetune"), default="finetune")
    p.add_argument("--image", type=int, default=56, help="crop size (px)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", help="write the result here")
    a = p.parse_args(argv)
    s = dataclasses.replace(Shapes(), batch=len(LENGTHS), frames=max(LENGTHS), image=a.image)
    r = measure(a.kind, s, LENGTHS, iters=a.iters)
    r.update(kind=a.kind, shapes=s.describe(), date=common.utc_now(), machine=common.machine(),
             loadavg=common.loadavg())
    print(f"{a.kind} step, clips {r['lengths']} padded to {s.frames} ({r['slots']} slots, {r['valid_frames']} "
          f"valid, {r['packed_frames']} packed): padded {r['padded_s']:.3f} s, packed {r['packed_s']:.3f} s "
          f"-> {r['speedup']:.2f}x")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == "__main__":
    main()
