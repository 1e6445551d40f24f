#!/usr/bin/env python3
"""Speed and memory of the rewiring loop: the paper's loop against ours, side by side.

Variants, all on the same encoder and the same utterances (Twin pairs, so no TTS cost):

* ``paper``    -- the paper's code: every view encoded alone (batch of one), graphs kept
                  until the loss of the batch of 4 pairs is back-propagated;
* ``batched``  -- ours: the 2B = 8 views of a batch in one padded forward pass
                  (length-bucketed batches);
* ``gradcache``-- ours at batch 64: GradCache, chunks of ``--chunk_size`` views, exact
                  gradients of the 128-view batch;
* ``plain64``  -- (``--with_plain64``) batch 64 without caching, for the memory contrast.

Each variant runs in its own process (peak memory = that process's high-water mark:
``ru_maxrss`` on CPU, ``torch.cuda.max_memory_allocated`` on GPU); after one warm-up
update it times ``--updates`` updates. Reported: updates/s, pairs/s (utterances/s), peak
memory and its rise over the loaded model and data. ``--tts`` also times the neutral
TTS: one ``text2wave`` process per utterance (the paper's loop) against our long-lived
Festival workers.

CPU (default): the embedded encoder (``assets/encoder``, or its random stand-in) and the
mini LibriSpeech corpus. GPU (when CUDA is available): a randomly initialised
wav2vec2-large-lv60-shaped encoder (24 layers, 1024 wide) in bf16 autocast.

``--padding_cost`` measures instead what exact padding costs (``SSLUpstream``'s
``exact_padding``, default on): in one process, the ``batched`` update (forward and
backward of 2B = 8 views, the recipe's settings: dropout 0.1, CNN trained) with
``exact_padding=False`` and ``True``, on the same batches with the same dropout masks,
``--repeats`` times each, interleaved (ABBA) so that drift in the machine's load hits
both; the load average is recorded around every repeat. Its encoder defaults to
``assets/encoder`` on every device, since exact padding changes only group-norm and
data2vec-audio encoders.

    python utils/bench_rewire.py                      # CPU, writes results/bench/rewire_cpu.json
    python utils/bench_rewire.py --tts --with_plain64
    python utils/bench_rewire.py --padding_cost       # writes rewire_padding_cpu.json
"""

import argparse
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

VARIANTS = {
    # name: (pairs per update, how the views are encoded)
    "paper": (4, "one_at_a_time"),
    "batched": (4, "one_pass"),
    "gradcache": (64, "grad_cache"),
    "plain64": (64, "one_pass"),
}


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
    parser.add_argument("--tts", action="store_true", help="also time the neutral TTS")
    parser.add_argument("--tts_utterances", type=int, default=40)
    parser.add_argument("--padding_cost", action="store_true",
                        help="only time exact_padding=False against True, in this process")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed repeats of each padding mode (--padding_cost)")
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


