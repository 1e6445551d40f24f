"""The cells of a grid: which runs there are, their commands, folders and options.

A grid is tasks x strategies x fractions x seeds (x learning rates), on one baseline
encoder. Three kinds of cell:

* ``rewire``: ``recipes/rewire/train.py hparams/<strategy>.yaml`` for each strategy other
  than ``baseline`` that no ``--encoder STRATEGY=DIR`` gives, into
  ``<R>/rewire/<encoder_id>/<strategy>/seed_<S>[_<sha8>]``; its encoder is ``upstream/``;
* ``downstream``: ``recipes/<TASK>/train.py`` into
  ``<R>/<TASK>/<encoder_id>/<strategy>/fraction<F>_seed<S>[_lr<lr>][_<sha8>]``, or for a
  zero-shot task (QbE: no fraction, no seed) ``<R>/QbE/<encoder_id>/<strategy>[_<sha8>]``;
* ``analysis``: ``utils/representations.py`` once per encoder x task (QbE aside), on the
  training manifest its runs' results.json names.

``<sha8>`` digests the pass-through options that reach the run (``options.py``), so a run
with other settings never meets an old run's folder. A rewired encoder's ``encoder_id``
(its name plus a fingerprint of its files) exists only once it is rewired: until then its
downstream cells are placeholders (``placeholder=True``), named with ``<rewired-STRATEGY>``.

What a cell runs is injectable (:class:`Programs`), so that tests run toy scripts.
"""

import dataclasses
import functools
import hashlib
import sys
from pathlib import Path
from typing import Mapping, Optional

from rewire_lobes.data.fractions import check_fraction
from rewire_lobes.errors import OptionError, UserError
from rewire_lobes.grid.options import (
    REWIRE_SCOPE,
    PassThrough,
    as_arguments,
    check_pass_through,
    options_digest,
    yaml_keys,
    yaml_path,
)
from rewire_lobes.io_utils import write_text_atomic
from rewire_lobes.runs.provenance import (
    BASELINE,
    MTL_RECORD_FILE,
    RECORD_FILE,
    REWIRING_STRATEGIES,
    read_provenance,
)

REPO = Path(__file__).resolve().parents[2]

REWIRE, DOWNSTREAM, ANALYSIS = "rewire", "downstream", "analysis"
ZERO_SHOT = frozenset({"QbE"})  # trains nothing: no fraction, no seed, no analysis
EXCLUDING_TASKS = frozenset({"ASR"})  # leaves out the utterances an encoder was rewired on
RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class Program:
    """A script and its yaml (None for a plain script), relative to the repository."""

    script: str
    hparams: Optional[str] = None


TASK_PROGRAMS = {
    "KS": Program("recipes/KS/train.py", "hparams/ks.yaml"),
    "IC": Program("recipes/IC/train.py", "hparams/ic.yaml"),
    "ASR": Program("recipes/ASR/train.py", "hparams/asr.yaml"),
    "SF": Program("recipes/SF/train.py", "hparams/sf.yaml"),
    "SD": Program("recipes/SD/train.py", "hparams/sd.yaml"),
    "QbE": Program("recipes/QbE/evaluate.py", "hparams/qbe.yaml"),
}
REWIRE_PROGRAMS = {strategy: Program("recipes/rewire/train.py", f"hparams/{strategy}.yaml")
                   for strategy in REWIRING_STRATEGIES}
ANALYSIS_PROGRAM = Program("utils/representations.py")


def default_analysis_output(output_root, task, encoder):
    """Where ``utils/representations.py`` writes its record of ``encoder`` on ``task``."""
    from rewire_lobes.analysis.representations import record_path  # loads torch: when needed

    return record_path(output_root, task, encoder)


@dataclasses.dataclass(frozen=True)
class Programs:
    """What the cells run: the recipes by task and strategy, the analysis script, the
    interpreter, and the folder they run in (relative scripts and yamls live there)."""

    tasks: Mapping[str, Program] = dataclasses.field(default_factory=lambda: dict(TASK_PROGRAMS))
    rewiring: Mapping[str, Program] = dataclasses.field(
        default_factory=lambda: dict(REWIRE_PROGRAMS))
    analysis: Program = ANALYSIS_PROGRAM
    # (output_root, task, encoder) -> the analysis script's output file
    analysis_output: callable = default_analysis_output
    python: str = sys.executable
    root: Path = REPO

    def command(self, program, args):
        hparams = [program.hparams] if program.hparams else []
        return [self.python, program.script, *hparams, *args]

    def path(self, relative):
        return yaml_path(self.root, relative)


