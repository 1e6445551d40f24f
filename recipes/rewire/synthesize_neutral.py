#!/usr/bin/env python3
"""Synthesises the neutral (flat TTS) version of every utterance of a rewiring manifest.

The rewiring recipe calls :func:`ensure_neutral_audio` itself when audio is missing; run
this script to do it ahead of time (e.g. on a CPU box before a GPU job):

    python recipes/rewire/synthesize_neutral.py \
        --manifest results/rewire/<encoder>/neutral/seed_1986/train.csv \
        --neutral_folder results/rewire/neutral --backend festival --num_workers 8

Files are cached by (text, backend, voice), so a rerun only fills the gaps. An utterance
that fails to synthesise is logged, counted and left out of training.

Authors
 * rewire-speech contributors
"""

import argparse
import logging
import sys

from rewire_lobes.io_utils import write_json_atomic
from rewire_lobes.rewiring.neutral import BACKENDS, manifest_texts, resolve_voice, synthesize_manifest

logger = logging.getLogger(__name__)


def ensure_neutral_audio(manifest, neutral_folder, backend="festival", voice=None,
                         num_workers=2, report_path=None):
    """Fills ``neutral_folder`` for ``manifest``; returns the number of utterances left out.

    ``report_path`` (optional) receives a JSON summary with the failed texts.
    """
    voice = resolve_voice(backend, voice)
    report, available = synthesize_manifest(manifest, neutral_folder, backend, voice, num_workers)
    if report_path is not None:
        write_json_atomic(report_path, {
            "backend": backend,
            "voice": voice,
            "texts": report.requested,
            "cached": report.cached,
            "synthesized": report.synthesized,
            "failed": report.failed,
        })
    left_out = len(manifest_texts(manifest)) - len(available)
    if left_out:
        logger.warning("%d utterances have no neutral audio and are left out", left_out)
    return left_out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="CSV with ID and wrd columns")
    parser.add_argument("--neutral_folder", required=True, help="cache folder for the WAVs")
    parser.add_argument("--backend", choices=BACKENDS, default="festival")
    parser.add_argument("--voice", default=None, help="default: kal_diphone / en-us")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--report", default=None, help="write a JSON summary here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    left_out = ensure_neutral_audio(args.manifest, args.neutral_folder, args.backend, args.voice,
                                    args.num_workers, args.report)
    return 0 if left_out == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
