#!/usr/bin/env python3
"""Prints what the paper's grid costs on GPUs, on paper: FLOPs counted, throughput assumed.

    python utils/grid_cost.py [--tasks ...] [--strategies ...] [--fractions ...] [--seeds N]
                              [--mfu 0.1 0.4] [--head_mfu 0.05] [--gpus 1 8]
                              [--hours KS=14.2 ASR.train=100.6] [--manifest_root DIR]

The encoder (wav2vec2-large-lv60's shape, random weights) and the heads are counted with
torch's FlopCounterMode (``rewire_lobes.grid.cost``); the GPU time is FLOPs / (MFU x peak)
at the MFUs given: nothing is timed. About a minute on a CPU (the CPU fp32 check of the
large encoder; ``--no_cpu_check`` skips it).
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rewire_lobes.grid import cost  # noqa: E402
from rewire_lobes.io_utils import write_text_atomic  # noqa: E402
from rewire_lobes.runs.cli import user_errors  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(cost.TASKS), metavar="TASK")
    parser.add_argument("--strategies", nargs="+", metavar="STRATEGY",
                        default=[cost.BASELINE, *cost.REWIRE_STRATEGIES])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.05, 0.1, 1.0],
                        metavar="F")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="downstream seeds per cell (a count; default 1, as run_grid.py)")
    parser.add_argument("--mfu", nargs="+", type=float, default=[0.1, 0.4],
                        help="assumed encoder MFUs (default: 0.1 0.4)")
    parser.add_argument("--head_mfu", type=float, default=0.05,
                        help="assumed MFU of the heads (LSTMs; default 0.05)")
    parser.add_argument("--gpus", nargs="+", type=int, default=[1, 8],
                        help="GPU counts to spread the grid over (default: 1 8)")
    parser.add_argument("--peak_tflops", type=float, default=cost.PEAK_BF16_DENSE / 1e12,
                        help="peak FLOP/s of one GPU, in TFLOP/s (default: 989, H100/H200 bf16 "
                             "dense)")
    parser.add_argument("--hours", nargs="+", default=[], metavar="TASK[.SPLIT]=H",
                        help="audio hours overriding the assumed ones")
    parser.add_argument("--manifest_root", default=None, metavar="DIR",
                        help="prepared manifests: <DIR>/<TASK>/<hash>/<split>.csv durations")
    parser.add_argument("--view_seconds", type=float, default=None,
                        help="rewiring views' padded length (default: split_samples, 5.625 s)")
    parser.add_argument("--rewire_batch", type=int, default=None,
                        help="pairs per rewiring update, all ranks (default: the yaml's 4)")
    parser.add_argument("--encoder_size", default="large", choices=["tiny", "small", "large"])
    parser.add_argument("--no_cpu_check", action="store_true",
                        help="count on the meta device only (skips the CPU fp32 check)")
    parser.add_argument("--output", default=None, help="also write the report to this file")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with user_errors():
        cost.check_grid_options(args.tasks, args.strategies, args.fractions, args.seeds,
                                args.mfu, args.head_mfu, args.gpus)
        est = cost.estimate(
            tasks=args.tasks, strategies=args.strategies, fractions=args.fractions,
            seeds=args.seeds, hours=args.hours, manifest_root=args.manifest_root,
            encoder_size=args.encoder_size, check_on_cpu=not args.no_cpu_check,
            view_seconds=args.view_seconds, pairs=args.rewire_batch,
        )
        peak = args.peak_tflops * 1e12
        report = "\n".join([
            cost.render(est, args.mfu, args.head_mfu, args.gpus, peak), "",
            "**Assumptions**", "", cost.assumptions(est, args.mfu, args.head_mfu, peak), "",
        ])
        print(report)
        if args.output:
            write_text_atomic(args.output, report)


if __name__ == "__main__":
    main()
