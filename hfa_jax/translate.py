"""Translate signed videos with a trained model.

    python -m hfa_jax.translate --model my_model --input clip.mp4
    python -m hfa_jax.translate --model runs/finetune2 --input videos/ --out translations.tsv --explain explain/

``--model``: an exported model folder (``python -m hfa_jax.export``) or a fine-tuning workdir.
``--input``: a video file (mp4, webm, avi, mov, ...), a folder of frames (sorted by name), or a
folder of many of either. Inputs are read with the model's preprocessing (resampled to the
training frame rate, the crop rule of :mod:`hfa_jax.data.video`, RGB) and translated in batches
by frame bucket. The translations go to stdout (one input: the sentence is the last line) and to
``--out`` as a TSV (``name<TAB>translation``); ``--explain DIR`` writes one word x time
cross-attention PNG per input. A bad file is reported in one line and skipped; the summary counts
it, and the exit status is 1 when any input was skipped.

``--workdir`` and ``--frames`` are the older names of ``--model`` and ``--input``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

from tqdm import tqdm

from hfa_jax.data import video as video_lib
from hfa_jax.errors import DataError, UserError, cli_main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Translate signed videos (video files or frame folders).")
    p.add_argument("--model", "--workdir", dest="model", required=True,
                   help="an exported model folder or a fine-tuning workdir")
    p.add_argument("--input", "--frames", dest="input", required=True,
                   help="a video file, a folder of frames, or a folder of many of either")
    p.add_argument("--out", default="", help="write name<TAB>translation rows to this TSV file")
    p.add_argument("--explain", default="", help="write one alignment PNG per input into this folder")
    p.add_argument("--batch_size", type=int, default=8, help="clips per beam-search batch")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


@cli_main
def main(argv: list[str] | None = None) -> list[tuple[str, str]]:
    args = _parser().parse_args(argv)
    paths = video_lib.list_inputs(args.input)
    from hfa_jax.translator import Translator  # after the cheap checks: loads JAX and the model

    t0 = time.time()
    tr = Translator.from_pretrained(args.model)
    print(f"model: {args.model} (step {tr.step}); {len(paths)} input(s)", file=sys.stderr, flush=True)
    rows: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    bar = tqdm(total=len(paths), desc="translate", unit="video", disable=args.no_progress or len(paths) < 2,
               file=sys.stderr, dynamic_ncols=True)
    if args.explain:
        os.makedirs(args.explain, exist_ok=True)
    for start in range(0, len(paths), args.batch_size):
        clips = []
        for p in paths[start: start + args.batch_size]:
            try:
                clip = tr.read(p)
            except DataError as e:
                skipped.append((p, str(e)))
                bar.write(f"skipped: {e}", file=sys.stderr)
                bar.update(1)
                continue
            for w in clip.warnings:
                bar.write(f"warning: {w}", file=sys.stderr)
            clips.append(clip)
        if not clips:
            continue
        for clip, ids in zip(clips, tr.translate_clips(clips, args.batch_size)):
            text = tr.decode(ids)
            rows.append((clip.name, text))
            if args.explain:
                from hfa_jax import evidence  # matplotlib: only when asked

                exp = tr.explain(clip)
                evidence.save_alignment(exp, clip, os.path.join(args.explain, f"{clip.name}.png"))
            bar.update(1)
    bar.close()
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
            w.writerow(["name", "translation"])
            w.writerows(rows)
    if len(paths) == 1 and rows:
        print(rows[0][1])
    else:
        for name, text in rows:
            print(f"{name}\t{text}")
    summary = (f"translated {len(rows)} of {len(paths)} input(s) in {time.time() - t0:.1f} s"
               + (f"; skipped {len(skipped)} bad input(s)" if skipped else "")
               + (f"; translations in {args.out}" if args.out else "")
               + (f"; alignment plots in {args.explain}" if args.explain else ""))
    print(summary, file=sys.stderr, flush=True)
    if skipped:
        if not rows:
            raise UserError(f"no input could be read ({skipped[0][1]})")
        raise SystemExit(1)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
