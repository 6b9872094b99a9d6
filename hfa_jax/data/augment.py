"""Clip augmentation on the accelerator: crop 224, random affine, ImageNet normalisation.

Host batches arrive as ``uint8`` (4x less host->device traffic than float32); everything here runs
inside ``jit`` on the device.

Training (docs/data.md; elsobhano/MLLM ``dataset/slt_dataset.py`` draws once per clip with vidaug):
a random 224 crop of the 256x256 frame, then, each with probability ``p`` = 0.5 and drawn
independently, a rotation by U(-30°, 30°), a rescale by U(0.8, 1.2) and a translation by integer
U{-10..10} px per axis. ONE draw per clip: all frames of a clip get the same transform, so motion
between frames is preserved. Evaluation: the centre crop.

The crop and the three geometric steps are composed into one affine map and applied with a single
bilinear resampling (no compounding of interpolation blur). For output pixel ``(r, c)`` of the crop,
the source position in the stored frame is::

    q = (crop_y + r, crop_x + c)                      # position in the augmented full frame
    p = centre + R(angle)^-1 (q - centre - shift) / scale

with ``centre = ((H-1)/2, (W-1)/2)`` in pixel-index coordinates (pixel i has its centre at i).
Positive angles rotate the content counter-clockwise on screen, as PIL's ``Image.rotate``;
``scale > 1`` enlarges the content; positive shifts move the content right/down.

How the map is sampled (``augment(method=...)``, ``data.augment.method``): "gather" takes the
four bilinear taps of every output pixel from the frame (the CPU default); "matmul" applies it as
two interpolation matmuls per clip (``warp_matmul``: exact without rotation, a bounded two-pass
approximation with one; gathers cost an accelerator ~30x the memory traffic). The random
transform is the same for both.

Output precision: like PIL's resamplers (the reference's ops), the warped frame is rounded to
8 bits; ``augment`` can hand back those uint8 crops (``normalize_output=False``) so that the
ImageNet normalisation fuses into the model's first op (the ViT's patch extraction) instead of
writing a float32 copy of every frame: four times the bytes, and on a CPU the dominant cost.

Padding: batches are padded up to a bucket length with all-zero frames. With a ``frame_mask`` and
``padding_chunk`` > 0 the warp runs chunk by chunk along time and skips chunks with no real
frame; they come out black, as warping zeros gives, so values are unchanged.

Border handling: the frame is treated as embedded in an infinite black canvas. Bilinear weights of
neighbours outside the frame multiply 0 (black, before normalisation), like PIL's
``fillcolor=0`` used by the reference's vidaug ops; at the very edge this gives a one-pixel
blend towards black rather than PIL's hard cut. Identity parameters sample exact integer
positions, so they reproduce the crop bit for bit.

Note on the reference: vidaug's ``RandomResize`` changes the image size and the frames are then
resized back to 256x256, which cancels the zoom; we implement the rescale docs/data.md describes
(a zoom about the frame centre).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from hfa_jax.errors import ConfigError

# torchvision/ImageNet statistics, applied after scaling to [0, 1] (ToTensor + Normalize).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AffineParams(NamedTuple):
    """Per-clip transform, each field ``[B]``: crop offsets (int32), angle in degrees, scale and
    shift in pixels (float32)."""

    crop_y: jax.Array
    crop_x: jax.Array
    angle_deg: jax.Array
    scale: jax.Array
    shift_y: jax.Array
    shift_x: jax.Array


def identity_params(batch: int, height: int, width: int, crop_size: int) -> AffineParams:
    """Centre crop, no rotation/scale/shift (what evaluation uses)."""
    zeros = jnp.zeros((batch,), jnp.float32)
    return AffineParams(
        crop_y=jnp.full((batch,), (height - crop_size) // 2, jnp.int32),
        crop_x=jnp.full((batch,), (width - crop_size) // 2, jnp.int32),
        angle_deg=zeros,
        scale=jnp.ones((batch,), jnp.float32),
        shift_y=zeros,
        shift_x=zeros,
    )


def sample_params(
    rng: jax.Array,
    batch: int,
    *,
    height: int,
    width: int,
    crop_size: int = 224,
    p: float = 0.5,
    max_rotate_deg: float = 30.0,
    max_scale: float = 0.2,
    max_translate_px: int = 10,
) -> AffineParams:
    """One random training transform per clip (see module docstring)."""
    k = jax.random.split(rng, 8)
    crop_y = jax.random.randint(k[0], (batch,), 0, height - crop_size + 1, jnp.int32)
    crop_x = jax.random.randint(k[1], (batch,), 0, width - crop_size + 1, jnp.int32)
    do_rot = jax.random.bernoulli(k[2], p, (batch,))
    do_scale = jax.random.bernoulli(k[3], p, (batch,))
    do_shift = jax.random.bernoulli(k[4], p, (batch,))
    angle = jax.random.uniform(k[5], (batch,), jnp.float32, -max_rotate_deg, max_rotate_deg)
    scale = jax.random.uniform(k[6], (batch,), jnp.float32, 1.0 - max_scale, 1.0 + max_scale)
    # vidaug RandomTranslate draws integer pixel offsets (random.randint(-x, x)).
    shift = jax.random.randint(
        k[7], (2, batch), -max_translate_px, max_translate_px + 1, jnp.int32
    ).astype(jnp.float32)
    return AffineParams(
        crop_y=crop_y,
        crop_x=crop_x,
        angle_deg=jnp.where(do_rot, angle, 0.0),
        scale=jnp.where(do_scale, scale, 1.0),
        shift_y=jnp.where(do_shift, shift[0], 0.0),
        shift_x=jnp.where(do_shift, shift[1], 0.0),
    )


def source_coords(
    params: AffineParams, *, height: int, width: int, crop_size: int
) -> tuple[jax.Array, jax.Array]:
    """Source (row, col) positions of every output pixel: two ``[B, S, S]`` float32 arrays."""
    s = crop_size
    r = jnp.arange(s, dtype=jnp.float32)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    # Position in the augmented full frame, relative to the centre, minus the shift.
    qy = (params.crop_y.astype(jnp.float32)[:, None, None] + r[None, :, None]) - cy
    qx = (params.crop_x.astype(jnp.float32)[:, None, None] + r[None, None, :]) - cx
    qy = qy - params.shift_y[:, None, None]
    qx = qx - params.shift_x[:, None, None]
    theta = jnp.deg2rad(params.angle_deg)[:, None, None]
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    inv_s = 1.0 / params.scale[:, None, None]
    # Inverse of a counter-clockwise (on screen, y down) rotation about the centre.
    py = (cos * qy + sin * qx) * inv_s + cy
    px = (cos * qx - sin * qy) * inv_s + cx
    shape = (params.crop_y.shape[0], s, s)
    return jnp.broadcast_to(py, shape), jnp.broadcast_to(px, shape)


def _bilinear_clip(frames: jax.Array, sy: jax.Array, sx: jax.Array) -> jax.Array:
    """Samples one clip at shared positions: frames ``[T, H, W, C]`` uint8, sy/sx ``[S, S]`` ->
    ``[T, S, S, C]`` float32 in [0, 255]; outside the frame is black (zero)."""
    t, h, w, c = frames.shape
    flat = frames.reshape(t, h * w, c)
    y0 = jnp.floor(sy)
    x0 = jnp.floor(sx)
    wy = sy - y0
    wx = sx - x0
    y0 = y0.astype(jnp.int32)
    x0 = x0.astype(jnp.int32)
    out = jnp.zeros((t, sy.size, c), jnp.float32)
    for dy, dx, weight in (
        (0, 0, (1 - wy) * (1 - wx)),
        (0, 1, (1 - wy) * wx),
        (1, 0, wy * (1 - wx)),
        (1, 1, wy * wx),
    ):
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        idx = (jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)).reshape(-1)
        weight = jnp.where(inside, weight, 0.0).reshape(1, -1, 1)
        # Gather uint8 (cheaper), convert after: positions are shared by all frames of the clip.
        # idx is already clipped; mode="clip" spares jnp.take's default out-of-bounds fill
        # masking (about 2x faster on CPU).
        pix = jnp.take(flat, idx, axis=1, mode="clip")
        out = out + pix.astype(jnp.float32) * weight
    return out.reshape(t, sy.shape[0], sy.shape[1], c)


def warp(
    frames: jax.Array, params: AffineParams, *, crop_size: int = 224
) -> jax.Array:
    """Applies per-clip affine params: frames ``[B, T, H, W, 3]`` uint8 -> ``[B, T, S, S, 3]``
    float32 in [0, 255] (not normalised)."""
    _, _, h, w, _ = frames.shape
    sy, sx = source_coords(params, height=h, width=w, crop_size=crop_size)
    return jax.vmap(_bilinear_clip)(frames, sy, sx)


def _warp_clip_uint8(frames: jax.Array, sy: jax.Array, sx: jax.Array) -> jax.Array:
    """One clip, rounded to 8 bits as PIL's resamplers do: ``[T, H, W, C]`` -> ``[T, S, S, C]``
    uint8. The bilinear sum is a convex combination of uint8 values (and black), so no clip."""
    return jnp.round(_bilinear_clip(frames, sy, sx)).astype(jnp.uint8)


def chunk_length(num_frames: int, target: int) -> int:
    """The largest divisor of ``num_frames`` that is at most ``target``: chunks tile the clip."""
    return max(d for d in range(1, min(target, num_frames) + 1) if num_frames % d == 0)


# Chunk length the trainer uses on a single CPU device (`data.augment.padding_chunk=-1`).
CPU_PADDING_CHUNK = 8

# Largest translation (px) the slice path of `warp_uint8` handles; beyond it, the bilinear path.
_SLICE_PAD = 16


def warp_uint8(
    frames: jax.Array,
    params: AffineParams,
    *,
    crop_size: int = 224,
    frame_mask: jax.Array | None = None,
    padding_chunk: int = 0,
) -> jax.Array:
    """``warp`` rounded to uint8: frames ``[B, T, H, W, 3]`` uint8 -> ``[B, T, S, S, 3]`` uint8.

    With ``frame_mask`` (``[B, T]``, True = real frame) and ``padding_chunk`` > 0, clips are
    warped in chunks of ``chunk_length(T, padding_chunk)`` frames, one after another, and chunks
    without a real frame are skipped (black), and clips whose transform is an integer
    translation (no rotation or rescale) are sliced instead of resampled. The chunks run
    sequentially, which pays where the device is a CPU (no kernel launches; the warp competes
    with data loading for the same cores) and costs launch latency on a GPU, hence opt-in."""
    b, t, h, w, c = frames.shape
    sy, sx = source_coords(params, height=h, width=w, crop_size=crop_size)
    if frame_mask is None or padding_chunk <= 0:
        return jax.vmap(_warp_clip_uint8)(frames, sy, sx)
    if frame_mask.shape != (b, t):
        raise ValueError(f"frame_mask has shape {frame_mask.shape}, frames have [B, T] = {(b, t)}")
    chunk = chunk_length(t, padding_chunk)
    n = t // chunk
    has_real = frame_mask.reshape(b * n, chunk).any(axis=-1)
    clip_of_chunk = jnp.repeat(jnp.arange(b), n)
    # Clips drawn without rotation and rescale (a quarter of them at p=0.5, all of them at p=0)
    # are an integer translation of a crop: a slice, no resampling. Same values as the
    # bilinear path (whose weights are then exactly 1 and 0), at a fraction of the cost.
    top = params.crop_y - params.shift_y.astype(jnp.int32)
    left = params.crop_x - params.shift_x.astype(jnp.int32)
    pad = _SLICE_PAD
    is_slice = (
        (params.angle_deg == 0) & (params.scale == 1)
        & (params.shift_y == jnp.round(params.shift_y)) & (params.shift_x == jnp.round(params.shift_x))
        & (top >= -pad) & (top <= h - crop_size + pad) & (left >= -pad) & (left <= w - crop_size + pad)
    )

    def translated_crop(part, clip):
        padded = jnp.pad(part, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # black outside
        return jax.lax.dynamic_slice(
            padded, (0, top[clip] + pad, left[clip] + pad, 0), (chunk, crop_size, crop_size, c)
        )

    def one_chunk(args):
        part, clip, real = args
        branch = jnp.where(real, jnp.where(is_slice[clip], 1, 2), 0)
        return jax.lax.switch(
            branch,
            [
                lambda: jnp.zeros((chunk, crop_size, crop_size, c), jnp.uint8),
                lambda: translated_crop(part, clip),
                lambda: _warp_clip_uint8(part, sy[clip], sx[clip]),
            ],
        )

    out = jax.lax.map(one_chunk, (frames.reshape(b * n, chunk, h, w, c), clip_of_chunk, has_real))
    return out.reshape(b, t, crop_size, crop_size, c)


# ----------------------------------------------------------------------------------------------
# The same warp as two interpolation matmuls (no gathers): method "matmul"
# ----------------------------------------------------------------------------------------------

METHODS = ("auto", "gather", "matmul", "matmul_f32")


def resolve_method(method: str, backend: str | None = None) -> str:
    """The warp ``method`` to run: "auto" is "gather" on a CPU (today's path, the demo's exact
    numbers) and "matmul" on an accelerator. Raises ConfigError for an unknown name."""
    if method not in METHODS:
        raise ConfigError(f"data.augment.method={method!r} is not one of {METHODS}")
    if method != "auto":
        return method
    return "gather" if (backend or jax.default_backend()) == "cpu" else "matmul"


def _hat(distance: jax.Array) -> jax.Array:
    """Linear-interpolation weight of a sample ``distance`` px away: 1 - |d| inside (-1, 1), else 0.
    For a position p with x0 = floor(p) it gives exactly the bilinear weights 1 - (p - x0) to x0 and
    p - x0 to x0 + 1, the same operations as ``_bilinear_clip``."""
    return jnp.maximum(0.0, 1.0 - jnp.abs(distance))


def interpolation_matrices(
    params: AffineParams, *, height: int, width: int, crop_size: int
) -> tuple[jax.Array, jax.Array]:
    """The two resampling passes of ``warp_matmul`` as dense weight matrices.

    Returns ``mx [B, H, S, W]`` (pass 1, along x: row ``y`` of the frame resampled at the S
    positions ``g(y, c)``) and ``my [B, S, S, H]`` (pass 2, along y, per output column ``c``:
    ``my[b, c, r, y]`` weights row ``y`` of pass 1's result for output pixel ``(r, c)``).

    The affine map sends output pixel (r, c) to source (py, px) = ``source_coords``. Pass 2 samples
    rows at ``py(r, c)``, exactly as the bilinear warp does. Pass 1 must then provide, for each
    source row y and column c, the frame at the x where the output column c crosses row y:
    ``g(y, c) = px(0, c) + (dpx/dpy)(y - py(0, c))`` with ``dpx/dpy = -tan(angle)`` along a
    column. The bilinear warp instead reads both rows y0 and y0 + 1 at ``px(r, c)`` itself; the two
    differ by ``tan(angle) * wy`` (at most ``|tan(angle)|``) px along x, so the two-pass result is
    the bilinear one exactly (up to float summation order) whenever the angle is 0, and otherwise
    differs by at most ``|tan(angle)| / 2`` times the local horizontal gradient (grey levels per
    px). Positions outside the frame have no column in the matrix: black, as in the bilinear warp.
    """
    s = crop_size
    py, px = source_coords(params, height=height, width=width, crop_size=s)  # [B, S(r), S(c)]
    theta = jnp.deg2rad(params.angle_deg)
    slope = -(jnp.sin(theta) / jnp.cos(theta))[:, None, None]  # -0.0 at angle 0: g == px exactly
    ys = jnp.arange(height, dtype=jnp.float32)
    xs = jnp.arange(width, dtype=jnp.float32)
    g = px[:, :1, :] + slope * (ys[None, :, None] - py[:, :1, :])  # [B, H, S]
    mx = _hat(xs[None, None, None, :] - g[..., None])  # [B, H, S, W]
    my = _hat(ys[None, None, None, :] - jnp.swapaxes(py, 1, 2)[..., None])  # [B, S(c), S(r), H]
    return mx, my


def warp_matmul(
    frames: jax.Array, params: AffineParams, *, crop_size: int = 224, dtype: jnp.dtype = jnp.bfloat16
) -> jax.Array:
    """The affine warp as two batched matmuls per clip, rounded to 8 bits: frames
    ``[B, T, H, W, 3]`` uint8 -> ``[B, T, S, S, 3]`` uint8 (same contract as ``warp_uint8``).

    Pass 1 resamples every frame row along x (``[S, W]`` weights per row), pass 2 every column
    along y (``[S, H]`` weights per column); all frames and channels of a clip share the weights,
    so each pass is one matmul with the clip's ``T * 3`` images as the wide dimension: MXU/tensor
    core work instead of four gathers. ``dtype`` is the operand type (bfloat16: uint8 values are
    exact, the weights and pass 1's output carry 8 significant bits; float32: full precision),
    accumulation is float32. Accuracy against ``warp_uint8`` is stated in
    ``interpolation_matrices`` and docs/data.md and tested in tests/data/test_augment.py.
    """
    _, _, h, w, _ = frames.shape
    mx, my = interpolation_matrices(params, height=h, width=w, crop_size=crop_size)
    dtype = jnp.dtype(dtype)
    precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
    rows = jnp.einsum("bycx,btyxk->btyck", mx.astype(dtype), frames.astype(dtype),
                      precision=precision, preferred_element_type=jnp.float32)
    out = jnp.einsum("bcry,btyck->btrck", my.astype(dtype), rows.astype(dtype),
                     precision=precision, preferred_element_type=jnp.float32)
    # Rounded weights can sum to slightly more than 1: clip before the cast.
    return jnp.round(jnp.clip(out, 0.0, 255.0)).astype(jnp.uint8)


def normalize(pixels: jax.Array) -> jax.Array:
    """[0, 255] -> ImageNet-normalised float32 (torchvision ToTensor + Normalize)."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (pixels.astype(jnp.float32) / 255.0 - mean) / std


@functools.partial(
    jax.jit,
    static_argnames=(
        "train", "crop_size", "p", "max_rotate_deg", "max_scale", "max_translate_px",
        "padding_chunk", "normalize_output", "method",
    ),
)
def augment(
    rng: jax.Array,
    frames: jax.Array,
    *,
    train: bool,
    crop_size: int = 224,
    p: float = 0.5,
    max_rotate_deg: float = 30.0,
    max_scale: float = 0.2,
    max_translate_px: int = 10,
    frame_mask: jax.Array | None = None,
    padding_chunk: int = 0,
    normalize_output: bool = True,
    method: str = "gather",
) -> jax.Array:
    """Crops (+ augments in training) and normalises a batch of clips.

    Args:
      rng: PRNG key (ignored when ``train`` is False).
      frames: ``[B, T, H, W, 3]`` uint8, H and W >= crop_size (256x256 in our datasets).
      train: random crop + random affine (one draw per clip) if True, centre crop if False.
      frame_mask, padding_chunk: skip warping chunks of padding frames (see ``warp_uint8``);
        values are unchanged when the padding frames are zeros, as the pipeline writes them.
      normalize_output: False returns the uint8 crops; apply ``normalize`` where they are
        consumed (inside the model's jit it fuses into the patch extraction).
      method: how the training warp is computed (:data:`METHODS`, :func:`resolve_method`):
        "gather" (bilinear gathers, chunked as above; the default), "matmul" (two interpolation
        matmuls in bfloat16, ``warp_matmul``; ``frame_mask``/``padding_chunk`` are not used),
        "matmul_f32" (the same in float32), "auto" ("gather" on a CPU, else "matmul"). The
        random transform is the same for every method.

    Returns:
      ``[B, T, crop_size, crop_size, 3]`` float32, ImageNet mean/std normalised (uint8 crops
      with ``normalize_output=False``).
    """
    b, _, h, w, _ = frames.shape
    if h < crop_size or w < crop_size:
        raise ValueError(f"frames of {h}x{w} are smaller than crop_size={crop_size}")
    finish = normalize if normalize_output else (lambda x: x)
    if not train:
        oy, ox = (h - crop_size) // 2, (w - crop_size) // 2
        return finish(frames[:, :, oy : oy + crop_size, ox : ox + crop_size])
    params = sample_params(
        rng,
        b,
        height=h,
        width=w,
        crop_size=crop_size,
        p=p,
        max_rotate_deg=max_rotate_deg,
        max_scale=max_scale,
        max_translate_px=max_translate_px,
    )
    method = resolve_method(method)
    if method == "gather":
        return finish(warp_uint8(frames, params, crop_size=crop_size, frame_mask=frame_mask,
                                 padding_chunk=padding_chunk))
    dtype = jnp.float32 if method == "matmul_f32" else jnp.bfloat16
    return finish(warp_matmul(frames, params, crop_size=crop_size, dtype=dtype))
