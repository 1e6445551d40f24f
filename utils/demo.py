#!/usr/bin/env python3
"""The main job on the embedded default: rewire the embedded encoder, compare it with the
encoder it started from on the six SUPERB tasks, and write the paper's Table 2 for them.

One grid of ``utils/run_grid.py`` into ``<output_root>/demo`` (each cell an ordinary recipe
run: a rerun reuses what is finished, a killed demo resumes; the baseline's cells run while
the encoder is rewired):

* KS at 50 % and IC at 100 % of the mini corpus' labels (at least 5 clips per keyword,
  every item of IC's 31 intents), seeds 1986 1987 1988, on the baseline encoder and the
  Mixed-rewired one: mean ± std over three seeds;
* ASR, SF and SD at 1 %, one seed, and the zero-shot QbE: a check that every task runs,
  not a ranking;
* the representation analysis of the KS and IC training sets for every encoder
  (isotropy, the t-SNE map, silhouette and k-NN accuracy).

Then ``utils/report.py``'s report goes to ``<output_root>/demo/report/`` (``table2.md``,
``table2.csv``, ``isotropy.csv``, the PNGs) and is printed, with the grid's wall time.

    python utils/demo.py                                  # everything, embedded default
    python utils/demo.py --tasks KS IC                    # only the three-seed comparison
    python utils/demo.py --strategies baseline twin neutral mixed
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rewire_lobes.io_utils import write_text_atomic  # noqa: E402

TASKS = ("KS", "IC", "ASR", "SF", "SD", "QbE")
SEEDS = "1986,1987,1988"
# The compared tasks get enough items and seeds; the others one seed at 1 %.
FRACTIONS = ("0.01", "KS=0.5", "IC=1")
TASK_SEEDS = ("1986", f"KS={SEEDS}", f"IC={SEEDS}")
# The representation analysis of the two labelled training sets (t-SNE, k-NN); the full
# grid analyses every task's.
ANALYSED = ("KS", "IC")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", nargs="+", default=["baseline", "mixed"],
                        help="encoders to compare (default: baseline mixed)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--jobs", default="2", help="cells at a time (default 2)")
    parser.add_argument("--output_root", default="results",
                        help="the demo's runs go to <output_root>/demo")
    return parser.parse_args(argv)


def for_tasks(items, tasks):
    """The per-task grid items (``KS=...``) of the chosen tasks, and the plain ones."""
    return [item for item in items if "=" not in item or item.split("=")[0] in tasks]


def main(argv):
    args = parse_args(argv)
    root = Path(args.output_root).resolve() / "demo"
    command = [sys.executable, "utils/run_grid.py", "--tasks", *args.tasks,
               "--strategies", *args.strategies,
               "--fractions", *for_tasks(FRACTIONS, args.tasks),
               "--seeds", *for_tasks(TASK_SEEDS, args.tasks),
               "--output_root", str(root), "--jobs", args.jobs]
    analysed = [task for task in ANALYSED if task in args.tasks]
    command += ["--analysis_tasks", *analysed] if analysed else ["--no_analysis"]
    print("+", " ".join(command[1:]), flush=True)
    start = time.time()
    status = subprocess.run(command, cwd=REPO).returncode
    seconds = time.time() - start
    if status == 2:  # a wrong option: the grid said which, and ran nothing
        return status

    from rewire_lobes.analysis.report import write_report
    from rewire_lobes.errors import UserError

    try:
        written = write_report(root, root / "report")
    except UserError as err:  # e.g. every cell failed: no results.json to report
        print(f"error: {err}", file=sys.stderr)
        return status or 1
    table = Path(written["table2.md"]).read_text(encoding="utf-8")
    timing = (f"The grid took {seconds:.0f} s (cell times: {root / 'grid' / 'summary.json'}; "
              "a rerun reuses finished cells).\n")
    write_text_atomic(root / "report" / "demo_time.md", timing)
    print("\n" + table + "\n" + timing)
    print(f"Report and figures: {root / 'report'}")
    if status:
        print(f"Some cells failed: see the grid's list above and {root / 'grid'}",
              file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
