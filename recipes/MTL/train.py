#!/usr/bin/env python3
"""Multi-task fine-tuning of an SSL encoder on several SUPERB tasks (SSL + MTL).

One trainable encoder, every task's own featurizer and SUPERB head (from the task's
recipe), one batch of every task per update; each task is tested at its own best dev
checkpoint, and the encoder chosen by the ``selection`` rule is exported to
``<output_folder>/upstream/`` with ``mtl.json``, so that every task recipe probes it as
one more encoder (``--upstream_source <that folder>``).

To run (the embedded default: mini corpus, embedded encoder, minutes on a CPU)::

    python recipes/MTL/train.py hparams/mtl.yaml --tasks "[KS, IC]"

The seed paper's scenarios (all tasks, leave-one-out, task transfer): recipes/MTL/README.md.

Authors: rewire-speech contributors
"""

import sys

from rewire_lobes.multitask.brain import MultiTaskBrain
from rewire_lobes.multitask.tasks import add_task_modules, derived_overrides, load_task, tasks_identity
from rewire_lobes.runs.cli import load_recipe_hparams, start_experiment, user_errors


def main(argv):
    # Resolves the encoder, the profile, the strategy and the task set; claims the run folder.
    hparams, hparams_file, run_opts, overrides = load_recipe_hparams(
        argv, identity_extras=tasks_identity, derived_overrides=derived_overrides)
    start_experiment(hparams, hparams_file, overrides)

    # Each task as its own recipe prepares it: manifests, splits, targets, head.
    tasks = {name: load_task(name, hparams, run_opts, hparams["upstream"])
             for name in hparams["tasks"]}
    add_task_modules(hparams, tasks)

    brain = MultiTaskBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        tasks=tasks,
    )
    brain.fit(
        brain.hparams.epoch_counter,
        {name: task.datasets["train"] for name, task in tasks.items()},
        {name: task.datasets["dev"] for name, task in tasks.items()},
    )
    brain.export()
    brain.test_tasks()


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1:])
