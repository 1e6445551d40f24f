#!/usr/bin/env python3
"""The paper's experiment as one command: rewire, train every task, analyse, resumably.

    python utils/run_grid.py --tasks KS IC --strategies baseline twin neutral mixed \\
        --fractions 0.01 0.1 --seeds 1986 1987 --output_root results [--key value ...]

Stages, each cell an ordinary recipe run:
  1. rewiring: recipes/rewire/train.py hparams/<strategy>.yaml on --upstream_source, for
     every strategy but baseline that --encoder STRATEGY=DIR does not give already;
  2. downstream: recipes/<TASK>/train.py for every encoder x task x fraction x seed
     (x lr of --lrs); QbE (recipes/QbE/evaluate.py) once per encoder (no fraction, seed);
     a cell whose rewiring failed is skipped. The baseline's ASR runs leave out the
     utterances the encoders were rewired on, as the rewired encoders' runs do;
  3. analysis: utils/representations.py per encoder x task (not QbE), on the training
     manifest its runs used, once one of them succeeded (--no_analysis: none).

Pass-through: every other --key value goes to each recipe and rewiring run whose yaml has
that top-level key (SpeechBrain's run options such as --device go to all of them);
--TASK.key value only to that task's runs, --rewire.key value only to the rewiring runs.
A key that no yaml of the grid has is refused before anything runs.

Folders (R = --output_root; sha8 digests the pass-through pairs that reach the run, and
appears only when some do, so a run with other settings never meets an old run's folder):
  R/rewire/<encoder_id>/<strategy>/seed_<S>[_<sha8>]/upstream/       rewired encoders
  R/<TASK>/<encoder_id>/<strategy>/fraction<F>_seed<S>[_lr<lr>][_<sha8>]/results.json
  R/QbE/<encoder_id>/<strategy>[_<sha8>]/results.json
  R/grid/logs/<cell name>.log   each cell's stdout and stderr (the name is its folder)
  R/grid/done/<cell key>.json   done-records: a rerun reuses a cell whose record and
                                output still match, and reruns the others (a killed cell
                                resumes from its checkpoints); the key covers the
                                recipe's script and yaml, not rewire_lobes/: after a
                                library change, delete R/grid/done to run cells again
  R/grid/summary.json           every cell: kind, status, seconds, log, output, command

Exit status: 0 when every cell succeeded or was reused; 1 when some failed (listed at
the end with their logs); 2 for a wrong option.
"""

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rewire_lobes.grid.cells import TASK_PROGRAMS, REWIRE_PROGRAMS, parse_assignments  # noqa: E402
from rewire_lobes.grid.launchers import LAUNCHERS  # noqa: E402
from rewire_lobes.runs.defaults import DEFAULT_UPSTREAM  # noqa: E402

STRATEGIES = ("baseline", *REWIRE_PROGRAMS)


def parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --lr must stay a pass-through key, not --lrs abbreviated
        usage="%(prog)s [--tasks T ...] [--strategies S ...] [--fractions F ...] "
              "[--seeds S ...] [--output_root R] [options] [--key value ...]",
    )
    grid = parser.add_argument_group("the grid")
    grid.add_argument("--tasks", nargs="+", default=list(TASK_PROGRAMS), metavar="TASK",
                      help=f"tasks to run (default: all of {' '.join(TASK_PROGRAMS)})")
    grid.add_argument("--strategies", nargs="+", default=list(STRATEGIES), metavar="STRATEGY",
                      help=f"encoders to compare: {' '.join(STRATEGIES)} (default: all), or any "
                           "other given with --encoder, e.g. mtl")
    grid.add_argument("--fractions", nargs="+", default=["0.01", "0.05", "0.1", "1"],
                      metavar="F", help="shares of the training labels, in (0, 1] "
                                        "(default: the paper's 0.01 0.05 0.1 1); TASK=F,F "
                                        "sets one task's own, e.g. 0.01 KS=0.5")
    grid.add_argument("--seeds", nargs="+", default=["1986"], metavar="SEED",
                      help="seeds of the downstream runs (default: 1986); TASK=S,S sets "
                           "one task's own, e.g. 1986 KS=1986,1987,1988")
    grid.add_argument("--lrs", nargs="+", default=[], metavar="TASK=LR,LR",
                      help="learning-rate sweep, e.g. KS=0.0001,0.001 IC=0.001: one cell per "
                           "lr (folder suffix _lr<lr>); the report keeps the best by dev")
    grid.add_argument("--output_root", default="results", help="where every run goes "
                      "(default: results)")
    encoders = parser.add_argument_group("encoders")
    encoders.add_argument("--upstream_source", default=DEFAULT_UPSTREAM,
                          help="the baseline encoder, a directory or hub id; the rewiring "
                               f"starts from it (default: the embedded {DEFAULT_UPSTREAM})")
    encoders.add_argument("--encoder", nargs="+", default=[], metavar="STRATEGY=DIR",
                          help="an encoder rewired already (its rewiring.json must name "
                               "STRATEGY): that strategy is not rewired again")
    encoders.add_argument("--rewire_seed", default="1986",
                          help="seed of the rewiring runs (default: 1986)")
    encoders.add_argument("--no_analysis", action="store_true",
                          help="leave out the representation analysis cells")
    encoders.add_argument("--analysis_tasks", nargs="+", default=None, metavar="TASK",
                          help="analyse only these tasks' training sets (default: every "
                               "task but QbE)")
    running = parser.add_argument_group("running")
    running.add_argument("--jobs", type=int, default=None,
                         help="cells at a time (default 1; with --gpus, one per GPU)")
    running.add_argument("--gpus", nargs="+", default=[], metavar="ID",
                         help="GPU ids, one per running cell (CUDA_VISIBLE_DEVICES)")
    running.add_argument("--launcher", choices=LAUNCHERS, default="local",
                         help="local processes (default), submitit's LocalExecutor, or "
                              "Slurm jobs through submitit")
    running.add_argument("--dry_run", action="store_true",
                         help="print the cells and their commands; run nothing")
    slurm = parser.add_argument_group("slurm (with --launcher slurm)")
    slurm.add_argument("--slurm_partition", default=None)
    slurm.add_argument("--slurm_time_min", type=int, default=4320,
                       help="a job's time limit in minutes (default: 4320; also the "
                            "submitit-local limit)")
    slurm.add_argument("--slurm_gpus_per_node", type=int, default=1)
    slurm.add_argument("--slurm_cpus_per_task", type=int, default=8)
    slurm.add_argument("--slurm_mem_gb", type=int, default=64)
    return parser


def jobs_of(args):
    from rewire_lobes.errors import OptionError

    if args.gpus and args.launcher == "slurm":
        raise OptionError("--gpus is for local runs; on Slurm use --slurm_gpus_per_node")
    if args.gpus and args.jobs not in (None, len(args.gpus)):
        raise OptionError(f"--jobs {args.jobs} with {len(args.gpus)} --gpus: one cell runs "
                          "per GPU (drop --jobs)")
    if args.jobs is not None and args.jobs < 1:
        raise OptionError(f"--jobs {args.jobs}: at least 1")
    if args.jobs is None and args.launcher == "slurm":
        return 1 << 16  # every ready cell at once: Slurm queues them
    return args.jobs or 1


def main(argv):
    args, rest = parser().parse_known_args(argv)
    from rewire_lobes.runs.cli import user_errors  # loads torch: after --help

    with user_errors():
        from rewire_lobes.grid.cells import make_grid
        from rewire_lobes.grid.launchers import make_launcher
        from rewire_lobes.grid.options import REWIRE_SCOPE, parse_pass_through
        from rewire_lobes.grid.runner import GridRunner, dry_run
        from rewire_lobes.runs.defaults import resolve_upstream_source

        output_root = Path(args.output_root).expanduser().resolve()
        jobs = jobs_of(args)
        grid = make_grid(
            tasks=args.tasks, strategies=args.strategies, fractions=args.fractions,
            seeds=args.seeds, output_root=output_root,
            upstream_source=resolve_upstream_source(args.upstream_source, output_root),
            rewire_seed=args.rewire_seed, encoders=parse_assignments(args.encoder, "--encoder"),
            lrs=parse_assignments(args.lrs, "--lrs"),
            options=parse_pass_through(rest, [*TASK_PROGRAMS, REWIRE_SCOPE]),
            analysis=False if args.no_analysis else (args.analysis_tasks or True),
        )
        if args.dry_run:
            dry_run(grid)
            return 0
        launcher = make_launcher(args.launcher, output_root / "grid" / "submitit",
                                 args.slurm_time_min,
                                 {"partition": args.slurm_partition,
                                  "gpus_per_node": args.slurm_gpus_per_node,
                                  "cpus_per_task": args.slurm_cpus_per_task,
                                  "mem_gb": args.slurm_mem_gb})
        runner = GridRunner(grid, launcher, jobs=jobs, gpus=args.gpus,
                            command=[sys.executable, os.path.abspath(__file__), *argv])
        try:
            return runner.run()
        except KeyboardInterrupt:
            print("interrupted: the running cells were stopped; rerun the same command to "
                  "go on", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
