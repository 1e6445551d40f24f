#!/usr/bin/env python3
"""Table 2 and the figures from a folder of runs.

Reads every results.json, rewiring.json and representations.json under --results_root (at
any depth; folder names are never read) and writes table2.md, table2.csv, isotropy.csv
and PNG figures into --output_folder.

    python utils/report.py --results_root results --output_folder results/report
"""

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rewire_lobes.analysis.report import write_report  # noqa: E402
from rewire_lobes.runs.cli import user_errors  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results_root", required=True,
                        help="folder searched at any depth for the runs' records")
    parser.add_argument("--output_folder", required=True, help="where the report goes")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    with user_errors():
        written = write_report(args.results_root, args.output_folder)
    print(written["table2.md"].read_text(encoding="utf-8"))
    print("Written:")
    for path in written.values():
        print(f"  {path}")
    if written.skipped:
        print(f"Skipped {len(written.skipped)} unreadable file(s) (listed in table2.md).",
              file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
