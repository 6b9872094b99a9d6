"""Translate signed videos with a trained model.

    python -m hfa_jax.translate --model my_model --input clip.mp4
    python -m hfa_jax.translate --model runs/finetune2 --input videos/ --out translations.tsv --explain explain/

``--model``: an exported model folder (``python -m hfa_jax.export``) or a fine-tuning workdir.
``--input``: a video file (mp4, webm, avi, mov, ...), a folder of frames (sorted by name), or a
folder of many of either. Inputs are read with the model's preprocessing (resampled to the
training frame rate, the crop rule of :mod:`hfa_jax.data.video`, RGB) and translated in batches
by frame bucket. The translations go to stdout (one input: the sentence is the last line) and to
``--out`` as a TSV (``name<TAB>translation``, written atomically; the name is the input's path
relative to ``--input``, extension kept, so ``a.mp4`` and ``a.mov`` stay apart); ``--explain DIR``
writes one word x time cross-attention PNG per input (``DIR/NAME.png``). Should ``--out`` fail
at the end, the finished translations are still printed and a copy is saved in the temporary
folder; the one-line error says where. A bad file is reported in one line and skipped; the summary counts
it, and the exit status is 1 when any input was skipped.

``--workdir`` and ``--frames`` are the older names of ``--model`` and ``--input``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time

from tqdm import tqdm

from hfa_jax import compile_cache
from hfa_jax.data import video as video_lib
from hfa_jax.errors import DataError, UserError, cli_main

MAX_BATCH = 1024


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (``error: ...``, exit status 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(description="Translate signed videos (video files or frame folders).")
    p.add_argument("--model", "--workdir", dest="model", required=True,
                   help="an exported model folder or a fine-tuning workdir")
    p.add_argument("--input", "--frames", dest="input", required=True,
                   help="a video file, a folder of frames, or a folder of many of either")
    p.add_argument("--out", default="", help="write name<TAB>translation rows to this TSV file (name: the "
                                             "input's path relative to --input)")
    p.add_argument("--explain", default="", help="write one alignment PNG per input into this folder")
    p.add_argument("--batch_size", type=int, default=8, help=f"clips per beam-search batch (1 to {MAX_BATCH})")
    p.add_argument("--max_seconds", type=float, default=None,
                   help=f"refuse clips longer than this (default: the model's, else {video_lib.MAX_SECONDS:g})")
    p.add_argument("--max_source_frames", type=int, default=None,
                   help=f"refuse clips of more decoded frames (default: the model's, else {video_lib.MAX_SOURCE_FRAMES})")
    p.add_argument("--max_pixels", type=int, default=None,
                   help=f"refuse frames of more pixels (default: the model's, else {video_lib.MAX_PIXELS})")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    compile_cache.add_argument(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Out-of-range values and unwritable outputs, in one line each, before any work."""
    if not 1 <= args.batch_size <= MAX_BATCH:
        raise UserError(f"--batch_size {args.batch_size}: must be from 1 to {MAX_BATCH}")
    # the limits' ranges are Preprocessing's: checked on a default one here, on the model's later
    try:
        video_lib.Preprocessing().with_limits(max_seconds=args.max_seconds, max_source_frames=args.max_source_frames,
                                              max_pixels=args.max_pixels)
    except DataError as e:
        raise UserError(str(e).replace("preprocessing: ", "argument --", 1)) from None
    if args.out:
        if os.path.isdir(args.out):
            raise UserError(f"--out {args.out}: is a folder; name a .tsv file")
        _writable_folder(os.path.dirname(os.path.abspath(args.out)), "--out")
    if args.explain:
        if os.path.exists(args.explain) and not os.path.isdir(args.explain):
            raise UserError(f"--explain {args.explain}: is a file; name a folder")
        _writable_folder(os.path.abspath(args.explain), "--explain")


def _writable_folder(folder: str, flag: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag}: cannot create the folder {folder} ({e.strerror or e})") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"{flag}: the folder {folder} is not writable")


def write_tsv(path: str, rows: list[tuple[str, str]]) -> None:
    """``name<TAB>translation`` rows (with a header) to ``path``, atomically: a temporary file in
    the same folder, renamed over ``path`` once complete (a reader never sees half a file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
            w.writerow(["name", "translation"])
            w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a TSV gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def _save_rows(out: str, rows: list[tuple[str, str]]) -> str | None:
    """Writes ``rows`` to ``out``; returns None, or the one-line error saying where they went."""
    try:
        write_tsv(out, rows)
        return None
    except OSError as e:
        reason = e.strerror or str(e)
    where = "printed above (stdout)"
    try:  # a second copy where a file can be written
        fd, spare = tempfile.mkstemp(prefix="hfa_translations_", suffix=".tsv")
        os.close(fd)
        write_tsv(spare, rows)
        where += f" and saved in {spare}"
    except OSError:
        pass
    return f"cannot write --out {out} ({reason}); the {len(rows)} finished translation(s) are {where}"


@cli_main
def main(argv: list[str] | None = None) -> list[tuple[str, str]]:
    args = _parser().parse_args(argv)
    _check_args(args)
    paths = video_lib.list_inputs(args.input)
    keys = {p: video_lib.input_key(p, args.input) for p in paths}
    from hfa_jax.translator import Translator  # after the cheap checks: loads JAX and the model

    compile_cache.enable(args.compile_cache)

    t0 = time.time()
    tr = Translator.from_pretrained(args.model)
    tr.preprocessing = tr.preprocessing.with_limits(max_seconds=args.max_seconds,
                                                    max_source_frames=args.max_source_frames,
                                                    max_pixels=args.max_pixels)
    print(f"model: {args.model} (step {tr.step}); {len(paths)} input(s)", file=sys.stderr, flush=True)
    rows: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    bar = tqdm(total=len(paths), desc="translate", unit="video", disable=args.no_progress or len(paths) < 2,
               file=sys.stderr, dynamic_ncols=True)
    interrupted = False
    try:
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
                key = keys[clip.path]
                rows.append((key, text))
                if args.explain:
                    from hfa_jax import evidence  # matplotlib: only when asked

                    exp = tr.explain(clip)
                    png = os.path.join(args.explain, f"{key}.png")
                    os.makedirs(os.path.dirname(png), exist_ok=True)
                    evidence.save_alignment(exp, clip, png, title=key)
                bar.update(1)
    except KeyboardInterrupt:  # keep what is finished: printed and written below
        interrupted = True
    bar.close()
    if len(paths) == 1 and rows:
        print(rows[0][1])
    else:
        for name, text in rows:
            print(f"{name}\t{text}")
    sys.stdout.flush()
    out_error = _save_rows(args.out, rows) if args.out else None
    summary = (f"translated {len(rows)} of {len(paths)} input(s) in {time.time() - t0:.1f} s"
               + ("; interrupted" if interrupted else "")
               + (f"; skipped {len(skipped)} bad input(s)" if skipped else "")
               + (f"; translations in {args.out}" if args.out and out_error is None else "")
               + (f"; alignment plots in {args.explain}" if args.explain else ""))
    print(summary, file=sys.stderr, flush=True)
    if out_error:
        raise UserError(out_error)
    if interrupted:
        raise SystemExit(130)
    if skipped:
        if not rows:
            raise UserError(f"no input could be read ({skipped[0][1]})")
        raise SystemExit(1)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
