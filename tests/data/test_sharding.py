"""to_global on 8 emulated CPU devices (run in a subprocess: XLA_FLAGS must precede jax import)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from hfa_jax.data.augment import augment
    from hfa_jax.data.sharding import batch_sharding, to_global
    from hfa_jax.errors import ConfigError

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    batch = {
        "frames": rng.integers(0, 256, (8, 3, 20, 20, 3), dtype=np.uint8),
        "frame_mask": rng.random((8, 3)) < 0.7,
        "index": np.arange(8, dtype=np.int32),
    }

    # 1-d data mesh: rows split 1 per device, values/dtypes round-trip.
    mesh = Mesh(np.array(jax.devices()), ("data",))
    g = to_global(batch, mesh)
    for k, v in batch.items():
        assert g[k].shape == v.shape and g[k].dtype == v.dtype, k
        assert g[k].sharding.spec == P(("data",), *([None] * (v.ndim - 1))), g[k].sharding
        np.testing.assert_array_equal(np.asarray(g[k]), v)
        for shard in g[k].addressable_shards:
            assert shard.data.shape[0] == 1
            np.testing.assert_array_equal(np.asarray(shard.data), v[shard.index])
    assert g["frames"].dtype == np.uint8  # host->device transfer stays uint8

    # Augment under jit on the sharded batch keeps the batch sharding and the values.
    key = jax.random.key(3)
    out = augment(key, g["frames"], train=True, crop_size=16)
    want = batch_sharding(mesh, 5)
    assert out.sharding.is_equivalent_to(want, 5), out.sharding
    ref = augment(key, jax.device_put(batch["frames"], jax.devices()[0]), train=True, crop_size=16)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-5)
    ev = augment(key, g["frames"], train=False, crop_size=16)
    assert ev.sharding.is_equivalent_to(want, 5), ev.sharding

    # 2-d mesh (data x fsdp): batch split over data only (replicated over fsdp) ...
    mesh2 = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    g2 = to_global(batch, mesh2)
    assert g2["frames"].sharding.spec == P(("data",), None, None, None, None)
    assert {s.data.shape[0] for s in g2["frames"].addressable_shards} == {2}
    np.testing.assert_array_equal(np.asarray(g2["index"]), batch["index"])
    # ... or over both axes.
    g3 = to_global(batch, mesh2, batch_axes=("data", "fsdp"))
    assert {s.data.shape[0] for s in g3["index"].addressable_shards} == {1}
    np.testing.assert_array_equal(np.asarray(g3["frame_mask"]), batch["frame_mask"])

    # Errors a user can make: rows not divisible by the data shards, unknown axis.
    for bad, args in (({"index": np.arange(6, dtype=np.int32)}, (mesh,)),
                      (batch, (mesh, ("model",)))):
        try:
            to_global(bad, *args)
        except ConfigError as e:
            print("config error:", e)
        else:
            raise AssertionError("expected ConfigError")
    print("OK")
    """
)


def test_to_global_and_augment_on_8_emulated_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("OK")
    assert proc.stdout.count("config error:") == 2


def test_hosts_agree_on_the_time_length(monkeypatch):
    import jax
    import numpy as np
    import pytest
    from jax.experimental import multihost_utils

    from hfa_jax.data import sharding

    batch = {"frames": np.ones((2, 64, 4, 4, 3), np.uint8), "frame_mask": np.ones((2, 64), bool),
             "labels": np.arange(6).reshape(2, 3)}
    same = sharding.agree_on_time_length(batch)  # one process: unchanged
    assert same["frames"].shape == (2, 64, 4, 4, 3)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.array([x, 128], np.int32))
    out = sharding.agree_on_time_length(batch)  # the other host bucketed to 128
    assert out["frames"].shape == (2, 128, 4, 4, 3) and out["frame_mask"].shape == (2, 128)
    np.testing.assert_array_equal(out["frames"][:, :64], batch["frames"])
    assert not out["frames"][:, 64:].any() and not out["frame_mask"][:, 64:].any()
    assert out["frame_mask"][:, :64].all()
    np.testing.assert_array_equal(out["labels"], batch["labels"])
    with pytest.raises(ValueError, match="time steps"):
        sharding.pad_time(batch, 32)


def test_hosts_agree_on_the_packed_capacity(monkeypatch):
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh

    from hfa_jax.data import sharding

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    mask = np.zeros((2, 8), bool)
    mask[0, :3] = True  # 3 valid of 16 slots -> 4 at 8 levels (steps of 2)
    one = sharding.packed_frame_index(mask, mesh, levels=8)
    np.testing.assert_array_equal(one, [[0, 1, 2, 16]])
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.array([x, 10], np.int32))
    out = sharding.packed_frame_index(mask, mesh, levels=8)  # the other host needs 10 slots
    np.testing.assert_array_equal(out, [[0, 1, 2] + [16] * 7])


def test_packed_frame_index_per_microbatch_and_hosts_agree(monkeypatch):
    """train.microbatches = 2: one packing per micro-batch (rows k::2), [shards, K, P], and the
    hosts agree on P as with one batch."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh

    from hfa_jax.data import sharding
    from hfa_jax.models.packing import pack_index

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    mask = np.arange(8)[None] < np.asarray([3, 1, 2, 0])[:, None]
    index = sharding.packed_frame_index(mask, mesh, levels=16, num_microbatches=2)
    assert index.shape == (1, 2, 5)  # rows 0, 2: 5 frames; rows 1, 3: 1 frame; one capacity
    np.testing.assert_array_equal(index[:, 0], pack_index(mask[0::2], 1, 16))
    np.testing.assert_array_equal(index[0, 1], [0, 16, 16, 16, 16])
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.array([x, 9], np.int32))
    assert sharding.packed_frame_index(mask, mesh, levels=16, num_microbatches=2).shape == (1, 2, 9)
