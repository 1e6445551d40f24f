#!/usr/bin/env python3
"""Speed and memory of the rewiring loop: the paper's loop against ours, side by side.

Variants, all on the same encoder and the same utterances (Twin pairs, so no TTS cost):

* ``paper``    -- the paper's code: every view encoded alone (batch of one), graphs kept
                  until the loss of the batch of 4 pairs is back-propagated;
* ``batched``  -- ours: the 2B = 8 views of a batch in one padded forward pass
                  (length-bucketed batches);
* ``gradcache``-- ours at batch 64: GradCache, chunks of ``--chunk_size`` views, exact
                  gradients of the 128-view batch;
* ``plain64``  -- (``--with_plain64``) batch 64 without caching, for the memory contrast;
* ``batched_checkpointed`` -- (``--variants``) ``batched`` with the encoder's gradient
                  checkpointing: memory for time.

Each variant runs in its own process (peak memory = that process's high-water mark:
``ru_maxrss`` on CPU, ``torch.cuda.max_memory_allocated`` on GPU); after one warm-up
update it times ``--updates`` updates. ``--repeats`` runs every variant that many times,
in ABBA order (reversed on every other repeat) so that drift in the machine's load hits
each variant; the 1-minute load average is recorded around every run. Reported, as median
(min-max) over the repeats: updates/s, pairs/s, seconds of view audio per second, the
per-repeat ratio to the paper's loop, peak memory and its rise over the loaded model and
data, the padding share, and model FLOPs (each view at its own length, every parameter
trained, counted with ``FlopCounterMode`` on the encoder's config:
``rewire_lobes.grid.throughput``) per update, per second and as MFU against the device's
peak (a listed GPU's datasheet bf16 figure, else a measured matrix product). ``--tts``
also times the neutral TTS: one ``text2wave`` process per utterance (the paper's loop)
against our long-lived Festival workers.

CPU (default): the embedded encoder (``assets/encoder``, or its random stand-in) and the
mini LibriSpeech corpus. GPU (when CUDA is available): a randomly initialised
wav2vec2-large-lv60-shaped encoder (24 layers, 1024 wide) in bf16 autocast.

``--modes`` times instead, in one process on the same batches of 4 Twin pairs (forward
and backward, the recipe's settings: dropout 0.1, CNN trained; the same dropout masks in
every mode), ways of encoding the 2B views against the first one given: one at a time
(the paper's), one padded pass, one padded pass without exact padding, similar-length
groups of 2 or 4, one pass of views cropped to the batch's shortest (no padding:
batching alone), and one pass or one at a time with gradient checkpointing, with eager
attention instead of transformers' default SDPA, or compiled (``torch.compile``). ``--padding_cost`` is ``--modes one_pass_inexact one_pass`` on
``assets/encoder``.

    python utils/bench_rewire.py --updates 4 --repeats 3 --tts   # writes results/bench/rewire_cpu.json
    python utils/bench_rewire.py --modes one_at_a_time one_pass groups_of_2 one_pass_cropped
    python utils/bench_rewire.py --padding_cost       # writes rewire_modes_cpu.json
"""

import argparse
import collections
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rewire_lobes.io_utils import write_json_atomic  # noqa: E402 (after the path)

VARIANTS = {
    # name: (pairs per update, how the views are encoded, gradient checkpointing)
    "paper": (4, "one_at_a_time", False),
    "batched": (4, "one_pass", False),
    "batched_checkpointed": (4, "one_pass", True),
    "gradcache": (64, "grad_cache", False),
    "plain64": (64, "one_pass", False),
}
DEFAULT_VARIANTS = ["paper", "batched", "gradcache"]


# How each in-process mode encodes the 2B views of an update. chunk_size None: one padded
# pass; k: similar-length groups of k views (1 = the paper's one at a time); crop: every
# view cut to the batch's shortest (no padding at all, other audio: compare audio seconds
# per second); checkpointing: the encoder's gradient checkpointing (memory for time).
# attention: transformers' implementation (sdpa, its default, or eager). compiled:
# torch.compile(dynamic=True) of the encoder (its compile time is the warm-up's).
Mode = collections.namedtuple(
    "Mode", "exact_padding chunk_size crop checkpointing attention compiled",
    defaults=(False, "sdpa", False))
