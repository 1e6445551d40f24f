#!/usr/bin/env python3
"""QbE matching speed: query-document pairs per second of our batched DTW vs s3prl's path.

Measured on CPU, for three feature sets:

* ``embedded``: the embedded encoder's frames (one hidden state) of the mini QUESST 2014
  dev queries against its documents (extracted here, 16 kHz, gain -3 dB);
* ``768-dim`` and ``1024-dim``: random frames shaped like wav2vec2-base and -large
  features, queries of 50-100 frames (1-2 s) and documents of 300-600 frames (6-12 s).

For each, ``--repeats`` times and for each torch thread count in ``--threads``:

* ``ours``: the recipe's matching of one layer and split (``match_split``: feature
  z-score, distances, per-row min-max, DTW batched over documents, per-query z-norm);
* ``ours distances`` and ``ours dtw``: the same two parts timed alone (distances with
  min-max; the DTW recursion on ready distance matrices);
* ``dtw-python``: s3prl's DTW call on the same distance matrices, pair by pair;
* ``s3prl path``: s3prl's per-pair steps (scipy ``cdist`` cosine, ``exp(d) - 1``, min-max,
  dtw-python) on a sample of ``--reference_pairs`` pairs.

Each row gives the median pairs per second and the spread (min-max over repeats), and the
load average (``os.getloadavg()``) before and after, since other jobs may share the CPU.
From the 1024- and 768-dim rates, the time per layer and split for 1000 documents x 100
queries, and for an upper bound of QUESST 2014 (all 12,492 documents; 560 dev and 555
eval queries) per layer, both splits.

    python utils/bench_qbe.py                     # about 2-4 minutes on 2 cores
    python utils/bench_qbe.py --repeats 5 --output bench_qbe.json
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from rewire_lobes.downstream.dtw import (
    frame_distances,
    minmax_rows,
    subsequence_dtw,
)
from rewire_lobes.downstream.qbe import (
    InMemoryFrames,
    MatchSettings,
    document_batches,
    match_split,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
# The QUESST 2014 overview's counts (all languages): an upper bound for the English subset.
QUESST_DOCUMENTS = 12492
QUESST_QUERIES = {"dev": 560, "eval": 555}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream_source", default=str(REPO_ROOT / "assets" / "encoder"))
    parser.add_argument("--data_folder",
                        default=str(REPO_ROOT / "data" / "mini" / "quesst14Database"))
    parser.add_argument("--layer", type=int, default=2, help="hidden state of the embedded run")
    parser.add_argument("--queries", type=int, default=30, help="synthetic queries per set")
    parser.add_argument("--documents", type=int, default=100, help="synthetic documents per set")
    parser.add_argument("--reference_pairs", type=int, default=20,
                        help="pairs timed through s3prl's path (it is slow)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--output", default=None, help="also write the figures as JSON here")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------- feature sets
def embedded_features(upstream_source, data_folder, layer):
    """``(queries, documents)`` of the mini corpus' English dev queries and documents."""
    from rewire_lobes.data.audio import load_audio
    from rewire_lobes.data.quesst14 import DOCUMENT_KEY, QUERY_KEYS, read_language_key
    from rewire_lobes.runs.defaults import ensure_default_data
    from rewire_lobes.upstream.encoder import SSLUpstream

    ensure_default_data(data_folder, f"scoring/{DOCUMENT_KEY}", "quesst14")
    root = Path(data_folder)
    upstream = SSLUpstream(upstream_source)
    gain = 10.0 ** (-3.0 / 20.0)

    def encode(key):
        items = {}
        for entry in read_language_key(root / "scoring" / key, root):
            if entry.language != "nnenglish":
                continue
            wav = load_audio(entry.path) * gain
            with torch.no_grad():
                hidden, _ = upstream(wav.unsqueeze(0))
            items[entry.item_id] = hidden[layer : layer + 1, 0].transpose(0, 1).contiguous()
        return items

    return encode(QUERY_KEYS["dev"]), encode(DOCUMENT_KEY), upstream.hidden_size


def synthetic_features(rng, count, low, high, dim, prefix):
    return {f"{prefix}{i}": torch.from_numpy(
        rng.standard_normal((int(rng.integers(low, high + 1)), 1, dim)).astype(np.float32))
        for i in range(count)}


# ---------------------------------------------------------------------- timings
def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def ours(queries, documents):
    settings = MatchSettings()
    return timed(lambda: match_split(InMemoryFrames(queries), list(queries),
                                     InMemoryFrames(documents), list(documents), 0, settings))[0]


def ours_parts(queries, documents):
    """Seconds of the distances (with min-max) and of the DTW, for every pair."""
    docs = sorted((d[:, 0] for d in documents.values()), key=len)
    rows = max(len(q) for q in queries.values())
    batches = document_batches(docs, rows, MatchSettings())  # as match_split batches
    distance_seconds = dtw_seconds = 0.0
    with torch.no_grad():
        for query in queries.values():
            for batch in batches:
                seconds, distances = timed(lambda: minmax_rows(
                    frame_distances(query[:, 0], batch), batch.lengths))
                distance_seconds += seconds
                dtw_seconds += timed(lambda: subsequence_dtw(distances))[0]
    return distance_seconds, dtw_seconds


