"""Each task of a multi-task run, loaded from its own recipe.

A task is its recipe's yaml (``hparams/<task>.yaml``), its prepare step (the recipe's
``prepare(hparams)``) and its family (``TaskFamily``: the data pipeline, the head, the
metrics and the scoring at the best checkpoint), so that a multi-task run trains and
scores every task exactly as the single-task recipe does. The multi-task yaml decides
what is shared (the encoder, the update budget, the learning rates); the task's
``embedded_profile`` still applies on the embedded default, and ``task_overrides`` wins
over both.
"""

import hashlib
import importlib
import importlib.util
import io
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml

from rewire_lobes.data.fractions import check_fraction
from rewire_lobes.data.manifests import read_manifest
from rewire_lobes.downstream.core import make_brain
from rewire_lobes.downstream.results import check_metrics
from rewire_lobes.errors import DataFileError, OptionError, UserError
from rewire_lobes.multitask.shared import TaskUpstream
from rewire_lobes.runs.cli import check_known_keys, run_option
from rewire_lobes.embedded import REPO_ROOT, is_embedded_data
from rewire_lobes.runs.defaults import repo_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskRecipe:
    """Where a task's recipe lives and which family (``module:attribute``) trains it."""

    folder: str
    hparams: str
    family: str
    one_process: bool = False  # its training batches are length-aware: no DDP

    def load_family(self):
        module, attribute = self.family.split(":")
        return getattr(importlib.import_module(module), attribute)


TASK_RECIPES = {
    "KS": TaskRecipe("recipes/KS", "hparams/ks.yaml", "rewire_lobes.downstream.utterance:UTTERANCE_TASK"),
    "IC": TaskRecipe("recipes/IC", "hparams/ic.yaml", "rewire_lobes.downstream.utterance:UTTERANCE_TASK"),
    "ASR": TaskRecipe("recipes/ASR", "hparams/asr.yaml", "rewire_lobes.downstream.ctc:CTC_TASK",
                      one_process=True),
    "SF": TaskRecipe("recipes/SF", "hparams/sf.yaml", "rewire_lobes.downstream.ctc:CTC_TASK",
                     one_process=True),
    "SD": TaskRecipe("recipes/SD", "hparams/sd.yaml", "rewire_lobes.downstream.diarization:DIARIZATION_TASK"),
}
# The multi-task run sets these for every task; a task's embedded profile does not.
SHARED_KEYS = ("upstream_source", "encoder_id", "output_root", "output_folder", "data_folder",
               "fraction", "seed", "strategy", "run_profile", "max_steps", "eval_every_steps",
               "lr", "cache_features", "grad_accumulation_factor")


def check_tasks(tasks):
    """The task list, refused when empty, repeated or naming a task that trains nothing."""
    tasks = [str(task) for task in (tasks or [])]
    if not tasks:
        raise OptionError('--tasks needs at least one task, e.g. --tasks "[KS, IC]"')
    unknown = [task for task in tasks if task not in TASK_RECIPES]
    if unknown:
        hint = " (QbE trains no head: it has nothing to fine-tune on)" if "QbE" in unknown else ""
        raise OptionError(f"--tasks: {', '.join(unknown)} is not a task the multi-task recipe "
                          f"trains; choose from {', '.join(TASK_RECIPES)}{hint}")
    repeated = sorted({task for task in tasks if tasks.count(task) > 1})
    if repeated:
        raise OptionError(f"--tasks names {', '.join(repeated)} more than once")
    return tasks


SELECTIONS = ("mean_normalised", "last")


def normalised(value, direction):
    """A dev score in percent, higher is better: accuracies and F1 as they are, error rates
    (WER, DER ...) as 100 minus the rate."""
    return float(value) if direction == "max" else 100.0 - float(value)


def check_selection(rule, tasks):
    """``mean_normalised``, ``last`` or the name of one of the run's tasks."""
    if rule in SELECTIONS or rule in tasks:
        return rule
    raise OptionError(f"--selection must be one of {', '.join(SELECTIONS)} or a task of the run "
                      f"({', '.join(tasks)}), got {rule!r}")


