"""Gloss -> sign parameters for SynthSign: a deterministic, stable lexicon.

Every gloss maps to one sign: a handshape, a start and an end location relative to the body, a
movement, a one-/two-handed configuration, a hand orientation, a size and a tempo. The mapping is a
pure function of the gloss string through SHA-256 (never Python's salted `hash()`), so the same gloss
looks the same in every video, every run and every machine: that is what makes translation learnable.

PHOENIX14T annotation conventions are honoured so that the complex train annotation and the simple
dev/test `orth` share signs (glosses as in the shipped corpus, see corpus.py):
- `X-PLUSPLUS`: the sign of `X`, movement repeated (twice).
- `loc-X` / `cl-X`: the sign of `X`; `loc-` performs it displaced to the signer's side.
- `neg-X`: the sign of `X` with a head shake (negation is non-manual in DGS). Prefixes combine
  (`neg-cl-KOMMEN`); other prefixes (`poss-`, `negalp-`) are part of the gloss: their own sign.
- `__ON__` / `__OFF__`: hands rise from / drop to the rest position (kind "rest").
- any other `__...__` marker (`__EMP__`, `__HOLD__`, `__PU__`, `__LEFTHAND__`, `__??X__`): a short hold.

Coordinates are canonical pixels of a 210 wide x 260 high frame with the signer centred; the signer's
right hand is the dominant one and appears on the image's left half (the signer faces the camera).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

# Handshape ids are part of the on-disk format (extras `handshape`): append only, never reorder.
HANDSHAPES: tuple[str, ...] = ("fist", "flat", "v", "point", "spread", "c", "thumb", "pinch")
HANDSHAPE_WORDS: tuple[str, ...] = (
    "a fist",
    "a flat hand",
    "a V hand",
    "a pointing index finger",
    "an open spread hand",
    "a C-shaped hand",
    "a thumb-up hand",
    "a pinched O hand",
)
REST_HANDSHAPE = HANDSHAPES.index("flat")

# Dominant-hand (signer's right) locations in canonical pixels; the left hand mirrors x -> 210 - x.
LOCATIONS: dict[str, tuple[float, float]] = {
    "forehead": (100.0, 36.0),
    "temple": (74.0, 46.0),
    "eyes": (97.0, 56.0),
    "cheek": (80.0, 70.0),
    "mouth": (102.0, 79.0),
    "chin": (104.0, 93.0),
    "neck": (101.0, 107.0),
    "shoulder": (68.0, 122.0),
    "other_shoulder": (142.0, 122.0),
    "chest": (100.0, 146.0),
    "chest_side": (70.0, 152.0),
    "stomach": (102.0, 192.0),
    "side_high": (40.0, 68.0),
    "side_mid": (34.0, 150.0),
    "front_low": (90.0, 216.0),
    "above_head": (96.0, 12.0),
}
LOCATION_NAMES: tuple[str, ...] = tuple(LOCATIONS)
LOCATION_WORDS: dict[str, str] = {
    "forehead": "the forehead",
    "temple": "the temple",
    "eyes": "the eyes",
    "cheek": "the cheek",
    "mouth": "the mouth",
    "chin": "the chin",
    "neck": "the neck",
    "shoulder": "the right shoulder",
    "other_shoulder": "the left shoulder",
    "chest": "the chest",
    "chest_side": "the side of the chest",
    "stomach": "the stomach",
    "side_high": "high at the side",
    "side_mid": "out at the side",
    "front_low": "low in front of the body",
    "above_head": "above the head",
}

MOVEMENTS: tuple[str, ...] = ("straight", "arc", "circle", "zigzag", "tap")
HANDS: tuple[str, ...] = ("one", "one", "both", "base")  # one-handed signs are the most common
ORIENTATIONS: tuple[float, ...] = (0.0, -45.0, 45.0, 90.0, -90.0, 135.0)  # degrees; 0 = fingers up, + = clockwise

_DIGEST_SALT = b"synthsign/v1:"  # changing it changes every sign: bump only with a format version


@dataclasses.dataclass(frozen=True)
class Sign:
    """The rendering parameters of one gloss token.

    `kind`: "sign" (a lexical sign), "hold" (hands keep their pose) or "rest" (hands at rest).
    Locations are keys of `LOCATIONS` (dominant hand); `hands`: "one" (right hand only), "both"
    (left mirrors right), "base" (left hand held still in front of the chest as a base).
    """

    token: str
    key: str
    kind: str = "sign"
    handshape: int = REST_HANDSHAPE
    left_handshape: int = REST_HANDSHAPE
    start: str = "chest"
    end: str = "chest"
    movement: str = "straight"
    hands: str = "one"
    orientation: float = 0.0
    direction: int = 1  # +1/-1: side of an arc's bulge, sense of a circle
    size: float = 1.0  # movement amplitude factor
    tempo: float = 1.0  # duration factor (x the video's frames per sign)
    repeat: int = 1
    loc_shift: bool = False
    headshake: bool = False


def gloss_digest(key: str) -> bytes:
    """Stable 32-byte digest of a gloss key (SHA-256 of a salted UTF-8 string)."""
    return hashlib.sha256(_DIGEST_SALT + key.encode("utf-8")).digest()


def split_token(token: str) -> tuple[str, bool, bool, bool]:
    """`token -> (key, repeat, loc_shift, headshake)` following the PHOENIX14T annotation conventions."""
    key = token
    repeat = key.endswith("-PLUSPLUS")
    if repeat:
        key = key[: -len("-PLUSPLUS")]
    loc_shift = headshake = False
    while True:  # prefixes combine, e.g. `neg-cl-KOMMEN`
        if key.startswith("loc-") and len(key) > 4:
            key, loc_shift = key[4:], True
        elif key.startswith("cl-") and len(key) > 3:
            key = key[3:]
        elif key.startswith("neg-") and len(key) > 4:
            key, headshake = key[4:], True
        else:
            break
    return key, repeat, loc_shift, headshake


def is_marker(token: str) -> bool:
    """True for non-lexical annotation markers such as `__ON__`, `__PU__`, `__??X__`."""
    return len(token) > 4 and token.startswith("__") and token.endswith("__")


@functools.lru_cache(maxsize=1 << 16)
def sign_for(token: str) -> Sign:
    """The sign of one gloss token; a pure function of the string (cached: Sign is immutable)."""
    if is_marker(token):
        kind = "rest" if token in ("__ON__", "__OFF__") else "hold"
        return Sign(token=token, key=token, kind=kind)
    key, repeat, loc_shift, headshake = split_token(token)
    if not key:
        key = token
    b = gloss_digest(key)
    hands = HANDS[b[2] % len(HANDS)]
    handshape = b[0] % len(HANDSHAPES)
    if hands == "both":
        left_handshape = handshape  # symmetric two-handed signs share the handshape
    elif hands == "base":
        left_handshape = (HANDSHAPES.index("flat"), HANDSHAPES.index("fist"), HANDSHAPES.index("c"))[b[1] % 3]
    else:
        left_handshape = REST_HANDSHAPE
    movement = MOVEMENTS[b[5] % len(MOVEMENTS)]
    start = LOCATION_NAMES[b[3] % len(LOCATION_NAMES)]
    end = LOCATION_NAMES[b[4] % len(LOCATION_NAMES)]
    if movement in ("circle", "tap"):
        end = start  # movements in place
    elif end == start:
        end = LOCATION_NAMES[(b[4] + 1 + b[10] % (len(LOCATION_NAMES) - 1)) % len(LOCATION_NAMES)]
    return Sign(
        token=token,
        key=key,
        kind="sign",
        handshape=handshape,
        left_handshape=left_handshape,
        start=start,
        end=end,
        movement=movement,
        hands=hands,
        orientation=ORIENTATIONS[b[6] % len(ORIENTATIONS)],
        direction=1 if b[9] % 2 == 0 else -1,
        size=0.8 + 0.5 * b[7] / 255.0,
        tempo=0.8 + 0.45 * b[8] / 255.0,
        repeat=2 if repeat else 1,
        loc_shift=loc_shift,
        headshake=headshake,
    )


def signs_for(gloss: str) -> list[Sign]:
    """Signs of a space-separated gloss sentence, in order."""
    return [sign_for(t) for t in gloss.split()]


def lexical_keys(gloss: str) -> list[str]:
    """Lexicon keys of the lexical signs of a gloss sentence (markers dropped): what a video shows."""
    return [s.key for s in signs_for(gloss) if s.kind == "sign"]


# ----------------------------------------------------------------------------------------------
# Descriptions: a stand-in for the VideoLLM hand-motion descriptions of BeyondGloss (docs/beyondgloss.md).

_MOVE_PHRASES: dict[str, tuple[str, str]] = {
    # movement -> (phrase with a start and an end location, phrase in place)
    "straight": ("moves straight from {a} to {b}", "moves straight near {a}"),
    "arc": ("moves in an arc from {a} to {b}", "moves in an arc near {a}"),
    "circle": ("circles near {a}", "circles near {a}"),
    "zigzag": ("zigzags from {a} to {b}", "zigzags near {a}"),
    "tap": ("taps near {a}", "taps near {a}"),
}
_CONNECTIVES: tuple[tuple[str, str], ...] = (("First", "Then"), ("At the start", "Next"), ("Initially", "After that"))


def describe_sign(sign: Sign) -> str:
    """One clause describing the hand motion of a sign (no gloss name: only what is visible)."""
    if sign.kind == "rest":
        return "the hands rest low in front of the body"
    if sign.kind == "hold":
        return "the hands pause and hold their position"
    a, b = LOCATION_WORDS[sign.start], LOCATION_WORDS[sign.end]
    move = _MOVE_PHRASES[sign.movement][0 if sign.start != sign.end else 1].format(a=a, b=b)
    shape = HANDSHAPE_WORDS[sign.handshape]
    if sign.hands == "both":
        text = f"both hands, each {shape.removeprefix('a ').removeprefix('an ')}, mirror each other; the right hand {move}"
    elif sign.hands == "base":
        base = HANDSHAPE_WORDS[sign.left_handshape]
        text = f"the right hand with {shape} {move} while the left hand holds {base} in front of the chest"
    else:
        text = f"the right hand with {shape} {move}"
    if sign.repeat > 1:
        text += ", repeated"
    if sign.loc_shift:
        text += ", off to the side"
    if sign.headshake:
        text += ", with a head shake"
    return text


def describe(signs: list[Sign], style: int = 0) -> str:
    """A short English paragraph describing a whole video's hand motion.

    `style` (drawn per video) varies only the connectives, as a VideoLLM's wording would vary.
    Consecutive rest/hold clauses are merged so the text stays short.
    """
    clauses: list[str] = []
    for s in signs:
        c = describe_sign(s)
        if s.kind != "sign" and clauses and clauses[-1] == c:
            continue
        clauses.append(c)
    if not clauses:
        return "The hands stay at rest."
    first, then = _CONNECTIVES[style % len(_CONNECTIVES)]
    parts = [f"{first}, {clauses[0]}."] + [f"{then}, {c}." for c in clauses[1:]]
    return " ".join(parts)
