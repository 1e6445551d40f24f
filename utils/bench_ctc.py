#!/usr/bin/env python3
"""Updates per second of the ASR BLSTM-CTC head: cached frames vs the encoder every step.

Same head (weighted layer sum → s3prl's SpecAugment → ``RNNCTCHead`` → log-softmax →
CTC), same data (seeded synthetic utterances of ``--min_seconds`` to ``--max_seconds``,
with random character transcripts of LibriSpeech's rate, about 15 characters per second,
encoded by the ASR ``CharacterTokenizer``), same optimiser (Adam 1e-4, gradient norm
clipped to 1), same batches (ASR's length buckets: sorted by length, buckets of 2 x
``--batch_size`` halved, as ``asr.yaml``'s 32 halved to 16; drawn by ``BatchStepSampler``),
and the same SpecAugment and dropout draws (the torch seed is reset before each update,
by its position). Two loops are timed side by side in one process, each after
``--warmup`` updates, ``--repeats`` times, interleaved (ABBA) so that drift in the
machine's load hits both:

* ``on_the_fly``: each update pads the batch's waveforms (``PaddedBatch``), runs the
  frozen encoder (eval, no grad), then the head step, as ``CTCBrain`` does for an
  uncached split;
* ``cached``: the frames were extracted once beforehand into a temporary ``FrameCache``
  (timed separately as ``extraction_seconds``, the audio decoded from the wav files as
  the recipe does), and each update reads its items through ``frame_feature_pipeline``
  (the memory map), ``PaddedBatch`` and ``frame_batch``, then the same head step.

Left out of both loops: decoding the audio (the on-the-fly loop pads waveforms held in
memory, which favours it slightly) and the data loader (the recipe's ``num_workers: 0``
builds the batch in the main process just the same). The cache file was just written, so
the cached loop reads it from the page cache: a cache larger than RAM reads from disk.

Reported: updates/s of each loop (median, min, max over the repeats), the cached/on-the-fly
ratio, the break-even point (``extraction_seconds`` / per-update time saved: after that
many updates the cache has paid for itself, also given in passes over the data), the
encoder, the head sizes, the device, torch threads (the same for both loops, as in
``CTCBrain``; ``--threads`` sets them), and ``os.getloadavg()`` before and after every
repeat and the whole run.

Encoders: ``--upstream_source`` if given, else the embedded ``assets/encoder`` (or its
random small stand-in while that is absent) on CPU; on CUDA the default is a randomly
initialised wav2vec2-large-shaped encoder (the paper's size) with the SUPERB head.

    python utils/bench_ctc.py                          # no GPU: embedded encoder and head, 2-3 min
    OMP_NUM_THREADS=1 python utils/bench_ctc.py        # the same on one torch thread
    python utils/bench_ctc.py --device cuda            # wav2vec2-large shape, SUPERB head
    python utils/bench_ctc.py --utterances 16 --repeats 1 --json bench_ctc.json
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import speechbrain as sb
import torch
import torch.nn.functional as F

from rewire_lobes.data.audio import SAMPLE_RATE
from rewire_lobes.data.manifests import write_manifest
from rewire_lobes.downstream.batching import BatchStepSampler, length_buckets
from rewire_lobes.downstream.dataio import audio_pipeline, audio_pipeline_tag
from rewire_lobes.downstream.frame_cache import FrameCache, frame_batch, frame_feature_pipeline
from rewire_lobes.downstream.heads import RNNCTCHead
from rewire_lobes.downstream.specaug import FeatureSpecAugment
from rewire_lobes.errors import OptionError
from rewire_lobes.runs.cli import user_errors
from rewire_lobes.runs.defaults import DEFAULT_UPSTREAM, resolve_upstream_source
from rewire_lobes.text.characters import S3PRL_CHARACTERS, WORD_BOUNDARY, CharacterTokenizer
from rewire_lobes.upstream.encoder import SSLUpstream, WeightedLayerSum, save_random_encoder

REPO_ROOT = Path(__file__).resolve().parent.parent
HEAD_SIZES = {  # asr.yaml: embedded_profile's and SUPERB's (paper profile) head
    "embedded": {"projector_dim": 128, "hidden_sizes": (128, 128)},
    "superb": {"projector_dim": 1024, "hidden_sizes": (1024, 1024)},
}
HEAD_DROPOUT = 0.2
LEARNING_RATE = 1e-4
MAX_GRAD_NORM = 1.0
HALF_BATCH_ABOVE = 2000  # asr.yaml (samples): every bucket is halved
FEATURE_BATCH_SIZE = 8  # asr.yaml's extraction batches
# Read LibriSpeech speech (about 2.7 words of 5.5 characters, space included, per
# second): ~15 characters per second.
CHARACTERS_PER_SECOND = 15.0
LETTERS = [c for c in S3PRL_CHARACTERS if c != WORD_BOUNDARY]
SEED = 0
DEVICE_DEFAULTS = {  # utterances, min_seconds, max_seconds, head size
    # CPU: short enough that the default run takes 2-3 minutes.
    "cpu": (32, 2.0, 8.0, "embedded"),
    # LibriSpeech train-clean-100's mean is 12.7 s (100.6 h in 28,539 utterances).
    "cuda": (64, 4.0, 16.0, "superb"),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--upstream_source", default=None,
                        help="encoder dir or hub id (default: embedded on CPU, "
                             "wav2vec2-large-shaped random on CUDA)")
    parser.add_argument("--head_size", choices=sorted(HEAD_SIZES), default=None,
                        help="embedded: projector 128, BLSTM 128 per direction; superb: "
                             "1024/1024 (default: embedded on CPU, superb on CUDA)")
    parser.add_argument("--utterances", type=int, default=None,
                        help="synthetic training utterances (default: 32 on CPU, 64 on CUDA)")
    parser.add_argument("--min_seconds", type=float, default=None,
                        help="shortest utterance (default: 2 on CPU, 4 on CUDA)")
    parser.add_argument("--max_seconds", type=float, default=None,
                        help="longest utterance (default: 8 on CPU, 16 on CUDA)")
    parser.add_argument("--batch_size", type=int, default=16,
                        help="utterances per update (buckets of twice this, halved)")
    parser.add_argument("--updates", type=int, default=None,
                        help="timed updates per repeat and loop (default: one pass over the "
                             "buckets)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates per loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for extraction and both loops (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    return fill_device_defaults(args)


def fill_device_defaults(args):
    """Checks the options and fills the device-dependent defaults."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    utterances, min_seconds, max_seconds, head_size = DEVICE_DEFAULTS[kind]
    args.utterances = utterances if args.utterances is None else args.utterances
    args.min_seconds = min_seconds if args.min_seconds is None else args.min_seconds
    args.max_seconds = max_seconds if args.max_seconds is None else args.max_seconds
    args.head_size = args.head_size or head_size
    for name in ("utterances", "batch_size", "repeats", "updates", "threads"):
        value = getattr(args, name)  # None: the default
        if value is not None and value < 1:
            raise OptionError(f"--{name} must be at least 1, got {value}")
    if args.warmup < 1:
        raise OptionError(f"--warmup must be at least 1 (the first update builds the "
                          f"optimizer state and is compared across loops), got {args.warmup}")
    if not 0 < args.min_seconds <= args.max_seconds:
        raise OptionError(f"--min_seconds {args.min_seconds} and --max_seconds "
                          f"{args.max_seconds}: need 0 < min <= max")
    return args