def tasks_label(tasks):
    """The run folder's name for a task set, e.g. ``IC+KS`` (order-free)."""
    return "+".join(sorted(check_tasks(tasks)))


def per_task(option, name, tasks):
    """A ``{task: value}`` option, refused when it names a task that is not in the run."""
    mapping = dict(option or {})
    extra = sorted(set(mapping) - set(tasks))
    if extra:
        raise OptionError(f"--{name} names {', '.join(map(str, extra))}, which is not in --tasks")
    return mapping


def task_yaml_sha256(task):
    """The digest of a task's yaml: its settings are part of the multi-task run's identity."""
    return hashlib.sha256((REPO_ROOT / TASK_RECIPES[task].hparams).read_bytes()).hexdigest()


def task_defaults(task):
    with open(REPO_ROOT / TASK_RECIPES[task].hparams, encoding="utf-8") as fin:
        return ruamel.yaml.YAML().load(fin)


def check_task_keys(task, own, defaults=None):
    """A task's ``task_overrides`` must name keys of its yaml that the run does not set."""
    shared = [key for key in own if key in SHARED_KEYS]
    if shared:
        raise OptionError(f"--task_overrides {task}: {', '.join(shared)} is set by the multi-task "
                          "run for every task (use its own option: --fractions, --data_folders ...)")
    check_known_keys(REPO_ROOT / TASK_RECIPES[task].hparams,
                     task_defaults(task) if defaults is None else defaults, own)


def task_overrides(task, mtl, grad_accumulation_factor=1):
    """The yaml overrides of ``task`` in the multi-task run ``mtl`` (its hparams); every
    task draws ``grad_accumulation_factor`` batches per update, as the run steps."""
    yaml = ruamel.yaml.YAML()
    hparams_file = REPO_ROOT / TASK_RECIPES[task].hparams
    defaults = task_defaults(task)
    own = per_task(mtl["task_overrides"], "task_overrides", mtl["tasks"]).get(task) or {}
    check_task_keys(task, own, defaults)
    given = {}
    if mtl["run_profile"] == "embedded":
        given.update({key: value for key, value in (defaults.get("embedded_profile") or {}).items()
                      if key not in SHARED_KEYS})
    if mtl.get("batch_size") is not None:
        given["batch_size"] = int(mtl["batch_size"])
    given.update(own)
    data_folders = task_data_folders(mtl["tasks"], mtl["data_folders"])
    given.update({
        "upstream_source": mtl["upstream_source"],
        "encoder_id": mtl["encoder_id"],
        "output_root": mtl["output_root"],
        "output_folder": str(Path(mtl["output_folder"]) / task),
        "data_folder": data_folders[task],
        "fraction": float(per_task(mtl["fractions"], "fractions", mtl["tasks"]).get(task, 1.0)),
        "seed": int(mtl["seed"]),
        "strategy": mtl["strategy"],
        "run_profile": mtl["run_profile"],
        "max_steps": int(mtl["max_steps"]),
        "eval_every_steps": int(mtl["eval_every_steps"]),
        "lr": float(mtl["lr"]),
        "cache_features": False,
    })
    if "grad_accumulation_factor" in defaults:  # SD's yaml sets its own
        given["grad_accumulation_factor"] = int(grad_accumulation_factor)
    text = io.StringIO()
    yaml.dump(given, text)
    return hparams_file, text.getvalue()


def load_recipe_module(task):
    """The task's ``train.py`` as a module (its folder on ``sys.path`` for its prepare module)."""
    folder = REPO_ROOT / TASK_RECIPES[task].folder
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    name = f"rewire_recipe_{task.lower()}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, folder / "train.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


@dataclass
class TaskRun:
    """One task of the run: its hparams, family, Brain (never fitted by itself) and splits."""

    name: str
    hparams: dict
    family: object
    brain: object
    datasets: dict
    direction: str  # of its dev metric: "max" or "min"

    @property
    def dev_metric(self):
        return self.hparams["dev_metric"]


