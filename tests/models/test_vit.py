"""DINOv2 ViT: parity with transformers' PyTorch Dinov2Model, position resampling vs torch's
interpolate, the torch-free checkpoint readers, LoRA/stop-gradient, and bad checkpoints."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hfa_jax.models.vit import ViT, ViTConfig, bicubic_matrix
from hfa_jax.weights.dinov2 import from_hf


def _randomise(model, seed=0):
    """Non-trivial LayerScale / positions / CLS (their HF inits are constant or tiny)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambda1" in name or "position" in name or "cls_token" in name or "register" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def _hf_small(tmp_path, registers=0, name="hf"):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(1)
    kw = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=56)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **kw))
    else:
        model = Dinov2Model(Dinov2Config(**kw))
    _randomise(model)
    path = str(tmp_path / name)
    model.save_pretrained(path)
    return model, path


def _torch_tokens(model, x_nhwc):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(np.asarray(x_nhwc).transpose(0, 3, 1, 2))).last_hidden_state.numpy()


def _pixels(n, h, w, seed=0):
    return np.random.default_rng(seed).standard_normal((n, h, w, 3)).astype(np.float32)


@pytest.mark.parametrize("out", [16, 20, 9, 40])
def test_bicubic_matrix_matches_torch_interpolate(out):
    g = np.random.default_rng(0).standard_normal((1, 3, 37, 37)).astype(np.float32)
    t = torch.from_numpy(g)

    def apply(m):
        return np.einsum("hi,cij,wj->chw", m, g[0], m)

    sf = (out + 0.1) / 37  # torch-hub DINOv2: scale_factor with the 0.1 offset
    cases = {
        "hf": (F.interpolate(t, size=(out, out), mode="bicubic", align_corners=False), bicubic_matrix(37, out)),
        "hub": (F.interpolate(t, scale_factor=(sf, sf), mode="bicubic"), bicubic_matrix(37, out, sf)),
        "aa": (
            F.interpolate(t, size=(out, out), mode="bicubic", align_corners=False, antialias=True),
            bicubic_matrix(37, out, antialias=True),
        ),
    }
    for name, (ref, m) in cases.items():
        assert ref.shape[-1] == out
        err = np.abs(apply(m) - ref[0].numpy()).max()
        assert err < 2e-5, (name, err)
    # the methods really differ: the test would catch using the wrong one
    assert np.abs(apply(cases["hub"][1]) - apply(cases["hf"][1])).max() > 1e-3
    assert np.abs(apply(cases["aa"][1]) - apply(cases["hf"][1])).max() > 1e-3


