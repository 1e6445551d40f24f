#!/usr/bin/env python3
"""The main job on the embedded default: rewire the embedded encoder, compare it with the
encoder it started from on the six SUPERB tasks, and write the paper's Table 2 for them.

The runs are grids of ``utils/run_grid.py`` into ``<output_root>/demo`` (each cell an
ordinary recipe run: a rerun reuses what is finished, a killed demo resumes):

1. KS at 50 % and IC at 100 % of the mini corpus' labels (at least 5 items per keyword,
   every item of IC's 31 intents), seeds 1986 1987 1988, on the baseline encoder and the
   rewired one (rewiring is the grid's first cell): mean ± std over three seeds;
2. ASR, SF and SD at 1 %, one seed, and the zero-shot QbE: a check that every task runs,
   not a ranking;
3. the representation analysis of every encoder × training set (isotropy, and for KS and
   IC the t-SNE map, silhouette and k-NN accuracy).

Then ``utils/report.py``'s report of all of them goes to ``<output_root>/demo/report/``
(``table2.md``, ``table2.csv``, ``isotropy.csv``, the PNGs) and is printed, with the wall
time of each grid.

    python utils/demo.py                        # everything, embedded default
    python utils/demo.py --parts compare        # only KS and IC over three seeds
    python utils/demo.py --strategies baseline twin neutral mixed
"""

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rewire_lobes.io_utils import write_text_atomic  # noqa: E402

SEEDS = ("1986", "1987", "1988")


@dataclass(frozen=True)
class DemoGrid:
    part: str
    tasks: tuple
    fractions: tuple
    seeds: tuple


GRIDS = (
    DemoGrid("compare", ("KS",), ("0.5",), SEEDS),
    DemoGrid("compare", ("IC",), ("1",), SEEDS),
    DemoGrid("check", ("ASR", "SF", "SD", "QbE"), ("0.01",), SEEDS[:1]),
)
PARTS = sorted({grid.part for grid in GRIDS})


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", nargs="+", default=["baseline", "mixed"],
                        help="encoders to compare (default: baseline mixed)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS,
                        help="compare: KS and IC over three seeds; check: ASR, SF, SD, QbE")
    parser.add_argument("--jobs", default="2", help="cells at a time (default 2)")
    parser.add_argument("--output_root", default="results",
                        help="the demo's runs go to <output_root>/demo")
    return parser.parse_args(argv)


def run_grid(grid, args, root):
    command = [sys.executable, "utils/run_grid.py", "--tasks", *grid.tasks,
               "--strategies", *args.strategies, "--fractions", *grid.fractions,
               "--seeds", *grid.seeds, "--output_root", str(root), "--jobs", args.jobs]
    print("+", " ".join(command[1:]), flush=True)
    start = time.time()
    status = subprocess.run(command, cwd=REPO).returncode
    return status, time.time() - start


def main(argv):
    args = parse_args(argv)
    root = Path(args.output_root).resolve() / "demo"
    start = time.time()
    times, failed = [], []
    for grid in GRIDS:
        if grid.part not in args.parts:
            continue
        status, seconds = run_grid(grid, args, root)
        times.append(f"| {' '.join(grid.tasks)} | {' '.join(grid.fractions)} | "
                     f"{len(grid.seeds)} | {seconds:.0f} s |")
        if status:
            failed.append(" ".join(grid.tasks))

    from rewire_lobes.analysis.report import write_report

    written = write_report(root, root / "report")
    table = Path(written["table2.md"]).read_text(encoding="utf-8")
    stages = ("| tasks | fractions | seeds | wall time |\n|---|---|---|---|\n"
              + "\n".join(times)
              + f"\n\nThe whole demo: {time.time() - start:.0f} s (a rerun reuses finished "
                "cells).\n")
    write_text_atomic(root / "report" / "stage_times.md", stages)
    print("\n" + table + "\n" + stages)
    print(f"Report and figures: {root / 'report'}")
    if failed:
        print(f"Some cells failed in: {'; '.join(failed)} (see the grid's list above and "
              f"{root / 'grid' / 'summary.json'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
