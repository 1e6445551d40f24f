#!/usr/bin/env python3
"""Prints the log10 isotropy score (Mu & Viswanath 2018) of a saved ``[N, D]`` matrix.

    python utils/isotropy.py --npy vectors.npy        # e.g. -12.345678

See ``rewire_lobes.metrics.isotropy`` for the score; ``utils/representations.py``
scores an encoder's utterance representations of a task's training set.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rewire_lobes.metrics.isotropy import load_vectors, log10_isotropy  # noqa: E402
from rewire_lobes.runs.cli import user_errors  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npy", required=True, help="an [N, D] matrix saved with numpy.save")
    args = parser.parse_args(argv)
    with user_errors():
        print(f"{log10_isotropy(load_vectors(args.npy)):.6f}")


if __name__ == "__main__":
    main()