def pick_encoder(args, work):
    if args.upstream_source:
        return resolve_upstream_source(args.upstream_source, work)
    if args.device.startswith("cuda"):
        return str(save_random_encoder(work / "wav2vec2-large-random", size="large"))
    return resolve_upstream_source(DEFAULT_UPSTREAM, REPO_ROOT / "results")


def random_transcript(rng, seconds):
    """Random words of 1-9 ASR letters, about ``CHARACTERS_PER_SECOND`` per second."""
    words, length = [], 0
    while length < CHARACTERS_PER_SECOND * seconds:
        word = "".join(rng.choice(LETTERS, size=int(rng.integers(1, 10))))
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def write_utterances(folder, count, min_seconds, max_seconds, tokenizer):
    """Seeded noise utterances as wav files, their manifest rows and CTC targets."""
    rng = np.random.default_rng(SEED)
    rows, targets = [], {}
    for i in range(count):
        seconds = float(rng.uniform(min_seconds, max_seconds))
        samples = round(seconds * SAMPLE_RATE)
        data_id = f"utt{i:05d}"
        path = folder / f"{data_id}.wav"
        soundfile.write(path, (rng.standard_normal(samples) * 0.1).astype("float32"),
                        SAMPLE_RATE)
        rows.append({"ID": data_id, "duration": samples / SAMPLE_RATE, "wav": str(path),
                     "start": "", "stop": ""})
        ids = tokenizer.encode(random_transcript(rng, samples / SAMPLE_RATE), data_id=data_id)
        targets[data_id] = torch.tensor(ids, dtype=torch.long)
    write_manifest(folder / "train.csv", rows)
    return rows, targets


