#!/usr/bin/env python3
"""Generates the embedded mini corpus (six corpora in their real on-disk layouts).

A thin command line over :func:`rewire_lobes.data.mini_corpus.ensure_mini_corpus`; recipes call
that function themselves when their ``data_folder`` is the embedded default and absent.

Usage:
    python utils/make_mini_corpus.py                       # all six, into data/mini
    python utils/make_mini_corpus.py --output_folder /tmp/mini --corpora speech_commands snips
    python utils/make_mini_corpus.py --seed 7 --scale 0.5 --force

Needs espeak-ng and sox (``sudo apt-get install -y espeak-ng sox``).
"""

import argparse
import json
import logging
import subprocess
import sys
import time

from rewire_lobes.data.mini_corpus import (
    CORPORA,
    DEFAULT_FOLDER,
    DEFAULT_SEED,
    SUMMARY_FILE,
    MissingToolError,
    ensure_mini_corpus,
)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output_folder",
        default=str(DEFAULT_FOLDER),
        help="root of the mini corpus (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="seed of everything random (default: %(default)s)",
    )
    parser.add_argument(
        "--corpora", nargs="+", choices=list(CORPORA), help="corpora to generate (default: all)"
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiplies speakers/utterances (default: %(default)s)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="parallel synthesis threads (default: CPU cores)"
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if complete")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.time()
    try:
        root = ensure_mini_corpus(
            args.output_folder,
            corpora=args.corpora,
            seed=args.seed,
            scale=args.scale,
            workers=args.workers,
            force=args.force,
        )
    except MissingToolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = json.loads((root / SUMMARY_FILE).read_text(encoding="utf-8"))
    size = subprocess.run(["du", "-sh", str(root)], capture_output=True, text=True).stdout.split(
        "\t"
    )[0]
    print(f"Mini corpus at {root} ({size}, {time.time() - started:.1f} s)")
    for name, corpus in summary["corpora"].items():
        print(f"  {name:<24} {corpus['counts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
