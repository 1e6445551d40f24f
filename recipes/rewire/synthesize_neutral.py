#!/usr/bin/env python3
"""Synthesises the neutral (flat TTS) version of every utterance of a rewiring manifest.

The rewiring recipe calls :func:`ensure_neutral_audio` itself when audio is missing; run
this script to do it ahead of time (e.g. on a CPU box before a GPU job):

    python recipes/rewire/synthesize_neutral.py \
        --manifest results/rewire/<encoder>/neutral/seed_1986/train.csv \
        --neutral_folder results/rewire/neutral --backend festival --num_workers 8

Files are cached by (text, backend, voice), so a rerun only fills the gaps (and retries
the texts that failed). An utterance that fails to synthesise is logged, counted and left
out of training; more than ``max_failed_fraction`` of them (default 1 %) stops the run
with the failing texts listed: the TTS setup is then broken, not a few texts odd.

Authors
 * rewire-speech contributors
"""

import argparse
import logging
import sys

from rewire_lobes.errors import UserError
from rewire_lobes.io_utils import write_json_atomic
from rewire_lobes.rewiring.neutral import (
    BACKENDS,
    TooManySynthesisFailures,
    check_failures,
    failure_summary,
    manifest_texts,
    resolve_voice,
    synthesize_manifest,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_FAILED_FRACTION = 0.01


def ensure_neutral_audio(manifest, neutral_folder, backend="festival", voice=None,
                         num_workers=2, report_path=None,
                         max_failed_fraction=DEFAULT_MAX_FAILED_FRACTION, worker_class=None):
    """Fills ``neutral_folder`` for ``manifest``; returns the failure summary.

    The summary is ``{"utterances": left out, "share": of the manifest, "texts": failed
    texts}``. ``report_path`` (optional) receives it as JSON with the failed texts and
    their reasons. Raises :class:`TooManySynthesisFailures` (after writing the report)
    when the share is over ``max_failed_fraction`` (``None``: never). ``worker_class``
    replaces the backend's worker (tests).
    """
    voice = resolve_voice(backend, voice)
    report, available = synthesize_manifest(manifest, neutral_folder, backend, voice,
                                            num_workers, worker_class=worker_class)
    summary = failure_summary(manifest_texts(manifest), available, report)
    if report_path is not None:
        write_json_atomic(report_path, {
            "backend": backend,
            "voice": voice,
            "texts": report.requested,
            "cached": report.cached,
            "synthesized": report.synthesized,
            "left_out": summary,
            "max_failed_fraction": max_failed_fraction,
            "failed": report.failed,
        })
    check_failures(summary, report.failed, max_failed_fraction, report_path)
    if summary["utterances"]:
        logger.warning("%d utterances (%.2f%%) have no neutral audio and are left out",
                       summary["utterances"], 100 * summary["share"])
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="CSV with ID and wrd columns")
    parser.add_argument("--neutral_folder", required=True, help="cache folder for the WAVs")
    parser.add_argument("--backend", choices=BACKENDS, default="festival")
    parser.add_argument("--voice", default=None, help="default: kal_diphone / en-us")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--report", default=None, help="write a JSON summary here")
    parser.add_argument("--max_failed_fraction", type=float, default=DEFAULT_MAX_FAILED_FRACTION,
                        help="fail when a larger share of the utterances gets no audio")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        ensure_neutral_audio(args.manifest, args.neutral_folder, args.backend, args.voice,
                             args.num_workers, args.report, args.max_failed_fraction)
    except (TooManySynthesisFailures, UserError) as err:  # UserError: BackendUnavailable ...
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
