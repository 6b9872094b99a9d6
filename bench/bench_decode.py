"""Beam-search benchmark (``beam_search`` row): hfa_jax's jit-compiled beam search
(``hfa_jax.models.decode.mbart_generate``) against transformers' ``generate`` on the same weights.

The reference worker builds an ``MBartForConditionalGeneration`` from a config (random weights),
``save_pretrained``s it, draws the encoder inputs (``inputs_embeds`` [B, S, D], i.e. what the
mapper feeds mBART in HFA, with the last sentence's source padded to half length), times
``generate(num_beams=4, max_new_tokens=N, length_penalty=1.0, early_stopping=False)`` and stores
its sequences. Our worker imports the same folder with ``hfa_jax.weights.mbart.from_hf`` (no LoRA:
both sides are the plain base model), decodes the same inputs and reports how many of the
returned sequences are token-identical to transformers' (a correctness check riding along).

With random weights EOS is (almost) never the best token, so every hypothesis runs to
``max_new_tokens``: the measured rate is the worst case for a sentence of that length.

    python bench/bench_decode.py rows [--quick]
    python bench/bench_decode.py floor      # the full row's weight products alone (the bound)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import Shapes  # noqa: E402

DECODE = {"full": dict(sentences=4, src_len=64, max_new_tokens=150),
          "quick": dict(sentences=4, src_len=32, max_new_tokens=30),
          # accelerator rows: a dev-set-sized batch through mBART-large (12+12), half precision
          "accel": dict(sentences=16, src_len=128, max_new_tokens=150)}
ITERS = {"full": (1, 5, 60.0), "quick": (1, 3, 20.0), "accel": (2, 5, 60.0)}
START_ID = 3  # the de_DE id of the trimmed vocabulary (any non-special id will do)


def torch_worker(s: Shapes, folder: str, *, sentences: int, src_len: int, max_new_tokens: int,
                 iters: int, warmup: int, max_seconds: float, half: bool = False) -> dict:
    import numpy as np
    import torch
    from transformers import GenerationConfig, MBartForConditionalGeneration

    from bench.reference_torch import hf_mbart_config

    common.log(f"torch generate: {sentences} sentences, {max_new_tokens} new tokens, half={half}")
    torch.manual_seed(0)
    model = MBartForConditionalGeneration(hf_mbart_config(s, decoder_start_token_id=START_ID)).eval()
    model.save_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(sentences, src_len, s.d_model, generator=g)
    mask = torch.ones(sentences, src_len, dtype=torch.long)
    mask[-1, src_len // 2:] = 0
    np.savez(os.path.join(folder, "inputs.npz"), emb=emb.numpy(), mask=mask.numpy().astype(bool))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if half:  # the accelerator rows: fp16 weights on CUDA (bf16 on CPU, for the smoke test)
        model = model.to(torch.float16 if device == "cuda" else torch.bfloat16)
        emb = emb.to(model.dtype)
    model, emb, mask = model.to(device), emb.to(device), mask.to(device)
    common.log(f"built and saved; timing on {device}")
    gen = GenerationConfig(num_beams=4, max_new_tokens=max_new_tokens, length_penalty=1.0, early_stopping=False,
                           do_sample=False, decoder_start_token_id=START_ID, eos_token_id=2, pad_token_id=1,
                           bos_token_id=0, forced_eos_token_id=2)
    box = {}

    def call():
        with torch.inference_mode():
            box["seq"] = model.generate(inputs_embeds=emb, attention_mask=mask, generation_config=gen)
        return box["seq"]

    sync = (lambda x: x.cpu()) if device == "cuda" else (lambda x: x)
    threads = (common.pick_torch_threads(call) if device == "cpu"
               else {"threads": torch.get_num_threads(), "probe_s": {}})
    times = common.time_calls(call, warmup=max(warmup - 1, 0), iters=iters, max_seconds=max_seconds, sync=sync)
    common.log(f"median {common.median(times):.3f} s per batch over {len(times)} calls")
    seq = box["seq"].cpu().numpy()
    np.save(os.path.join(folder, "hf_sequences.npy"), seq)
    return {"times": times, "median_s": common.median(times), "peak_rss_mib": common.peak_rss_mb(),
            "generated_len": int(seq.shape[1] - 1), "threads": threads["threads"],
            "thread_probe_s": threads["probe_s"], "device": device, "dtype": str(model.dtype)}


def ours_worker(folder: str, *, max_new_tokens: int, iters: int, warmup: int, max_seconds: float,
                half: bool = False) -> dict:
    import jax
    import numpy as np

    from hfa_jax.models.decode import mbart_generate
    from hfa_jax.weights.mbart import from_hf

    extra = {"dtype": "bfloat16"} if half else {}  # bf16 compute (params stay f32)
    common.log(f"ours beam search on {jax.devices()[0].device_kind}: {max_new_tokens} new tokens, half={half}")
    module, variables = from_hf(folder, lora_rank=0, decoder_start_token_id=START_ID, **extra)
    inp = np.load(os.path.join(folder, "inputs.npz"))
    emb, mask = jax.device_put(inp["emb"]), jax.device_put(inp["mask"])
    kw = dict(num_beams=4, max_new_tokens=max_new_tokens, length_penalty=1.0, early_stopping=False,
              decoder_start_token_id=START_ID)
    t0 = time.perf_counter()
    out = mbart_generate(module, variables, None, mask, emb, **kw)
    jax.block_until_ready(out.sequences)
    compile_s = time.perf_counter() - t0
    common.log(f"first call (compile) {compile_s:.1f} s; timing")
    box = {}

    def call():
        box["out"] = mbart_generate(module, variables, None, mask, emb, **kw)
        return box["out"].sequences

    times = common.time_calls(call, warmup=warmup, iters=iters, sync=jax.block_until_ready, max_seconds=max_seconds)
    common.log(f"median {common.median(times):.3f} s per batch over {len(times)} calls")
    ours = np.asarray(box["out"].sequences)
    hf = np.load(os.path.join(folder, "hf_sequences.npy"))
    n = min(ours.shape[1], hf.shape[1])
    # HF stops when every sentence is done and pads after EOS; compare up to HF's length.
    same = [bool(np.array_equal(ours[i, :n], hf[i, :n])) for i in range(hf.shape[0])]
    return {"times": times, "median_s": common.median(times), "peak_rss_mib": common.peak_rss_mb(),
            "compile_s": compile_s, "identical_sequences": int(sum(same)), "sentences": len(same),
            "device": jax.devices()[0].device_kind}


def matmul_floor(s: Shapes, *, sentences: int, max_new_tokens: int, beams: int = 4, repeats: int = 5) -> dict:
    """Seconds per batch of only the decoder's weight products: per step and layer the self
    q/k/v/out, cross q/out, fc1 and fc2 products on ``sentences x beams`` rows, plus the LM head,
    with random ``[out, in]`` kernels (the layout our CPU decoding uses), ``max_new_tokens`` steps
    in one jitted ``fori_loop``. What a beam search with no other work than these products would
    take: the bound on the ``beam_search`` row's speed-up when both sides multiply at the same
    rate (bench/RESULTS.md)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    d, f = s.d_model, s.m_ffn

    def w(o, i):
        return jnp.asarray(rng.standard_normal((o, i), np.float32) * 0.02)

    layers = [{n: w(d, d) for n in ("q", "k", "v", "o", "cq", "co")} | {"f1": w(f, d), "f2": w(d, f)}
              for _ in range(s.dec_layers)]
    head = w(s.vocab, d)

    def mm(x, k):
        return jnp.einsum("bi,oi->bo", x, k)

    @jax.jit
    def run(x, layers, head):
        def body(_, x):  # tiny residual updates keep every product live and the values finite
            for p in layers:
                x = x + mm(mm(x, p["q"]) + mm(x, p["k"]) + mm(x, p["v"]), p["o"]) * 1e-3
                x = x + mm(mm(x, p["cq"]), p["co"]) * 1e-3
                x = x + mm(jax.nn.relu(mm(x, p["f1"])), p["f2"]) * 1e-3
            return x + mm(x, head)[:, :1] * 1e-6
        return jax.lax.fori_loop(0, max_new_tokens, body, x)

    x = jnp.ones((sentences * beams, d), jnp.float32)
    jax.block_until_ready(run(x, layers, head))
    times = common.time_calls(lambda: run(x, layers, head), warmup=0, iters=repeats, sync=jax.block_until_ready)
    return {"median_s": common.median(times), "ms_per_step": 1e3 * common.median(times) / max_new_tokens,
            "times": times}


