"""Draw SynthSign videos: a stylised signer (head, torso, arms, two hands) performing gloss signs.

Two steps, both pure given a NumPy generator:
1. `plan_video(signs, appearance, rng)` lays the signs out in time in *canonical* coordinates
   (210 x 260 px frame, signer centred, scale 1): per frame the two hand centres, handshapes and
   orientations, plus the head-shake offset; rest poses at both ends and eased transitions between
   signs (a few frames each, handshape switching half-way).
2. `render_plan(plan, appearance, rng)` maps the canonical plan through the video's own placement
   (scale, shift, slow body sway, per-frame hand jitter) and draws the frames with Pillow.

Hand arrays use the HaMeR-style order (index 0 = the signer's LEFT hand, 1 = the signer's RIGHT,
dominant hand). The signer faces the camera, so the right hand appears on the image's left half.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

from data_prep.synthsign.lexicon import LOCATIONS, REST_HANDSHAPE, Sign

W, H = 210, 260  # official PHOENIX14T full-frame size: 210 wide, 260 high
PIVOT = np.array([105.0, 130.0])  # per-video scaling happens about this canonical point
LEFT, RIGHT = 0, 1

# Canonical body layout (pixels at scale 1).
HEAD_C = (105.0, 60.0)
HEAD_R = (23.0, 29.0)
SHOULDERS = {LEFT: (144.0, 120.0), RIGHT: (66.0, 120.0)}
REST = {LEFT: (130.0, 236.0), RIGHT: (80.0, 236.0)}
BASE_LEFT = (122.0, 166.0)  # where the passive hand of "base" signs is held
UPPER_ARM, FOREARM = 56.0, 54.0
PALM_R = 8.0
AMPLITUDE = 14.0  # px of movement amplitude at size 1
BOTH_MIN_GAP = 16.0  # two-handed symmetric signs keep the hands this far from the midline

_SKIN = ((241, 203, 175), (224, 172, 138), (198, 143, 105), (160, 108, 72), (118, 78, 52), (250, 220, 196))
_HAIR = ((40, 30, 25), (90, 60, 35), (150, 110, 60), (200, 170, 110), (70, 70, 70), (20, 20, 20))
_CLOTHES = ((25, 25, 35), (40, 40, 70), (70, 30, 40), (30, 60, 45), (60, 60, 60), (20, 45, 80))
_BACKGROUND = ((200, 200, 200), (180, 190, 200), (215, 210, 195), (165, 175, 170), (225, 225, 230))


@dataclasses.dataclass(frozen=True)
class Appearance:
    """Per-video signer appearance and timing, all drawn from the video's own generator."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    clothes: tuple[int, int, int]
    background: tuple[int, int, int]
    scale: float  # size of the signer relative to canonical
    dx: float  # px shift of the whole signer
    dy: float
    frames_per_sign: float  # speed: frames of a sign of tempo 1
    transition: int  # frames between two signs
    rest_start: int  # rest frames before the first sign
    rest_end: int  # rest frames after the last sign
    jitter: float  # px std of per-frame hand noise (tracking noise)
    sway: tuple[float, float, float]  # body sway: amplitude px, angular speed rad/frame, phase
    style: int  # description wording variant