@dataclasses.dataclass
class Cell:
    """One run of the grid.

    ``encoder`` is the encoder directory (or hub id) the run reads: its fingerprint is
    part of the cell's key. ``output`` is the file the run writes last (results.json,
    rewiring.json, representations.json); the cell succeeded when it is there.
    """

    kind: str
    name: str
    program: Program
    args: tuple
    output: Path
    encoder: str
    strategy: str
    task: Optional[str] = None
    lr: Optional[str] = None
    placeholder: bool = False


def number_label(value):
    """A number as folder names write it: ``0.1``, ``1``, ``1e-05``.

    Example
    -------
    >>> number_label("0.10"), number_label("1.0"), number_label("1e-5")
    ('0.1', '1', '1e-05')
    """
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def parse_assignments(tokens, option):
    """``["KEY=VALUE", ...]`` -> ``{KEY: VALUE}``; a malformed or repeated one is an error."""
    pairs = {}
    for token in tokens or ():
        key, equals, value = token.partition("=")
        if not equals or not key or not value:
            raise OptionError(f"{option} {token}: expected KEY=VALUE")
        if key in pairs:
            raise OptionError(f"{option}: {key} is given twice")
        pairs[key] = value
    return pairs


def _unique(values):
    return tuple(dict.fromkeys(values))


def _encoder_id(source):
    from rewire_lobes.runs.cli import encoder_id  # loads torch: only when a grid is made

    return encoder_id(source)