def rows(*, quick: bool = False, micro: bool = False, progress=None, accelerator: bool = False) -> list[dict]:
    """The ``beam_search`` row. ``accelerator``: ours with bf16 compute against ``generate`` in
    fp16 on CUDA, mBART-large 12+12, 16 sentences (sequences may then differ: half precision)."""
    mode = "quick" if quick or micro else ("accel" if accelerator else "full")
    s = Shapes(enc_layers=12, dec_layers=12) if mode == "accel" else Shapes()
    d = dict(DECODE[mode])
    if micro:
        from bench.bench_train import _micro

        s = _micro(s)
        d.update(src_len=8, max_new_tokens=6, sentences=2)
    warmup, iters, max_s = (1, 1, 5.0) if micro else ITERS[mode]
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as folder:
        common_args = ["--shapes", json.dumps(dataclasses.asdict(s)), "--folder", folder,
                       "--sentences", str(d["sentences"]), "--src-len", str(d["src_len"]),
                       "--max-new-tokens", str(d["max_new_tokens"]), "--iters", str(iters),
                       "--warmup", str(warmup), "--max-seconds", str(max_s)] + (["--half"] if accelerator else [])
        ref = common.run_worker("bench_decode.py", ["worker", "--side", "torch", *common_args])
        ours = common.run_worker("bench_decode.py", ["worker", "--side", "ours", *common_args])
    n = d["sentences"]
    settings = (f"{n} sentences x 4 beams, source {d['src_len']} embeds (last padded to half), "
                f"{ref['generated_len']} new tokens (random weights: no early EOS); mBART d{s.d_model} "
                f"{s.enc_layers}+{s.dec_layers} layers ffn{s.m_ffn} V{s.vocab}, no LoRA; HF generate vs jit beam search"
                + (f"; ours bf16 compute vs HF {ref['dtype']} on {ref['device']}" if accelerator else ""))
    row = {"name": "beam_search", "ours": n / ours["median_s"], "reference": n / ref["median_s"],
           "unit": "sentences/s", "speedup": ref["median_s"] / ours["median_s"], "settings": settings,
           "extra": {"identical_sequences": f"{ours['identical_sequences']}/{ours['sentences']}",
                     "s_per_batch_ours": ours["median_s"], "s_per_batch_ref": ref["median_s"],
                     "compile_s_ours": ours["compile_s"], "peak_rss_mib_ours": ours["peak_rss_mib"],
                     "peak_rss_mib_ref": ref["peak_rss_mib"], "ref_threads": ref["threads"], "times_ours": ours["times"], "times_ref": ref["times"]}}
    if progress:
        progress(row)
    return [row]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--side", choices=("ours", "torch"), required=True)
    w.add_argument("--shapes", default="{}")
    w.add_argument("--folder", required=True)
    w.add_argument("--sentences", type=int, default=4)
    w.add_argument("--src-len", type=int, default=64)
    w.add_argument("--max-new-tokens", type=int, default=150)
    w.add_argument("--iters", type=int, default=5)
    w.add_argument("--warmup", type=int, default=1)
    w.add_argument("--max-seconds", type=float, default=60.0)
    w.add_argument("--half", action="store_true", help="accelerator rows: half-precision compute")
    r = sub.add_parser("rows")
    r.add_argument("--quick", action="store_true")
    r.add_argument("--micro", action="store_true")
    r.add_argument("--accelerator", action="store_true", help="bf16 vs fp16 generate on the GPU")
    sub.add_parser("floor", help="seconds per batch of the full row's weight products alone (matmul_floor)")
    a = p.parse_args(argv)
    if a.cmd == "floor":
        d = DECODE["full"]
        res = matmul_floor(Shapes(), sentences=d["sentences"], max_new_tokens=d["max_new_tokens"])
        print(json.dumps(res))
        return
    if a.cmd == "worker":
        d = json.loads(a.shapes)
        if "lora_blocks" in d:
            d["lora_blocks"] = tuple(d["lora_blocks"])
        s = Shapes(**d)
        if a.side == "ours":
            common.enable_jax_cache()
        if a.side == "torch":
            res = torch_worker(s, a.folder, sentences=a.sentences, src_len=a.src_len,
                               max_new_tokens=a.max_new_tokens, iters=a.iters, warmup=a.warmup,
                               max_seconds=a.max_seconds, half=a.half)
        else:
            res = ours_worker(a.folder, max_new_tokens=a.max_new_tokens, iters=a.iters, warmup=a.warmup,
                              max_seconds=a.max_seconds, half=a.half)
        common.emit(res)
    else:
        for row in rows(quick=a.quick, micro=a.micro, accelerator=a.accelerator):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
