#!/usr/bin/env python3
"""Seconds per update of multi-task fine-tuning: one encoder forward for all tasks vs one per task.

Runs ``recipes/MTL/train.py hparams/mtl.yaml`` (the embedded default unless options say
otherwise) for ``--updates`` updates in one round, ``--repeats`` times per variant,
alternating the variants, each in a fresh output folder, and reads the training time of
the round from the recipe's own log line (``round 1: N updates in S s``: the updates
only, without the dev evaluation, the set-up or the test). The load average is recorded
before and after every run.

* ``shared``: ``--shared_forward True`` (s3prl's multi-task branch: the tasks' batches
  padded together, one encoder forward);
* ``per_task``: ``--shared_forward False`` (one forward per task, each padded to its own
  longest item).

    python utils/bench_mtl.py --updates 20 --repeats 2
    python utils/bench_mtl.py --tasks "[KS, IC]" --batch_size 8 --json out.json
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROUND = re.compile(r"round 1: (\d+) updates in ([\d.]+) s")
VARIANTS = {"shared": "True", "per_task": "False"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tasks", default="[KS, IC]")
    parser.add_argument("--batch_size", default=None, help="every task's (default: the profile's)")
    parser.add_argument("--upstream_source", default=None)
    parser.add_argument("--json", default=None, help="also write the runs here")
    return parser.parse_args(argv)


def run_once(args, variant, folder):
    command = [sys.executable, "recipes/MTL/train.py", "hparams/mtl.yaml", "--tasks", args.tasks,
               "--output_root", str(folder), "--max_steps", str(args.updates),
               "--eval_every_steps", str(args.updates), "--shared_forward", VARIANTS[variant],
               "--noprogressbar"]
    if args.batch_size:
        command += ["--batch_size", str(args.batch_size)]
    if args.upstream_source:
        command += ["--upstream_source", args.upstream_source]
    load_before = os.getloadavg()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    load_after = os.getloadavg()
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    found = ROUND.search(done.stdout + done.stderr)
    if found is None:
        raise SystemExit(f"{variant}: no 'round 1: ... updates in ... s' line in the output")
    updates, seconds = int(found.group(1)), float(found.group(2))
    return {"variant": variant, "updates": updates, "seconds": seconds,
            "seconds_per_update": seconds / updates,
            "loadavg_before": load_before[0], "loadavg_after": load_after[0]}


def main(argv):
    args = parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_mtl_") as work:
        for repeat in range(args.repeats):
            for variant in VARIANTS:
                runs.append(run_once(args, variant, Path(work) / f"{variant}_{repeat}"))
                print(json.dumps(runs[-1]), flush=True)
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"tasks {args.tasks}, {args.updates} updates per run, {args.repeats} runs per variant")
    print("| variant | s/update (mean) | spread (min–max) | load average (before → after) |")
    print("|---|---|---|---|")
    means = {}
    for variant in VARIANTS:
        times = [run["seconds_per_update"] for run in runs if run["variant"] == variant]
        loads = [f"{run['loadavg_before']:.2f} → {run['loadavg_after']:.2f}"
                 for run in runs if run["variant"] == variant]
        means[variant] = statistics.mean(times)
        print(f"| {variant} | {means[variant]:.3f} | {min(times):.3f}–{max(times):.3f} | "
              f"{'; '.join(loads)} |")
    print(f"\nper_task / shared time per update: {means['per_task'] / means['shared']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
