"""Hand-pose distillation targets for SynthSign, in HaMeR's 288-d MANO layout (docs/beyondgloss.md).

BeyondGloss distils per-frame HaMeR outputs: for each of the two hands the MANO ``hand_pose``
(15 joints x 3x3 rotation matrix) and ``global_orient`` (3x3), zeros when no hand is found —
``2 x 15 x 3 x 3 + 2 x 3 x 3 = 288`` numbers per frame. SynthSign has no 3D hands, but it knows
exactly what it drew: per frame the 2D hand centres (``hand_traj``), the handshape ids and the
in-plane finger direction (``hand_orient``). :func:`synthsign_hand_pose` turns these into
targets with the *same layout and the same kind of numbers* (proper rotation matrices, identity
at rest), so the objective, the loss scale and the code path are those of real HaMeR targets.

Layout of one frame's 288-vector (also what :func:`split_mano` undoes)::

    [0:270)   hand_pose      [2, 15, 3, 3]   hand 0 = signer's LEFT, 1 = RIGHT (HaMeR/SynthSign order);
                                             joints in MANO order: index1-3, middle1-3, pinky1-3,
                                             ring1-3, thumb1-3
    [270:288) global_orient  [2, 3, 3]

Mapping (deterministic; every quantity can be read back from the target):

* Finger joints from the handshape (:data:`ARTICULATION`): each MANO joint is a flexion about the
  finger's lateral axis, ``R = Rz(abduction) @ Rx(flexion)`` (abduction only at the knuckle,
  joint 1). The per-handshape angles follow what ``data_prep/synthsign/renderer.py`` draws (e.g.
  "v": index and middle straight, spread -17/+17 degrees as drawn; "spread": the drawn finger
  angles -75/-32/-10/12/34). The left hand is the mirror image: ``M R M``, ``M = diag(-1, 1, 1)``.
* Global orientation from the trajectory and the finger direction: ``G = R_ray(x, y) @ Rz(theta)``.
  ``theta`` = ``hand_orient`` (degrees clockwise from "up" in the image; camera axes x right,
  y down, z forward, so a clockwise image rotation is ``+theta`` about z); ``R_ray`` turns the
  optical axis onto the ray through the hand's image position for a 90-degree field of view
  (``u = 2x - 1``, ``v = 2y - 1``; ``R_ray = Ry(atan u) @ Rx(-atan(v / sqrt(1 + u^2)))`` maps
  (0, 0, 1) to ``(u, v, 1) / |(u, v, 1)|``). So the hand's location — which carries much of a
  sign's identity — is part of the target, as a viewing-direction rotation.
* A hand whose position is not finite or lies outside the image ([0, 1]^2) is "not found": its
  144 numbers are zeros, as HaMeR's targets are when no hand is detected.
* Velocity is *not* encoded: like HaMeR's, the target of a frame is a function of that frame
  alone (the student sees one frame feature; motion is the temporal encoder's business).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from hfa_jax.errors import DataError
from hfa_jax.hand_pose import HAND_POSE_DIM  # re-exported: the one owner of this width

__all__ = [
    "HAND_POSE_DIM",
    "NUM_HANDSHAPES",
    "HANDSHAPE_NAMES",
    "ARTICULATION",
    "synthsign_hand_pose",
    "split_mano",
    "load_synthsign_extras",
    "rot_x",
    "rot_y",
    "rot_z",
]

NUM_JOINTS = 15
_HAND_POSE_END = 2 * NUM_JOINTS * 9  # 270

# Must match data_prep.synthsign.lexicon.HANDSHAPES (ids are part of SynthSign's on-disk format;
# tests check the two agree). Kept here so the runtime package does not import data_prep.
HANDSHAPE_NAMES: tuple[str, ...] = ("fist", "flat", "v", "point", "spread", "c", "thumb", "pinch")
NUM_HANDSHAPES = len(HANDSHAPE_NAMES)

# Per handshape, per finger in MANO order (index, middle, pinky, ring, thumb):
# (flexion joint1, joint2, joint3, abduction at joint1), degrees.
_CURL = (90.0, 100.0, 70.0, 0.0)
_STRAIGHT = (0.0, 0.0, 0.0, 0.0)
_THUMB_FOLDED = (40.0, 50.0, 40.0, 0.0)
ARTICULATION: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "fist": (_CURL, _CURL, _CURL, _CURL, _THUMB_FOLDED),
    "flat": (_STRAIGHT, _STRAIGHT, _STRAIGHT, _STRAIGHT, _STRAIGHT),
    "v": ((0.0, 0.0, 0.0, -17.0), (0.0, 0.0, 0.0, 17.0), _CURL, _CURL, _THUMB_FOLDED),
    "point": (_STRAIGHT, _CURL, _CURL, _CURL, _THUMB_FOLDED),
    "spread": ((0.0, 0.0, 0.0, -32.0), (0.0, 0.0, 0.0, -10.0), (0.0, 0.0, 0.0, 34.0),
               (0.0, 0.0, 0.0, 12.0), (0.0, 0.0, 0.0, -75.0)),
    "c": ((45.0, 45.0, 30.0, 0.0),) * 4 + ((30.0, 20.0, 10.0, -45.0),),
    "thumb": (_CURL, _CURL, _CURL, _CURL, (0.0, 0.0, 0.0, -90.0)),
    "pinch": ((50.0, 60.0, 40.0, 0.0),) * 4 + ((40.0, 40.0, 30.0, -30.0),),
}


def rot_x(deg: np.ndarray | float) -> np.ndarray:
    """[..., 3, 3] rotation about x by ``deg`` degrees (float64)."""
    a = np.radians(np.asarray(deg, np.float64))
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def rot_y(deg: np.ndarray | float) -> np.ndarray:
    """[..., 3, 3] rotation about y by ``deg`` degrees (float64)."""
    a = np.radians(np.asarray(deg, np.float64))
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def rot_z(deg: np.ndarray | float) -> np.ndarray:
    """[..., 3, 3] rotation about z by ``deg`` degrees (float64)."""
    a = np.radians(np.asarray(deg, np.float64))
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


_MIRROR = np.diag([-1.0, 1.0, 1.0])


def _joint_table() -> np.ndarray:
    """[NUM_HANDSHAPES, 2 (left, right), 15, 3, 3] float64 joint rotations per handshape."""
    out = np.zeros((NUM_HANDSHAPES, 2, NUM_JOINTS, 3, 3))
    for k, name in enumerate(HANDSHAPE_NAMES):
        mats = []
        for f1, f2, f3, abd in ARTICULATION[name]:
            mats.append(rot_z(abd) @ rot_x(f1))  # knuckle: abduction then flexion
            mats.append(rot_x(f2))
            mats.append(rot_x(f3))
        right = np.stack(mats)
        out[k, 1] = right
        out[k, 0] = _MIRROR @ right @ _MIRROR
    return out


_JOINTS = _joint_table()


def _ray_rotation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[..., 3, 3]: the rotation taking the optical axis to the ray through image point (x, y)
    in [0, 1]^2 (90-degree field of view)."""
    u = 2.0 * x - 1.0
    v = 2.0 * y - 1.0
    yaw = np.degrees(np.arctan(u))
    pitch = -np.degrees(np.arctan(v / np.sqrt(1.0 + u * u)))
    return rot_y(yaw) @ rot_x(pitch)


