"""Tests for hfa_jax.data.augment against PIL, NumPy and jax.scipy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy import ndimage
from PIL import Image

from hfa_jax.data import augment as A

H = W = 64
CROP = 56
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def smooth_image(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """A smooth RGB test pattern (bilinear interpolation is well-conditioned on it)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ph = np.random.default_rng(seed).uniform(0, 6, 3)
    img = np.stack(
        [
            127 + 100 * np.sin(xx / 5.0 + ph[0]),
            127 + 100 * np.cos(yy / 7.0 + ph[1]),
            127 + 60 * np.sin((xx + 2 * yy) / 9.0 + ph[2]),
        ],
        -1,
    )
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def params(**kw) -> A.AffineParams:
    p = A.identity_params(1, H, W, CROP)
    return p._replace(**{k: jnp.asarray([v], getattr(p, k).dtype) for k, v in kw.items()})


def interior_mask(p: A.AffineParams, margin: float = 1.5) -> np.ndarray:
    """Output pixels whose source lies at least `margin` px inside the frame, or clearly outside
    (where every implementation gives black): excludes only the one-pixel seam at the border."""
    sy, sx = (np.asarray(a)[0] for a in A.source_coords(p, height=H, width=W, crop_size=CROP))
    inside = (sy >= margin) & (sy <= H - 1 - margin) & (sx >= margin) & (sx <= W - 1 - margin)
    outside = (sy < -margin) | (sy > H - 1 + margin) | (sx < -margin) | (sx > W - 1 + margin)
    return inside | outside


def test_identity_params_reproduce_crops_exactly():
    img = smooth_image()
    out = np.asarray(A.warp(jnp.asarray(img)[None, None], params(), crop_size=CROP))[0, 0]
    o = (H - CROP) // 2
    np.testing.assert_array_equal(out, img[o : o + CROP, o : o + CROP].astype(np.float32))
    # Any crop offset with no rotation/scale/shift is an exact slice.
    out = np.asarray(A.warp(jnp.asarray(img)[None, None], params(crop_y=0, crop_x=8), crop_size=CROP))
    np.testing.assert_array_equal(out[0, 0], img[0:CROP, 8 : 8 + CROP].astype(np.float32))


@pytest.mark.parametrize("angle", [20.0, -13.0])
def test_rotation_matches_pil_rotate(angle):
    img = smooth_image(1)
    p = params(angle_deg=angle)
    out = np.asarray(A.warp(jnp.asarray(img)[None, None], p, crop_size=CROP))[0, 0]
    # PIL rotates counter-clockwise about the image centre, bilinear, black fill (vidaug's op).
    ref = np.asarray(Image.fromarray(img).rotate(angle, resample=Image.BILINEAR), np.float32)
    o = (H - CROP) // 2
    ref = ref[o : o + CROP, o : o + CROP]
    m = interior_mask(p)
    assert m.mean() > 0.9
    # PIL rounds to uint8: at most one grey level apart.
    np.testing.assert_allclose(out[m], ref[m], atol=1.01)


def test_integer_translation_is_an_exact_shift():
    img = smooth_image(2)
    p = params(shift_y=3.0, shift_x=-5.0, crop_y=4, crop_x=4)
    out = np.asarray(A.warp(jnp.asarray(img)[None, None], p, crop_size=CROP))[0, 0]
    # Content moves down 3 and left 5: out[r, c] = img[4 + r - 3, 4 + c + 5], black outside.
    ref = np.zeros((CROP, CROP, 3), np.float32)
    for r in range(CROP):
        for c in range(CROP):
            y, x = 4 + r - 3, 4 + c + 5
            if 0 <= y < H and 0 <= x < W:
                ref[r, c] = img[y, x]
    np.testing.assert_array_equal(out, ref)


