"""Command line: `python -m data_prep.synthsign [--corpus phoenix14t|csl_daily] --out DIR --seed S [...]`
(see writer.generate)."""

from __future__ import annotations

import argparse
import json
import sys

from hfa_jax.errors import ConfigError, cli_main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.synthsign",
        description="Render the real PHOENIX14T or CSL-Daily sentences with a synthetic signer into a "
                    "release-layout tree.",
    )
    p.add_argument("--corpus", default="phoenix14t", choices=["phoenix14t", "csl_daily"],
                   help="phoenix14t: official PHOENIX14T tree (CSV + PNG); csl_daily: CSL-Daily frame folders "
                        "(sentence/frames_512x512/NAME/*.jpg) + GFSLT-style labels/labels.{train,dev,test}")
    p.add_argument("--out", required=True,
                   help="output folder (phoenix14t: annotations/, features/, extras/; csl_daily: sentence/, labels/, extras/)")
    p.add_argument("--seed", type=int, required=True, help="non-negative seed; same seed -> byte-identical tree")
    p.add_argument("--max_per_split", default=None,
                   help="cap per split, N or e.g. train=300,dev=50,test=50; picks sentences of frequent "
                        "glosses with dev/test signs covered by train (see writer.select_sentences)")
    p.add_argument("--max_glosses", type=int, default=None, help="keep sentences with at most K signs")
    p.add_argument("--max_words", type=int, default=None,
                   help="keep sentences with at most this many words (csl_daily: characters)")
    p.add_argument("--domain", default="frequent", choices=["frequent", "closed", "signers"],
                   help="with --max_per_split: 'closed' picks dev/test sentences whose sign set occurs in "
                        "train and train sentences made of their signs (the PHOENIX14T demo's subset); "
                        "'signers' holds out other signers' recordings of training sentences as dev/test "
                        "(the CSL-Daily demo's subset; see writer.select_sentences)")
    p.add_argument("--splits", nargs="+", default=["train", "dev", "test"], choices=["train", "dev", "test"])
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--compress_level", type=int, default=1, choices=range(10), metavar="0-9",
                   help="PNG zlib level (pixels are identical at any level)")
    return p


def parse_caps(text: str | None) -> int | dict[str, int] | None:
    """`"300"` -> 300; `"train=300,dev=50"` -> {"train": 300, "dev": 50}."""
    if text is None:
        return None
    try:
        if "=" not in text:
            return int(text)
        caps = {}
        for part in text.split(","):
            split, n = part.split("=")
            caps[split.strip()] = int(n)
        return caps
    except ValueError:
        raise ConfigError(f"--max_per_split {text!r}: give N or split=N pairs, e.g. train=300,dev=50,test=50") from None


@cli_main
def main(argv: list[str] | None = None) -> dict:
    from data_prep.synthsign.writer import generate

    args = _parser().parse_args(argv)
    summary = generate(
        args.out,
        seed=args.seed,
        corpus=args.corpus,
        max_per_split=parse_caps(args.max_per_split),
        max_glosses=args.max_glosses,
        max_words=args.max_words,
        domain=args.domain,
        splits=tuple(args.splits),
        workers=args.workers,
        compress_level=args.compress_level,
    )
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
