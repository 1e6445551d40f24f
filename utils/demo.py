#!/usr/bin/env python3
"""The main job on the embedded default: rewire an encoder, then the six SUPERB tasks
(KS, IC, ASR, SF, SD, QbE) before and after.

1. Rewires the embedded encoder with ``recipes/rewire/train.py`` (skipped when
   ``--rewired_encoder`` names an encoder directory that is already rewired).
2. Trains the SUPERB KS, IC, ASR, SF and SD heads at ``--fraction`` (default 1 %) on the
   encoder the rewiring started from (``baseline``) and on the rewired one, and runs the
   zero-shot QbE evaluation on both. Each encoder's features are extracted once per task
   and shared by its runs.
3. Prints a table like the paper's Table 2: the test score at the best dev checkpoint, the
   updates needed to reach it and the wall time of each step, and writes it to
   ``<output_root>/demo/summary.md``.

    python utils/demo.py                                   # everything, embedded default
    python utils/demo.py --rewired_encoder results/rewire/.../upstream

Every step is an ordinary recipe run, so a rerun resumes or reuses finished runs.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rewire_lobes.runs.defaults import DEFAULT_UPSTREAM, resolve_upstream_source  # noqa: E402
from rewire_lobes.io_utils import write_json_atomic, write_text_atomic  # noqa: E402
from rewire_lobes.runs.cli import encoder_id  # noqa: E402

TASKS = {"KS": "hparams/ks.yaml", "IC": "hparams/ic.yaml", "ASR": "hparams/asr.yaml",
         "SF": "hparams/sf.yaml", "SD": "hparams/sd.yaml", "QbE": "hparams/qbe.yaml"}
# QbE trains nothing: no fraction, no seed, its own script.
ZERO_SHOT = {"QbE": "recipes/QbE/evaluate.py"}
# A second test score worth a column: on the mini corpus the WER of a small head stays
# near 100 % while its CER falls; SD's DER with the decision tuned on test, as s3prl.
ALSO_SHOWN = {"ASR": "cer", "SF": "slot_value_cer", "SD": "der_s3prl_protocol"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rewired_encoder", default=None,
                        help="an already rewired encoder directory (skips rewiring)")
    parser.add_argument("--baseline_encoder", default=None,
                        help="the encoder before rewiring (default: the source recorded in "
                             "the rewired encoder's rewiring.json)")
    parser.add_argument("--rewire_hparams", default="hparams/mixed.yaml",
                        help="rewiring recipe yaml (twin, neutral or mixed)")
    parser.add_argument("--fraction", default="0.01")
    parser.add_argument("--seed", default="1986")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--output_root", default="results")
    return parser.parse_args(argv)


def run(command):
    print("+", " ".join(command), flush=True)
    subprocess.run([sys.executable, *command], cwd=REPO, check=True)


def rewire(args):
    """Runs the rewiring recipe on the embedded encoder; returns the rewired directory.

    The run folder is named after the encoder it starts from, so that a new
    ``assets/encoder`` starts a new run instead of meeting the old one.
    """
    strategy = Path(args.rewire_hparams).stem
    source = resolve_upstream_source(DEFAULT_UPSTREAM, REPO / "results")
    folder = Path(args.output_root) / "demo" / encoder_id(source) / f"rewire_{strategy}"
    run(["recipes/rewire/train.py", args.rewire_hparams, "--output_folder", str(folder),
         "--seed", args.seed])
    return folder / "upstream"


def same_training_set(task, rewired):
    """ASR leaves out the rewired encoder's rewiring utterances (the paper's footnote): the
    baseline is given the same list, so that both train on the same utterances."""
    subset = Path(rewired) / "rewiring_subset.txt"
    return ["--exclude_utterances", str(subset)] if task == "ASR" and subset.is_file() else []


def rewiring_record(encoder):
    path = Path(encoder) / "rewiring.json"
    return json.loads(path.read_text()) if path.exists() else {}


def downstream(task, encoder, strategy, args, *extra):
    """Trains one head (or runs QbE); returns its results.json as a dict, with the wall
    seconds this call took (a finished run is reused, so a rerun takes seconds)."""
    # No --strategy: the recipe reads it from the encoder's rewiring.json (or "baseline").
    start = time.time()
    if task in ZERO_SHOT:
        run([ZERO_SHOT[task], TASKS[task], "--upstream_source", str(encoder),
             "--output_root", args.output_root, *extra])
    else:
        run([f"recipes/{task}/train.py", TASKS[task], "--upstream_source", str(encoder),
             "--fraction", args.fraction, "--seed", args.seed, "--output_root",
             args.output_root, *extra])
    seconds = time.time() - start
    folder = Path(args.output_root) / task / encoder_id(str(Path(encoder).resolve())) / strategy
    pattern = "results.json" if task in ZERO_SHOT else f"fraction*_seed{args.seed}/results.json"
    for path in sorted(folder.glob(pattern)):
        results = json.loads(path.read_text())
        if task in ZERO_SHOT or results["fraction"] == float(args.fraction):
            return {**results, "demo_seconds": round(seconds, 1)}
    raise SystemExit(f"no results.json for {task} under {folder}")


def also(results):
    if results["task"] == "QbE":
        return f"layer {results['chosen_layer']}"
    name = ALSO_SHOWN.get(results["task"])
    return f"{results['test_scores'][name]:.2f} ({name})" if name else ""


def number(value, spec="g"):
    return "–" if value is None else format(value, spec)


def table(rows):
    lines = [
        "| task | encoder | strategy | fraction | best dev | test | also | updates to best "
        "| updates | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        precision = ".2f" if r["unit"] else ".4f"
        lines.append(
            f"| {r['task']} | {Path(r['encoder']['source']).name} | {r['strategy']} | "
            f"{number(r['fraction'])} | {r['best_dev']:{precision}} ({r['dev_metric']}) | "
            f"{r['test']:{precision}} ({r['metric']}{', ' + r['unit'] if r['unit'] else ''}) | "
            f"{also(r)} | {number(r['best_step'])} | {number(r['steps'])} | "
            f"{r.get('demo_seconds', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    args = parse_args(argv)
    args.output_root = str(Path(args.output_root).resolve())  # recipes run from the repo root
    start = time.time()
    rewired = Path(args.rewired_encoder).resolve() if args.rewired_encoder else rewire(args)
    rewiring_seconds = time.time() - start
    record = rewiring_record(rewired)
    baseline = args.baseline_encoder or record.get("source")
    if not baseline:
        raise SystemExit(f"{rewired}: no rewiring.json naming its source; pass --baseline_encoder")
    if not Path(baseline).is_absolute() and (REPO / baseline).exists():
        baseline = REPO / baseline  # rewiring.json paths are relative to the repo root
    strategy = record.get("strategy") or Path(args.rewire_hparams).stem
    rows = []
    for task in args.tasks:
        rows.append(downstream(task, baseline, "baseline", args, *same_training_set(task, rewired)))
        rows.append(downstream(task, rewired, strategy, args))
    summary = table(rows)
    summary += (f"\nRewiring took {rewiring_seconds:.0f} s, the whole demo "
                f"{time.time() - start:.0f} s.\n")
    if record.get("random_init_fallback"):
        summary += ("\nThe encoders are RANDOMLY INITIALISED stand-ins (assets/encoder is "
                    "missing): the numbers only show that the pipeline runs.\n")
    print("\n" + summary)
    out = Path(args.output_root) / "demo"
    write_text_atomic(out / "summary.md", summary)
    write_json_atomic(out / "summary.json", rows)


if __name__ == "__main__":
    main(sys.argv[1:])