def test_scale_rotation_translation_match_pil_affine():
    img = smooth_image(3)
    angle, scale, ty, tx, oy, ox = 17.0, 1.15, -4.0, 6.0, 2, 5
    p = params(angle_deg=angle, scale=scale, shift_y=ty, shift_x=tx, crop_y=oy, crop_x=ox)
    out = np.asarray(A.warp(jnp.asarray(img)[None, None], p, crop_size=CROP))[0, 0]
    # Reference: PIL's affine resampler with the inverse map written in PIL's continuous
    # coordinates (pixel i covers [i, i+1]); forward map = rotate CCW by `angle`, zoom `scale`
    # about the centre, then shift (tx, ty).
    t = np.deg2rad(angle)
    c = W / 2.0  # centre in PIL coordinates (H == W)
    # inverse: X_in = c + (cos*(X-tx-c) - sin*(Y-ty-c))/s ; Y_in = c + (sin*(X-tx-c) + cos*(Y-ty-c))/s
    a, b = np.cos(t) / scale, -np.sin(t) / scale
    d, e = np.sin(t) / scale, np.cos(t) / scale
    cc = c - a * (tx + c) - b * (ty + c)
    f = c - d * (tx + c) - e * (ty + c)
    ref_full = Image.fromarray(img).transform(
        (W, H), Image.AFFINE, (a, b, cc, d, e, f), resample=Image.BILINEAR, fillcolor=0
    )
    ref = np.asarray(ref_full, np.float32)[oy : oy + CROP, ox : ox + CROP]
    m = interior_mask(p)
    assert m.mean() > 0.8
    np.testing.assert_allclose(out[m], ref[m], atol=1.01)


def test_matches_jax_scipy_map_coordinates_including_borders():
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (2, 3, H, W, 3), dtype=np.uint8)
    p = A.sample_params(jax.random.key(7), 2, height=H, width=W, crop_size=CROP, p=1.0)
    out = np.asarray(A.warp(jnp.asarray(frames), p, crop_size=CROP))
    sy, sx = A.source_coords(p, height=H, width=W, crop_size=CROP)
    def sample(image, y, x):  # one channel of one frame: [H, W] at [S, S] positions
        return ndimage.map_coordinates(image, [y, x], order=1, mode="constant", cval=0.0)

    per_channel = jax.vmap(sample, in_axes=(2, None, None), out_axes=2)
    per_frame = jax.vmap(per_channel, in_axes=(0, None, None))
    ref = jax.jit(jax.vmap(per_frame))(jnp.asarray(frames, jnp.float32), sy, sx)
    np.testing.assert_allclose(out, np.asarray(ref), atol=2e-3)


def test_one_draw_per_clip():
    # Clips whose frames are all the same image: every output frame of a clip must be identical
    # (same transform for the whole clip), while different clips get different transforms.
    img = smooth_image(5)
    frames = jnp.asarray(np.broadcast_to(img, (6, 4, H, W, 3)))
    out = np.asarray(A.augment(jax.random.key(0), frames, train=True, crop_size=CROP))
    assert out.shape == (6, 4, CROP, CROP, 3) and out.dtype == np.float32
    for t in range(1, 4):
        np.testing.assert_array_equal(out[:, t], out[:, 0])
    distinct = {out[b, 0].tobytes() for b in range(6)}
    assert len(distinct) == 6