def synchronize(device):
    """Waits for queued CUDA work, so that a timer reads finished work (no-op on CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(args):
    import torch

    from rewire_lobes.rewiring.contrastive import (
        encode_views, grad_cache_backward, info_nce, pad_views, pool_utterances)
    from rewire_lobes.upstream.encoder import trainable_parameters
    from rewire_lobes.upstream.encoder import SSLUpstream

    pairs, mode = VARIANTS[args.worker]
    updates = args.updates if pairs <= 4 else args.big_updates
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    upstream = SSLUpstream(args.upstream_source, freeze=False, dropout=0.1).to(device)
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
        "final_loss": losses[-1],
        "memory_kind": "cuda max_memory_allocated" if cuda else "process ru_maxrss",
    }


# ---------------------------------------------------------------------------- padding cost


def time_padding_cost(args, source, work_dir):
    """Seconds per update with ``exact_padding`` off and on: same process, same batches."""
    import statistics

    import torch

    from rewire_lobes.upstream.encoder import trainable_parameters
    from rewire_lobes.rewiring.contrastive import encode_views, info_nce, pool_utterances
    from rewire_lobes.upstream.encoder import SSLUpstream

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    upstreams = {}
    for exact in (False, True):
        upstream = SSLUpstream(source, freeze=False, dropout=0.1, freeze_feature_encoder=False,
                               exact_padding=exact).to(device).train()
        trainable_parameters(upstream)
        upstreams[exact] = upstream
    batches = load_views(work_dir, 4, args.updates + 1, device)

    def update(upstream, views, seed):
        """Forward and backward; no optimizer step, so both modes keep the same weights."""
        torch.manual_seed(seed)  # the same dropout masks in both modes

        def encode(wavs, rel_lens):
            with autocast:
                hidden, frame_lens = upstream(wavs, rel_lens)
                return pool_utterances(hidden, frame_lens)

        embeddings = encode_views(encode, views)
        half = len(views) // 2
        loss = info_nce(embeddings[:half], embeddings[half:])
        loss.backward()
        upstream.zero_grad(set_to_none=True)
        return loss.item()

    for upstream in upstreams.values():
        update(upstream, batches[0], seed=0)  # warm-up
    runs, losses = [], {}
    for repeat in range(args.repeats):
        for exact in (False, True) if repeat % 2 == 0 else (True, False):
            load_before = os.getloadavg()
            synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            losses[exact] = [update(upstreams[exact], views, seed=index)
                             for index, views in enumerate(batches[1:], start=1)]
            synchronize(device)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            runs.append({"exact_padding": exact, "repeat": repeat,
                         "seconds_per_update": seconds / args.updates,
                         "cpu_seconds_per_update": cpu_seconds / args.updates,
                         "load_before": load_before, "load_after": os.getloadavg()})
    # CPU time as well as wall time: on a shared machine it is the steadier of the two.
    summary, ratios = {}, {}
    for clock in ("seconds_per_update", "cpu_seconds_per_update"):
        for exact in (False, True):
            per_update = [r[clock] for r in runs if r["exact_padding"] == exact]
            summary.setdefault(str(exact), {})[clock] = {
                "median": statistics.median(per_update), "min": min(per_update),
                "max": max(per_update)}
        pairs = [(plain[clock], exact[clock]) for plain, exact in
                 zip([r for r in runs if not r["exact_padding"]],
                     [r for r in runs if r["exact_padding"]])]
        per_repeat = [exact / plain for plain, exact in pairs]
        ratios[clock] = {"median": statistics.median(per_repeat), "min": min(per_repeat),
                         "max": max(per_repeat)}
    valid = sum(v.shape[-1] for views in batches[1:] for v in views)
    padded = sum(len(views) * max(v.shape[-1] for v in views) for views in batches[1:])
    return {
        "updates_per_repeat": args.updates,
        "pairs_per_update": 4,
        "view_audio_s_per_update": valid / 16000 / args.updates,
        "padding_share": 1 - valid / padded,
        "runs": runs,
        "summary": summary,
        "exact_over_plain_ratio": ratios,
        "final_losses": {str(k): v for k, v in losses.items()},
    }


def padding_table(result):
    cost = result["padding_cost"]
    lines = ["| exact_padding | wall s/update: median (min-max) | CPU s/update: median (min-max) |",
             "|---|---|---|"]
    for exact, row in cost["summary"].items():
        wall, cpu = row["seconds_per_update"], row["cpu_seconds_per_update"]
        lines.append(f"| {exact} | {wall['median']:.2f} ({wall['min']:.2f}-{wall['max']:.2f}) | "
                     f"{cpu['median']:.2f} ({cpu['min']:.2f}-{cpu['max']:.2f}) |")
    for clock, name in (("seconds_per_update", "wall"), ("cpu_seconds_per_update", "CPU")):
        ratio = cost["exact_over_plain_ratio"][clock]
        lines.append(f"exact / plain, {name} time per update: median {ratio['median']:.3f} "
                     f"(per repeat {ratio['min']:.3f}-{ratio['max']:.3f})")
    loads = [r["load_before"][0] for r in cost["runs"]] + [r["load_after"][0] for r in cost["runs"]]
    lines.append(f"padding share of the batches {cost['padding_share']:.1%}; "
                 f"1-min load average {min(loads):.2f}-{max(loads):.2f}")
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
    if args.padding_cost and not args.upstream_source:
        args.upstream_source = "assets/encoder"
    work_dir = Path(tempfile.mkdtemp(prefix="bench-rewire-"))
    try:
        source = prepare(args, work_dir)
        if args.padding_cost:
            result = {
                "date": datetime.date.today().isoformat(),
                "command": "python utils/bench_rewire.py " + " ".join(argv),
                "machine": describe_machine(args.device),
                "encoder": source,
                "padding_cost": time_padding_cost(args, source, work_dir),
            }
            return write_result(args, result, padding_table(result), "rewire_padding")
        variants = ["paper", "batched", "gradcache"] + (["plain64"] if args.with_plain64 else [])
        rows = []
        for name in variants:
            command = [sys.executable, __file__, "--worker", name, "--work_dir", str(work_dir),
                       "--device", args.device, "--upstream_source", source,
                       "--updates", str(args.updates), "--big_updates", str(args.big_updates),
                       "--chunk_size", str(args.chunk_size)]
            print("+", name, flush=True)
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            lines = [l for l in done.stdout.splitlines() if l.startswith("@@RESULT ")]
            if done.returncode != 0 or not lines:
                rows.append({"variant": name, "error": (done.stderr or done.stdout)[-800:]})
                print(rows[-1]["error"], file=sys.stderr)
                continue
            rows.append(json.loads(lines[-1][len("@@RESULT "):]))
        result = {
            "date": datetime.date.today().isoformat(),
            "command": "python utils/bench_rewire.py " + " ".join(argv),
            "machine": describe_machine(args.device),
            "encoder": source,
            "variants": rows,
        }
        if args.tts:
            result["tts"] = time_tts(work_dir, args.tts_utterances)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    write_result(args, result, table(result), "rewire")


def write_result(args, result, text, stem):
    from rewire_lobes.io_utils import write_json_atomic

    print(text)
    output = Path(args.output or REPO / "results" / "bench" / f"{stem}_{args.device}.json")
    write_json_atomic(output, result)
    print(f"written to {output}")


def table(result):
    rows = {r["variant"]: r for r in result["variants"] if "error" not in r}
    base = rows.get("paper")
    lines = ["| variant | pairs/update | updates/s | pairs/s | audio s/s | x paper (audio s/s) "
             "| peak MB | rise MB |", "|---|---|---|---|---|---|---|---|"]
    for row in result["variants"]:
        if "error" in row:
            lines.append(f"| {row['variant']} | failed | | | | | | |")
            continue
        speedup = row["audio_s_per_s"] / base["audio_s_per_s"] if base else float("nan")
        lines.append(
            f"| {row['variant']} | {row['pairs_per_update']} | {row['updates_per_s']:.4f} | "
            f"{row['pairs_per_s']:.2f} | {row['audio_s_per_s']:.2f} | {speedup:.2f} | "
            f"{row['peak_memory_mb']:.0f} | {row['peak_rise_mb']:.0f} |")
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