def synthsign_hand_pose(
    hand_traj: Any, handshape: Any, hand_orient: Any | None = None, *, where: str = "hand targets"
) -> np.ndarray:
    """SynthSign per-frame hand state -> HaMeR-layout targets ``[T, 288]`` float32.

    Args:
      hand_traj: ``[T, 2, 2]`` (x, y) in [0, 1] image coordinates of the signer's left, right hand.
      handshape: ``[T, 2]`` int handshape ids (``HANDSHAPE_NAMES``).
      hand_orient: ``[T, 2]`` finger direction, degrees clockwise from up; None = 0 (upright).
      where: file/video name for error messages.

    Returns:
      ``[T, 288]`` float32 in the layout of the module docstring.

    Raises:
      DataError: shapes disagree or a handshape id is unknown.
    """
    traj = np.asarray(hand_traj, np.float64)
    shape = np.asarray(handshape)
    if traj.ndim != 3 or traj.shape[1:] != (2, 2):
        raise DataError(f"{where}: hand_traj has shape {list(traj.shape)}, expected [T, 2, 2]; regenerate the SynthSign extras")
    t = traj.shape[0]
    if shape.shape != (t, 2):
        raise DataError(f"{where}: handshape has shape {list(shape.shape)}, expected [{t}, 2] (one pair per frame)")
    if not np.issubdtype(shape.dtype, np.integer):
        if not np.all(np.isfinite(shape)) or np.any(shape != np.round(shape)):
            raise DataError(f"{where}: handshape ids must be integers")
        shape = shape.astype(np.int64)
    if t and (shape.min() < 0 or shape.max() >= NUM_HANDSHAPES):
        raise DataError(f"{where}: handshape id {int(shape.min() if shape.min() < 0 else shape.max())} "
                        f"outside 0..{NUM_HANDSHAPES - 1} ({', '.join(HANDSHAPE_NAMES)})")
    if hand_orient is None:
        orient = np.zeros((t, 2))
    else:
        orient = np.asarray(hand_orient, np.float64)
        if orient.shape != (t, 2):
            raise DataError(f"{where}: hand_orient has shape {list(orient.shape)}, expected [{t}, 2]")
    x, y = traj[..., 0], traj[..., 1]
    found = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
    found &= np.isfinite(orient)
    xs, ys = np.where(found, x, 0.5), np.where(found, y, 0.5)
    glob = _ray_rotation(xs, ys) @ rot_z(np.where(found, orient, 0.0))  # [T, 2, 3, 3]
    joints = _JOINTS[shape, np.arange(2)[None, :]]  # [T, 2, 15, 3, 3]
    joints = np.where(found[..., None, None, None], joints, 0.0)
    glob = np.where(found[..., None, None], glob, 0.0)
    out = np.concatenate([joints.reshape(t, -1), glob.reshape(t, -1)], axis=1)
    return out.astype(np.float32)


