"""The demo's DINOv2 stand-in: a ViT pretrained to locate the hands, exported as a DINOv2 folder."""

import numpy as np

from hfa_jax.models.vit import ViTConfig
from hfa_jax.weights.dinov2 import from_hf
from hfa_jax import demo_hand_locator as hand_locator


def _squares(n: int, size: int = 24, seed: int = 0) -> hand_locator.HandFrames:
    """Frames with two bright squares ("hands") at random places; shape id = the square's colour."""
    rng = np.random.default_rng(seed)
    frames = np.full((n, size, size, 3), 40, np.uint8)
    hands = np.zeros((n, 4), np.float32)
    shapes = rng.integers(0, 2, (n, 2)).astype(np.int32)
    colours = np.array([[250, 60, 60], [60, 250, 60]], np.uint8)
    for i in range(n):
        for j in range(2):
            # like SynthSign's signer: one hand on each half of the image
            y = rng.integers(2, size - 5)
            x = rng.integers(1, size // 2 - 4) + j * (size // 2)
            frames[i, y:y + 4, x:x + 4] = colours[shapes[i, j]]
            hands[i, 2 * j:2 * j + 2] = ((x + 2) / size, (y + 2) / size)
    return hand_locator.HandFrames(frames, hands, shapes)


def test_hand_locator_learns_positions_and_exports_a_dinov2_folder(tmp_path):
    data = _squares(600)
    cfg = ViTConfig(patch_size=4, width=32, depth=2, num_heads=2, mlp_dim=64, pos_grid=5, lora_blocks=(1,),
                    lora_rank=2, lora_alpha=2.0)
    res = hand_locator.pretrain(data, cfg, str(tmp_path / "fe"), crop_size=20, steps=400, batch_size=32,
                                lr=3e-3, num_handshapes=2, progress=False)
    # far better than predicting the mean position, and the colours are read
    assert res["hand_mse"] < 0.5 * res["hand_var"], res
    assert res["shape_acc"] > 0.6, res
    model, variables = from_hf(str(tmp_path / "fe"), cfg)  # imports like real DINOv2 weights (+ fresh LoRA)
    assert variables["params"]["block_1"]["attn"]["qkv"]["lora_b"].shape == (2, 96)
    assert (tmp_path / "fe" / "hand_locator.json").is_file()
