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

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from rewire_lobes.defaults import ensure_default_data
from rewire_lobes.runs import run_overrides
from rewire_lobes.utterance import UtteranceBrain, dataio_prepare, describe_datasets

if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    # Resolves the embedded encoder and names the run folder after the encoder.
    overrides = run_overrides(hparams_file, overrides)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    from speech_commands_prepare import TRAIN_FOLDER, prepare_speech_commands  # noqa: E402

    run_on_main(ensure_default_data, args=[hparams["data_folder"], TRAIN_FOLDER, "speech_commands"])
    run_on_main(
        prepare_speech_commands,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["manifest_folder"],
            "keywords": hparams["keywords"],
            "silence_crops": hparams["silence_crops"],
            "missing_test_set": hparams["missing_test_set"],
            "skip_prep": hparams["skip_prep"],
        },
    )
    datasets = dataio_prepare(hparams)

    brain = UtteranceBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.run_info.update(describe_datasets(hparams, datasets))
    brain.use_cached_features(datasets)
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["dev"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    brain.evaluate(
        datasets["test"],
        max_key=hparams["dev_metric"],
        test_loader_kwargs=hparams["test_dataloader_opts"],
    )
