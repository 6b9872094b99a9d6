"""Export a fine-tuning workdir as a self-contained model folder that travels.

    python -m hfa_jax.export --workdir runs/finetune2 --out my_model/ [--keep-lora]

The folder, laid out to be pushed to a model hub as it is (nothing in it needs a network)::

    README.md               model card: data, training commands, dev/test metrics and their
                            protocol, package versions (YAML front matter for hub metadata)
    config.json             the training config of the stage (LoRA ranks 0 when merged)
    hfa_export.json         format version, the resolved model config, what the folder holds
    model.safetensors       params (LoRA merged into the kernels by default), BatchNorm
                            statistics, buffers; the pretraining head under pretrain_head/
                            when the model carries it. Keys are '/'-joined variable paths.
    preprocessing.json      what the model expects of its input (hfa_jax.data.video)
    tokenizer/              the mBART SentencePiece tokenizer files
    pseudo_glosses.json     the pretraining head's pseudo-gloss names (with the head only)

``Translator.from_pretrained(folder)`` (:mod:`hfa_jax.translator`) reads it back; an incomplete
folder is refused with one line naming the missing file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys

import jax
import numpy as np

from hfa_jax import __version__
from hfa_jax.data import video as video_lib
from hfa_jax.errors import UserError, cli_main
from hfa_jax.model_folder import (EXPORT_MARKER, FORMAT_VERSION, PREPROCESSING, PSEUDO_GLOSSES, TOKENIZER_DIR, WEIGHTS,
                                  ModelBundle, flatten_weights, load_workdir)
from hfa_jax.models import hfa
from hfa_jax.models.lora import merge_lora

PACKAGES = ("jax", "jaxlib", "flax", "numpy", "optax", "orbax-checkpoint", "transformers", "sentencepiece",
            "safetensors", "av", "pillow", "sacrebleu")


def merged_bundle(bundle: ModelBundle) -> ModelBundle:
    """The same model with every LoRA adapter folded into its kernel (``lora_rank = 0``)."""
    variables = merge_lora(bundle.variables, hfa.lora_scale_rules(bundle.model_cfg))
    variables = jax.tree.map(np.asarray, variables)
    cfg = bundle.model_cfg
    cfg = dataclasses.replace(cfg, vit=dataclasses.replace(cfg.vit, lora_rank=0),
                              mbart=dataclasses.replace(cfg.mbart, lora_rank=0))
    config = bundle.config.copy_and_resolve_references()
    config.unlock()
    config.model.vit.lora_rank = 0
    config.model.mbart.lora_rank = 0
    return dataclasses.replace(bundle, variables=variables, model_cfg=cfg, config=config)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "hfa_jax": __version__}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out["hfa_jax_commit"] = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {k: v for k, v in out.items() if v}


def _stage_chain(config) -> list[tuple[str, str]]:
    """(stage, workdir) of this stage's ancestors, oldest first (``train.init_from``)."""
    chain, wd, seen = [], str(config.train.get("init_from", "") or ""), set()
    while wd and wd not in seen and os.path.isfile(os.path.join(wd, "config.json")):
        seen.add(wd)
        with open(os.path.join(wd, "config.json")) as f:
            c = json.load(f)
        chain.append((c.get("train", {}).get("stage", "?"), wd))
        wd = str(c.get("train", {}).get("init_from", "") or "")
    return chain[::-1]


