"""The demo job (``configs/demo.py``): the whole system on generated data, on a CPU, in minutes.

Steps, each in ``WORKDIR/<step>`` and skipped when already complete (so an interrupted demo
resumes; the training stages resume from their own checkpoints):

1. ``synthsign/``   a SynthSign subset (``data_prep.synthsign.generate``, ``config.demo.domain``) of
   ``config.demo.corpus`` (PHOENIX14T, or CSL-Daily for ``configs/demo.py:csl_daily``), seed ``config.data.seed``
2. ``dataset/``     the ArrayRecord dataset (``data_prep.build_dataset.convert``)
3. ``tokenizer/``   a SentencePiece tokenizer in mBART layout (``data_prep.trim_vocab.train_tokenizer``)
4. ``pseudo_glosses.json`` from the SynthSign sign keys, or HanTa lemmas of the text (the recipe of docs/text.md)
5. ``prototypes.npy`` from a small fastText model trained on the training sentences
5b. ``frame_encoder/`` the DINOv2 stand-in (``hfa_jax.demo_hand_locator``), a DINOv2 folder that the
   pretraining stage imports through ``config.weights.vit``
6. ``pretrain/``, ``finetune1/``, ``finetune2/`` the three training stages (``hfa_jax.train.loop.run``)
7. test evaluation of the best stage-2 checkpoint and the video-blind control (the same
   hypotheses scored against the sentences of other videos): ``results.json`` + a table.
"""

from __future__ import annotations

import glob
import json
import os
import time

import numpy as np

from data_prep import beyondgloss, build_dataset, prototypes, pseudo_glosses, trim_vocab
from data_prep.synthsign import generate, lexicon, writer
from data_prep.synthsign.corpus import get_corpus
from hfa_jax import demo_hand_locator as hand_locator
from hfa_jax import export as export_lib
from hfa_jax.data.annotations import read_csl_daily, read_phoenix14t
from hfa_jax.data.beyondgloss_io import load_synthsign_descriptions
from hfa_jax.errors import ConfigError
from hfa_jax.models import vit as vit_lib
from hfa_jax.text import pseudo_glosses as pg_lib
from hfa_jax.train import loop, tasks
from hfa_jax.train.freeze import STAGES as STAGE_DIRS  # each stage's workdir is named after it


# The demo's tiny models spend more time in XLA's CPU compiler than in training; these flags
# halve compile time (runtime ~20% slower).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def process_setup(config) -> None:
    """Run by :mod:`hfa_jax.main` before JAX starts its backend (XLA reads its flags only then):
    ``config.demo.fast_compile`` adds :data:`FAST_COMPILE_FLAGS` to ``XLA_FLAGS``."""
    if bool(config.demo.fast_compile):
        flags_now = os.environ.get("XLA_FLAGS", "")
        if "xla_backend_optimization_level" not in flags_now:
            os.environ["XLA_FLAGS"] = (flags_now + " " + FAST_COMPILE_FLAGS).strip()


def _done(path: str) -> bool:
    return os.path.exists(path)


def source_format(corpus: str) -> str:
    """The release layout SynthSign writes ``corpus`` in, as a ``data_prep`` format: CSL-Daily's
    label files and frame folders, else the official PHOENIX14T tree (also the English corpus)."""
    return "csl_daily" if corpus == "csl_daily" else "phoenix14t"


