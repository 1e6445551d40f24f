#!/usr/bin/env python3
"""SUPERB speaker diarization (Libri2Mix, two speakers) on a frozen SSL encoder.

A weighted sum of the encoder's layers feeds SUPERB's LSTM head, which gives each 20 ms
frame one logit per speaker; it is trained with the permutation-invariant BCE on a share
of the training recordings (``--fraction``) for a fixed number of updates. The dev frame
DER picks the best checkpoint; there the decision threshold and median filter are chosen
on dev and applied to test. The DERs (pyannote.metrics, collar 0, overlap scored), the
updates needed to reach them, and the dev and test RTTMs are written to the run folder.

To run (the embedded default: mini corpus, embedded encoder, a few CPU minutes)::

    python recipes/SD/train.py hparams/sd.yaml --fraction 0.01

Real data and encoder: see recipes/SD/README.md.

Authors: rewire-speech contributors
"""

import sys

from diarization_prepare import prepare_diarization
from speechbrain.utils.distributed import run_on_main

from rewire_lobes.downstream.diarization import DIARIZATION_TASK
from rewire_lobes.runs.cli import load_recipe_hparams, start_experiment, user_errors


def prepare(hparams):
    """The prepare step: the manifests of the corpus (shared by the single- and
    multi-task recipes); sets ``hparams["manifest_folder"]``."""
    hparams["manifest_folder"] = run_on_main(
        prepare_diarization,
        kwargs={
            "data_folder": hparams["data_folder"],
            "manifest_root": hparams["manifest_root"],
            "num_speakers": hparams["num_speakers"],
            "skip_prep": hparams["skip_prep"],
        },
    )


def main(argv):
    # Resolves the encoder, the profile and the strategy; claims the run folder.
    hparams, hparams_file, run_opts, overrides = load_recipe_hparams(argv)
    start_experiment(hparams, hparams_file, overrides)
    prepare(hparams)
    DIARIZATION_TASK.run(hparams, run_opts)


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1:])
