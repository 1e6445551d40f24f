#!/usr/bin/env python3
"""SUPERB ASR (LibriSpeech, character CTC) on a frozen SSL encoder.

A weighted sum of the encoder's layers feeds SUPERB's BLSTM-CTC head, trained on a share
of train-clean-100 (``--fraction``) for a fixed number of updates; the dev-clean WER picks
the best checkpoint, at which dev-clean and test-clean are decoded (greedy CTC). Scores,
the updates needed to reach them, and s3prl-format hypothesis/reference files are
written to the run folder.

To run (the embedded default: mini corpus, embedded encoder, a few CPU minutes)::

    python recipes/ASR/train.py hparams/asr.yaml --fraction 0.01

Real data and encoder: see recipes/ASR/README.md.

Authors: rewire-speech contributors
"""

import sys

from librispeech_prepare import prepare_librispeech_asr
from speechbrain.utils.distributed import run_on_main

from rewire_lobes.downstream.ctc import CTC_TASK, exclusion_identity
from rewire_lobes.runs.cli import load_recipe_hparams, start_experiment, user_errors


def prepare(hparams):
    """The prepare step: the manifests of the corpus (shared by the single- and
    multi-task recipes); sets ``hparams["manifest_folder"]``."""
    hparams["manifest_folder"] = run_on_main(
        prepare_librispeech_asr,
        kwargs={
            "data_folder": hparams["data_folder"],
            "manifest_root": hparams["manifest_root"],
            "train_splits": hparams["train_splits"],
            "dev_splits": hparams["dev_splits"],
            "test_splits": hparams["test_splits"],
            "skip_prep": hparams["skip_prep"],
        },
    )


def main(argv):
    # Resolves the encoder, the profile and the strategy; claims the run folder.
    hparams, hparams_file, run_opts, overrides = load_recipe_hparams(
        argv, identity_extras=exclusion_identity)
    start_experiment(hparams, hparams_file, overrides)
    prepare(hparams)
    CTC_TASK.run(hparams, run_opts)


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1:])
