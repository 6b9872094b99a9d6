"""The width of BeyondGloss's per-frame hand-pose vector (HaMeR's MANO output, docs/beyondgloss.md).

2 hands x (15 MANO joints + 1 global orientation) x 3x3 rotation matrix = 288 numbers a frame.
Both sides of the objective read it: the targets (:mod:`hfa_jax.data.hand_targets`, which also
documents the layout) and the model's student head (:mod:`hfa_jax.models.beyondgloss`). It lives
below both, so neither imports the other.
"""

HAND_POSE_DIM = 288