def prepare_data(config, workdir: str) -> dict[str, str]:
    """Steps 1-5. Returns the paths the training configs need."""

    d = config.demo
    seed = int(config.data.seed)
    corpus = str(d.corpus)
    fmt = source_format(corpus)
    synth = os.path.join(workdir, "synthsign")
    marker = os.path.join(synth, "demo_subset.json")
    if not _done(marker):
        print(f"[demo] 1/7 SynthSign subset (seed {seed}) -> {synth}", flush=True)
        # Two calls: num_train training sentences, num_eval dev/test sentences. The dev/test
        # ranking favours sentences covered by the top of the training ranking (writer.py), which
        # the larger training subset contains.
        kw = dict(seed=seed, max_glosses=int(d.max_glosses), max_words=int(d.max_words),
                  domain=str(d.domain), workers=int(d.workers), progress=True, corpus=corpus)
        caps_train, caps_eval = int(d.num_train), int(d.num_eval)
        if d.get("num_dev") is not None:  # "signers" domain: train is made from the dev/test choice
            caps_train = caps_eval = {"train": int(d.num_train), "dev": int(d.num_dev), "test": int(d.num_eval)}
        a = generate(synth, max_per_split=caps_train, splits=("train",), **kw)
        b = generate(synth, max_per_split=caps_eval, splits=("dev", "test"), **kw)
        with open(marker, "w") as f:
            json.dump({"train": a["splits"], "eval": b["splits"], "seed": seed}, f)
    ds_root = os.path.join(workdir, "dataset")
    if not _done(os.path.join(ds_root, corpus, "1.0.0", "dataset_info.json")):
        print(f"[demo] 2/7 ArrayRecord dataset -> {ds_root}", flush=True)
        # The converter reads the tree as it would the real corpus (the CSL-Daily frame folders
        # and label files, or the official PHOENIX14T layout).
        root, labels = ((str(writer.csl_frames_root(synth)), str(writer.csl_labels_dir(synth)))
                        if corpus == "csl_daily" else (synth, None))
        build_dataset.convert(fmt, root, ds_root, labels=labels, size=int(d.frame_size), image_format="jpeg",
                              jpeg_quality=90, workers=int(d.workers), progress=True, name=corpus)
    if config.model.beyondgloss.hand_pose:
        # BeyondGloss (docs/beyondgloss.md): per-frame hand-pose targets derived from SynthSign's extras
        # (the `description` feature is already in the dataset).

        bg_root = os.path.join(workdir, "dataset_beyondgloss")
        if not _done(os.path.join(bg_root, "phoenix14t", "1.0.0", "dataset_info.json")):
            print(f"[demo] 2b/7 hand-pose targets (BeyondGloss) -> {bg_root}", flush=True)
            beyondgloss.convert(ds_root, bg_root, beyondgloss.Inputs(synthsign=synth), progress=True)
        ds_root = bg_root
    tok_dir = os.path.join(workdir, "tokenizer")
    train_sents = trim_vocab.training_sentences(synth, "train", fmt)
    if not _done(os.path.join(tok_dir, "sentencepiece.bpe.model")):
        print(f"[demo] 3/7 SentencePiece tokenizer (mBART layout) -> {tok_dir}", flush=True)
        tok_sents = list(train_sents)
        if bool(d.tokenizer_descriptions):
            # The frozen text encoder reads the (English) hand-motion descriptions through the same
            # tokenizer: train it on them too. Keep this on for every arm of an ablation.

            tok_sents += load_synthsign_descriptions(synth, "train")
        trim_vocab.train_tokenizer(tok_sents, tok_dir, vocab_size=int(d.tokenizer_vocab), lang=str(config.data.lang))
    pg_path = os.path.join(workdir, "pseudo_glosses.json")
    if not _done(pg_path):
        print(f"[demo] 4/7 pseudo-glosses ({d.pseudo_glosses}) -> {pg_path}", flush=True)
        if d.pseudo_glosses == "text":

            pseudo_glosses.build(synth, pg_path, progress=False)
        elif d.pseudo_glosses == "glosses":
            _gloss_pseudo_glosses(synth, pg_path, corpus)
        else:
            raise ConfigError(f"config.demo.pseudo_glosses={d.pseudo_glosses!r} is not 'glosses' or 'text'")
    proto_path = os.path.join(workdir, "prototypes.npy")
    if not _done(proto_path):
        print(f"[demo] 5/7 fastText prototypes -> {proto_path}", flush=True)
        pg = pg_lib.load_pseudo_glosses(pg_path)
        if get_corpus(corpus).char_text:
            # Chinese has no spaces: train on characters, so a word's vector is built from
            # its characters (character n-grams of length 1-2).
            ft = prototypes.train_fasttext([" ".join(c for c in t if not c.isspace()) for t in train_sents],
                                           os.path.join(workdir, "fasttext.bin"), dim=int(d.fasttext_dim),
                                           epoch=5, minn=1, maxn=2)
        else:
            ft = prototypes.train_fasttext(train_sents, os.path.join(workdir, "fasttext.bin"),
                                           dim=int(d.fasttext_dim), epoch=5)
        protos = prototypes.make_prototypes([v.lower() for v in pg.vocab], ft)
        np.save(proto_path, _no_zero_rows(protos, seed))
    fe_dir = os.path.join(workdir, "frame_encoder")
    if not _done(os.path.join(fe_dir, "config.json")) and bool(d.pretrain_frame_encoder):
        print(f"[demo] 5b/7 frame encoder: the DINOv2 stand-in, pretrained to locate the hands -> {fe_dir}",
              flush=True)

        vcfg = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model.vit.to_dict().items()}
        data = hand_locator.load_hand_frames(ds_root, synth, "train")
        res = hand_locator.pretrain(data, vit_lib.ViTConfig(**vcfg), fe_dir, crop_size=int(config.data.crop_size),
                                    steps=int(d.frame_encoder_steps), seed=seed)
        print(f"[demo]    held-out frames: hand-centre MSE {res['hand_mse']:.4f} (mean predictor "
              f"{res['hand_var']:.4f}), handshape accuracy {res['shape_acc']:.2f}", flush=True)
    return {"dataset_dir": ds_root, "tokenizer_dir": tok_dir, "pseudo_glosses": pg_path,
            "prototypes": proto_path,
            "frame_encoder": fe_dir if bool(d.pretrain_frame_encoder) else ""}


