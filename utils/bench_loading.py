#!/usr/bin/env python3
"""How long the rewiring recipe waits for audio: its DataLoader settings side by side.

Runs ``recipes/rewire/train.py hparams/twin.yaml`` end to end, each time in a fresh run
folder (never resumed), with each loader configuration, and reads what the run recorded
in ``rewiring.json``'s ``data_loading`` (:class:`rewire_lobes.runs.loader_wait.TimedLoader`):
seconds the loop waited inside the loader's ``next()`` (worker start-up included) and
seconds it was busy (forward, backward, optimizer, logging, the final checkpoint). The
wait share is the accelerator's idle share for want of data.

Configurations: ``no_workers`` (``--num_workers 0 --pin_memory False``), ``auto`` (the
yaml's ``auto``: none on a CPU; 4 workers and pinned memory on CUDA), ``workers_2``, and
``ddp_1``: ``auto`` under ``torch.distributed.run`` with one process (the DDP wrapper's
cost on one device; gloo on a CPU, NCCL on CUDA). Configurations run in ABBA order over
``--repeats``; the 1-minute load average is recorded around each run.

CPU (default): the embedded encoder and profile on the mini corpus. CUDA: a randomly
initialised wav2vec2-large-lv60-shaped encoder, the paper's profile (bf16, the CNN
trained), the mini corpus.

    python utils/bench_loading.py --repeats 3              # results/bench/loading_cpu.json
    python utils/bench_loading.py --device cuda --updates 100
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_rewire import REPO, describe_machine, load_range, spread, write_result  # isort: skip

CONFIGS = {
    "no_workers": ["--num_workers", "0", "--pin_memory", "False"],
    "auto": [],
    "workers_2": ["--num_workers", "2"],
    "ddp_1": [],
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS),
                        default=["no_workers", "auto", "workers_2"])
    parser.add_argument("--updates", type=int, default=None,
                        help="updates per run (default: 24 on a CPU, 100 on CUDA)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data_folder", default="data/mini/LibriSpeech")
    parser.add_argument("--output", default=None)
    return parser.parse_args(argv)


def recipe_command(config, device, encoder, data_folder, updates, folder):
    device = "cuda:0" if device == "cuda" else device
    train = [str(REPO / "recipes" / "rewire" / "train.py"), str(REPO / "hparams" / "twin.yaml"),
             "--output_folder", str(folder), "--max_steps", str(updates),
             "--ckpt_interval_steps", "1000000", "--noprogressbar", "--device", device,
             "--data_folder", data_folder]
    if encoder is not None:  # CUDA: the large-shaped stand-in, at the paper's settings
        train += ["--upstream_source", encoder, "--run_profile", "paper"]
    train += CONFIGS[config]
    if config == "ddp_1":
        backend = "nccl" if device.startswith("cuda") else "gloo"
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=1", *train, "--distributed_backend", backend]
    return [sys.executable, *train]


def run_once(config, args, encoder, scratch, index):
    folder = scratch / f"{config}-{index}"
    command = recipe_command(config, args.device, encoder, args.data_folder, args.updates,
                             folder)
    load_before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    run = {"config": config, "load_before": load_before, "load_after": os.getloadavg()}
    record_file = folder / "upstream" / "rewiring.json"
    if done.returncode != 0 or not record_file.is_file():
        return {**run, "error": (done.stderr or done.stdout)[-1500:]}
    record = json.loads(record_file.read_text(encoding="utf-8"))
    loading = record["data_loading"]
    loop = loading["wait_s"] + loading["busy_s"]
    return {**run, "process_s": seconds, "loop_s": loop, "updates": record["updates"],
            "updates_per_s": loading["batches"] / loop, **loading,
            "precision": record["hyperparameters"]["precision"],
            "world_size": record["run_identity"].get("world_size")}


def summarise(runs, configs):
    ok = [r for r in runs if "error" not in r]
    summary = {}
    for config in configs:
        mine = [r for r in ok if r["config"] == config]
        if not mine:
            summary[config] = {"error": "every run failed"}
            continue
        summary[config] = {key: spread([r[key] for r in mine]) for key in (
            "updates_per_s", "wait_share", "wait_s", "loop_s")}
        summary[config].update(num_workers=mine[0]["num_workers"],
                               pin_memory=mine[0]["pin_memory"])
    return summary


def table(result):
    def fmt(cell, digits):
        return f"{cell['median']:.{digits}f} ({cell['min']:.{digits}f}-{cell['max']:.{digits}f})"

    lines = ["| config | workers | pinned | updates/s | wait share | wait s | loop s |",
             "|---|---|---|---|---|---|---|"]
    for config, row in result["summary"].items():
        if "error" in row:
            lines.append(f"| {config} | failed | | | | | |")
            continue
        lines.append(f"| {config} | {row['num_workers']} | {row['pin_memory']} | "
                     f"{fmt(row['updates_per_s'], 3)} | {fmt(row['wait_share'], 4)} | "
                     f"{fmt(row['wait_s'], 2)} | {fmt(row['loop_s'], 1)} |")
    lines.append(f"\nmedian (min-max) over {result['repeats']} repeats of {result['updates']} "
                 f"updates; {load_range(result['runs'])}")
    return "\n".join(lines)


def main(argv):
    import torch
    import transformers

    from rewire_lobes.upstream.encoder import save_random_encoder

    args = parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device.startswith("cuda")
    args.updates = args.updates or (100 if cuda else 24)
    with tempfile.TemporaryDirectory(prefix="bench-loading-") as scratch:
        scratch = Path(scratch)
        encoder = str(save_random_encoder(scratch / "large", size="large")) if cuda else None
        runs = []
        for repeat in range(args.repeats):
            for config in args.configs if repeat % 2 == 0 else args.configs[::-1]:
                print(f"+ {config} (repeat {repeat + 1} of {args.repeats})", flush=True)
                runs.append({"repeat": repeat, **run_once(config, args, encoder, scratch,
                                                          repeat)})
                if "error" in runs[-1]:
                    print(runs[-1]["error"], file=sys.stderr)
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python utils/bench_loading.py " + " ".join(argv),
        "machine": {**describe_machine(args.device), "transformers": transformers.__version__},
        "encoder": "random wav2vec2-large-lv60-shaped" if cuda else "embedded (assets/encoder)",
        "updates": args.updates,
        "repeats": args.repeats,
        "runs": runs,
        "summary": summarise(runs, args.configs),
    }
    write_result(args, result, table(result), "loading")


if __name__ == "__main__":
    main(sys.argv[1:])
