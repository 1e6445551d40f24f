#!/usr/bin/env python3
"""Frame-level feature cache: extraction speed and disk per hour of audio.

Measured: the frozen encoder (``--upstream_source``, default the embedded
``assets/encoder``) extracts the per-layer frames of LibriSpeech utterances into a fresh
``FrameCache`` ``--repeats`` times; each repeat records its wall time, the seconds of
audio per wall second, the real-time factor (wall / audio), and the load average
(``os.getloadavg()``) before and after, since other jobs may share the CPU. Then one
cache-hit load, one full read of every item through the memory map, and the bytes on
disk per hour of audio (the measured file and the manifest-based estimate).

Computed (no model run): disk per hour of 50 frames/s for wav2vec2-large (25 states x
1024 dims) and wav2vec2-base (13 x 768), fp32 and fp16, and for the encoder measured.

    python utils/bench_frame_cache.py                        # mini corpus, 3 repeats
    python utils/bench_frame_cache.py --max_utterances 40 --output bench.json
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import soundfile
import speechbrain as sb
import torch

from rewire_lobes.data.audio import load_audio
from rewire_lobes.data.manifests import write_manifest
from rewire_lobes.downstream.frame_cache import FrameCache, bytes_per_hour
from rewire_lobes.upstream.encoder import SSLUpstream

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_ENCODERS = {  # name: (hidden states L+1, dims)
    "wav2vec2-large": (25, 1024),
    "wav2vec2-base": (13, 768),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream_source", default=str(REPO_ROOT / "assets" / "encoder"))
    parser.add_argument("--data_folder", default=str(REPO_ROOT / "data" / "mini" / "LibriSpeech"),
                        help="LibriSpeech root (generate the mini one with "
                             "`python utils/make_mini_corpus.py --corpora librispeech`)")
    parser.add_argument("--split", default="train-clean-100")
    parser.add_argument("--audio_folder", default=None,
                        help="instead of LibriSpeech: every .wav/.flac under this folder "
                             "(e.g. ../shared/data/ljspeech_sample), resampled to 16 kHz")
    parser.add_argument("--max_utterances", type=int, default=60,
                        help="first N utterances by id (0: all); 60 keeps 3 repeats under ~3 min")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="also write the figures as JSON here")
    return parser.parse_args(argv)


@sb.utils.data_pipeline.takes("wav")
@sb.utils.data_pipeline.provides("sig")
def read_sig(wav):
    return load_audio(wav)


def audio_dataset(files, max_utterances, work):
    """A manifest of ``files`` (sorted by name) and its DynamicItemDataset."""
    files = sorted(files, key=lambda f: f.stem)
    if max_utterances:
        files = files[:max_utterances]
    rows = [{"ID": f.stem, "duration": f"{soundfile.info(str(f)).duration:.4f}",
             "wav": str(f.resolve())} for f in files]
    write_manifest(work / "train.csv", rows)
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(str(work / "train.csv"))
    sb.dataio.dataset.add_dynamic_item([dataset], read_sig)
    sb.dataio.dataset.set_output_keys([dataset], ["id", "sig"])
    return dataset


def spread(values):
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}


def computed_disk_per_hour(upstream):
    rows = dict(REFERENCE_ENCODERS)
    rows[f"measured encoder ({Path(upstream.source).name})"] = (upstream.num_states,
                                                                 upstream.hidden_size)
    return [{"encoder": name, "states": states, "dims": dims, "dtype": dtype,
             "gb_per_hour": bytes_per_hour(states, dims, dtype) / 1e9}
            for name, (states, dims) in rows.items() for dtype in ("float32", "float16")]


def main(argv):
    args = parse_args(argv)
    device = torch.device(args.device)
    upstream = SSLUpstream(args.upstream_source).to(device)
    encoder_hash = upstream.content_hash()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.audio_folder:
            files = [f for f in Path(args.audio_folder).rglob("*")
                     if f.suffix.lower() in (".wav", ".flac")]
        else:
            files = list((Path(args.data_folder) / args.split).glob("*/*/*.flac"))
        if not files:
            raise SystemExit(f"{args.audio_folder or Path(args.data_folder) / args.split}: no "
                             "audio files; generate the mini corpus with "
                             "`python utils/make_mini_corpus.py --corpora librispeech`")
        dataset = audio_dataset(files, args.max_utterances, work)
        with dataset.output_keys_as(["sig"]):
            audio_seconds = sum(len(dataset[i]["sig"]) for i in range(len(dataset))) / 16000
        repeats = []
        for repeat in range(args.repeats):
            cache = FrameCache(work / f"cache{repeat}", upstream, dtype=args.dtype,
                               batch_size=args.batch_size, encoder_hash=encoder_hash)
            estimate = cache.required_bytes(dataset)
            load_before = os.getloadavg()
            start = time.perf_counter()
            features = cache.load(dataset, progressbar=False)
            seconds = time.perf_counter() - start
            load_after = os.getloadavg()
            stored = features.data_path.stat().st_size
            repeats.append({
                "seconds": seconds, "audio_s_per_s": audio_seconds / seconds,
                "rtf": seconds / audio_seconds, "loadavg_before": load_before,
                "loadavg_after": load_after, "bytes": stored, "estimated_bytes": estimate,
                "padding_share": features.padding_share,
            })
            print(f"repeat {repeat}: {seconds:.1f} s, {audio_seconds / seconds:.2f} audio s/s, "
                  f"load {load_before[0]:.2f} -> {load_after[0]:.2f}", flush=True)

        start = time.perf_counter()
        hit = cache.load(dataset, progressbar=False)
        hit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for data_id in hit.ids:
            hit[data_id]
        read_seconds = time.perf_counter() - start

    hours = audio_seconds / 3600
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": str(device)},
        "encoder": {"source": args.upstream_source, "num_states": upstream.num_states,
                    "hidden_size": upstream.hidden_size,
                    "parameters": sum(p.numel() for p in upstream.parameters()),
                    "padding_exact": upstream.padding_invariant},
        "data": {"split": args.audio_folder or args.split, "utterances": len(dataset),
                 "audio_seconds": audio_seconds},
        "dtype": args.dtype,
        "repeats": repeats,
        "audio_s_per_s": spread([r["audio_s_per_s"] for r in repeats]),
        "rtf": spread([r["rtf"] for r in repeats]),
        "batch_size": args.batch_size,
        "padding_share": repeats[-1]["padding_share"],
        "measured_gb_per_hour": repeats[-1]["bytes"] / 1e9 / hours,
        "estimated_over_stored": repeats[-1]["estimated_bytes"] / repeats[-1]["bytes"],
        "cache_hit_load_seconds": hit_seconds,
        "read_all_items_audio_s_per_s": audio_seconds / read_seconds,
        "computed_gb_per_hour": computed_disk_per_hour(upstream),
    }
    print(json.dumps(figures, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