def _no_zero_rows(protos: np.ndarray, seed: int) -> np.ndarray:
    """A tiny fastText model returns all-zero vectors for lemmas without any trained subword; a
    zero prototype gets a zero gradient through the cosine similarity (F.normalize convention) and
    would never train, so such rows (never row 0, the blank class) get a small random vector."""
    protos = protos.copy()
    zero = np.linalg.norm(protos, axis=1) == 0
    zero[0] = False
    rng = np.random.default_rng(seed)
    protos[zero] = rng.normal(0.0, 1e-2, size=(int(zero.sum()), protos.shape[1])).astype(protos.dtype)
    return protos


def _synthsign_records(root: str, split: str, corpus: str):
    """A SynthSign tree's records of one split, text only, read as the real corpus would be."""
    if corpus == "csl_daily":
        return read_csl_daily(str(writer.csl_labels_dir(root)), str(writer.csl_frames_root(root)), split,
                              check_frames=False)
    return read_phoenix14t(root, split, check_frames=False)


def _gloss_pseudo_glosses(root: str, out: str, corpus: str = "phoenix14t") -> None:
    """Pseudo-glosses from the SynthSign sign keys of each video's gloss (what is visibly signed).

    SynthSign renders one sign per lexical key of the gloss, so these targets are the
    exact "words" in the video; the docs/text.md recipe ("text": lemmas of the translation) is the
    realistic alternative."""

    keys = {}
    for split in ("train", "dev", "test"):
        for r in _synthsign_records(root, split, corpus):
            keys[f"{split}/{r.name}"] = [k.lower() for k in lexicon.lexical_keys(r.gloss or "")]
    vocab = pg_lib.build_vocab(list(keys.values()))
    targets = pg_lib.make_targets(keys, vocab)
    pg_lib.save_pseudo_glosses(out, vocab, targets, {"source": "synthsign sign keys (demo)",
                                                     "num_classes": len(vocab)})


def _stage_eval(demo, stage: str) -> dict:
    """How each demo stage is evaluated: pretraining on dev at its end; stage 1 is short and not
    evaluated (stage 2 starts from its last state); stage 2 on dev during training (selects the
    kept checkpoint), then the kept one on dev and test with the video-blind control."""
    return {
        "pretrain": dict(splits=("dev",), final_on_best=False),
        "finetune1": dict(splits=("dev",), at_end=False, final_on_best=False),
        "finetune2": dict(splits=("dev", "test"), every_epochs=float(demo.eval_every_epochs), final_on_best=True,
                          video_blind=True),
    }[stage]


