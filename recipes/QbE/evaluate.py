#!/usr/bin/env python3
"""SUPERB query-by-example (QUESST 2014, English) on a frozen SSL encoder: DTW, MTWV.

Zero-shot: nothing is trained. The encoder runs once over the documents and both query
sets (frames of every hidden state cached on disk); then, for every hidden state, each
query is matched against every document by subsequence DTW as s3prl does, and the
z-normalised scores are written as the stdlist XML that the MediaEval scorer reads and
scored here (MTWV). The state with the best dev MTWV is chosen; its eval MTWV is
reported.

To run (the embedded default: mini corpus, embedded encoder, well under a minute)::

    python recipes/QbE/evaluate.py hparams/qbe.yaml

Real data and encoder: see recipes/QbE/README.md.

Outputs, in ``<output_root>/QbE/<encoder_id>/<strategy>/``:

* ``layers/<n>/{dev,eval}/benchmark.stdlist.xml`` and ``match.json`` for every state;
* ``dev/benchmark.stdlist.xml``, ``eval/benchmark.stdlist.xml``: the chosen state's;
* ``results.json``: ``test`` = the chosen state's eval MTWV, ``layers`` = every state's
  dev and eval MTWV (both trial scopes), skipped queries, item counts, settings.

A killed run resumes: a state's split whose ``match.json`` (written after its stdlist)
is there is read back, not recomputed, and the rerun writes the same results.json
(``rewire_lobes.downstream.qbe_sweep``).

Authors: rewire-speech contributors
"""

import sys
from pathlib import Path

from quesst14_prepare import prepare_quesst14
from speechbrain.utils.distributed import infer_device, run_on_main

from rewire_lobes.downstream.qbe_sweep import match_settings, sweep_layers
from rewire_lobes.runs.cli import load_recipe_hparams, start_experiment, user_errors


def main(argv):
    # Resolves the encoder, the profile and the strategy; claims the run folder.
    hparams, hparams_file, run_opts, overrides = load_recipe_hparams(argv)
    start_experiment(hparams, hparams_file, overrides)
    device = run_opts["device"] or infer_device()
    settings, scope = match_settings(hparams, device)

    manifest_folder = Path(run_on_main(
        prepare_quesst14,
        kwargs={
            "data_folder": hparams["data_folder"],
            "manifest_root": hparams["manifest_root"],
            "language": hparams["language"],
            "skip_prep": hparams["skip_prep"],
        },
    ))
    sweep_layers(hparams, manifest_folder, settings, scope, device,
                 progressbar=not run_opts["noprogressbar"])


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1:])
