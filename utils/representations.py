#!/usr/bin/env python3
"""An encoder's utterance representations of a task's training set: isotropy, class
separation and a t-SNE map (the rewiring paper's §3.3, Fig. 2/3).

    python utils/representations.py --upstream_source assets/encoder --task KS \\
        --manifest results/manifests/KS/<hash>/train.csv

Writes ``<output_root>/analysis/<task>/<encoder_id>/representations.json`` (see
``rewire_lobes.analysis.representations``); a rerun with the same encoder, manifest and
settings reuses it. KS and IC take their label columns and gain from the task unless
given; ``--label_columns`` with no value analyses without labels.
"""

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rewire_lobes.analysis.representations import analyse_representations  # noqa: E402
from rewire_lobes.runs.cli import user_errors  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream_source", required=True, help="encoder directory")
    parser.add_argument("--manifest", required=True, help="the task's prepared train.csv")
    parser.add_argument("--task", required=True, help="KS, IC, ASR, SF or SD")
    parser.add_argument("--label_columns", nargs="*", default=None,
                        help="columns whose joined values are the class (default: the task's)")
    parser.add_argument("--gain_db", type=float, default=None,
                        help="gain when reading the audio (default: KS -3, others 0)")
    parser.add_argument("--max_items", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1986)
    parser.add_argument("--layer", default="mean", help="mean, last or a hidden-state index")
    parser.add_argument("--output_root", default="results")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=16, help="utterances per batch")
    return parser.parse_args(argv)


def summary(analysis):
    """The lines printed: where the record is, then its numbers."""
    record = analysis.record
    lines = [f"{'reused' if analysis.reused else 'wrote'} {analysis.path}",
             f"items {record['items']}  layer {record['layer']}  "
             f"log10_isotropy {record['log10_isotropy']:.6f}"]
    separation = record["class_separation"]
    if separation:
        silhouette = separation["silhouette"]
        lines.append(f"classes {separation['classes']}  knn_accuracy(k={separation['knn_k']}) "
                     f"{separation['knn_accuracy']:.4f}  chance {separation['chance']:.4f}  "
                     f"silhouette {'n/a' if silhouette is None else f'{silhouette:.4f}'}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with user_errors():
        analysis = analyse_representations(
            args.upstream_source, args.manifest, args.task, label_columns=args.label_columns,
            gain_db=args.gain_db, max_items=args.max_items, seed=args.seed, layer=args.layer,
            output_root=args.output_root, device=args.device, batch_size=args.batch_size)
    print(summary(analysis))


if __name__ == "__main__":
    main()