@dataclasses.dataclass(frozen=True)
class Grid:
    """What the user asked for, checked (:func:`make_grid` builds it), and its cells."""

    tasks: tuple
    strategies: tuple
    fractions: tuple
    seeds: tuple
    output_root: Path
    upstream_source: str
    rewire_seed: str = "1986"
    encoders: Mapping[str, str] = dataclasses.field(default_factory=dict)
    lrs: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
    options: PassThrough = dataclasses.field(default_factory=PassThrough)
    analysis: object = True  # True, False, or the tasks to analyse
    programs: Programs = dataclasses.field(default_factory=Programs)
    # Per-task overrides of ``fractions`` and ``seeds`` (``--fractions 0.01 KS=0.5``).
    task_fractions: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
    task_seeds: Mapping[str, tuple] = dataclasses.field(default_factory=dict)

    def fractions_of(self, task):
        return self.task_fractions.get(task, self.fractions)

    def seeds_of(self, task):
        return self.task_seeds.get(task, self.seeds)

    # ------------------------------------------------------------------ encoders
    @functools.cached_property
    def baseline_id(self):
        return _encoder_id(self.upstream_source)

    def rewired_here(self):
        """The strategies this grid rewires itself (in order)."""
        return [s for s in self.strategies if s != BASELINE and s not in self.encoders]

    def encoder_of(self, strategy):
        """The encoder directory of a strategy (a rewired one exists once it is rewired)."""
        if strategy == BASELINE:
            return self.upstream_source
        if strategy in self.encoders:
            return self.encoders[strategy]
        return str(self.rewiring_folder(strategy) / "upstream")

    # ------------------------------------------------------------------ rewiring
    def rewiring_options(self, strategy):
        program = self.programs.rewiring[strategy]
        return self.options.for_run(REWIRE_SCOPE, yaml_keys(self.programs.path(program.hparams)))

    def rewiring_folder(self, strategy):
        options = self.rewiring_options(strategy)
        suffix = f"_{options_digest(options)}" if options else ""
        return (self.output_root / "rewire" / self.baseline_id / strategy
                / f"seed_{self.rewire_seed}{suffix}")

    def rewiring_cell(self, strategy):
        folder = self.rewiring_folder(strategy)
        args = ("--upstream_source", self.upstream_source, "--seed", self.rewire_seed,
                "--output_root", str(self.output_root), "--output_folder", str(folder),
                *as_arguments(self.rewiring_options(strategy)))
        return Cell(REWIRE, self._name(folder), self.programs.rewiring[strategy], args,
                    folder / "upstream" / RECORD_FILE, self.upstream_source, strategy)

    # ------------------------------------------------------------------ downstream
    def downstream_options(self, task, extra=None):
        """The pass-through pairs of a task's runs, plus the grid's ``extra`` pairs (those
        the user set for the task win)."""
        program = self.programs.tasks[task]
        options = self.options.for_run(task, yaml_keys(self.programs.path(program.hparams)))
        if task in self.lrs:
            options.pop("lr", None)  # the sweep's lr names the folder itself
        for key, value in (extra or {}).items():
            options.setdefault(key, value)
        return dict(sorted(options.items()))

    def downstream_cells(self, strategy, task, encoder_id=None, extra=None):
        """The runs of one encoder on one task, in order: fractions x seeds (x lrs).

        ``encoder_id`` None: the encoder is not rewired yet; the cells are placeholders.
        ``extra``: pass-through pairs the grid adds (the baseline's ASR exclusions).
        """
        program, encoder = self.programs.tasks[task], self.encoder_of(strategy)
        placeholder = encoder_id is None
        encoder_id = f"<rewired-{strategy}>" if placeholder else encoder_id
        options = self.downstream_options(task, extra)
        digest = f"_{options_digest(options)}" if options else ""
        common = ("--output_root", str(self.output_root))
        base = self.output_root / task / encoder_id
        if task in ZERO_SHOT:
            folder = base / f"{strategy}{digest}"
            return [self._downstream(program, folder, encoder, strategy, task, None,
                                     common, options, placeholder)]
        cells = []
        for fraction in self.fractions_of(task):
            for seed in self.seeds_of(task):
                for lr in self.lrs.get(task, (None,)):
                    run = f"fraction{fraction}_seed{seed}" + (f"_lr{lr}" if lr else "")
                    folder = base / strategy / f"{run}{digest}"
                    given = ("--fraction", fraction, "--seed", seed, *common,
                             *(("--lr", lr) if lr else ()))
                    cells.append(self._downstream(program, folder, encoder, strategy, task, lr,
                                                  given, options, placeholder))
        return cells

    def _downstream(self, program, folder, encoder, strategy, task, lr, given, options,
                    placeholder):
        args = ("--upstream_source", encoder, *given, "--output_folder", str(folder),
                *as_arguments(options))
        return Cell(DOWNSTREAM, self._name(folder), program, args, folder / RESULTS_FILE,
                    encoder, strategy, task, lr, placeholder)

    def baseline_exclusions(self, encoders, write=True):
        """``{"exclude_utterances": file}`` for the baseline's ASR runs: the utterances the
        rewired ``encoders`` were rewired on, so that the baseline trains on the same ones
        (the paper's footnote; ``utils/demo.py`` does the same). Empty when there are none
        or the user sets ``exclude_utterances`` for ASR. The union of the lists is written
        to ``<R>/grid/exclusions/`` (unless ``write`` is False: a dry run).
        """
        from rewire_lobes.data.librispeech import rewiring_exclusions

        if "exclude_utterances" in self.options.for_run("ASR", {"exclude_utterances"}):
            return {}
        ids = set()
        for encoder in encoders:
            ids |= set(rewiring_exclusions(encoder)[0])
        if not ids:
            return {}
        text = "".join(f"{utterance}\n" for utterance in sorted(ids))
        path = (self.output_root / "grid" / "exclusions"
                / f"{hashlib.sha256(text.encode()).hexdigest()[:12]}.txt")
        if write and not path.is_file():
            write_text_atomic(path, text)
        return {"exclude_utterances": str(path)}

    # ------------------------------------------------------------------ analysis
    def analysis_cell(self, strategy, task, encoder_id=None, results=None):
        """The representation analysis of one encoder on one task's training manifest.

        ``results`` is one of its runs' results.json (None: a placeholder cell); its
        ``manifest_folder`` and ``settings`` (``label_columns``, ``gain_db``) give the
        arguments.
        """
        encoder = self.encoder_of(strategy)
        placeholder = results is None or encoder_id is None
        encoder_id = f"<rewired-{strategy}>" if encoder_id is None else encoder_id
        if results is None:
            manifest, columns, gain = "<manifest_folder>", ["<label_columns>"], "<gain_db>"
        else:
            if not results.get("manifest_folder"):
                raise UserError(f"{task} results.json of {encoder} names no manifest_folder "
                                "(made by an older recipe?): the analysis cannot find its data")
            settings = results.get("settings") or {}
            manifest = results["manifest_folder"]
            # What the runs did not record is left to the analysis' task defaults (KS -3 dB).
            columns = settings.get("label_columns") or []
            gain = settings.get("gain_db")
        args = ("--upstream_source", encoder, "--manifest", str(Path(manifest) / "train.csv"),
                "--task", task, *(("--label_columns", *map(str, columns)) if columns else ()),
                *(("--gain_db", str(gain)) if gain is not None else ()),
                "--output_root", str(self.output_root))
        output = (Path("<known once its runs finished>") if placeholder
                  else self.programs.analysis_output(self.output_root, task, encoder))
        name = f"{task}/{encoder_id}/{strategy}/representations"
        return Cell(ANALYSIS, name, self.programs.analysis, args, Path(output), encoder,
                    strategy, task, None, placeholder)

    def analysed_tasks(self):
        """The tasks whose training sets are analysed: ``analysis`` True (every task but
        QbE), False (none), or a collection of task names."""
        chosen = self.tasks if self.analysis is True else (self.analysis or ())
        return [task for task in self.tasks if task in chosen and task not in ZERO_SHOT]

    def _name(self, folder):
        return Path(folder).relative_to(self.output_root).as_posix()