def test_eval_is_deterministic_centre_crop_normalised():
    rng = np.random.default_rng(6)
    frames = rng.integers(0, 256, (2, 3, H, W, 3), dtype=np.uint8)
    a = np.asarray(A.augment(jax.random.key(0), jnp.asarray(frames), train=False, crop_size=CROP))
    b = np.asarray(A.augment(jax.random.key(1), jnp.asarray(frames), train=False, crop_size=CROP))
    np.testing.assert_array_equal(a, b)
    o = (H - CROP) // 2
    ref = (frames[:, :, o : o + CROP, o : o + CROP].astype(np.float32) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(a, ref, rtol=1e-6, atol=1e-6)


def test_train_with_p0_is_a_random_crop():
    frames = np.random.default_rng(8).integers(0, 256, (4, 2, H, W, 3), dtype=np.uint8)
    key = jax.random.key(3)
    out = np.asarray(A.augment(key, jnp.asarray(frames), train=True, crop_size=CROP, p=0.0))
    p = A.sample_params(key, 4, height=H, width=W, crop_size=CROP, p=0.0)
    for b in range(4):
        y, x = int(p.crop_y[b]), int(p.crop_x[b])
        ref = (frames[b, :, y : y + CROP, x : x + CROP].astype(np.float32) / 255.0 - MEAN) / STD
        np.testing.assert_allclose(out[b], ref, rtol=1e-6, atol=1e-6)


def test_parameter_distribution():
    n = 4000
    p = A.sample_params(jax.random.key(11), n, height=256, width=256, crop_size=224)
    angle, scale = np.asarray(p.angle_deg), np.asarray(p.scale)
    sy, sx = np.asarray(p.shift_y), np.asarray(p.shift_x)
    cy, cx = np.asarray(p.crop_y), np.asarray(p.crop_x)
    for applied in (angle != 0, scale != 1, (sy != 0) | (sx != 0)):
        # p = 0.5 each (a drawn shift of exactly (0, 0) is rare: 1/441).
        assert abs(applied.mean() - 0.5) < 0.04
    assert np.abs(angle).max() <= 30 and np.abs(angle).max() > 29
    assert scale.min() >= 0.8 - 1e-6 and scale.max() <= 1.2 + 1e-6
    assert np.all(sy == np.round(sy)) and np.abs(sy).max() == 10 and np.abs(sx).max() == 10
    assert cy.min() == 0 and cy.max() == 32 and cx.min() == 0 and cx.max() == 32
    # Independent draws: rotation and rescale co-occur about a quarter of the time.
    assert abs(((angle != 0) & (scale != 1)).mean() - 0.25) < 0.04


def test_train_output_is_the_warp_rounded_to_8_bits_then_normalised():
    frames = np.random.default_rng(9).integers(0, 256, (3, 2, H, W, 3), dtype=np.uint8)
    key = jax.random.key(5)
    out = np.asarray(A.augment(key, jnp.asarray(frames), train=True, crop_size=CROP, p=1.0))
    crops = np.asarray(A.augment(key, jnp.asarray(frames), train=True, crop_size=CROP, p=1.0,
                                 normalize_output=False))
    assert crops.dtype == np.uint8
    p = A.sample_params(key, 3, height=H, width=W, crop_size=CROP, p=1.0)
    warped = np.asarray(A.warp(jnp.asarray(frames), p, crop_size=CROP))
    # Rounded like PIL's 8-bit resamplers: never more than half a grey level from the float warp
    # (plus float noise where a value sits on a .5 boundary), and not simply truncated.
    err = crops.astype(np.float32) - warped
    assert np.abs(err).max() <= 0.5 + 1e-3
    assert err.min() < -0.4 and err.max() > 0.4
    np.testing.assert_allclose(out, (crops.astype(np.float32) / 255.0 - MEAN) / STD, rtol=1e-6,
                               atol=1e-6)
    # Evaluation crops come back as the raw uint8 centre crop.
    raw = np.asarray(A.augment(None, jnp.asarray(frames), train=False, crop_size=CROP,
                               normalize_output=False))
    o = (H - CROP) // 2
    np.testing.assert_array_equal(raw, frames[:, :, o : o + CROP, o : o + CROP])


@pytest.mark.parametrize("length,chunk", [(12, 4), (12, 8), (7, 3)])
def test_skipping_padding_chunks_changes_nothing(length, chunk):
    # Clips of 1, 5 and `length` real frames; the padding frames are zeros, as the pipeline
    # writes them. Skipped chunks must equal what warping the zeros gives (black).
    rng = np.random.default_rng(10)
    lengths = np.array([1, 5, length])
    frames = rng.integers(0, 256, (3, length, H, W, 3), dtype=np.uint8)
    mask = np.arange(length)[None, :] < lengths[:, None]
    frames[~mask] = 0
    key = jax.random.key(6)
    kw = dict(train=True, crop_size=CROP, p=1.0, normalize_output=False)
    full = np.asarray(A.augment(key, jnp.asarray(frames), **kw)).astype(int)
    skipped = np.asarray(A.augment(key, jnp.asarray(frames), frame_mask=jnp.asarray(mask),
                                   padding_chunk=chunk, **kw)).astype(int)
    # Same per-frame computation, compiled for another shape: XLA may order the float ops of
    # the bilinear sum differently, so a value on a .5 boundary may round the other way.
    diff = np.abs(skipped - full)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    np.testing.assert_array_equal(skipped[~mask], 0)
    # With p=0 (integer sample positions) the crops are identical.
    kw0 = dict(train=True, crop_size=CROP, p=0.0, normalize_output=False)
    np.testing.assert_array_equal(
        np.asarray(A.augment(key, jnp.asarray(frames), frame_mask=jnp.asarray(mask),
                             padding_chunk=chunk, **kw0)),
        np.asarray(A.augment(key, jnp.asarray(frames), **kw0)))
    # Non-zero junk in padding chunks never reaches the output of a fully padded chunk.
    junk = frames.copy()
    junk[~mask] = 200
    out = np.asarray(A.augment(key, jnp.asarray(junk), train=True, crop_size=CROP, p=1.0,
                               frame_mask=jnp.asarray(mask), padding_chunk=chunk,
                               normalize_output=False))
    c = A.chunk_length(length, chunk)
    first_padding_chunk = -(-1 // c) * c  # clip 0 has one real frame
    if first_padding_chunk < length:
        assert not out[0, first_padding_chunk:].any()


def test_chunk_length_tiles_the_clip():
    assert A.chunk_length(64, 8) == 8
    assert A.chunk_length(300, 8) == 6
    assert A.chunk_length(7, 8) == 7
    assert A.chunk_length(13, 4) == 1
    with pytest.raises(ValueError, match="frame_mask"):
        A.augment(jax.random.key(0), jnp.zeros((2, 4, H, W, 3), jnp.uint8), train=True,
                  crop_size=CROP, frame_mask=jnp.ones((2, 5), bool), padding_chunk=2)


def test_integer_translations_are_sliced_with_the_same_values():
    # Chunked warping slices clips whose transform is an integer translation (black outside the
    # frame) and resamples the rest; compare with the bilinear path clip by clip, including shifts
    # at and beyond the slice path's reach (16 px) and a fractional shift (bilinear path).
    rng = np.random.default_rng(12)
    frames = jnp.asarray(rng.integers(1, 256, (6, 4, H, W, 3), dtype=np.uint8))
    f32 = lambda *v: jnp.asarray(v, jnp.float32)  # noqa: E731
    p = A.AffineParams(
        crop_y=jnp.asarray([0, 8, 3, 8, 0, 5], jnp.int32),
        crop_x=jnp.asarray([8, 0, 8, 2, 0, 1], jnp.int32),
        angle_deg=f32(0, 0, 0, 0, 0, 12.0),
        scale=f32(1, 1, 1, 1, 1.1, 1),
        shift_y=f32(16, -16, 20, 2.5, 0, 3),
        shift_x=f32(-3, 16, 0, 0, 0, -4),
    )
    mask = jnp.ones((6, 4), bool)
    sliced = np.asarray(A.warp_uint8(frames, p, crop_size=CROP, frame_mask=mask, padding_chunk=2))
    ref = np.asarray(A.warp_uint8(frames, p, crop_size=CROP))
    np.testing.assert_array_equal(sliced[:3], ref[:3])  # integer translations: exact
    assert np.abs(sliced[3:].astype(int) - ref[3:]).max() <= 1
    # Clip 0 moved down 16 px from crop row 0 and left 3 px from crop column 8: its top 16 rows
    # and right 3 columns (source columns 64-66) are black, the rest real (non-zero) pixels.
    assert not sliced[0, :, :16].any() and not sliced[0, :, :, -3:].any()
    assert sliced[0, :, 16:, :-3].all()


# ----------------------------------------------------------------------------------------------
# method="matmul": the same warp as two interpolation matmuls
# ----------------------------------------------------------------------------------------------


def textured_frames(seed: int, shape=(2, 3, H, W, 3)) -> np.ndarray:
    """Frames with edges of every orientation (a harder case for the two-pass rotation than
    smooth_image): uniform noise upsampled 4x bilinearly, full contrast."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, shape[:2] + (H // 4 + 1, W // 4 + 1, 3)).astype(np.float32)
    yy = np.arange(H) / 4.0
    xx = np.arange(W) / 4.0
    y0, x0 = yy.astype(int), xx.astype(int)
    wy, wx = (yy - y0)[:, None, None], (xx - x0)[None, :, None]
    rows, cols = y0[:, None], x0[None, :]

    def at(dy: int, dx: int) -> np.ndarray:
        return coarse[..., rows + dy, cols + dx, :]

    img = (1 - wy) * ((1 - wx) * at(0, 0) + wx * at(0, 1)) + wy * ((1 - wx) * at(1, 0) + wx * at(1, 1))
    return np.round(img).astype(np.uint8)


def two_pass_bound(frames: np.ndarray, angle_deg: np.ndarray) -> np.ndarray:
    """Per clip: the largest difference between the two-pass and the bilinear warp,
    |tan(angle)| / 2 times the largest step between horizontal neighbours (the frame padded with
    black, as both warps see it), plus one grey level for the 8-bit rounding."""
    padded = np.pad(frames.astype(np.float32), ((0, 0), (0, 0), (0, 0), (1, 1), (0, 0)))
    step = np.abs(np.diff(padded, axis=3)).max(axis=(1, 2, 3, 4))
    return np.abs(np.tan(np.deg2rad(angle_deg))) / 2 * step + 1


@pytest.mark.parametrize("seed", [0, 1])
def test_matmul_f32_equals_the_gather_warp_without_rotation(seed):
    # Random crops, rescales and translations (angle 0): the two passes are then exactly the
    # separable bilinear weights; float32 gives the gather warp's uint8 crops bit for bit here.
    frames = jnp.asarray(textured_frames(seed, (4, 2, H, W, 3)))
    p = A.sample_params(jax.random.key(seed), 4, height=H, width=W, crop_size=CROP, p=1.0)
    p = p._replace(angle_deg=jnp.zeros(4), shift_y=p.shift_y + jnp.asarray([0, 0.25, 0, -0.5]))
    ref = np.asarray(A.warp_uint8(frames, p, crop_size=CROP)).astype(int)
    out = np.asarray(A.warp_matmul(frames, p, crop_size=CROP, dtype=jnp.float32)).astype(int)
    # Summation order differs (two passes vs four taps): a value on a .5 boundary may round the
    # other way; in practice none do here.
    diff = np.abs(out - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    # bfloat16 operands: weights and pass-1 values carry 8 significant bits.
    out16 = np.asarray(A.warp_matmul(frames, p, crop_size=CROP, dtype=jnp.bfloat16)).astype(int)
    assert np.abs(out16 - ref).max() <= 2 and np.abs(out16 - ref).mean() < 0.3


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matmul_rotation_within_the_two_pass_bound(dtype):
    frames = textured_frames(3)
    angles = np.array([30.0, -17.0], np.float32)
    p = A.AffineParams(
        crop_y=jnp.asarray([2, 5], jnp.int32), crop_x=jnp.asarray([6, 0], jnp.int32),
        angle_deg=jnp.asarray(angles), scale=jnp.asarray([1.0, 0.85], jnp.float32),
        shift_y=jnp.asarray([3.0, -2.0], jnp.float32), shift_x=jnp.asarray([0.0, 7.0], jnp.float32))
    ref = np.asarray(A.warp_uint8(jnp.asarray(frames), p, crop_size=CROP)).astype(int)
    out = np.asarray(A.warp_matmul(jnp.asarray(frames), p, crop_size=CROP, dtype=dtype)).astype(int)
    bound = two_pass_bound(frames, angles) + (1 if dtype == jnp.bfloat16 else 0)
    diff = np.abs(out - ref)
    for b in range(2):
        assert diff[b].max() <= bound[b], (b, diff[b].max(), bound[b])
    # On average far below the bound: the same geometry, a slightly different interpolation.
    assert diff.mean() < 1.0
    # On smooth content the two agree to within a couple of grey levels everywhere.
    smooth = np.broadcast_to(smooth_image(4), (2, 2, H, W, 3))
    ref = np.asarray(A.warp_uint8(jnp.asarray(smooth), p, crop_size=CROP)).astype(int)
    out = np.asarray(A.warp_matmul(jnp.asarray(smooth), p, crop_size=CROP, dtype=dtype)).astype(int)
    assert np.abs(out - ref).max() <= two_pass_bound(smooth, angles).max() + 1


def test_matmul_crops_and_translations_are_exact():
    # p = 0 (the demo's setting): integer sample positions, weights 0 and 1, so every method gives
    # the same crops, bfloat16 included (uint8 values are exact in bfloat16).
    frames = jnp.asarray(textured_frames(5, (3, 2, H, W, 3)))
    key = jax.random.key(4)
    kw = dict(train=True, crop_size=CROP, p=0.0, normalize_output=False)
    ref = np.asarray(A.augment(key, frames, method="gather", **kw))
    for method in ("matmul", "matmul_f32"):
        np.testing.assert_array_equal(np.asarray(A.augment(key, frames, method=method, **kw)), ref)
    p = params(shift_y=3.0, shift_x=-5.0, crop_y=4, crop_x=4)
    one = frames[:1, :1]
    np.testing.assert_array_equal(np.asarray(A.warp_matmul(one, p, crop_size=CROP)),
                                  np.asarray(A.warp_uint8(one, p, crop_size=CROP)))


def test_augment_methods_share_the_random_transform():
    # Same key, same draw: the methods differ only by interpolation (bounded as above).
    frames = textured_frames(6, (4, 2, H, W, 3))
    key = jax.random.key(9)
    kw = dict(train=True, crop_size=CROP, p=1.0, normalize_output=False)
    g = np.asarray(A.augment(key, jnp.asarray(frames), method="gather", **kw)).astype(int)
    m = np.asarray(A.augment(key, jnp.asarray(frames), method="matmul_f32", **kw)).astype(int)
    p = A.sample_params(key, 4, height=H, width=W, crop_size=CROP, p=1.0)
    bound = two_pass_bound(frames, np.asarray(p.angle_deg))
    assert all(np.abs(m[b] - g[b]).max() <= bound[b] for b in range(4))
    normalised = np.asarray(A.augment(key, jnp.asarray(frames), method="matmul_f32",
                                      **{**kw, "normalize_output": True}))
    np.testing.assert_allclose(normalised, (m / 255.0 - MEAN) / STD, rtol=1e-6, atol=1e-6)


def test_resolve_method():
    assert A.resolve_method("auto", "cpu") == "gather"
    assert A.resolve_method("auto", "tpu") == "matmul"
    assert A.resolve_method("auto", "gpu") == "matmul"
    assert A.resolve_method("matmul_f32", "cpu") == "matmul_f32"
    from hfa_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="data.augment.method='bilinear' is not one of"):
        A.resolve_method("bilinear", "cpu")
