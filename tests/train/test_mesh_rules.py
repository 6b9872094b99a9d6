"""Parameters are placed by their logical axis names and config.mesh.rules (hfa_jax.train.mesh),
checked on a train-like step of a tiny mBART compiled for 4 emulated CPU devices, mesh
(data=2, fsdp=2). Run in a subprocess: XLA_FLAGS must be set before jax is imported."""

import json
import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent('''
    import json
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from hfa_jax.models import axes, mbart
    from hfa_jax.train import mesh as mesh_lib

    assert jax.device_count() == 4, jax.devices()
    mesh = mesh_lib.make_mesh(data=2, fsdp=2)
    cfg = mbart.MBartConfig(vocab_size=24, d_model=16, encoder_layers=1, decoder_layers=1,
                            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                            decoder_ffn_dim=32, max_position_embeddings=12, lora_rank=2,
                            lora_targets=("encoder.self_attn.q_proj",), dropout=0.0)
    model = mbart.MBart(cfg)
    ids = jnp.zeros((4, 6), jnp.int32)
    mask = jnp.ones((4, 6), bool)

    class Extra(nn.Module):  # one parameter without names, one named dimension fsdp does not divide
        @nn.compact
        def __call__(self, x):
            odd = self.param("odd", axes.param(nn.initializers.ones, (axes.EMBED,)), (15,))
            return nn.Dense(1024, name="plain")(x).sum() + odd.sum()

    def init(rng):
        return {"mbart": model.init(rng, ids, mask, ids), "extra": Extra().init(rng, jnp.zeros((4, 16)))}

    def param_shardings(rules):
        with mesh, nn.logical_axis_rules(rules):
            boxed = jax.eval_shape(init, jax.random.key(0))
        shardings = mesh_lib.variable_shardings(boxed, mesh, rules)
        return nn.meta.unbox(boxed), {"mbart": shardings["mbart"]["params"], "extra": shardings["extra"]["params"]}

    def table(params, shardings):
        out = {}
        for (path, x), sh in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(shardings)):
            spec = [list(a) if isinstance(a, tuple) else a for a in sh.spec]
            out["/".join(str(getattr(k, "key", k)) for k in path)] = spec + [None] * (len(x.shape) - len(spec))
        return out

    def compiled_step(rules):
        """The shardings of the parameters a compiled train-like step (loss, gradient, SGD
        update; activations constrained by name) takes and returns."""
        abstract, params_sh = param_shardings(rules)
        batch_sh = NamedSharding(mesh, P(mesh_lib.BATCH_AXES))
        buffers = {"final_logits_bias": jnp.zeros((cfg.vocab_size,))}

        def step(params, ids, mask):
            def loss(p):
                logits = model.apply({"params": p["mbart"], "buffers": buffers}, ids, mask, ids)
                return jnp.mean(logits ** 2) + Extra().apply({"params": p["extra"]}, logits[:, 0, :16])
            g = jax.grad(loss)(params)
            return jax.tree.map(lambda a, b: a - 0.1 * b, params, g)

        shapes = {k: v["params"] for k, v in abstract.items()}
        with mesh, nn.logical_axis_rules(rules):
            compiled = jax.jit(step, in_shardings=(params_sh, batch_sh, batch_sh), out_shardings=params_sh).lower(
                shapes, jax.ShapeDtypeStruct(ids.shape, ids.dtype), jax.ShapeDtypeStruct(mask.shape, mask.dtype)).compile()
        return {"in": table(shapes, compiled.input_shardings[0][0]), "out": table(shapes, compiled.output_shardings)}

    rules_mlp = (("mlp", "fsdp"), ("vocab", "fsdp")) + mesh_lib.DEFAULT_RULES
    abstract, other = param_shardings(rules_mlp)
    print("RESULT " + json.dumps({"default": compiled_step(mesh_lib.DEFAULT_RULES),
                                  "mlp_vocab": table({k: v["params"] for k, v in abstract.items()}, other)}))
''')


def _run():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_parameter_shardings_follow_the_logical_rules():
    res = _run()
    d, m = res["default"]["in"], res["mlp_vocab"]
    assert res["default"]["out"] == d  # the compiled step returns every parameter where it took it

    def spec(table, key):
        return table[key]

    emb = "mbart/shared/embedding"  # (vocab, embed)
    fc1 = "mbart/encoder/layers_0/fc1/kernel"  # (embed, mlp)
    fc2 = "mbart/decoder/layers_0/fc2/kernel"  # (mlp, embed)
    q = "mbart/encoder/layers_0/self_attn/q_proj"  # (embed, heads) + LoRA
    # default rules: model widths over fsdp, vocabularies / hidden widths / heads / norms replicated
    assert spec(d, emb) == [None, "fsdp"]
    assert spec(d, fc1) == ["fsdp", None] and spec(d, fc2) == [None, "fsdp"]
    assert spec(d, q + "/kernel") == ["fsdp", None] and spec(d, q + "/bias") == [None]
    assert spec(d, q + "/lora_a") == ["fsdp", None] and spec(d, q + "/lora_b") == [None, None]
    assert spec(d, "mbart/encoder/layers_0/self_attn/out_proj/kernel") == [None, "fsdp"]
    assert spec(d, "mbart/encoder/layer_norm/scale") == [None]
    assert spec(d, "mbart/decoder/embed_positions/embedding") == [None, "fsdp"]
    # a named dimension fsdp does not divide stays whole; an unnamed parameter takes the fallback
    # heuristic (its largest dimension over fsdp)
    assert spec(d, "extra/odd") == [None]
    assert spec(d, "extra/plain/kernel") == [None, "fsdp"] and spec(d, "extra/plain/bias") == [None]
    # changing the rules changes the layout: mlp and vocab first take fsdp
    assert spec(m, emb) == ["fsdp", None]
    assert spec(m, fc1) == [None, "fsdp"] and spec(m, fc2) == ["fsdp", None]
    assert spec(m, q + "/kernel") == ["fsdp", None]  # (embed, heads): heads has no rule, embed keeps fsdp