def make_grid(*, tasks, strategies, fractions, seeds, output_root, upstream_source,
              rewire_seed="1986", encoders=None, lrs=None, options=None, analysis=True,
              programs=None):
    """A checked :class:`Grid`: every mistake is a :class:`UserError` before anything runs.

    Arguments
    ---------
    tasks, strategies : list of str
        Task names of ``programs.tasks``; ``baseline`` and strategies of
        ``programs.rewiring``.
    fractions, seeds : list of str
        Training label shares in (0, 1] and seeds of the downstream runs; a ``TASK=A,B``
        item sets a task's own (``["0.01", "KS=0.5"]``: KS at 50 %, the others at 1 %).
    output_root : path
        Where every run folder goes (made absolute: recipes run from the repository).
    upstream_source : str
        The baseline encoder, resolved (``rewire_lobes.runs.defaults.resolve_upstream_source``).
    rewire_seed : str
        The rewiring runs' seed.
    encoders : dict, optional
        ``{strategy: directory}`` of encoders rewired already; each one's rewiring.json
        must name that strategy.
    lrs : dict, optional
        ``{task: [lr, ...]}``: a learning-rate sweep, one cell per lr.
    options : PassThrough, optional
        The pass-through pairs; each must reach some run of the grid.
    analysis : bool or list of str
        Whether to add the representation analysis cells, or the tasks to add them for.
    programs : Programs, optional
        What the cells run (tests give toy scripts).
    """
    programs = programs or Programs()
    options = options or PassThrough()
    tasks, strategies = _unique(tasks), _unique(strategies)
    for task in tasks:
        if task not in programs.tasks:
            raise OptionError(f"--tasks {task}: not a task (one of {', '.join(programs.tasks)})")
    for strategy in strategies:
        # Another encoder (e.g. a multi-task fine-tuned one: mtl) comes with --encoder.
        if strategy != BASELINE and strategy not in programs.rewiring \
                and strategy not in (encoders or {}):
            raise OptionError(f"--strategies {strategy}: not a strategy the grid rewires (one "
                              f"of {BASELINE}, {', '.join(programs.rewiring)}); any other "
                              f"needs its encoder: --encoder {strategy}=DIR")
    if analysis not in (True, False):
        analysis = _unique(analysis)
        for task in analysis:
            if task not in tasks or task in ZERO_SHOT:
                raise OptionError(f"--analysis_tasks {task}: not a trained task of --tasks")
    fractions, task_fractions = _per_task(
        fractions, tasks, "--fractions", lambda f: number_label(check_fraction(f)))
    seeds, task_seeds = _per_task(seeds, tasks, "--seeds", lambda s: _whole(s, "--seeds"))
    grid = Grid(
        tasks=tasks, strategies=strategies, fractions=fractions, seeds=seeds,
        output_root=Path(output_root).expanduser().resolve(), upstream_source=str(upstream_source),
        rewire_seed=_whole(rewire_seed, "--rewire_seed"),
        encoders=_checked_encoders(encoders or {}, strategies),
        lrs=_checked_lrs(lrs or {}, tasks, programs, options), options=options,
        analysis=analysis, programs=programs, task_fractions=task_fractions,
        task_seeds=task_seeds,
    )
    scopes = {task: (programs.tasks[task].hparams,
                     yaml_keys(programs.path(programs.tasks[task].hparams))) for task in tasks}
    rewired = grid.rewired_here()
    if rewired:
        files = [programs.rewiring[s].hparams for s in rewired]
        scopes[REWIRE_SCOPE] = (", ".join(files), frozenset().union(
            *(yaml_keys(programs.path(f)) for f in files)))
    check_pass_through(options, scopes)
    return grid


