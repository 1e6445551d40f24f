#!/usr/bin/env python3
"""SUPERB intent classification (Fluent Speech Commands) on a frozen SSL encoder.

A weighted sum of the encoder's layers feeds SUPERB's utterance-level head with three
softmax groups (action, object, location), trained on a share of the labels
(``--fraction``) for a fixed number of updates; the test accuracy (all three slots
right) is taken at the best dev checkpoint and written, with the updates needed to
reach it, to ``<output_folder>/results.json``.

To run (the embedded default: mini corpus, embedded encoder, a few CPU minutes)::

    python recipes/IC/train.py hparams/ic.yaml --fraction 0.01

Real data and encoder: see recipes/IC/README.md.

Authors: rewire-speech contributors
"""

import sys

from fluent_commands_prepare import DATASET_FOLDER, prepare_fluent_commands
from speechbrain.utils.distributed import run_on_main

from rewire_lobes.downstream.utterance import UTTERANCE_TASK
from rewire_lobes.runs.cli import load_recipe_hparams, start_experiment, user_errors
from rewire_lobes.runs.defaults import ensure_default_data


def prepare(hparams):
    """The prepare step: the manifests of the corpus (shared by the single- and
    multi-task recipes); sets ``hparams["manifest_folder"]``."""
    run_on_main(ensure_default_data, args=[hparams["data_folder"], DATASET_FOLDER, "fluent_speech_commands"])
    hparams["manifest_folder"] = run_on_main(
        prepare_fluent_commands,
        kwargs={
            "data_folder": hparams["data_folder"],
            "manifest_root": hparams["manifest_root"],
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