def _metrics(workdir: str) -> dict:
    path = os.path.join(workdir, "translations", "metrics.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def model_card(bundle: ModelBundle, workdir: str, metrics: dict, versions: dict, merged: bool) -> str:
    c, prep = bundle.config, bundle.preprocessing
    lang = str(c.data.get("lang", "de_DE"))
    ev = c.eval
    lines = ["---", "library_name: hfa_jax", f"language: {lang.split('_')[0]}",
             "tags: [sign-language-translation, jax, flax, gloss-free]", "pipeline_tag: translation", "---", "",
             f"# {c.get('name', 'hfa')}: gloss-free sign language translation (HFA, JAX/Flax)", "",
             "A video-to-text model trained with hfa_jax "
             "(Hierarchical Feature Alignment, arXiv 2507.06732). It reads a signed video and writes a "
             f"{lang} sentence.", "", "## Use it", "", "```bash",
             'pip install -e ".[app]"    # in a clone of hfa_jax',
             "python -m hfa_jax.translate --model THIS_FOLDER --input clip.mp4 --explain explain/",
             "python -m hfa_jax.serve --model THIS_FOLDER --port 7860", "```", "", "```python",
             "from hfa_jax import Translator", 't = Translator.from_pretrained("THIS_FOLDER")',
             't(["clip.mp4"])', "```", "", "## Input", "",
             f"- frames resampled to {prep.fps:g} fps (nearest timestamp); a folder of frames is taken "
             "to be at that rate;",
             f"- each frame: the largest centred {prep.source_width}:{prep.source_height} (width:height) box, "
             f"resized (bicubic) to {prep.size}x{prep.size}, centre crop {prep.crop_size}; RGB;",
             f"- at most {prep.max_frames} frames ({prep.max_frames / prep.fps:.1f} s): "
             f"{'the first' if prep.frame_selection == 'first' else 'an evenly spaced subset'} of longer clips.",
             "", "`preprocessing.json` states the same rules as data.", "", "## Data", "",
             f"- dataset: `{c.data.dataset_dir}` (split `{c.data.train_split}` for training)",
             f"- tokenizer: `{c.data.tokenizer_dir}` (copied to `tokenizer/`)", "",
             "## Training", "",
             "Stages (each a workdir of `python -m hfa_jax.main --config=CONFIG --workdir=WORKDIR`; "
             "`config.json` here is the last stage's full config):", ""]
    for stage, wd in _stage_chain(c) + [(str(c.train.stage), os.path.abspath(workdir))]:
        lines.append(f"- {stage}: `{wd}`")
    lines += ["", f"Exported from step {bundle.step} with "
              f"`python -m hfa_jax.export --workdir {os.path.abspath(workdir)} --out OUT`"
              f"{'' if merged else ' --keep-lora'}"
              f" on {datetime.date.today().isoformat()}; LoRA adapters "
              f"{'merged into the kernels' if merged else 'kept apart'}.", "",
              "## Results", ""]
    scored = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    if scored:
        keys = [k for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "chrf") if k in next(iter(scored.values()))]
        lines += ["| split | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for split, m in scored.items():
            lines.append(f"| {split} | " + " | ".join(f"{m[k]:.2f}" for k in keys) + " |")
        lines += ["", f"Protocol: the best checkpoint on dev BLEU-4 (step {metrics.get('best_step')}), beam search "
                  f"(beams {ev.num_beams}, at most {ev.max_new_tokens} new tokens, length penalty "
                  f"{ev.get('length_penalty', 1.0)}), scored with `hfa_jax.metrics` under protocol "
                  f"`{ev.get('protocol', '?')}`; `*_video_blind` rows score the same hypotheses against other "
                  "videos' sentences (the video-blind control)."]
    else:
        lines.append("No final evaluation in the workdir (`translations/metrics.json` missing).")
    pg = bundle.pg_head
    lines += ["", "## Pseudo-gloss head", "",
              ("Carried (`pretrain_head/` in the weights, names in `pseudo_glosses.json`): the page and "
               "`translate --explain` show the pseudo-gloss timeline. " +
               ("The visual side is the one the head was trained with." if pg.exact else
                "The visual side was fine-tuned after pretraining, so the timeline is indicative."))
              if pg is not None else
              "Not carried (no pretraining stage found through `init_from`): no pseudo-gloss timeline.",
              "", "## Package versions", ""]
    lines += [f"- {k}: {v}" for k, v in versions.items()]
    return "\n".join(lines) + "\n"


def export(workdir: str, out: str, *, merge: bool = True, force: bool = False) -> str:
    """Writes the model folder ``out`` from a fine-tuning ``workdir``; returns ``out``."""
    from safetensors.numpy import save_file

    if os.path.exists(out) and os.listdir(out) and not force:
        raise UserError(f"{out}: exists and is not empty; pass another --out or --force")
    bundle = load_workdir(workdir)
    if merge:
        bundle = merged_bundle(bundle)
    os.makedirs(out, exist_ok=True)
    tensors = {}
    for coll, tree in bundle.variables.items():
        tensors.update(flatten_weights(tree, coll))
    pg = bundle.pg_head
    if pg is not None:
        tensors.update(flatten_weights(pg.params, "pretrain_head/pg_head"))
        tensors["pretrain_head/prototypes"] = np.ascontiguousarray(pg.prototypes)
        with open(os.path.join(out, PSEUDO_GLOSSES), "w") as f:
            json.dump({"vocab": pg.vocab, "exact": pg.exact}, f, ensure_ascii=False, indent=1)
    save_file(tensors, os.path.join(out, WEIGHTS), metadata={"format": "hfa_jax", "version": str(FORMAT_VERSION)})
    os.chmod(os.path.join(out, WEIGHTS), 0o644)  # safetensors writes 0600; the folder is meant to be shared
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(bundle.config.to_json_best_effort(indent=2))
    bundle.preprocessing.save(os.path.join(out, PREPROCESSING))
    tok_out = os.path.join(out, TOKENIZER_DIR)
    os.makedirs(tok_out, exist_ok=True)
    for name in sorted(os.listdir(bundle.tokenizer_dir)):
        src = os.path.join(bundle.tokenizer_dir, name)
        if os.path.isfile(src):
            shutil.copy2(src, os.path.join(tok_out, name))
    versions = _versions()
    with open(os.path.join(out, EXPORT_MARKER), "w") as f:
        json.dump({"format": FORMAT_VERSION, "model": dataclasses.asdict(bundle.model_cfg), "step": bundle.step,
                   "lora_merged": merge, "pseudo_gloss_head": pg is not None, "source": os.path.abspath(workdir),
                   "versions": versions}, f, indent=2)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(model_card(bundle, workdir, _metrics(workdir), versions, merge))
    return out


def add_examples(out: str, frame_folders: list[str]) -> list[str]:
    """Encodes frame folders as mp4 clips at the model's frame rate into ``out/examples/`` (the
    web page offers them)."""
    from PIL import Image

    fps = video_lib.Preprocessing.load(os.path.join(out, PREPROCESSING)).fps
    ex_dir = os.path.join(out, "examples")
    os.makedirs(ex_dir, exist_ok=True)
    paths = []
    for folder in frame_folders:
        frames = [np.asarray(Image.open(f).convert("RGB")) for f in video_lib.frame_files(folder)]
        if frames:
            path = os.path.join(ex_dir, video_lib.clip_name(folder) + ".mp4")
            video_lib.write_video(path, np.stack(frames), fps, crf="18")
            paths.append(path)
    return paths


@cli_main
def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description="Export a fine-tuning workdir as a self-contained model folder.")
    p.add_argument("--workdir", required=True, help="a fine-tuning workdir (config.json + best/)")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--keep-lora", action="store_true", help="keep the LoRA adapters apart (default: merged)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    args = p.parse_args(argv)
    out = export(args.workdir, args.out, merge=not args.keep_lora, force=args.force)
    print(f"model folder: {out}\n"
          f"  python -m hfa_jax.translate --model {out} --input clip.mp4\n"
          f"  python -m hfa_jax.serve --model {out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