def split_mano(v: Any) -> tuple[np.ndarray, np.ndarray]:
    """``[..., 288]`` -> (``hand_pose [..., 2, 15, 3, 3]``, ``global_orient [..., 2, 3, 3]``)."""
    v = np.asarray(v)
    if v.shape[-1] != HAND_POSE_DIM:
        raise ValueError(f"split_mano: last axis {v.shape[-1]} != {HAND_POSE_DIM}")
    lead = v.shape[:-1]
    return (v[..., :_HAND_POSE_END].reshape(*lead, 2, NUM_JOINTS, 3, 3),
            v[..., _HAND_POSE_END:].reshape(*lead, 2, 3, 3))


def load_synthsign_extras(path: str, num_frames: int | None = None) -> dict[str, np.ndarray]:
    """Reads a SynthSign ``extras/{split}/{name}.json`` -> ``{hand_traj [T,2,2] float64,
    handshape [T,2] int64, hand_orient [T,2] float64 or absent}``, checking T == num_frames.

    Raises DataError (one line: file, what, what to do) when missing, unreadable or mis-shaped.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: SynthSign extras file missing; regenerate the tree with `python -m data_prep.synthsign`")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        traj = np.asarray(data["hand_traj"], np.float64)
        shape = np.asarray(data["handshape"], np.int64)
        orient = np.asarray(data["hand_orient"], np.float64) if "hand_orient" in data else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: unreadable SynthSign extras ({type(e).__name__}: {str(e)[:80]}); regenerate it") from None
    if num_frames is not None and (traj.ndim < 1 or traj.shape[0] != num_frames):
        raise DataError(f"{path}: hand_traj has {traj.shape[0] if traj.ndim else 0} frames but the video has "
                        f"{num_frames}; regenerate the SynthSign tree and the dataset together")
    out = {"hand_traj": traj, "handshape": shape}
    if orient is not None:
        out["hand_orient"] = orient
    return out

