#!/usr/bin/env python3
"""SUPERB keyword spotting (Speech Commands v0.01, 12 classes) on a frozen SSL encoder.

A weighted sum of the encoder's layers feeds SUPERB's utterance-level head, trained
on a share of the labels (``--fraction``) for a fixed number of updates; the test
accuracy is taken at the best dev checkpoint and written, with the updates needed to
reach it, to ``<output_folder>/results.json``.

To run (the embedded default: mini corpus, embedded encoder, a few CPU minutes)::

    python recipes/KS/train.py hparams/ks.yaml --fraction 0.01

Real data and encoder: see recipes/KS/README.md.

Authors: rewire-speech contributors
"""

import sys

from speech_commands_prepare import TRAIN_FOLDER, prepare_speech_commands
from speechbrain.utils.distributed import run_on_main

from rewire_lobes.downstream.utterance import UTTERANCE_TASK
from rewire_lobes.runs.cli import load_recipe_hparams, start_experiment, user_errors
from rewire_lobes.runs.defaults import ensure_default_data


def prepare(hparams):
    """The prepare step: the manifests of the corpus (shared by the single- and
    multi-task recipes); sets ``hparams["manifest_folder"]``."""
    run_on_main(ensure_default_data, args=[hparams["data_folder"], TRAIN_FOLDER, "speech_commands"])
    hparams["manifest_folder"] = run_on_main(
        prepare_speech_commands,
        kwargs={
            "data_folder": hparams["data_folder"],
            "manifest_root": hparams["manifest_root"],
            "keywords": hparams["keywords"],
            "missing_test_set": hparams["missing_test_set"],
            "skip_prep": hparams["skip_prep"],
        },
    )


def main(argv):
    # Resolves the encoder, the profile and the strategy; claims the run folder.
    hparams, hparams_file, run_opts, overrides = load_recipe_hparams(argv)
    start_experiment(hparams, hparams_file, overrides)
    prepare(hparams)
    UTTERANCE_TASK.run(hparams, run_opts)


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1:])
