"""SynthSign -> HaMeR-layout hand-pose targets (hfa_jax/data/hand_targets.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hfa_jax.data import hand_targets as ht
from hfa_jax.errors import DataError


def _rx(deg):
    a = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def _rz(deg):
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def test_handshape_ids_match_synthsign_lexicon():
    from data_prep.synthsign import lexicon

    assert ht.HANDSHAPE_NAMES == lexicon.HANDSHAPES
    assert set(ht.ARTICULATION) == set(ht.HANDSHAPE_NAMES)


def test_layout_rest_pose_is_identity():
    flat = ht.HANDSHAPE_NAMES.index("flat")
    v = ht.synthsign_hand_pose([[[0.5, 0.5], [0.5, 0.5]]], [[flat, flat]], [[0.0, 0.0]])
    assert v.shape == (1, 288) and v.dtype == np.float32
    pose, glob = ht.split_mano(v)
    assert pose.shape == (1, 2, 15, 3, 3) and glob.shape == (1, 2, 3, 3)
    np.testing.assert_allclose(pose, np.broadcast_to(np.eye(3), pose.shape), atol=1e-7)
    np.testing.assert_allclose(glob, np.broadcast_to(np.eye(3), glob.shape), atol=1e-7)
    # Layout: the first 270 numbers are the 2 x 15 joint matrices, the last 18 the orientations.
    np.testing.assert_array_equal(v[0, 270:279], np.eye(3).ravel())


def test_joint_and_global_rotations_by_hand():
    rng = np.random.default_rng(0)
    t = 6
    traj = rng.uniform(0.05, 0.95, (t, 2, 2))
    shape = rng.integers(0, ht.NUM_HANDSHAPES, (t, 2))
    orient = rng.uniform(-180, 180, (t, 2))
    v = ht.synthsign_hand_pose(traj, shape, orient)
    pose, glob = ht.split_mano(v)
    m = np.diag([-1.0, 1.0, 1.0])
    for i in range(t):
        for h in range(2):
            name = ht.HANDSHAPE_NAMES[shape[i, h]]
            for f, (f1, f2, f3, abd) in enumerate(ht.ARTICULATION[name]):
                want = [_rz(abd) @ _rx(f1), _rx(f2), _rx(f3)]
                if h == 0:  # signer's left hand: mirror image
                    want = [m @ r @ m for r in want]
                np.testing.assert_allclose(pose[i, h, 3 * f:3 * f + 3], np.stack(want), atol=1e-6)
            g = glob[i, h].astype(np.float64)
            np.testing.assert_allclose(g @ g.T, np.eye(3), atol=1e-6)
            assert np.linalg.det(g) == pytest.approx(1.0, abs=1e-5)
            # The optical axis goes to the ray through the hand's image position (90 deg FOV) ...
            x, y = traj[i, h]
            ray = np.array([2 * x - 1, 2 * y - 1, 1.0])
            np.testing.assert_allclose(g @ [0, 0, 1], ray / np.linalg.norm(ray), atol=1e-6)
    # ... and the in-plane angle is the finger direction: at the image centre G = Rz(theta).
    v0 = ht.synthsign_hand_pose([[[0.5, 0.5], [0.5, 0.5]]], [[0, 0]], [[30.0, -70.0]])
    _, g0 = ht.split_mano(v0)
    np.testing.assert_allclose(g0[0, 0], _rz(30.0), atol=1e-6)
    np.testing.assert_allclose(g0[0, 1], _rz(-70.0), atol=1e-6)


def test_missing_hand_is_zeros_and_shapes_differ():
    traj = np.array([[[0.3, 0.4], [1.5, 0.5]], [[np.nan, 0.2], [0.6, 0.7]]])
    v = ht.synthsign_hand_pose(traj, [[1, 2], [3, 4]], None)
    pose, glob = ht.split_mano(v)
    assert np.all(pose[0, 1] == 0) and np.all(glob[0, 1] == 0)  # off-frame right hand
    assert np.all(pose[1, 0] == 0) and np.all(glob[1, 0] == 0)  # NaN left hand
    assert np.any(pose[0, 0] != 0) and np.any(pose[1, 1] != 0)
    # Every handshape gives a different target (the objective can tell them apart).
    all_shapes = ht.synthsign_hand_pose(np.full((8, 2, 2), 0.5), np.repeat(np.arange(8)[:, None], 2, 1))
    d = np.abs(all_shapes[:, None] - all_shapes[None]).sum(-1)
    assert np.all(d[~np.eye(8, dtype=bool)] > 0.1)


def test_bad_inputs():
    with pytest.raises(DataError, match="handshape id 9"):
        ht.synthsign_hand_pose(np.zeros((2, 2, 2)), [[0, 9], [0, 0]])
    with pytest.raises(DataError, match=r"expected \[2, 2\]"):
        ht.synthsign_hand_pose(np.zeros((2, 2, 2)), [[0, 1]])
    with pytest.raises(DataError, match="hand_traj"):
        ht.synthsign_hand_pose(np.zeros((2, 3)), [[0, 1], [0, 1]])


def test_load_extras(tmp_path):
    p = tmp_path / "v.json"
    p.write_text(json.dumps({"description": "x", "hand_traj": [[[0.1, 0.2], [0.3, 0.4]]] * 3,
                             "handshape": [[0, 1]] * 3, "hand_orient": [[0.0, 10.0]] * 3}))
    ex = ht.load_synthsign_extras(str(p), 3)
    assert ex["hand_traj"].shape == (3, 2, 2) and ex["handshape"].shape == (3, 2) and ex["hand_orient"].shape == (3, 2)
    with pytest.raises(DataError, match="3 frames but the video has 4"):
        ht.load_synthsign_extras(str(p), 4)
    with pytest.raises(DataError, match="missing"):
        ht.load_synthsign_extras(str(tmp_path / "nope.json"), 3)