def _jitter_colour(rng: np.random.Generator, base: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    c = np.asarray(base) + rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def draw_appearance(rng: np.random.Generator) -> Appearance:
    """Draw one video's appearance (colours, placement, speed, noise)."""
    return Appearance(
        skin=_jitter_colour(rng, _SKIN[rng.integers(len(_SKIN))], 10),
        hair=_jitter_colour(rng, _HAIR[rng.integers(len(_HAIR))], 10),
        clothes=_jitter_colour(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 12),
        background=_jitter_colour(rng, _BACKGROUND[rng.integers(len(_BACKGROUND))], 12),
        scale=float(rng.uniform(0.85, 1.1)),
        dx=float(rng.uniform(-14.0, 14.0)),
        dy=float(rng.uniform(-8.0, 10.0)),
        frames_per_sign=float(rng.uniform(4.0, 8.0)),
        transition=int(rng.integers(2, 4)),
        rest_start=int(rng.integers(2, 5)),
        rest_end=int(rng.integers(2, 5)),
        jitter=float(rng.uniform(0.3, 0.9)),
        sway=(float(rng.uniform(0.0, 1.5)), float(rng.uniform(0.05, 0.2)), float(rng.uniform(0.0, 2 * math.pi))),
        style=int(rng.integers(3)),
    )


# ----------------------------------------------------------------------------------------------
# Motion in canonical coordinates.


@dataclasses.dataclass(frozen=True)
class Motion:
    """Canonical per-frame hand state: `pos [T, 2, 2]` (hand, xy), `shape [T, 2]` int, `orient [T, 2]`
    degrees (0 = fingers up), `head [T]` head x-offset px."""

    pos: np.ndarray
    shape: np.ndarray
    orient: np.ndarray
    head: np.ndarray

    def __len__(self) -> int:
        return int(self.pos.shape[0])


def _concat(parts: list[Motion]) -> Motion:
    return Motion(
        pos=np.concatenate([p.pos for p in parts]),
        shape=np.concatenate([p.shape for p in parts]),
        orient=np.concatenate([p.orient for p in parts]),
        head=np.concatenate([p.head for p in parts]),
    )


def rest_motion(n: int) -> Motion:
    """`n` frames of both hands at rest (flat, fingers down)."""
    pos = np.tile(np.array([REST[LEFT], REST[RIGHT]], np.float64), (n, 1, 1))
    return Motion(pos, np.full((n, 2), REST_HANDSHAPE, np.int64), np.full((n, 2), 180.0), np.zeros(n))


def _param(sign: Sign, u: np.ndarray) -> np.ndarray:
    """Movement phase per frame; repetitions go forth-back-forth (straight/arc/zigzag) or cycle again."""
    if sign.movement in ("circle", "tap"):
        return u * sign.repeat
    w = u * (2 * sign.repeat - 1)
    v = np.abs(np.mod(w + 1.0, 2.0) - 1.0)
    return v * v * (3.0 - 2.0 * v)  # ease in/out


def dominant_path(sign: Sign, n: int) -> np.ndarray:
    """Canonical positions `[n, 2]` of the right (dominant) hand during a sign of `n` frames."""
    u = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    s = np.array(LOCATIONS[sign.start])
    e = np.array(LOCATIONS[sign.end])
    if sign.loc_shift:  # `loc-`: performed displaced to the signer's (dominant) side
        s, e = s + (-22.0, 6.0), e + (-22.0, 6.0)
    if sign.hands == "both":  # keep the mirrored hands apart
        s[0], e[0] = min(s[0], 105.0 - BOTH_MIN_GAP), min(e[0], 105.0 - BOTH_MIN_GAP)
    a = AMPLITUDE * sign.size
    v = _param(sign, u)[:, None]
    d = e - s
    norm = float(np.hypot(*d))
    perp = np.array([-d[1], d[0]]) / norm * sign.direction if norm > 1e-6 else np.array([0.0, 0.0])
    if sign.movement == "straight":
        return s + d * v
    if sign.movement == "arc":
        return s + d * v + perp * (1.6 * a) * np.sin(np.pi * v)
    if sign.movement == "zigzag":
        return s + d * v + perp * (0.8 * a) * np.sin(4.0 * np.pi * v)
    rad = math.radians(sign.orientation)
    fingers = np.array([math.sin(rad), -math.cos(rad)])
    if sign.movement == "circle":
        th = 2.0 * np.pi * v * sign.direction + np.pi
        r = 1.1 * a
        return s + r * np.concatenate([np.cos(th) + 1.0, np.sin(th)], axis=1)
    if sign.movement == "tap":
        return s + fingers * (0.7 * a) * np.abs(np.sin(2.0 * np.pi * v))
    raise ValueError(f"unknown movement {sign.movement!r}")


def sign_motion(sign: Sign, n: int, previous: Motion | None = None) -> Motion:
    """Canonical motion of one sign over `n` frames (a "hold" repeats `previous`'s last frame)."""
    if sign.kind == "rest":
        return rest_motion(n)
    if sign.kind == "hold":
        last = previous if previous is not None and len(previous) else rest_motion(1)
        return Motion(
            np.repeat(last.pos[-1:], n, 0), np.repeat(last.shape[-1:], n, 0), np.repeat(last.orient[-1:], n, 0), np.zeros(n)
        )
    right = dominant_path(sign, n)
    if sign.hands == "both":
        left = np.stack([float(W) - right[:, 0], right[:, 1]], axis=1)
        left_orient = -sign.orientation
    elif sign.hands == "base":
        left = np.tile(np.array(BASE_LEFT), (n, 1))
        left_orient = -90.0
    else:
        left = np.tile(np.array(REST[LEFT]), (n, 1))
        left_orient = 180.0
    pos = np.stack([left, right], axis=1)
    shape = np.tile(np.array([sign.left_handshape, sign.handshape], np.int64), (n, 1))
    orient = np.tile(np.array([left_orient, sign.orientation]), (n, 1))
    u = np.linspace(0.0, 1.0, n)
    head = 4.0 * np.sin(4.0 * np.pi * u) if sign.headshake else np.zeros(n)
    return Motion(pos, shape, orient, head)


def _transition(a: Motion, b: Motion, k: int) -> Motion:
    """`k` eased frames strictly between `a`'s last frame and `b`'s first one."""
    t = np.arange(1, k + 1) / (k + 1)
    e = (t * t * (3.0 - 2.0 * t))[:, None, None]
    pos = a.pos[-1] * (1.0 - e) + b.pos[0] * e
    orient = a.orient[-1] * (1.0 - e[:, :, 0]) + b.orient[0] * e[:, :, 0]
    shape = np.where((t < 0.5)[:, None], a.shape[-1], b.shape[0])
    return Motion(pos, shape.astype(np.int64), orient, np.zeros(k))


def sign_frames(sign: Sign, appearance: Appearance, rng: np.random.Generator) -> int:
    """How many frames this occurrence of a sign lasts in this video (speed x tempo, +-1 frame)."""
    if sign.kind == "rest":
        return 2
    if sign.kind == "hold":
        return max(2, round(0.5 * appearance.frames_per_sign))
    n = appearance.frames_per_sign * sign.tempo * (1.6 if sign.repeat > 1 else 1.0)
    return max(3, int(round(n)) + int(rng.choice([-1, 0, 0, 1])))


@dataclasses.dataclass(frozen=True)
class Plan:
    """A whole video in canonical coordinates; `segments[i] = (token, start, end)` (end exclusive)."""

    motion: Motion
    segments: tuple[tuple[str, int, int], ...]


def plan_video(signs: list[Sign], appearance: Appearance, rng: np.random.Generator) -> Plan:
    """Lay the signs out in time: rest, sign, transition, sign, ..., transition, rest."""
    parts: list[Motion] = [rest_motion(appearance.rest_start)]
    segments: list[tuple[str, int, int]] = []
    length = appearance.rest_start
    for sign in signs:
        m = sign_motion(sign, sign_frames(sign, appearance, rng), previous=parts[-1])
        if sign.kind != "hold" and not np.allclose(parts[-1].pos[-1], m.pos[0]):
            tr = _transition(parts[-1], m, appearance.transition)
            parts.append(tr)
            length += len(tr)
        segments.append((sign.token, length, length + len(m)))
        parts.append(m)
        length += len(m)
    end = rest_motion(appearance.rest_end)
    if not np.allclose(parts[-1].pos[-1], end.pos[0]):
        parts.append(_transition(parts[-1], end, appearance.transition))
    parts.append(end)
    return Plan(_concat(parts), tuple(segments))


# ----------------------------------------------------------------------------------------------
# Placement and drawing.


def to_image(points: np.ndarray, appearance: Appearance) -> np.ndarray:
    """Canonical `[..., 2]` -> image px under the video's scale and shift (no sway, no jitter)."""
    return PIVOT + (points - PIVOT) * appearance.scale + np.array([appearance.dx, appearance.dy])


def from_image(points: np.ndarray, appearance: Appearance) -> np.ndarray:
    """Inverse of `to_image`."""
    return PIVOT + (points - np.array([appearance.dx, appearance.dy]) - PIVOT) / appearance.scale


def hand_positions(plan: Plan, appearance: Appearance, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Image-space hand centres `[T, 2, 2]` (with sway and jitter, kept inside the frame) and sway `[T, 2]`."""
    t = np.arange(len(plan.motion), dtype=np.float64)
    amp, speed, phase = appearance.sway
    sway = np.stack([amp * np.sin(speed * t + phase), 0.4 * amp * np.sin(0.7 * speed * t + phase)], axis=1)
    noise = rng.normal(0.0, appearance.jitter, size=plan.motion.pos.shape)
    pos = to_image(plan.motion.pos, appearance) + sway[:, None, :] + noise
    margin = 3.0
    pos[..., 0] = np.clip(pos[..., 0], margin, W - margin)
    pos[..., 1] = np.clip(pos[..., 1], margin, H - margin)
    return pos, sway


def _elbow(shoulder: np.ndarray, hand: np.ndarray, l1: float, l2: float, outward: float) -> np.ndarray:
    """Two-link inverse kinematics; of the two solutions take the one lower and further out."""
    d = hand - shoulder
    dist = float(np.hypot(*d))
    if dist < 1e-6:
        return shoulder + np.array([outward * l1, 0.0])
    u = d / dist
    dc = min(max(dist, abs(l1 - l2) + 1e-3), l1 + l2 - 1e-3)
    cos_a = (l1 * l1 + dc * dc - l2 * l2) / (2.0 * l1 * dc)
    a = math.acos(max(-1.0, min(1.0, cos_a)))
    best, best_score = shoulder, -1e9
    for sgn in (1.0, -1.0):
        c, s = math.cos(sgn * a), math.sin(sgn * a)
        e = shoulder + l1 * np.array([c * u[0] - s * u[1], s * u[0] + c * u[1]])
        score = e[1] + 0.6 * outward * (e[0] - shoulder[0])
        if score > best_score:
            best, best_score = e, score
    return best


def _disc(d: ImageDraw.ImageDraw, c: np.ndarray, r: float, fill: tuple[int, int, int]) -> None:
    d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=fill)


def _stroke(d: ImageDraw.ImageDraw, a: np.ndarray, b: np.ndarray, w: float, fill: tuple[int, int, int]) -> None:
    d.line([float(a[0]), float(a[1]), float(b[0]), float(b[1])], fill=fill, width=max(1, int(round(w))))
    _disc(d, a, w / 2.0, fill)
    _disc(d, b, w / 2.0, fill)


def _rot(v: np.ndarray, deg: float) -> np.ndarray:
    r = math.radians(deg)
    return np.array([v[0] * math.cos(r) - v[1] * math.sin(r), v[0] * math.sin(r) + v[1] * math.cos(r)])


def _hand(d: ImageDraw.ImageDraw, c: np.ndarray, orient: float, shape: int, s: float, fill, grow: float) -> None:
    """One hand: palm disc plus fingers for the handshape (ids: see lexicon.HANDSHAPES)."""
    r = PALM_R * s
    rad = math.radians(orient)
    f = np.array([math.sin(rad), -math.cos(rad)])  # finger direction
    q = np.array([math.cos(rad), math.sin(rad)])  # across the palm
    g = grow
    if shape == 0:  # fist
        _disc(d, c, 1.2 * r + g, fill)
    elif shape == 1:  # flat: fingers together
        _stroke(d, c, c + f * 2.4 * r, 1.8 * r + 2 * g, fill)
    elif shape == 2:  # V
        _disc(d, c, r + g, fill)
        for ang in (-17.0, 17.0):
            _stroke(d, c + f * 0.5 * r, c + _rot(f, ang) * 2.9 * r, 0.6 * r + 2 * g, fill)
    elif shape == 3:  # point: index finger
        _disc(d, c, r + g, fill)
        _stroke(d, c + f * 0.5 * r, c + f * 3.1 * r, 0.65 * r + 2 * g, fill)
    elif shape == 4:  # open spread
        _disc(d, c, r + g, fill)
        for ang, ln in ((-75.0, 1.9), (-32.0, 2.4), (-10.0, 2.7), (12.0, 2.6), (34.0, 2.2)):
            _stroke(d, c + _rot(f, ang) * 0.6 * r, c + _rot(f, ang) * ln * r, 0.48 * r + 2 * g, fill)
    elif shape == 5:  # C: curved hand open across the palm
        _disc(d, c, 0.9 * r + g, fill)
        cc = c + f * 1.2 * r
        rr = 1.5 * r
        open_deg = math.degrees(math.atan2(q[1], q[0]))
        d.arc([cc[0] - rr - g, cc[1] - rr - g, cc[0] + rr + g, cc[1] + rr + g], open_deg + 50.0, open_deg + 310.0,
              fill=fill, width=max(1, int(round(0.6 * r + 2 * g))))
    elif shape == 6:  # thumb sticking out sideways from a fist
        _disc(d, c, 1.1 * r + g, fill)
        _stroke(d, c, c + q * 2.3 * r, 0.75 * r + 2 * g, fill)
    elif shape == 7:  # pinched O: a ring above the palm
        _disc(d, c, 0.9 * r + g, fill)
        cc = c + f * 1.6 * r
        rr = 1.2 * r
        d.ellipse([cc[0] - rr - g, cc[1] - rr - g, cc[0] + rr + g, cc[1] + rr + g], outline=fill,
                  width=max(1, int(round(0.55 * r + 2 * g))))
    else:
        raise ValueError(f"unknown handshape id {shape}")


def _shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(v * f)))) for v in c)  # type: ignore[return-value]


def draw_body(appearance: Appearance, head_dx: float, sway: np.ndarray) -> Image.Image:
    """Background, torso, neck and head (everything but arms and hands) of one frame."""
    a = appearance
    s = a.scale
    img = Image.new("RGB", (W, H), a.background)
    d = ImageDraw.Draw(img)

    def P(x: float, y: float) -> np.ndarray:
        return to_image(np.array([x, y]), a) + sway

    sl, sr = P(*SHOULDERS[LEFT]), P(*SHOULDERS[RIGHT])
    d.polygon([tuple(sr + (-4 * s, 0)), tuple(sl + (4 * s, 0)), tuple(P(160, 262)), tuple(P(50, 262))], fill=a.clothes)
    _disc(d, sl, 12 * s, a.clothes)
    _disc(d, sr, 12 * s, a.clothes)
    _stroke(d, P(105, 84), P(105, 112), 18 * s, a.skin)
    d.polygon([tuple(P(92, 112)), tuple(P(118, 112)), tuple(P(105, 128))], fill=a.skin)  # collar opening
    hc = P(HEAD_C[0] + head_dx, HEAD_C[1])
    rx, ry = HEAD_R[0] * s, HEAD_R[1] * s
    d.ellipse([hc[0] - rx, hc[1] - ry, hc[0] + rx, hc[1] + ry], fill=a.skin)
    d.chord([hc[0] - rx - 1, hc[1] - ry - 2, hc[0] + rx + 1, hc[1] + ry * 0.6], 180, 360, fill=a.hair)
    for ex in (-8.5, 8.5):
        _disc(d, hc + np.array([ex * s, 1.0 * s]), 2.2 * s, (30, 30, 30))
    d.line([hc[0] - 6 * s, hc[1] + 15 * s, hc[0] + 6 * s, hc[1] + 15 * s], fill=_shade(a.skin, 0.6),
           width=max(1, int(round(2 * s))))
    return img


def draw_arms(img: Image.Image, appearance: Appearance, hands: np.ndarray, shapes: np.ndarray, orient: np.ndarray,
              sway: np.ndarray) -> None:
    """Arms and hands onto `img` (in place); the dominant (right) side last, so it is in front."""
    a = appearance
    s = a.scale
    d = ImageDraw.Draw(img)
    sleeve = tuple(int(0.55 * c + 0.45 * 150) for c in a.clothes)  # lighter than the torso: arms stay visible
    outline = _shade(a.skin, 0.45)
    for h in (LEFT, RIGHT):
        sh = to_image(np.array(SHOULDERS[h]), a) + sway
        hand = hands[h]
        el = _elbow(sh, hand, UPPER_ARM * s, FOREARM * s, outward=1.0 if h == LEFT else -1.0)
        _stroke(d, sh, el, 15 * s, sleeve)
        _stroke(d, el, hand, 12 * s, sleeve)
        _hand(d, hand, float(orient[h]), int(shapes[h]), s, outline, grow=1.2)
        _hand(d, hand, float(orient[h]), int(shapes[h]), s, a.skin, grow=0.0)


def draw_frame(
    appearance: Appearance,
    hands: np.ndarray,
    shapes: np.ndarray,
    orient: np.ndarray,
    head_dx: float,
    sway: np.ndarray,
) -> Image.Image:
    """One RGB 210x260 frame. `hands [2, 2]` image px (left, right), `shapes [2]`, `orient [2]` deg."""
    img = draw_body(appearance, head_dx, sway)
    draw_arms(img, appearance, hands, shapes, orient, sway)
    return img


def render_plan(plan: Plan, appearance: Appearance, rng: np.random.Generator) -> tuple[list[Image.Image], np.ndarray]:
    """Draw every frame of a plan. Returns (frames, hands `[T, 2, 2]` image px of the drawn hand centres).

    The body moves by whole pixels (sway rounded), so its drawing is cached and reused across frames;
    hands keep their sub-pixel positions.
    """
    hands, sway = hand_positions(plan, appearance, rng)
    m = plan.motion
    body_sway = np.round(sway)
    cache: dict[tuple[float, float, float], Image.Image] = {}
    frames = []
    for t in range(len(m)):
        key = (float(body_sway[t, 0]), float(body_sway[t, 1]), round(float(m.head[t]), 3))
        body = cache.get(key)
        if body is None:
            body = cache[key] = draw_body(appearance, key[2], body_sway[t])
        img = body.copy()
        draw_arms(img, appearance, hands[t], m.shape[t], m.orient[t], body_sway[t])
        frames.append(img)
    return frames, hands