def audio_dataset(manifest):
    """The manifest read as the ASR recipe reads it: ``sig`` decoded from the wav."""
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(str(manifest))
    sb.dataio.dataset.add_dynamic_item([dataset], audio_pipeline(0.0))
    sb.dataio.dataset.set_output_keys([dataset], ["id", "sig"])
    return dataset


def training_datasets(audio, targets, features):
    """The two loops' datasets, in the manifest's order: waveforms in memory, or cached
    frames read through the memory map; both with ``tokens``/``token_len``."""
    waveforms = {audio[i]["id"]: audio[i]["sig"] for i in range(len(audio))}
    ids = list(waveforms)

    def rows(**extra):
        return {data_id: {"tokens": targets[data_id], "token_len": len(targets[data_id]),
                          **{key: value[data_id] for key, value in extra.items()}}
                for data_id in ids}

    on_the_fly = sb.dataio.dataset.DynamicItemDataset(rows(sig=waveforms))
    on_the_fly.set_output_keys(["id", "sig", "tokens", "token_len"])
    cached = sb.dataio.dataset.DynamicItemDataset(rows())
    cached.add_dynamic_item(frame_feature_pipeline(features))
    cached.set_output_keys(["id", "feats", "frame_len", "tokens", "token_len"])
    return {"on_the_fly": on_the_fly, "cached": cached}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CTCHeadTrainer:
    """Featurizer, SpecAugment, BLSTM-CTC head and Adam: one update as ``CTCBrain`` makes it.

    Arguments
    ---------
    upstream : SSLUpstream
        Gives the number of hidden states and their size.
    num_outputs : int
        Vocabulary size, the blank included.
    blank_index : int
        The CTC blank.
    head_size : str
        A key of ``HEAD_SIZES``.
    device : torch.device
    """

    def __init__(self, upstream, num_outputs, blank_index, head_size, device):
        torch.manual_seed(SEED)  # both loops start from the same weights
        self.featurizer = WeightedLayerSum(upstream.num_states).to(device)
        self.head = RNNCTCHead(upstream.hidden_size, num_outputs, dropout=HEAD_DROPOUT,
                               **HEAD_SIZES[head_size]).to(device)
        self.specaug = FeatureSpecAugment()  # its defaults are SUPERB's, as in asr.yaml
        self.blank_index = blank_index
        self.params = list(self.featurizer.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=LEARNING_RATE)

    def update(self, hidden, frame_lens, tokens, token_lens):
        """One training step on ``hidden`` ``[L+1, B, T, D]``; returns the loss (a tensor)."""
        features = self.specaug(self.featurizer(hidden), frame_lens)
        log_probs = F.log_softmax(self.head(features, frame_lens).float(), dim=-1)
        loss = F.ctc_loss(log_probs.transpose(0, 1), tokens, frame_lens.long(),
                          token_lens.long(), blank=self.blank_index, reduction="mean",
                          zero_infinity=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def make_steps(datasets, upstream, trainers, device):
    """``mode -> step(indices)``: builds the padded batch, then one update."""

    def on_the_fly(indices):
        dataset = datasets["on_the_fly"]
        batch = sb.dataio.batch.PaddedBatch([dataset[i] for i in indices]).to(device)
        wavs, wav_lens = batch.sig
        hidden, frame_lens = upstream(wavs, wav_lens)
        return trainers["on_the_fly"].update(hidden, frame_lens, batch.tokens.data,
                                             batch.token_len)

    def cached(indices):
        dataset = datasets["cached"]
        batch = sb.dataio.batch.PaddedBatch([dataset[i] for i in indices]).to(device)
        hidden, frame_lens = frame_batch(batch.feats, batch.frame_len)
        return trainers["cached"].update(hidden, frame_lens, batch.tokens.data,
                                         batch.token_len)

    return {"on_the_fly": on_the_fly, "cached": cached}


def run_updates(step, batches, first_position):
    """Runs ``step`` on ``batches``, reseeding before each by its position in the stream."""
    losses = []
    for position, indices in enumerate(batches, start=first_position):
        torch.manual_seed(SEED + position)
        losses.append(step(indices))
    return losses


def time_repeat(mode, step, batches, first_position, repeat, device):
    load_before = os.getloadavg()
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    run_updates(step, batches, first_position)
    synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"mode": mode, "repeat": repeat, "seconds": seconds,
            "updates_per_s": len(batches) / seconds,
            "cpu_seconds_per_update": cpu_seconds / len(batches),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


def spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def break_even(extraction_seconds, on_the_fly_rate, cached_rate):
    """Updates after which the one-off extraction has paid for itself, or ``None``.

    Example
    -------
    >>> break_even(10.0, on_the_fly_rate=0.5, cached_rate=2.0)  # saves 1.5 s per update
    6.666666666666667
    >>> break_even(10.0, on_the_fly_rate=2.0, cached_rate=1.0) is None
    True
    """
    saved = 1 / on_the_fly_rate - 1 / cached_rate
    return extraction_seconds / saved if saved > 0 else None


def batch_figures(rows, buckets, batches):
    """Audio per timed update and the share of padded samples in the timed batches."""
    samples = [round(float(row["duration"]) * SAMPLE_RATE) for row in rows]
    valid = sum(samples[i] for batch in batches for i in batch)
    padded = sum(len(batch) * max(samples[i] for i in batch) for batch in batches)
    return {"buckets": len(buckets), "bucket_sizes": sorted({len(b) for b in buckets}),
            "audio_seconds_per_update": valid / SAMPLE_RATE / len(batches),
            "padding_share": 1 - valid / padded}


def describe_device(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def main(argv):
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()
    tokenizer = CharacterTokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = pick_encoder(args, work)
        upstream = SSLUpstream(source).to(device).eval()
        encoder_hash = upstream.content_hash()
        rows, targets = write_utterances(work, args.utterances, args.min_seconds,
                                         args.max_seconds, tokenizer)
        audio = audio_dataset(work / "train.csv")

        synchronize(device)
        start = time.perf_counter()
        cache = FrameCache(work / "frame_cache", upstream, batch_size=FEATURE_BATCH_SIZE,
                           encoder_hash=encoder_hash)
        features = cache.load(audio, audio_pipeline_tag(0.0), progressbar=False)
        synchronize(device)
        extraction_seconds = time.perf_counter() - start
        print(f"extraction: {extraction_seconds:.1f} s for {len(rows)} utterances",
              file=sys.stderr, flush=True)

        samples = [round(float(row["duration"]) * SAMPLE_RATE) for row in rows]
        buckets = length_buckets(samples, 2 * args.batch_size, HALF_BATCH_ABOVE)
        updates = args.updates or len(buckets)
        sampler = BatchStepSampler(buckets, args.warmup + updates, seed=SEED)
        stream = list(sampler)
        warmup_batches, timed_batches = stream[: args.warmup], stream[args.warmup:]

        datasets = training_datasets(audio, targets, features)
        trainers = {mode: CTCHeadTrainer(upstream, tokenizer.size, tokenizer.blank_index,
                                         args.head_size, device) for mode in datasets}
        steps = make_steps(datasets, upstream, trainers, device)
        # Same batch, weights and draws: the losses differ only by the cached frames'
        # float rounding (extraction batches other utterances together).
        first_loss = {mode: float(run_updates(step, warmup_batches, 0)[0])
                      for mode, step in steps.items()}

        runs = []
        for repeat in range(args.repeats):
            order = ("on_the_fly", "cached") if repeat % 2 == 0 else ("cached", "on_the_fly")
            for mode in order:
                run = time_repeat(mode, steps[mode], timed_batches, args.warmup, repeat, device)
                runs.append(run)
                print(f"repeat {repeat} {mode}: {run['updates_per_s']:.3f} updates/s, load "
                      f"{run['loadavg_before'][0]:.2f} -> {run['loadavg_after'][0]:.2f}",
                      file=sys.stderr, flush=True)
        cache_bytes = features.data_path.stat().st_size

    rates = {mode: [r["updates_per_s"] for r in runs if r["mode"] == mode] for mode in steps}
    medians = {mode: statistics.median(values) for mode, values in rates.items()}
    per_repeat_ratio = [c / o for o, c in zip(rates["on_the_fly"], rates["cached"])]
    updates_for_break_even = break_even(extraction_seconds, medians["on_the_fly"],
                                        medians["cached"])
    head = trainers["cached"]
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python utils/bench_ctc.py " + " ".join(argv),
        "machine": {"device": describe_device(device), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "loadavg_before": load_at_start,
        "loadavg_after": os.getloadavg(),
        "encoder": {"source": str(source), "model_type": upstream.config.model_type,
                    "layers": upstream.config.num_hidden_layers,
                    "num_states": upstream.num_states, "hidden_size": upstream.hidden_size,
                    "parameters": sum(p.numel() for p in upstream.parameters()),
                    "padding_exact": upstream.padding_invariant},
        "head": {"size": args.head_size, **HEAD_SIZES[args.head_size],
                 "dropout": HEAD_DROPOUT, "outputs": tokenizer.size,
                 "parameters": sum(p.numel() for p in head.params)},
        "optimizer": {"name": "Adam", "lr": LEARNING_RATE, "max_grad_norm": MAX_GRAD_NORM},
        "data": {"utterances": len(rows), "seconds_range": [args.min_seconds, args.max_seconds],
                 "audio_seconds": sum(samples) / SAMPLE_RATE,
                 "mean_target_length": statistics.mean(len(t) for t in targets.values()),
                 "batch_size": args.batch_size,
                 **batch_figures(rows, buckets, timed_batches)},
        "warmup_updates": args.warmup,
        "updates_per_repeat": updates,
        "repeats": args.repeats,
        "extraction_seconds": extraction_seconds,
        "cache_bytes": cache_bytes,
        "first_update_loss": first_loss,
        "runs": runs,
        "on_the_fly_updates_per_s": spread(rates["on_the_fly"]),
        "cached_updates_per_s": spread(rates["cached"]),
        "cached_over_on_the_fly": {"of_medians": medians["cached"] / medians["on_the_fly"],
                                   "per_repeat": spread(per_repeat_ratio)},
        "break_even_updates": updates_for_break_even,
        "break_even_passes": (None if updates_for_break_even is None
                              else updates_for_break_even / len(buckets)),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1:])