def reference_pairs(queries, documents, count, rng):
    names = [(q, d) for q in queries for d in documents]
    picks = rng.choice(len(names), size=min(count, len(names)), replace=False)
    return [(queries[names[i][0]][:, 0].double().numpy(),
             documents[names[i][1]][:, 0].double().numpy()) for i in picks]


def s3prl_path(pairs, dtw_only):
    """Seconds of s3prl's per-pair steps (or of its dtw-python call alone)."""
    from dtw import dtw
    from scipy.spatial.distance import cdist

    total = 0.0
    for query, doc in pairs:
        start = time.perf_counter()
        dist = np.exp(cdist(query, doc, "cosine")) - 1
        low, high = dist.min(axis=1, keepdims=True), dist.max(axis=1, keepdims=True)
        dist = (dist - low) / np.maximum(high - low, 1e-9)
        if dtw_only:
            start = time.perf_counter()
        dtw(x=dist, step_pattern="asymmetric", open_begin=True, open_end=True,
            distance_only=False, keep_internals=False)
        total += time.perf_counter() - start
    return total


def summary(rates):
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "repeats": rates}


def bench_set(name, queries, documents, args, rng):
    pairs = len(queries) * len(documents)
    sample = reference_pairs(queries, documents, args.reference_pairs, rng)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        ours(dict(list(queries.items())[:1]), documents)  # warm-up
        measured = {"ours": [], "ours distances": [], "ours dtw": []}
        loads = []
        for _ in range(args.repeats):
            before = os.getloadavg()[0]
            measured["ours"].append(pairs / ours(queries, documents))
            distance_seconds, dtw_seconds = ours_parts(queries, documents)
            measured["ours distances"].append(pairs / distance_seconds)
            measured["ours dtw"].append(pairs / dtw_seconds)
            loads.append((before, os.getloadavg()[0]))
        for method, rates in measured.items():
            rows.append({"set": name, "method": method, "threads": threads, "pairs": pairs,
                         **summary(rates), "load": loads})
    for method, dtw_only in (("dtw-python", True), ("s3prl path", False)):
        rates, loads = [], []
        for _ in range(args.repeats):
            before = os.getloadavg()[0]
            rates.append(len(sample) / s3prl_path(sample, dtw_only))
            loads.append((before, os.getloadavg()[0]))
        rows.append({"set": name, "method": method, "threads": 1, "pairs": len(sample),
                     **summary(rates), "load": loads})
    return rows


def projections(rows):
    """Hours per layer from the median rate of ``ours`` on each synthetic set."""
    out = {}
    for row in rows:
        if row["method"] != "ours" or row["set"].startswith("embedded"):
            continue
        rate = row["median"]
        out[f"{row['set']}, {row['threads']} thread(s)"] = {
            "seconds per layer and split, 1000 documents x 100 queries": 1000 * 100 / rate,
            "hours per layer, both splits, 12492 documents x 1115 queries (upper bound)":
                QUESST_DOCUMENTS * sum(QUESST_QUERIES.values()) / rate / 3600,
        }
    return out


def versions():
    import dtw as dtw_python
    import scipy

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__,
            "dtw-python": getattr(dtw_python, "__version__", "?")}


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    queries, documents, dim = embedded_features(args.upstream_source, args.data_folder,
                                                args.layer)
    sets = {f"embedded ({dim}-dim, layer {args.layer})": (queries, documents)}
    for dim in (768, 1024):
        sets[f"{dim}-dim"] = (
            synthetic_features(rng, args.queries, 50, 100, dim, "q"),
            synthetic_features(rng, args.documents, 300, 600, dim, "d"))
    rows = []
    for name, (queries, documents) in sets.items():
        q_frames = [len(v) for v in queries.values()]
        d_frames = [len(v) for v in documents.values()]
        print(f"{name}: {len(queries)} queries ({min(q_frames)}-{max(q_frames)} frames) x "
              f"{len(documents)} documents ({min(d_frames)}-{max(d_frames)} frames)", flush=True)
        rows += bench_set(name, queries, documents, args, rng)
    print("\n| set | method | threads | pairs/s (median) | spread (min-max) | load before/after |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        load = f"{row['load'][0][0]:.2f} / {row['load'][-1][1]:.2f}"
        print(f"| {row['set']} | {row['method']} | {row['threads']} | {row['median']:.1f} | "
              f"{row['min']:.1f}-{row['max']:.1f} | {load} |")
    projection = projections(rows)
    print()
    for name, figures in projection.items():
        for what, value in figures.items():
            print(f"{name}: {what}: {value:.3g}")
    print(f"load average at end: {os.getloadavg()}")
    print(json.dumps(versions()))
    if args.output:
        Path(args.output).write_text(json.dumps(
            {"rows": rows, "projections": projection, "versions": versions()}, indent=2))


if __name__ == "__main__":
    main()