def load_task(task, mtl, run_opts, encoder):
    """Prepares ``task`` with its own recipe and builds its Brain on the shared ``encoder``.

    The task's yaml loads an encoder of its own for its featurizer's and head's sizes; that
    copy is dropped, and the task sees the shared one through a :class:`TaskUpstream`.
    """
    recipe = TASK_RECIPES[task]
    hparams_file, overrides = task_overrides(
        task, mtl, run_option(mtl, run_opts, "grad_accumulation_factor", 1))
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    view = TaskUpstream(encoder)
    hparams["upstream"] = view
    hparams["modules"]["upstream"] = view
    hparams["upstream_lr"] = float(mtl["upstream_lr"])
    hparams["data_folder"] = str(repo_path(hparams["data_folder"]))
    hparams["run_identity"] = mtl.get("run_identity")
    Path(hparams["output_folder"]).mkdir(parents=True, exist_ok=True)
    family = recipe.load_family()
    try:
        load_recipe_module(task).prepare(hparams)
        train_csv = Path(hparams["manifest_folder"]) / "train.csv"
        if not read_manifest(train_csv):
            raise DataFileError(f"{train_csv} lists no training items (data folder "
                                f"{hparams['data_folder']})")
        datasets, info = family.setup(hparams)
    except UserError as err:  # say which task of the run it is
        raise type(err)(f"{task}: {err}") from None
    brain = make_brain(family.brain_class, hparams, run_opts, info, checkpointer=None)
    brain.use_cached_features(datasets)
    direction = check_metrics(hparams["metric"], hparams["dev_metric"])
    logger.info("%s: %d training items, dev by %s (%s)", task, len(datasets["train"]),
                hparams["dev_metric"], direction)
    return TaskRun(task, hparams, family, brain, datasets, direction)


def derived_overrides(defaults, given):
    """``run_overrides``'s ``derived`` of the multi-task yaml: the checked task list and its
    folder name (``tasks_label``), the per-task options checked before anything is loaded
    or a run folder claimed."""

    def value(key):
        return given[key] if key in given else defaults.get(key)

    if "data_folder" in given:
        raise OptionError('--data_folder: every task reads its own corpus; give --data_folders '
                          '"{KS: DIR, IC: DIR}" (a task not named reads the mini corpus)')
    tasks = check_tasks(value("tasks"))
    single = [task for task in tasks if TASK_RECIPES[task].one_process]
    if single and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise OptionError(f"{', '.join(single)} trains on length-aware batches, which run on one "
                          "process: run this task set without torchrun")
    for name in ("data_folders", "task_overrides"):
        per_task(value(name), name, tasks)
    for fraction in per_task(value("fractions"), "fractions", tasks).values():
        check_fraction(fraction)
    for task, own in per_task(value("task_overrides"), "task_overrides", tasks).items():
        check_task_keys(task, own or {})
    check_selection(value("selection"), tasks)
    folders = list(task_data_folders(tasks, value("data_folders")).values())
    embedded = [folder for folder in folders if is_embedded_data(folder)]
    # What the profile is chosen by: the mini corpus when any task reads it.
    data_folder = embedded[0] if embedded else folders[0]
    return {"tasks": tasks, "tasks_label": tasks_label(tasks), "data_folder": data_folder}


def task_data_folders(tasks, data_folders):
    """``{task: its data folder}``: ``data_folders``'s, else the task yaml's (the mini corpus)."""
    given = per_task(data_folders, "data_folders", tasks)
    return {task: str(given.get(task) or task_defaults(task)["data_folder"]) for task in tasks}


def tasks_identity(hparams, run_opts):
    """``identity_extras`` of the multi-task recipe: the digest of every task's yaml, so that
    a run folder is never resumed after a task's settings changed."""
    return {"task_yaml_sha256": {task: task_yaml_sha256(task) for task in hparams["tasks"]}}


def add_task_modules(hparams, tasks):
    """Every task's featurizer and head into the multi-task ``modules`` and checkpointer."""
    for name, task in tasks.items():
        for part in ("featurizer", "head"):
            module = task.hparams["modules"][part]
            hparams["modules"][f"{name}_{part}"] = module
            hparams["checkpointer"].add_recoverable(f"{name}_{part}", module)