MODES = {
    "one_at_a_time": Mode(True, 1, False),
    "one_pass": Mode(True, None, False),
    "one_pass_inexact": Mode(False, None, False),
    "groups_of_2": Mode(True, 2, False),
    "groups_of_4": Mode(True, 4, False),
    "one_pass_cropped": Mode(True, None, True),
    "one_pass_checkpointed": Mode(True, None, False, True),
    "one_at_a_time_checkpointed": Mode(True, 1, False, True),
    "one_pass_eager": Mode(True, None, False, False, "eager"),
    "one_at_a_time_eager": Mode(True, 1, False, False, "eager"),
    "one_pass_compiled": Mode(True, None, False, compiled=True),
    "one_at_a_time_compiled": Mode(True, 1, False, compiled=True),
}
PADDING_COST_MODES = ["one_pass_inexact", "one_pass"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--upstream_source", default=None,
                        help="default: assets/encoder on CPU, a random large encoder on GPU")
    parser.add_argument("--data_folder", default="data/mini/LibriSpeech")
    parser.add_argument("--updates", type=int, default=3,
                        help="timed updates of the batch-4 variants")
    parser.add_argument("--big_updates", type=int, default=1,
                        help="timed updates of the batch-64 variants")
    parser.add_argument("--chunk_size", type=int, default=8, help="views per GradCache chunk")
    parser.add_argument("--with_plain64", action="store_true")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=None,
                        help=f"the variants to run (default: {' '.join(DEFAULT_VARIANTS)}; "
                             "paper first, the ratios are to it)")
    parser.add_argument("--tts", action="store_true", help="also time the neutral TTS")
    parser.add_argument("--tts_utterances", type=int, default=40)
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=None,
                        help="time these ways of encoding a batch against the first, in this "
                             "process (e.g. one_at_a_time one_pass groups_of_2)")
    parser.add_argument("--padding_cost", action="store_true",
                        help="--modes " + " ".join(PADDING_COST_MODES))
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed repeats of each mode or variant, interleaved")
    parser.add_argument("--output", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work_dir", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- one variant


def load_views(work_dir, pairs, updates, device):
    """``updates`` batches of Twin pairs: lists of ``2 * pairs`` views, anchors first."""
    import csv

    from rewire_lobes.data.audio import load_audio
    from rewire_lobes.rewiring.batching import LengthBucketBatchSampler
    from rewire_lobes.rewiring.contrastive import SPLIT_SAMPLES, PairMaker

    with open(Path(work_dir) / "train.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    samples = [float(r["duration"]) * 16000 for r in rows]
    lengths = [n / 2 if n > SPLIT_SAMPLES else n for n in samples]  # after truncation
    sampler = LengthBucketBatchSampler(lengths, pairs, bucket_batches=4, seed=0)
    maker = PairMaker("twin", seed=0)
    batches = []
    epoch = 0
    while len(batches) < updates:
        sampler.set_epoch(epoch)
        for indices in sampler:
            made = [maker(rows[i]["ID"], load_audio(rows[i]["wav"])) for i in indices]
            anchors = [p.anchor.to(device) for p in made]
            batches.append(anchors + [p.positive.to(device) for p in made])
            if len(batches) == updates:
                break
        epoch += 1
    return batches


def batch_padding(work_dir, pairs, buckets=(None, 4, 16)):
    """Padding share of one padded pass of the 2B Twin views per batch over one epoch of the
    prepared subset: random batches (the paper's, ``bucket_batches`` null) against
    length-bucketed ones. Counted from the lengths, nothing is timed."""
    import csv

    from rewire_lobes.grid.throughput import padding_share
    from rewire_lobes.rewiring.batching import LengthBucketBatchSampler
    from rewire_lobes.rewiring.contrastive import SPLIT_SAMPLES

    with open(Path(work_dir) / "train.csv", newline="", encoding="utf-8") as handle:
        samples = [float(r["duration"]) * 16000 for r in csv.DictReader(handle)]
    lengths = [n / 2 if n > SPLIT_SAMPLES else n for n in samples]
    shares = {}
    for bucket in buckets:
        sampler = LengthBucketBatchSampler(lengths, pairs, bucket_batches=bucket, seed=0)
        shares[str(bucket)] = padding_share([[lengths[i] for i in batch] * 2 for batch in sampler])
    return shares


def synchronize(device):
    """Waits for queued CUDA work, so that a timer reads finished work (no-op on CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(args):
    import torch

    from rewire_lobes.grid.throughput import padding_share
    from rewire_lobes.rewiring.contrastive import (
        chunk_order, encode_views, grad_cache_backward, info_nce, pad_views, pool_utterances)
    from rewire_lobes.upstream.encoder import SSLUpstream, trainable_parameters

    pairs, mode, checkpointing = VARIANTS[args.worker]
    updates = args.updates if pairs <= 4 else args.big_updates
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    upstream = SSLUpstream(args.upstream_source, freeze=False, dropout=0.1,
                           freeze_feature_encoder=False,
                           gradient_checkpointing=checkpointing).to(device)
    upstream.train()
    optimizer = torch.optim.AdamW(trainable_parameters(upstream), lr=1e-6, weight_decay=0.01)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    batches = load_views(args.work_dir, pairs, updates + 1, device)
    # The warm-up update uses 4 pairs whatever the variant: it only needs to initialise the
    # allocator, the kernels and the optimizer state, and a batch of 64 costs minutes on a CPU.
    warm = batches[0][:4] + batches[0][pairs:pairs + 4]

    def encode(wavs, rel_lens):
        with autocast:
            hidden, frame_lens = upstream(wavs.to(device), rel_lens.to(device))
            return pool_utterances(hidden, frame_lens)

    def update(views):
        half = len(views) // 2
        if mode == "one_at_a_time":
            embeddings = torch.cat([encode(*pad_views([view])) for view in views])
            loss = info_nce(embeddings[:half], embeddings[half:])
            loss.backward()
        elif mode == "one_pass":
            embeddings = encode_views(encode, views)
            loss = info_nce(embeddings[:half], embeddings[half:])
            loss.backward()
        else:
            loss = grad_cache_backward(encode, views, info_nce, args.chunk_size, device)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    # Baseline: model and data loaded, before any update (the warm-up already peaks).
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    update(warm)
    synchronize(device)
    start = time.perf_counter()
    losses = [update(views) for views in batches[1:]]
    synchronize(device)
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    audio = sum(v.shape[-1] for views in batches[1:] for v in views) / 16000
    view_samples = [[v.shape[-1] for v in views] for views in batches[1:]]
    if mode == "one_at_a_time":
        groups = [[n] for lengths in view_samples for n in lengths]
    elif mode == "one_pass":
        groups = view_samples
    else:
        groups = [[lengths[i] for i in chunk] for lengths in view_samples
                  for chunk in chunk_order(lengths, args.chunk_size)]
    return {
        "variant": args.worker,
        "pairs_per_update": pairs,
        "updates": updates,
        "seconds": seconds,
        "updates_per_s": updates / seconds,
        "pairs_per_s": updates * pairs / seconds,
        "audio_s_per_s": audio / seconds,
        "peak_memory_mb": peak / 2**20,
        "peak_rise_mb": (peak - baseline) / 2**20,
        "view_audio_s_per_update": audio / updates,
        "view_samples": view_samples,
        "padding_share": padding_share(groups),
        "final_loss": losses[-1],
        "memory_kind": "cuda max_memory_allocated" if cuda else "process ru_maxrss",
    }


# ---------------------------------------------------------------------------- padding cost




def interleaved_runs(modes, run, repeats, device):
    """Runs ``run(mode)`` for every mode, ``repeats`` times, in ABBA order (reversed on odd
    repeats) so that drift in the machine's load hits every mode; times each run (wall and
    CPU) and records the load average around it."""
    runs = []
    for repeat in range(repeats):
        for mode in modes if repeat % 2 == 0 else modes[::-1]:
            load_before = os.getloadavg()
            synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            output = run(mode)
            synchronize(device)
            runs.append({"mode": mode, "repeat": repeat, "seconds": time.perf_counter() - start,
                         "cpu_seconds": time.process_time() - cpu_start,
                         "load_before": load_before, "load_after": os.getloadavg(), **output})
    return runs


def spread(values):
    import statistics

    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def paired_ratios(runs, modes, key, baseline):
    """Per mode: the spread of ``run[key] / baseline's run[key]`` over the repeats."""
    by_repeat = {(r["mode"], r["repeat"]): r[key] for r in runs}
    repeats = sorted({r["repeat"] for r in runs})
    return {mode: spread([by_repeat[mode, i] / by_repeat[baseline, i] for i in repeats])
            for mode in modes}


def time_modes(args, source, work_dir, modes):
    """Forward and backward of the same batches of 4 Twin pairs in each of ``modes`` (one
    process, the recipe's settings: dropout 0.1, CNN trained; no optimizer step, so every
    mode keeps the same weights; reseeded per batch, so the dropout masks match)."""
    import torch

    from rewire_lobes.grid.throughput import padding_share
    from rewire_lobes.rewiring.contrastive import (
        chunk_order, encode_views, info_nce, pool_utterances)
    from rewire_lobes.upstream.encoder import SSLUpstream, trainable_parameters

    device = torch.device(args.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    upstreams = {}
    def model_of(mode):
        m = MODES[mode]
        return m.exact_padding, m.checkpointing, m.attention, m.compiled

    for exact, checkpointing, attention, compiled in sorted({model_of(mode) for mode in modes}):
        upstream = SSLUpstream(source, freeze=False, dropout=0.1, freeze_feature_encoder=False,
                               exact_padding=exact, gradient_checkpointing=checkpointing)
        upstream.model.set_attn_implementation(attention)
        upstream.to(device).train()
        trainable_parameters(upstream)
        upstreams[exact, checkpointing, attention, compiled] = (
            torch.compile(upstream, dynamic=True) if compiled else upstream)
    batches = load_views(work_dir, 4, args.updates + 1, device)

    def views_of(mode, views):
        if not MODES[mode].crop:
            return views
        shortest = min(v.shape[-1] for v in views)
        return [v[:shortest] for v in views]

    def update(mode, views, seed):
        chunk_size = MODES[mode].chunk_size
        upstream = upstreams[model_of(mode)]
        torch.manual_seed(seed)

        def encode(wavs, rel_lens):
            with autocast:
                hidden, frame_lens = upstream(wavs, rel_lens)
                return pool_utterances(hidden, frame_lens)

        embeddings = encode_views(encode, views, chunk_size)
        half = len(views) // 2
        loss = info_nce(embeddings[:half], embeddings[half:])
        loss.backward()
        upstream.zero_grad(set_to_none=True)
        return loss.item()

    shapes = {mode: [views_of(mode, views) for views in batches[1:]] for mode in modes}

    def run(mode):
        losses = [update(mode, views, seed=index)
                  for index, views in enumerate(shapes[mode], start=1)]
        return {"losses": losses}

    warmup_seconds = {}
    for mode in modes:  # warm-up (and compilation)
        start = time.perf_counter()
        update(mode, views_of(mode, batches[0]), seed=0)
        warmup_seconds[mode] = time.perf_counter() - start
    runs = interleaved_runs(modes, run, args.repeats, device)
    audio = {mode: sum(v.shape[-1] for views in shapes[mode] for v in views) / 16000
             for mode in modes}
    for r in runs:
        r["seconds_per_update"] = r["seconds"] / args.updates
        r["cpu_seconds_per_update"] = r["cpu_seconds"] / args.updates
        r["audio_s_per_s"] = audio[r["mode"]] / r["seconds"]
        r["audio_s_per_cpu_s"] = audio[r["mode"]] / r["cpu_seconds"]
    summary = {mode: {key: spread([r[key] for r in runs if r["mode"] == mode]) for key in (
        "seconds_per_update", "cpu_seconds_per_update", "audio_s_per_s", "audio_s_per_cpu_s")}
        for mode in modes}
    padding = {}
    for mode in modes:
        chunk_size = MODES[mode].chunk_size
        groups = []
        for views in shapes[mode]:
            lengths = [v.shape[-1] for v in views]
            groups += [lengths] if chunk_size is None else [
                [lengths[i] for i in chunk] for chunk in chunk_order(lengths, chunk_size)]
        padding[mode] = padding_share(groups)
    baseline = modes[0]
    return {
        "updates_per_repeat": args.updates,
        "pairs_per_update": 4,
        "repeats": args.repeats,
        "baseline": baseline,
        "view_audio_s_per_update": {mode: audio[mode] / args.updates for mode in modes},
        "warmup_seconds": warmup_seconds,
        "padding_share": padding,
        "runs": runs,
        "summary": summary,
        # Throughput relative to the first mode, paired within each repeat.
        "audio_s_per_s_over_baseline": paired_ratios(runs, modes, "audio_s_per_s", baseline),
        "audio_s_per_cpu_s_over_baseline": paired_ratios(
            runs, modes, "audio_s_per_cpu_s", baseline),
    }


def fmt(cell, digits=2, scale=1.0):
    """A spread as ``median (min-max)``."""
    return (f"{cell['median'] * scale:.{digits}f} ({cell['min'] * scale:.{digits}f}-"
            f"{cell['max'] * scale:.{digits}f})")


def load_range(runs):
    loads = [r["load_before"][0] for r in runs] + [r["load_after"][0] for r in runs]
    return f"1-min load average {min(loads):.2f}-{max(loads):.2f}"


def modes_table(result):
    timing = result["modes"]
    base = timing["baseline"]
    lines = [f"| mode | padding | warm-up s | wall s/update | CPU s/update | audio s/s "
             f"| x {base} (wall) | x {base} (CPU) |", "|---|---|---|---|---|---|---|---|"]

    for mode, row in timing["summary"].items():
        lines.append(
            f"| {mode} | {timing['padding_share'][mode]:.1%} | "
            f"{timing['warmup_seconds'][mode]:.1f} | {fmt(row['seconds_per_update'])} | "
            f"{fmt(row['cpu_seconds_per_update'])} | {fmt(row['audio_s_per_s'])} | "
            f"{fmt(timing['audio_s_per_s_over_baseline'][mode], 3)} | "
            f"{fmt(timing['audio_s_per_cpu_s_over_baseline'][mode], 3)} |")
    lines.append(f"median (min-max) over {timing['repeats']} interleaved repeats of "
                 f"{timing['updates_per_repeat']} updates; {load_range(timing['runs'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- TTS


def time_tts(work_dir, count):
    """Seconds per utterance: text2wave per utterance vs our Festival workers."""
    import csv

    from rewire_lobes.rewiring.neutral import synthesize_texts, tts_text

    with open(Path(work_dir) / "train.csv", newline="", encoding="utf-8") as handle:
        texts = [tts_text(r["wrd"]) for r in csv.DictReader(handle)][:count]
    scratch = Path(tempfile.mkdtemp(prefix="bench-tts-"))
    try:
        start = time.perf_counter()
        for index, text in enumerate(texts):
            text_file = scratch / f"{index}.txt"
            text_file.write_text(text)
            subprocess.run(["text2wave", "-o", str(scratch / f"{index}.wav"), str(text_file)],
                           check=True, capture_output=True)
        per_process = (time.perf_counter() - start) / len(texts)
        start = time.perf_counter()
        report = synthesize_texts(texts, scratch / "cache", num_workers=os.cpu_count() or 2)
        pooled = (time.perf_counter() - start) / len(texts)
        start = time.perf_counter()
        synthesize_texts(texts, scratch / "cache")
        cached = (time.perf_counter() - start) / len(texts)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"utterances": len(texts), "text2wave_per_utterance_s": per_process,
            "workers_per_utterance_s": pooled, "workers": os.cpu_count() or 2,
            "cached_rerun_per_utterance_s": cached, "failed": len(report.failed)}


# ---------------------------------------------------------------------------- driver


def prepare(args, work_dir):
    """Writes the manifest and resolves the encoder; returns the encoder directory."""
    sys.path.insert(0, str(REPO / "recipes" / "rewire"))
    from librispeech_prepare import prepare_librispeech_rewire

    from rewire_lobes.runs.defaults import resolve_upstream_source

    prepare_librispeech_rewire(args.data_folder, work_dir)  # data/mini: generated when absent
    if args.upstream_source:
        return resolve_upstream_source(args.upstream_source, REPO / "results")
    if args.device == "cuda":
        from rewire_lobes.upstream.encoder import save_random_encoder

        return str(save_random_encoder(Path(work_dir) / "large", size="large"))
    return resolve_upstream_source("assets/encoder", REPO / "results")


def describe_machine(device):
    import torch

    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv):
    args = parse_args(argv)
    if args.worker:
        print("@@RESULT " + json.dumps(run_variant(args)), flush=True)
        return
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.padding_cost:
        args.modes = PADDING_COST_MODES
        args.upstream_source = args.upstream_source or "assets/encoder"
    work_dir = Path(tempfile.mkdtemp(prefix="bench-rewire-"))
    try:
        source = prepare(args, work_dir)
        if args.modes:
            result = {
                "date": datetime.date.today().isoformat(),
                "command": "python utils/bench_rewire.py " + " ".join(argv),
                "machine": describe_machine(args.device),
                "encoder": source,
                "modes": time_modes(args, source, work_dir, args.modes),
            }
            return write_result(args, result, modes_table(result), "rewire_modes")
        variants = args.variants or DEFAULT_VARIANTS + (["plain64"] if args.with_plain64 else [])
        runs = []
        for repeat in range(args.repeats):
            for name in variants if repeat % 2 == 0 else variants[::-1]:
                print(f"+ {name} (repeat {repeat + 1} of {args.repeats})", flush=True)
                runs.append({"repeat": repeat, "load_before": os.getloadavg(),
                             **run_worker(args, name, work_dir, source),
                             "load_after": os.getloadavg()})
                # The runs so far, in case the benchmark is stopped (a device's time limit).
                write_json_atomic(output_path(args, "rewire"), {
                    "complete": False, "command": "python utils/bench_rewire.py "
                    + " ".join(argv), "machine": describe_machine(args.device), "runs": runs})
        result = {
            "date": datetime.date.today().isoformat(),
            "command": "python utils/bench_rewire.py " + " ".join(argv),
            "machine": describe_machine(args.device),
            "encoder": source,
            "runs": runs,
            **throughput(args, source, runs, variants),
            "batch_padding_by_bucket_batches": batch_padding(work_dir, 4),
        }
        if args.tts:
            result["tts"] = time_tts(work_dir, args.tts_utterances)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    write_result(args, result, table(result), "rewire")


def run_worker(args, name, work_dir, source):
    """One variant in its own process (its peak memory is its own high-water mark)."""
    command = [sys.executable, __file__, "--worker", name, "--work_dir", str(work_dir),
               "--device", args.device, "--upstream_source", source,
               "--updates", str(args.updates), "--big_updates", str(args.big_updates),
               "--chunk_size", str(args.chunk_size)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("@@RESULT ")]
    if done.returncode != 0 or not lines:
        error = (done.stderr or done.stdout)[-800:]
        print(error, file=sys.stderr)
        return {"variant": name, "error": error}
    return json.loads(lines[-1][len("@@RESULT "):])


def throughput(args, source, runs, variants):
    """Per variant: the spread of its speed over the repeats, the per-repeat ratio to the
    paper's loop, model FLOPs (each view at its own length, every parameter trained) and
    MFU against the device's peak (:mod:`rewire_lobes.grid.throughput`)."""
    import torch
    import transformers

    from rewire_lobes.grid.throughput import device_peak, encoder_fits, model_flops

    fit = encoder_fits(transformers.AutoConfig.from_pretrained(source), modes=("train",))["train"]
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    peak, basis = device_peak(args.device, dtype)
    ok = [r for r in runs if "error" not in r]
    for r in ok:
        r["model_flops_per_update"] = model_flops(
            fit, [n for lengths in r.pop("view_samples") for n in lengths]) / r["updates"]
        r["model_flop_per_s"] = r["model_flops_per_update"] * r["updates_per_s"]
        r["mfu"] = r["model_flop_per_s"] / peak
    paper = {r["repeat"]: r for r in ok if r["variant"] == "paper"}
    summary = {}
    for name in variants:
        mine = [r for r in ok if r["variant"] == name]
        if not mine:
            summary[name] = {"error": "every run failed"}
            continue
        summary[name] = {key: spread([r[key] for r in mine]) for key in (
            "updates_per_s", "pairs_per_s", "audio_s_per_s", "model_flop_per_s", "mfu",
            "peak_memory_mb", "peak_rise_mb")}
        summary[name]["over_paper_audio_s_per_s"] = spread([
            r["audio_s_per_s"] / paper[r["repeat"]]["audio_s_per_s"]
            for r in mine if r["repeat"] in paper]) if paper else None
        summary[name].update(pairs_per_update=mine[0]["pairs_per_update"],
                             padding_share=mine[0]["padding_share"],
                             model_gflop_per_update=mine[0]["model_flops_per_update"] / 1e9)
    return {"peak_flop_per_s": peak, "peak_basis": basis, "repeats": args.repeats,
            "summary": summary}


def output_path(args, stem):
    return Path(args.output or REPO / "results" / "bench" / f"{stem}_{args.device}.json")


def write_result(args, result, text, stem):
    print(text)
    output = output_path(args, stem)
    write_json_atomic(output, {"complete": True, **result})
    print(f"written to {output}")


def table(result):
    lines = ["| variant | pairs/update | padding | updates/s | audio s/s | x paper (audio s/s) "
             "| model GFLOP/update | GFLOP/s | MFU | peak MB | rise MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in result["summary"].items():
        if "error" in row:
            lines.append(f"| {name} | failed | | | | | | | | | |")
            continue
        ratio = fmt(row["over_paper_audio_s_per_s"], 3) if row["over_paper_audio_s_per_s"] else ""
        lines.append(
            f"| {name} | {row['pairs_per_update']} | {row['padding_share']:.1%} | "
            f"{fmt(row['updates_per_s'], 4)} | {fmt(row['audio_s_per_s'])} | {ratio} | "
            f"{row['model_gflop_per_update']:.0f} | {fmt(row['model_flop_per_s'], 1, 1e-9)} | "
            f"{fmt(row['mfu'], 1, 100)} % | {row['peak_memory_mb']['median']:.0f} | "
            f"{row['peak_rise_mb']['median']:.0f} |")
    lines.append(f"\nmedian (min-max) over {result['repeats']} repeats (variants in ABBA order, "
                 f"one process each); MFU against {result['peak_flop_per_s'] / 1e9:.1f} GFLOP/s "
                 f"({result['peak_basis']}); {load_range(result['runs'])}")
    lines.append("padding share of one pass of 2B views per batch of 4 pairs over an epoch, by "
                 "bucket_batches: " + ", ".join(
                     f"{bucket} {share:.1%}" for bucket, share in
                     result["batch_padding_by_bucket_batches"].items()))
    if "tts" in result:
        t = result["tts"]
        lines.append(
            f"\nTTS ({t['utterances']} utterances): text2wave per utterance "
            f"{t['text2wave_per_utterance_s'] * 1000:.0f} ms, long-lived workers "
            f"{t['workers_per_utterance_s'] * 1000:.0f} ms ({t['workers']} workers), cached rerun "
            f"{t['cached_rerun_per_utterance_s'] * 1000:.2f} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