def _per_task(tokens, tasks, option, check):
    """``(values, {task: values})`` from ``["0.01", "KS=0.5,1"]``: plain items are every
    task's, ``TASK=A,B`` items one task's own; a task with neither is an error."""
    plain, own = [], {}
    for token in tokens:
        task, equals, values = str(token).partition("=")
        if not equals:
            plain.append(check(token))
            continue
        if task not in tasks:
            raise OptionError(f"{option} {token}: {task} is not in --tasks")
        if task in own or not values:
            raise OptionError(f"{option} {token}: give {task}'s values once, as {task}=A,B")
        own[task] = _unique(check(value) for value in values.split(","))
    if not plain:
        missing = [task for task in tasks if task not in own and task not in ZERO_SHOT]
        if missing:
            raise OptionError(f"{option}: no value for {', '.join(missing)}")
    return _unique(plain), own


def _whole(value, option):
    try:
        return str(int(value))
    except (TypeError, ValueError):
        raise OptionError(f"{option} {value}: not a whole number") from None


def _checked_encoders(encoders, strategies):
    checked = {}
    for strategy, folder in encoders.items():
        if strategy == BASELINE:
            raise OptionError(f"--encoder {strategy}={folder}: the baseline is --upstream_source")
        if strategy not in strategies:
            raise OptionError(f"--encoder {strategy}={folder}: {strategy} is not in --strategies")
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise OptionError(f"--encoder {strategy}={folder}: no such encoder directory")
        record = read_provenance(path)
        if record is None:
            raise OptionError(f"--encoder {strategy}={folder}: {path / RECORD_FILE} is missing "
                              f"(nor is there an {MTL_RECORD_FILE}), so it is no rewired or "
                              "fine-tuned encoder (give the upstream/ folder of a rewiring or "
                              "multi-task run)")
        if record["strategy"] != strategy:
            raise OptionError(f"--encoder {strategy}={folder}: its {Path(record['record']).name} "
                              f"says it was made by '{record['strategy']}', not '{strategy}'")
        checked[strategy] = str(path)
    return checked


def _checked_lrs(lrs, tasks, programs, options):
    checked = {}
    for task, values in lrs.items():
        if task not in tasks:
            raise OptionError(f"--lrs {task}=...: {task} is not in --tasks")
        hparams = programs.tasks[task].hparams
        if task in ZERO_SHOT or "lr" not in yaml_keys(programs.path(hparams)):
            raise OptionError(f"--lrs {task}=...: {hparams} has no lr (it trains nothing)")
        if "lr" in options.scoped.get(task, {}):
            raise OptionError(f"--lrs {task}=... and --{task}.lr: give one of them")
        labels = []
        for value in str(values).split(","):
            try:
                labels.append(number_label(value))
            except ValueError:
                raise OptionError(f"--lrs {task}={values}: {value!r} is not a number") from None
        checked[task] = _unique(labels)
    return checked