def stage_config(config, stage: str, paths: dict[str, str], workdir: str):
    """The training config of one demo stage (a copy of the demo config with train.* filled)."""
    c = config.copy_and_resolve_references()
    c.unlock()
    c.job = "train"
    d = config.demo
    index = STAGE_DIRS.index(stage)
    pseudo_glosses = tasks.of_stage(stage).uses_pseudo_glosses
    c.data.dataset_dir = paths["dataset_dir"]
    c.data.tokenizer_dir = paths["tokenizer_dir"]
    c.data.pseudo_glosses = paths["pseudo_glosses"] if pseudo_glosses else ""
    c.data.prototypes = paths["prototypes"] if pseudo_glosses else ""
    c.train.stage = stage
    c.train.trainable = tuple(tuple(r) for r in d.trainable[stage])
    c.train.epochs = float(d[f"{stage}_epochs"])
    c.train.lr = float(d[f"{stage}_lr"])
    # The first stage imports the frame encoder like real DINOv2 weights; later stages inherit it
    # through their checkpoints, each starting from the stage before.
    c.weights.vit = paths["frame_encoder"] if index == 0 else ""
    c.train.init_from = os.path.join(workdir, STAGE_DIRS[index - 1]) if index > 0 else ""
    for key, value in _stage_eval(d, stage).items():
        c.eval[key] = value
    del c["demo"]
    c.lock()
    return c


def run(config, workdir: str) -> dict:
    """Runs the demo in ``workdir``; returns (and writes) ``results.json``."""

    t0 = time.time()
    os.makedirs(workdir, exist_ok=True)
    paths = prepare_data(config, workdir)
    summaries = {}
    for i, stage in enumerate(STAGE_DIRS):
        print(f"[demo] {6 + (i == 2)}/7 training stage {stage}", flush=True)
        stage_dir = os.path.join(workdir, stage)
        done = os.path.join(stage_dir, "summary.json")
        if os.path.exists(done):  # finished in an earlier (interrupted) demo run
            with open(done) as f:
                summaries[stage] = json.load(f)
            continue
        summaries[stage] = loop.run(stage_config(config, stage, paths, workdir), stage_dir)
    res = summaries["finetune2"]["results"]
    results = {"test": res["test"], "test_video_blind": res["test_video_blind"],
               "dev": res.get("dev"), "seconds": time.time() - t0, "seed": int(config.data.seed),
               "best_step": res.get("best_step")}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(results_table(results))
    # The final model as a folder that travels (hfa_jax.export), with a few test clips as examples.
    model_dir = os.path.join(workdir, "model")
    if not _done(os.path.join(model_dir, export_lib.EXPORT_MARKER)):
        export_lib.export(os.path.join(workdir, "finetune2"), model_dir, force=True)
        clips = sorted(glob.glob(os.path.join(workdir, "synthsign", "features", "*", "test", "*")))[:3]
        export_lib.add_examples(model_dir, clips)
    examples = sorted(glob.glob(os.path.join(model_dir, "examples", "*.mp4")))
    print(f"[demo] model folder: {model_dir}; try it:\n"
          f"  python -m hfa_jax.translate --model {model_dir} --input {examples[0] if examples else 'clip.mp4'}\n"
          f"  python -m hfa_jax.serve --model {model_dir}    # needs pip install -e \".[app]\"", flush=True)
    return results


def results_table(results: dict) -> str:
    keys = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "chrf")
    rows = [("test", results["test"]), ("test, video-blind control", results["test_video_blind"])]
    head = f"{'':28s}" + "".join(f"{k:>9s}" for k in keys)
    lines = [head, "-" * len(head)]
    for name, m in rows:
        lines.append(f"{name:28s}" + "".join(f"{m[k]:9.2f}" for k in keys))
    lines.append(f"BLEU-4 gap over the control: {results['test']['bleu4'] - results['test_video_blind']['bleu4']:.2f}"
                 f"   (total {results['seconds']:.0f} s)")
    return "\n".join(lines)
