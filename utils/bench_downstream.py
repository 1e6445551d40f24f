#!/usr/bin/env python3
"""Updates per second of an utterance-level head: cached features vs the encoder every step.

Same head (weighted layer sum + SUPERB utterance head), same data (seeded 1-second
clips, batch 32), same optimiser (Adam, grad clipping 1). Two loops are timed side by
side in one process:

* ``on_the_fly``: each update runs the frozen encoder on the padded batch, then the head;
* ``cached``: the encoder ran once per clip beforehand (``FeatureCache``, timed
  separately as ``extraction``) and each update reads ``[L+1, D]`` vectors.

Audio decoding is left out of both loops (clips are in memory), which favours the
on-the-fly loop. Encoders: ``--upstream_source`` if given, else ``assets/encoder`` (or
the random small stand-in while that is absent) on CPU; on CUDA the default is a
randomly initialised wav2vec2-large-shaped encoder (the paper's model size).

    python utils/bench_downstream.py                  # CPU, embedded encoder
    python utils/bench_downstream.py --device cuda    # GPU, wav2vec2-large shape
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import speechbrain as sb
import torch

from rewire_lobes.runs.defaults import DEFAULT_UPSTREAM, resolve_upstream_source
from rewire_lobes.downstream.features import FeatureCache
from rewire_lobes.downstream.heads import UtteranceLevelHead
from rewire_lobes.data.manifests import write_manifest
from rewire_lobes.upstream.encoder import SSLUpstream, WeightedLayerSum, describe_encoder, save_random_encoder
from rewire_lobes.downstream.dataio import audio_pipeline
from rewire_lobes.grid.throughput import device_peak, encoder_fits, model_flops


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--upstream_source", default=None,
                        help="encoder dir or hub id (default: embedded on CPU, large-shaped random on CUDA)")
    parser.add_argument("--clips", type=int, default=64, help="distinct 1 s clips")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None,
                        help="timed updates per mode (default: 10 on CPU, 50 on CUDA)")
    parser.add_argument("--cached_steps", type=int, default=500, help="timed cached updates")
    parser.add_argument("--classes", type=int, default=12)
    parser.add_argument("--work_folder", default=None, help="where clips and cache go (default: a temp dir)")
    parser.add_argument("--output", default=None, help="also write the figures as JSON here")
    return parser.parse_args(argv)


def pick_encoder(args, work):
    if args.upstream_source:
        return resolve_upstream_source(args.upstream_source, work)
    if args.device.startswith("cuda"):
        return str(save_random_encoder(work / "wav2vec2-large-random", size="large"))
    return resolve_upstream_source(DEFAULT_UPSTREAM, Path("results"))


def write_clips(folder, count, seed=0):
    """Seeded 1 s clips and a DynamicItemDataset reading them as the recipes do."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        path = folder / f"clip{i}.wav"
        soundfile.write(path, (rng.standard_normal(16000) * 0.1).astype("float32"), 16000)
        rows.append({"ID": f"clip{i}", "duration": 1.0, "wav": str(path), "start": "", "stop": ""})
    write_manifest(folder / "clips.csv", rows)
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(str(folder / "clips.csv"))
    sb.dataio.dataset.add_dynamic_item([dataset], audio_pipeline(0.0))
    sb.dataio.dataset.set_output_keys([dataset], ["id", "sig"])
    return dataset


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class Trainer:
    """Featurizer + head + Adam, as UtteranceBrain trains them."""

    def __init__(self, upstream, classes, device):
        torch.manual_seed(0)
        self.featurizer = WeightedLayerSum(upstream.num_states).to(device)
        self.head = UtteranceLevelHead(upstream.hidden_size, classes).to(device)
        params = list(self.featurizer.parameters()) + list(self.head.parameters())
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=1e-4)

    def update(self, logits, labels):
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def time_loop(step, count, device, warmup=2):
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    synchronize(device)
    return count / (time.perf_counter() - start)


def main(argv):
    args = parse_args(argv)
    device = torch.device(args.device)
    steps = args.steps or (50 if device.type == "cuda" else 10)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_folder or tmp)
        work.mkdir(parents=True, exist_ok=True)
        source = pick_encoder(args, work)
        upstream = SSLUpstream(source).to(device)
        extraction_fit = encoder_fits(upstream.config, modes=("forward",))["forward"]
        peak, peak_basis = device_peak(device, torch.bfloat16 if device.type == "cuda"
                                       else torch.float32)
        dataset = write_clips(work, args.clips)
        wavs = torch.stack([dataset[i]["sig"] for i in range(len(dataset))])
        ids = [dataset[i]["id"] for i in range(len(dataset))]
        generator = torch.Generator().manual_seed(0)
        labels = torch.randint(args.classes, (len(ids),), generator=generator)
        batches = [torch.randint(len(ids), (args.batch_size,), generator=generator)
                   for _ in range(8)]

        synchronize(device)
        start = time.perf_counter()
        cache = FeatureCache(work / "cache", upstream, batch_size=16)
        features = cache.load(dataset, progressbar=False)
        synchronize(device)
        extraction = time.perf_counter() - start

        trainer = Trainer(upstream, args.classes, device)
        state = {"i": 0}

        def next_batch():
            state["i"] += 1
            return batches[state["i"] % len(batches)]

        def on_the_fly_step():
            index = next_batch()
            batch = wavs[index].to(device)
            hidden, frame_lens = upstream(batch, torch.ones(len(index), device=device))
            logits = trainer.head(trainer.featurizer(hidden), frame_lens)
            trainer.update(logits, labels[index].to(device))

        def cached_step():
            index = next_batch()
            pooled = torch.stack([features[ids[i]] for i in index.tolist()]).to(device)
            logits = trainer.head(trainer.featurizer(pooled.transpose(0, 1)))
            trainer.update(logits, labels[index].to(device))

        on_the_fly = time_loop(on_the_fly_step, steps, device)
        threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(1)  # as UtteranceBrain does for cached features on CPU
        cached = time_loop(cached_step, args.cached_steps, device)
        torch.set_num_threads(threads)

    figures = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads_on_the_fly": torch.get_num_threads(),
        "threads_cached": 1 if device.type == "cpu" else torch.get_num_threads(),
        "encoder": {k: v for k, v in describe_encoder(upstream).items() if k != "content_hash"},
        "batch_size": args.batch_size,
        "clip_seconds": 1.0,
        "on_the_fly_updates_per_s": round(on_the_fly, 3),
        "cached_updates_per_s": round(cached, 1),
        "speedup": round(cached / on_the_fly, 1),
        # One-off cost of the cache; the on-the-fly loop pays about
        # 1 / (updates_per_s * batch_size) seconds per clip at every update.
        "extraction_seconds_per_clip": round(extraction / len(ids), 4),
        # Model FLOPs of the extraction (forward, counted on the encoder's config; every
        # clip is 1 s, so nothing is padded) per second of it, and against the peak.
        "extraction_model_gflop_per_s": round(
            model_flops(extraction_fit, [16000] * len(ids)) / extraction / 1e9, 2),
        "extraction_mfu": round(model_flops(extraction_fit, [16000] * len(ids))
                                / extraction / peak, 4),
        "peak_gflop_per_s": round(peak / 1e9, 1),
        "peak_basis": peak_basis,
    }
    print(json.dumps(figures, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
