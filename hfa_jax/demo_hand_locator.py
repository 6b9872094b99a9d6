"""A stand-in for DINOv2 on SynthSign: pretrain a small ViT to locate the signer's hands.

HFA starts from a pretrained DINOv2 ViT-S/14 that stays frozen apart from LoRA on its last blocks
(docs/models_and_weights.md); the pseudo-gloss and alignment losses only shape the layers above it. The CPU demo has
no pretrained weights, and a randomly initialised ViT does not learn hand positions from the
video-level pseudo-gloss bags within a CPU budget (measured: dev pseudo-gloss recall stays at the
label-frequency prior after 2,500 steps, while the same temporal encoder and head reach 0.8 on
the renderer's hand positions). So the demo first gives its tiny ViT what DINOv2 gives the real
model, generic features that see where the hands are and what shape they make:

    frames of the *training* split  ->  ViT CLS  ->  Linear: both hand centres (x, y),  MSE
                                                 ->  Linear: both handshapes (8 classes), CE

with the renderer's per-frame hand positions and handshapes (``extras/train/<name>.json``) as
targets; never the glosses, the sentences or the dev/test videos. Random crops (the targets move
with the crop) match the training-time input. The result is written as a Hugging Face DINOv2
folder, which the pretraining stage imports through ``config.weights.vit`` exactly like real
DINOv2 weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfa_jax.data import augment, pipeline
from hfa_jax.errors import DataError
from hfa_jax.models import vit as vit_lib
from hfa_jax.weights import dinov2


@dataclasses.dataclass
class HandFrames:
    frames: np.ndarray  # [N, H, W, 3] uint8
    hands: np.ndarray  # [N, 4] float32: left x, left y, right x, right y in [0, 1] of the frame
    shapes: np.ndarray  # [N, 2] int32: handshape ids (data_prep.synthsign.lexicon.HANDSHAPES)


def load_hand_frames(dataset_dir: str, synthsign_root: str, split: str = "train",
                     progress: bool = True) -> HandFrames:
    """Every frame of ``split`` (decoded from the ArrayRecord dataset) with its SynthSign hand labels."""
    from tqdm import tqdm

    from hfa_jax.data.hand_targets import load_synthsign_extras

    src = pipeline.open_split(dataset_dir, split)
    frames, hands, shapes = [], [], []
    for i in tqdm(range(len(src)), desc=f"hand frames ({split})", disable=not progress):
        ex = src[i]
        path = os.path.join(synthsign_root, "extras", split, f"{ex['name']}.json")
        if not os.path.isfile(path):
            raise DataError(f"{path}: SynthSign extras missing for {split}/{ex['name']}; regenerate the SynthSign tree")
        extras = load_synthsign_extras(path, num_frames=int(ex["num_frames"]))
        frames.append(pipeline.decode_frames(ex["frames"]))
        hands.append(np.asarray(extras["hand_traj"], np.float32).reshape(-1, 4))
        shapes.append(np.asarray(extras["handshape"], np.int32).reshape(-1, 2))
    if not frames:
        raise DataError(f"{dataset_dir}: split {split!r} is empty; nothing to pretrain the frame encoder on")
    return HandFrames(np.concatenate(frames), np.concatenate(hands), np.concatenate(shapes))


def pretrain(data: HandFrames, cfg: vit_lib.ViTConfig, out_dir: str, *, crop_size: int, steps: int = 600,
             batch_size: int = 64, lr: float = 2e-3, seed: int = 0, num_handshapes: int = 8,
             progress: bool = True) -> dict:
    """Trains a ViT of ``cfg``'s architecture (every block, no LoRA) on ``data`` and writes it to
    ``out_dir`` as a Hugging Face DINOv2 folder. Returns ``{"hand_mse", "hand_var", "shape_acc",
    "seconds"}`` on a held-out tenth of the frames (hand_var: the MSE of predicting the mean)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    cfg = dataclasses.replace(cfg, lora_rank=0, train_all_blocks=True)
    model = vit_lib.ViT(cfg)
    n, h, w = data.frames.shape[:3]
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    held, train = order[: max(1, n // 10)], order[max(1, n // 10):]
    params = {
        "vit": model.init(jax.random.PRNGKey(seed), jnp.zeros((1, crop_size, crop_size, 3)))["params"],
        "hand": {"w": jnp.zeros((cfg.width, 4)), "b": jnp.asarray(data.hands[train].mean(0))},
        "shape": {"w": jnp.zeros((cfg.width, 2 * num_handshapes)), "b": jnp.zeros((2 * num_handshapes,))},
    }
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps), weight_decay=1e-2)
    opt_state = opt.init(params)

    def heads(p, pixels):
        cls = model.apply({"params": p["vit"]}, pixels, True)[:, 0]
        hand = cls @ p["hand"]["w"] + p["hand"]["b"]
        shape = (cls @ p["shape"]["w"] + p["shape"]["b"]).reshape(-1, 2, num_handshapes)
        return hand, shape

    def crop(frames, hands, oy, ox):
        # Per-frame crop offsets; the hand centres move with the crop (pixel -> crop coordinates).
        pix = jax.vmap(lambda f, y, x: jax.lax.dynamic_slice(f, (y, x, 0), (crop_size, crop_size, 3)))(frames, oy, ox)
        xs = (hands[:, 0::2] * w - ox[:, None]) / crop_size
        ys = (hands[:, 1::2] * h - oy[:, None]) / crop_size
        return augment.normalize(pix), jnp.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1)

    def loss_fn(p, pixels, hands, shapes):
        hand, shape = heads(p, pixels)
        ce = optax.softmax_cross_entropy_with_integer_labels(shape, shapes).mean()
        return jnp.mean((hand - hands) ** 2) * 100.0 + ce

    @jax.jit
    def step(p, s, frames, hands, shapes, oy, ox):
        pixels, hands = crop(frames, hands, oy, ox)
        loss, g = jax.value_and_grad(loss_fn)(p, pixels, hands, shapes)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    @jax.jit
    def predict(p, frames, hands):
        b = frames.shape[0]
        oy = jnp.full((b,), (h - crop_size) // 2)
        ox = jnp.full((b,), (w - crop_size) // 2)
        pixels, hands = crop(frames, hands, oy, ox)
        hand, shape = heads(p, pixels)
        return jnp.mean((hand - hands) ** 2, axis=1), jnp.argmax(shape, -1), hands

    bar = tqdm(range(steps), desc="frame encoder (hand locator)", disable=not progress)
    for _ in bar:
        idx = train[rng.integers(0, len(train), batch_size)]
        oy = rng.integers(0, h - crop_size + 1, batch_size)
        ox = rng.integers(0, w - crop_size + 1, batch_size)
        params, opt_state, loss = step(params, opt_state, data.frames[idx], data.hands[idx], data.shapes[idx], oy, ox)
        bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
    mse, acc, targets = [], [], []
    for i in range(0, len(held), 256):
        idx = held[i:i + 256]
        m, s, t = predict(params, data.frames[idx], data.hands[idx])
        mse.append(np.asarray(m))
        acc.append(np.asarray(s) == data.shapes[idx])
        targets.append(np.asarray(t))
    targets_all = np.concatenate(targets)
    result = {
        "hand_mse": float(np.concatenate(mse).mean()),
        "hand_var": float(((targets_all - targets_all.mean(0)) ** 2).mean()),
        "shape_acc": float(np.concatenate(acc).mean()),
        "frames": int(n),
        "steps": int(steps),
    }
    dinov2.to_hf(jax.device_get(params["vit"]), cfg, out_dir)
    result["seconds"] = time.perf_counter() - t0
    with open(os.path.join(out_dir, "hand_locator.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result