def test_parity_with_hf_dinov2_vits14(tmp_path):
    """Real ViT-S/14 shape (image_size 518 -> 37x37 grid), random weights, 224x224 inputs."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                       patch_size=14, image_size=518)
    model = _randomise(Dinov2Model(cfg))
    model.save_pretrained(str(tmp_path / "vits14"))
    module, variables = from_hf(str(tmp_path / "vits14"))
    assert module.cfg.pos_grid == 37 and module.cfg.pos_resample == "hf"
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables))
    assert n == 22_056_576 + 73_728  # docs/models_and_weights.md: ViT incl. mask token + LoRA r4 on blocks 9-11
    x = _pixels(2, 224, 224)
    ours = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(x)))
    ref = _torch_tokens(model, x)
    assert ours.shape == ref.shape == (2, 257, 384)
    err = float(np.abs(ours - ref).max())
    print(f"ViT-S/14 parity max abs error: {err:.3g}")
    assert err < 1e-4


def test_register_tokens_parity(tmp_path):
    model, path = _hf_small(tmp_path, registers=4)
    module, variables = from_hf(path)
    assert module.cfg.num_registers == 4 and module.cfg.pos_resample == "aa"
    x = _pixels(2, 28, 42)
    ours = np.asarray(module.apply(variables, jnp.asarray(x)))
    ref = _torch_tokens(model, x)
    assert ours.shape == ref.shape == (2, 1 + 4 + 6, 128)
    assert np.abs(ours - ref).max() < 1e-4


def test_lora_blocks_and_stop_gradient():
    cfg = ViTConfig(width=32, depth=3, num_heads=2, mlp_dim=64, pos_grid=4, lora_blocks=(2,), lora_rank=2, lora_alpha=2.0)
    m = ViT(cfg)
    x = jnp.asarray(_pixels(2, 28, 28))
    v = jax.jit(m.init)(jax.random.key(0), x)
    p = v["params"]
    assert set(p["block_2"]["attn"]["qkv"]) == {"kernel", "bias", "lora_a", "lora_b"}
    assert set(p["block_1"]["attn"]["qkv"]) == {"kernel", "bias"}
    p = jax.tree_util.tree_map_with_path(
        lambda path, a: a + 0.1 if "lora_b" in jax.tree_util.keystr(path) else a, p)

    def loss(params):
        y = m.apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
        return jnp.sum(y**2)

    g = jax.jit(jax.grad(loss))(p)
    for name in ("block_0", "block_1", "patch_embed", "pos_embed", "cls_token"):
        assert all(float(jnp.abs(a).max()) == 0.0 for a in jax.tree.leaves(g[name])), name
    assert float(jnp.abs(g["block_2"]["attn"]["qkv"]["lora_a"]).max()) > 0
    assert float(jnp.abs(g["block_2"]["mlp"]["fc2"]["lora_b"]).max()) > 0
    # blocks under stop_gradient keep no activations for the backward pass
    full = _saved_residual_size(ViT(ViTConfig(**{**cfg.__dict__, "lora_blocks": (0, 1, 2)})), p, x)
    assert _saved_residual_size(m, p, x) < 0.45 * full
    # remat gives the same values
    mr = ViT(ViTConfig(**{**cfg.__dict__, "remat": True}))
    gr = jax.jit(jax.grad(lambda q: jnp.sum(mr.apply({"params": q}, x, deterministic=False, rngs={"dropout": jax.random.key(1)}) ** 2)))(p)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(gr))) < 1e-4
    # bf16 compute, fp32 params
    mb = ViT(ViTConfig(**{**cfg.__dict__, "dtype": "bfloat16"}))
    yb = jax.jit(mb.apply)({"params": p}, x)
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yb, np.float32), np.asarray(jax.jit(m.apply)({"params": p}, x)), atol=0.15)


@pytest.mark.parametrize("registers,remat", [(0, False), (2, True)])
def test_cls_only_matches_the_full_output_and_its_gradients(registers, remat):
    """The CLS-only last block (what HFA uses) computes the same CLS token and the same
    gradients as the full forward pass followed by ``[:, :1]``."""
    cfg = ViTConfig(width=32, depth=3, num_heads=2, mlp_dim=64, pos_grid=4, lora_blocks=(1, 2), lora_rank=2,
                    lora_alpha=2.0, num_registers=registers, remat=remat)
    m = ViT(cfg)
    x = jnp.asarray(_pixels(3, 28, 42))
    p = jax.jit(m.init)(jax.random.key(0), x)["params"]
    p = jax.tree_util.tree_map_with_path(
        lambda path, a: a + 0.1 if "lora_b" in jax.tree_util.keystr(path) else a, p)
    full = jax.jit(m.apply)({"params": p}, x)
    cls = jax.jit(lambda q, y: m.apply({"params": q}, y, cls_only=True))(p, x)
    assert cls.shape == (3, 1, 32) and full.shape[1] == 1 + registers + 6
    np.testing.assert_allclose(np.asarray(cls), np.asarray(full[:, :1]), atol=1e-5, rtol=1e-5)
    g_full = jax.jit(jax.grad(lambda q: jnp.sum(jnp.sin(m.apply({"params": q}, x)[:, 0]))))(p)
    g_cls = jax.jit(jax.grad(lambda q: jnp.sum(jnp.sin(m.apply({"params": q}, x, cls_only=True)[:, 0]))))(p)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_full), jax.tree.leaves(g_cls)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))
    assert float(jnp.abs(g_cls["block_2"]["mlp"]["fc2"]["lora_a"]).max()) > 0


def test_train_all_blocks_gives_every_block_a_gradient():
    cfg = ViTConfig(width=32, depth=3, num_heads=2, mlp_dim=64, pos_grid=4, lora_blocks=(2,), lora_rank=2,
                    lora_alpha=2.0, train_all_blocks=True)
    m = ViT(cfg)
    x = jnp.asarray(_pixels(2, 28, 28))
    p = jax.jit(m.init)(jax.random.key(0), x)["params"]
    g = jax.jit(jax.grad(lambda q: jnp.sum(m.apply({"params": q}, x) ** 2)))(p)
    for name in ("block_0", "block_1", "patch_embed", "pos_embed", "cls_token"):
        assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g[name])) > 0, name
    # no LoRA at all: the paper freezes the whole ViT, train_all_blocks trains it
    cfg0 = ViTConfig(**{**cfg.__dict__, "lora_rank": 0})
    p0 = jax.jit(ViT(cfg0).init)(jax.random.key(0), x)["params"]
    g0 = jax.grad(lambda q: jnp.sum(ViT(cfg0).apply({"params": q}, x) ** 2))(p0)
    assert float(jnp.abs(g0["patch_embed"]["kernel"]).max()) > 0
    g0f = jax.grad(lambda q: jnp.sum(ViT(ViTConfig(**{**cfg0.__dict__, "train_all_blocks": False})).apply(
        {"params": q}, x) ** 2))(p0)
    assert float(jnp.abs(g0f["block_2"]["mlp"]["fc1"]["kernel"]).max()) == 0.0


def _saved_residual_size(module, params, x):
    """Elements of the batch-sized residuals that reverse-mode AD saves (traced, not run)."""
    import contextlib
    import io
    import re

    import jax.ad_checkpoint

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        jax.ad_checkpoint.print_saved_residuals(lambda q: module.apply({"params": q}, x), params)
    total = 0
    for line in buf.getvalue().splitlines():
        m = re.match(r"\w+\[([\d,]+)\]", line.strip())
        if m:
            dims = [int(d) for d in m.group(1).split(",")]
            if dims[0] == x.shape[0]:
                total += int(np.prod(dims))
    assert total > 0
    return total


@pytest.mark.parametrize("size,dtype", [((28, 42), jnp.float32), ((31, 30), jnp.float32),
                                         ((28, 28), jnp.bfloat16)])
def test_patch_embed_is_the_stride_p_conv(size, dtype):
    # Same parameters (names, shapes, init draw) and the same map as the VALID stride-p conv it
    # replaces, ragged borders included; gradients too.
    import flax.linen as nn

    from hfa_jax.models.vit import PatchEmbed

    x = jax.random.normal(jax.random.key(0), (3, *size, 3))
    ours = PatchEmbed(8, 14, dtype=dtype)
    conv = nn.Conv(8, (14, 14), strides=(14, 14), padding="VALID", dtype=dtype)
    v = ours.init(jax.random.key(1), x)
    v_conv = conv.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, v_conv)
    np.testing.assert_array_equal(v["params"]["kernel"], v_conv["params"]["kernel"])
    v = {"params": {"kernel": v["params"]["kernel"],
                    "bias": jax.random.normal(jax.random.key(2), (8,))}}
    y, y_conv = ours.apply(v, x), conv.apply(v, x)
    assert y.dtype == y_conv.dtype == dtype and y.shape == y_conv.shape == (3, size[0] // 14, size[1] // 14, 8)
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_conv, np.float32), atol=tol, rtol=tol)
    g = jax.grad(lambda v, x: (ours.apply(v, x).astype(jnp.float32) ** 2).sum(), argnums=(0, 1))(v, x)
    g_conv = jax.grad(lambda v, x: (conv.apply(v, x).astype(jnp.float32) ** 2).sum(), argnums=(0, 1))(v, x)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_conv)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol * 10, rtol=tol)


def test_auto_attention_picks_cudnn_only_where_it_applies(monkeypatch):
    # jax.nn.dot_product_attention(implementation=None) always runs XLA's materialised scores;
    # our "auto" must take cuDNN's fused kernel on a GPU in bf16/fp16 and fall back elsewhere.
    from hfa_jax.models import attention as attention_lib

    pick = lambda c, dtype, hd: attention_lib.resolve(c, dtype, hd, has_kernel=True)  # noqa: E731
    assert pick("auto", jnp.bfloat16, 64) == "xla"  # this CPU
    assert pick("cudnn", jnp.bfloat16, 64) == "cudnn" and pick("xla", jnp.bfloat16, 64) == "xla"
    assert pick("pallas", jnp.float32, 64) == "pallas"
    tokens = attention_lib.frame_tokens
    assert tokens(257, "cudnn", jnp.bfloat16, 64) == 264 and tokens(257, "auto", jnp.bfloat16, 64) == 257
    monkeypatch.setattr(attention_lib.jax, "default_backend", lambda: "gpu")
    assert pick("auto", jnp.bfloat16, 64) == "cudnn" and tokens(257, "auto", jnp.bfloat16, 64) == 264
    assert pick("auto", jnp.float32, 64) == "xla" and pick("auto", jnp.bfloat16, 36) == "xla"
    monkeypatch.setattr(attention_lib.jax, "default_backend", lambda: "tpu")
    assert pick("auto", jnp.bfloat16, 64) == "pallas" and tokens(257, "auto", jnp.bfloat16, 64) == 257
    assert attention_lib.resolve("auto", jnp.bfloat16, 64) == "xla"  # a site without a kernel


@pytest.mark.parametrize("cls_only", [False, True])
def test_padded_tokens_change_nothing(monkeypatch, cls_only):
    """The cuDNN path runs the blocks on a token axis padded to a multiple of 8 with the padded
    keys masked by length; padding must not change the output or the gradients. Forced here on
    the XLA path, which takes the same ``key_value_seq_lengths``."""
    from hfa_jax.models import vit as vit_lib
    from hfa_jax.models import attention as attention_lib

    cfg = ViTConfig(width=32, depth=3, num_heads=2, mlp_dim=64, pos_grid=4, lora_blocks=(1, 2), lora_rank=2,
                    lora_alpha=2.0)
    m = ViT(cfg)
    x = jnp.asarray(_pixels(2, 28, 42))  # 1 + 6 tokens
    p = jax.jit(m.init)(jax.random.key(0), x)["params"]
    p = jax.tree_util.tree_map_with_path(
        lambda path, a: a + 0.1 if "lora_b" in jax.tree_util.keystr(path) else a, p)

    def run():
        f = lambda q: m.apply({"params": q}, x, cls_only=cls_only)  # noqa: E731
        return jax.jit(f)(p), jax.jit(jax.grad(lambda q: jnp.sum(jnp.sin(f(q)))))(p)

    y0, g0 = run()
    monkeypatch.setattr(vit_lib.attention_lib, "frame_tokens", lambda n, *a: n + 5)
    y1, g1 = run()
    assert y1.shape == y0.shape
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y0), atol=1e-5, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))
    # and the masking is what makes it so: without it the padded keys leak into the softmax
    monkeypatch.setattr(attention_lib.jnp, "full", lambda shape, v, dtype: jnp.zeros(shape, dtype) + 10**6)
    y2, _ = run()
    assert float(jnp.abs(y2 - y0).max()) > 1e-3


def test_auto_falls_back_to_xla_where_cudnn_refuses(monkeypatch):
    # "auto" picks cuDNN on a GPU; where JAX then refuses it at trace time (an older GPU or
    # cuDNN, a shape it does not take) the model must still run, on XLA's path, same values.
    from hfa_jax.models import attention as attention_lib

    cfg = ViTConfig(width=32, depth=2, num_heads=2, mlp_dim=64, pos_grid=4, lora_blocks=(1,), lora_rank=2,
                    lora_alpha=2.0, dtype="bfloat16")
    x = jnp.asarray(_pixels(2, 28, 42))
    m_xla = ViT(cfg)
    p = jax.jit(m_xla.init)(jax.random.key(0), x)["params"]
    ref = jax.jit(m_xla.apply)({"params": p}, x)
    # pretend this CPU is a GPU: "auto" resolves to cuDNN (and pads 7 tokens to 8), which this
    # jax refuses here ("cuDNN is not detected")
    monkeypatch.setattr(attention_lib.jax, "default_backend", lambda: "gpu")
    m_auto = ViT(dataclasses.replace(cfg, attention="auto"))
    out = jax.jit(m_auto.apply)({"params": p}, x)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=0.05)
    with pytest.raises(RuntimeError, match="cuDNN"):  # an explicit "cudnn" is not second-guessed
        jax.jit(ViT(dataclasses.replace(cfg, attention="cudnn")).apply)({"params": p}, x)
