"""The paper's Table 2 from a folder of runs: collect, join, aggregate, write.

Every ``results.json``, ``rewiring.json`` and ``representations.json`` under a folder is
read (at any depth: folder names mean nothing here), joined on the records' content and
summarised:

* an **encoder family** is the encoder a run's encoder descends from: the rewiring
  record's ``source_content_hash`` for a rewired encoder, the encoder's own
  ``content_hash`` for a baseline; it is named after the baseline's folder;
* the **strategy** is the one the record names (the recipes read it from
  ``rewiring.json``); two rewired encoders of one strategy and family (two rewiring seeds
  or budgets) stay apart, labelled with their content hash: ``mixed (a1b2c3d4)``;
* a **learning-rate sweep** (runs that differ only in ``settings["lr"]``) is resolved per
  family × task × strategy × fraction: the lr with the best mean dev score over seeds is
  kept, and only its runs are reported;
* a **cell** is the mean test score over seeds, its sample std and the mean number of
  updates to the best dev checkpoint (the paper's ⌚ column);
* runs that fine-tuned the encoder (``upstream_mode: trainable``) are another experiment
  than SUPERB's frozen probing: they get blocks of their own, never pooled with frozen runs.

Files that cannot be read, or of an unknown schema, are skipped with a warning and
counted; they never stop the report.
"""

import csv
import io
import json
import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rewire_lobes.downstream.results import RESULTS_SCHEMA
from rewire_lobes.errors import DataFolderError
from rewire_lobes.io_utils import write_text_atomic
from rewire_lobes.runs.provenance import BASELINE, RECORD_FILE, REWIRING_STRATEGIES

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
REPRESENTATIONS_FILE = "representations.json"
REPRESENTATIONS_SCHEMA = 1
STRATEGY_ORDER = (BASELINE, *REWIRING_STRATEGIES)
TASK_ORDER = ("KS", "IC", "ASR", "SF", "SD", "QbE")
EMBEDDED_NOTE = ("Synthetic embedded default (mini corpus + the small shipped encoder): "
                 "these numbers test the pipeline, they are not the paper's.")
HASH_LABEL = 8  # hex digits of a content hash in a label
FROZEN, TRAINABLE = "frozen", "trainable"  # results.json's upstream_mode (absent: frozen)

TABLE2_COLUMNS = ["family", "task", "fraction", "strategy", "encoder_content_hash", "metric",
                  "unit", "direction", "mean_test", "std_test", "mean_updates_to_best",
                  "seeds", "lr", "best_step_resolution", "profile", "upstream_mode"]
ISOTROPY_COLUMNS = ["encoder", "strategy", "dataset", "log10_is", "items", "layer",
                    "silhouette", "knn_accuracy", "chance"]


class RecordError(ValueError):
    """A JSON file that is not a record this report can use (the reason says why)."""


# ---------------------------------------------------------------------------- records
@dataclass
class Run:
    """The fields of one ``results.json`` that the report uses."""

    path: Path
    task: str
    metric: str
    dev_metric: str
    unit: str
    direction: str
    zero_shot: bool
    upstream_mode: str  # frozen or trainable
    fraction: object  # float, None when zero-shot
    seed: object
    lr: object
    best_dev: object
    test: float
    best_step: object
    resolution: object
    profile: object
    strategy: str
    content_hash: str
    family_hash: str
    source_name: str
    settings: dict
    dev_curve: list
    layer_weights: object
    chosen_layer: object
    record: object  # the path of the encoder's rewiring.json, None for a baseline

    @classmethod
    def from_record(cls, path, record):
        if record.get("schema") != RESULTS_SCHEMA:
            raise RecordError(f"results schema {record.get('schema')!r} (this report reads "
                              f"{RESULTS_SCHEMA})")
        try:
            encoder, provenance = record["encoder"], record.get("provenance")
            family_hash, strategy, source_name = descent(encoder, provenance,
                                                         record["strategy"])
            if record["direction"] not in ("max", "min"):
                raise RecordError(f"direction {record['direction']!r} is neither max nor min")
            settings = record.get("settings") or {}
            return cls(
                path=Path(path), task=str(record["task"]), metric=record["metric"],
                dev_metric=record.get("dev_metric", record["metric"]),
                unit=record.get("unit", ""), direction=record["direction"],
                zero_shot=bool(record.get("zero_shot")),
                upstream_mode=str(record.get("upstream_mode") or FROZEN),
                fraction=_optional_float(record.get("fraction")),
                seed=record.get("seed"), lr=_optional_float(settings.get("lr")),
                best_dev=_optional_float(record.get("best_dev")),
                test=float(record["test"]), best_step=_optional_float(record.get("best_step")),
                resolution=record.get("best_step_resolution"),
                profile=record.get("profile"), strategy=strategy,
                content_hash=run_encoder_hash(record, encoder, provenance),
                family_hash=family_hash, source_name=source_name, settings=settings,
                dev_curve=[(float(u), float(v)) for u, v in record.get("dev_curve") or []],
                layer_weights=record.get("layer_weights"),
                chosen_layer=record.get("chosen_layer"),
                record=(provenance or {}).get("record"),
            )
        except (KeyError, TypeError) as err:
            raise RecordError(f"not a results record ({type(err).__name__}: {err})") from None


@dataclass
class Representation:
    """One ``representations.json``: isotropy and class separation of one encoder's layer."""

    path: Path
    task: str
    items: object
    layer: object
    strategy: str
    content_hash: str
    family_hash: str
    source_name: str
    log10_isotropy: float
    class_separation: object
    tsne: object

    @classmethod
    def from_record(cls, path, record):
        if (record.get("kind"), record.get("schema")) != ("representations",
                                                          REPRESENTATIONS_SCHEMA):
            raise RecordError(f"kind {record.get('kind')!r}, schema {record.get('schema')!r} "
                              f"(this report reads representations schema "
                              f"{REPRESENTATIONS_SCHEMA})")
        try:
            encoder, provenance = record["encoder"], record.get("provenance")
            family_hash, strategy, source_name = descent(encoder, provenance,
                                                         record.get("strategy") or BASELINE)
            return cls(path=Path(path), task=str(record["task"]), items=record.get("items"),
                       layer=record.get("layer"), strategy=strategy,
                       content_hash=encoder["content_hash"], family_hash=family_hash,
                       source_name=source_name,
                       log10_isotropy=float(record["log10_isotropy"]),
                       class_separation=record.get("class_separation"),
                       tsne=record.get("tsne"))
        except (KeyError, TypeError) as err:
            raise RecordError(f"not a representations record ({type(err).__name__}: "
                              f"{err})") from None


@dataclass
class Rewiring:
    """One ``rewiring.json``: which encoder was rewired into which, and its loss curve."""

    path: Path
    strategy: str
    content_hash: str
    family_hash: str
    source_name: str
    updates: object
    loss_curve: list

    @classmethod
    def from_record(cls, path, record):
        if not (record.get("content_hash") and record.get("source_content_hash")):
            raise RecordError("a rewiring record without content_hash and source_content_hash")
        try:
            return cls(path=Path(path), strategy=str(record["strategy"]),
                       content_hash=record["content_hash"],
                       family_hash=record["source_content_hash"],
                       source_name=Path(str(record.get("source") or "?")).name,
                       updates=record.get("updates"),
                       loss_curve=[(float(s), float(v)) for s, v in record.get("loss_curve") or []])
        except (KeyError, TypeError, ValueError) as err:
            raise RecordError(f"not a rewiring record ({type(err).__name__}: {err})") from None


def run_encoder_hash(record, encoder, provenance):
    """The encoder a run is labelled by: its own weights, but for a fine-tuning run whose
    record names the encoder it made (multi-task: the exported ``content_hash`` of its
    ``mtl.json``), that encoder, so that its tuned checkpoints are not counted as others.

    Example
    -------
    >>> run_encoder_hash({"upstream_mode": "trainable"}, {"content_hash": "t"},
    ...                  {"content_hash": "m", "tasks": ["KS"]})
    'm'
    >>> run_encoder_hash({}, {"content_hash": "r"}, {"content_hash": "r0", "tasks": None})
    'r'
    """
    if (record.get("upstream_mode") == TRAINABLE and provenance and provenance.get("tasks")
            and provenance.get("content_hash")):
        return provenance["content_hash"]
    return encoder["content_hash"]


def descent(encoder, provenance, strategy):
    """``(family hash, strategy, family folder name)`` of an encoder.

    The strategy of a rewired encoder is its record's (``provenance``); one without a
    record is the baseline of its own family.

    Example
    -------
    >>> descent({"source": "/m/wavlm", "content_hash": "b"}, None, "baseline")
    ('b', 'baseline', 'wavlm')
    >>> descent({"source": "/r/upstream", "content_hash": "r"},
    ...         {"strategy": "twin", "source": "/m/wavlm", "source_content_hash": "b"}, "twin")
    ('b', 'twin', 'wavlm')
    """
    if not provenance:
        return encoder["content_hash"], strategy or BASELINE, Path(str(encoder["source"])).name
    if not provenance.get("source_content_hash"):
        raise RecordError("its rewiring provenance names no source_content_hash")
    if strategy != provenance["strategy"]:
        logger.warning("strategy %r disagrees with its rewiring record's %r: the record wins",
                       strategy, provenance["strategy"])
    return (provenance["source_content_hash"], provenance["strategy"],
            Path(str(provenance.get("source") or "?")).name)


# ---------------------------------------------------------------------------- collect
@dataclass
class Collection:
    """Everything read under a results root, and what was skipped."""

    runs: list = field(default_factory=list)
    rewirings: list = field(default_factory=list)
    representations: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (path, reason)

    def skip(self, path, reason):
        logger.warning("skipped %s: %s", path, reason)
        self.skipped.append((str(path), reason))


def collect(results_root):
    """Reads every results, rewiring and representations record under ``results_root``.

    Rewiring records named by a run's provenance but lying elsewhere are read as well.
    A file that is not readable JSON or not a known record is skipped (logged, counted in
    ``Collection.skipped``).
    """
    root = Path(results_root)
    if not root.is_dir():
        raise DataFolderError(f"--results_root {root}: no such folder")
    found = Collection()
    readers = {RESULTS_FILE: (Run, found.runs), RECORD_FILE: (Rewiring, found.rewirings),
               REPRESENTATIONS_FILE: (Representation, found.representations)}
    seen = set()
    for name, (kind, into) in readers.items():
        for path in sorted(root.rglob(name)):
            if path.is_file():
                seen.add(path.resolve())
                _read_into(found, path, kind, into)
    for record_path in sorted({Path(run.record) for run in found.runs if run.record}):
        if record_path.is_file() and record_path.resolve() not in seen:
            seen.add(record_path.resolve())
            _read_into(found, record_path, Rewiring, found.rewirings)
    if not found.runs:
        skipped = f" ({len(found.skipped)} unreadable files skipped)" if found.skipped else ""
        raise DataFolderError(f"--results_root {root}: no readable {RESULTS_FILE} under it"
                              f"{skipped}")
    return found


def _read_into(found, path, kind, into):
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise RecordError(f"a JSON {type(record).__name__}, not an object")
        into.append(kind.from_record(path, record))
    except (OSError, UnicodeDecodeError, ValueError) as err:  # RecordError is a ValueError
        found.skip(path, str(err).splitlines()[0] if str(err) else type(err).__name__)


# ---------------------------------------------------------------------------- names
@dataclass
class Names:
    """Display names: a family's folder name, an encoder's strategy label."""

    families: dict  # family hash -> name
    labels: dict  # content hash -> strategy label

    def family(self, family_hash):
        return self.families.get(family_hash, family_hash[:HASH_LABEL])

    def label(self, item):
        return self.labels.get(item.content_hash, item.strategy)


def name_encoders(collection):
    """Names every family and labels every encoder of the collection.

    A family is named after its baseline's folder (or the rewiring source's folder when
    its baseline was not run); two families of one name get their hash added. Two
    encoders of one strategy in one family are labelled ``strategy (hash)``: never
    averaged together.
    """
    items = [*collection.runs, *collection.representations, *collection.rewirings]
    folders = defaultdict(set)
    for item in items:  # the baseline's own folder, when it was run
        if item.content_hash == item.family_hash:
            folders[item.family_hash].add(item.source_name)
    for item in items:
        if item.family_hash not in folders:
            folders[item.family_hash].add(item.source_name)
    folder = {family_hash: min(found) for family_hash, found in folders.items()}
    shared = defaultdict(int)
    for name in folder.values():
        shared[name] += 1
    families = {family_hash: name if shared[name] == 1 else f"{name} ({family_hash[:HASH_LABEL]})"
                for family_hash, name in folder.items()}
    encoders = defaultdict(set)
    for item in items:
        encoders[item.family_hash, item.strategy].add(item.content_hash)
    labels = {}
    for (_, strategy), hashes in encoders.items():
        for content_hash in hashes:
            labels[content_hash] = (strategy if len(hashes) == 1
                                    else f"{strategy} ({content_hash[:HASH_LABEL]})")
    return Names(families, labels)


def strategy_key(label):
    """Sort key of a strategy label: baseline, twin, neutral, mixed, then the others.

    Example
    -------
    >>> sorted(["other", "mixed (ab)", "twin [lr=1]", "baseline", "mixed (aa)"], key=strategy_key)
    ['baseline', 'twin [lr=1]', 'mixed (aa)', 'mixed (ab)', 'other']
    """
    base = label.split(" (")[0].split(" [")[0]
    rank = STRATEGY_ORDER.index(base) if base in STRATEGY_ORDER else len(STRATEGY_ORDER)
    return rank, label


def task_key(task):
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)), task


# ---------------------------------------------------------------------------- aggregate
@dataclass
class Cell:
    """One strategy × fraction of a block: the runs of the chosen lr, summarised."""

    label: str
    fraction: object
    runs: list
    lr: object
    lr_means: dict  # every lr tried -> mean best_dev over its seeds
    direction: str

    @property
    def seeds(self):
        return len(self.runs)

    @property
    def mean_test(self):
        return statistics.fmean(run.test for run in self.runs)

    @property
    def std_test(self):
        """Sample std over seeds; None for one seed."""
        return statistics.stdev(run.test for run in self.runs) if self.seeds > 1 else None

    @property
    def mean_updates(self):
        steps = [run.best_step for run in self.runs if run.best_step is not None]
        return statistics.fmean(steps) if steps else None

    @property
    def content_hash(self):
        return self.runs[0].content_hash

    @property
    def resolutions(self):
        return sorted({run.resolution for run in self.runs if run.resolution is not None})

    @property
    def profiles(self):
        return sorted({str(run.profile) for run in self.runs})


@dataclass
class Block:
    """One family × task × metric × upstream mode: a small table of strategies × fractions."""

    family: str
    task: str
    metric: str
    dev_metric: str
    unit: str
    direction: str
    zero_shot: bool
    upstream_mode: str = FROZEN
    cells: dict = field(default_factory=dict)  # (label, fraction) -> Cell
    left_out: int = 0  # runs of the lrs not chosen

    @property
    def title(self):
        """``family · task``, and the upstream mode when it is not SUPERB's frozen one."""
        mode = "" if self.upstream_mode == FROZEN else f", {self.upstream_mode} upstream"
        return f"{self.family} · {self.task}{mode}"

    @property
    def labels(self):
        return sorted({label for label, _ in self.cells}, key=strategy_key)

    @property
    def fractions(self):
        return sorted({fraction for _, fraction in self.cells}, key=lambda f: (f is None, f))

    def best_labels(self, fraction, digits):
        """The labels whose score (as printed) is the best of the ``fraction`` column."""
        scores = {label: round(cell.mean_test, digits)
                  for (label, f), cell in self.cells.items() if f == fraction}
        if len(scores) < 2:
            return set()
        best = (max if self.direction == "max" else min)(scores.values())
        return {label for label, score in scores.items() if score == best}


def aggregate(collection, names):
    """The blocks of Table 2, ordered by family, task and metric."""
    groups = defaultdict(list)
    for run in collection.runs:
        groups[run.family_hash, run.task, run.metric, run.upstream_mode, names.label(run),
               run.fraction].append(run)
    blocks = {}
    for (family_hash, task, metric, mode, label, fraction), runs in groups.items():
        first = runs[0]
        block = blocks.setdefault((family_hash, task, metric, mode), Block(
            family=names.family(family_hash), task=task, metric=metric,
            dev_metric=first.dev_metric, unit=first.unit, direction=first.direction,
            zero_shot=first.zero_shot, upstream_mode=mode))
        for variant, variant_runs in setting_variants(label, runs).items():
            cell = choose_lr(variant, fraction, variant_runs, first.direction)
            block.cells[variant, fraction] = cell
            block.left_out += len(variant_runs) - cell.seeds
    return sorted(blocks.values(), key=lambda b: (b.family, task_key(b.task), b.metric,
                                                  b.upstream_mode != FROZEN, b.upstream_mode))


def choose_lr(label, fraction, runs, direction):
    """The cell of the lr whose mean best dev over seeds is best (ties: more seeds, then
    the smaller lr); one run per seed and lr (a duplicate is logged and left out)."""
    by_lr = defaultdict(dict)
    for run in sorted(runs, key=lambda r: str(r.path)):
        seeds = by_lr[run.lr]
        if run.seed in seeds:
            logger.warning("%s repeats the run of %s (same encoder, task, fraction, seed and "
                           "lr): left out", run.path, seeds[run.seed].path)
            continue
        seeds[run.seed] = run
    means = {}
    for lr, seeds in by_lr.items():
        devs = [run.best_dev for run in seeds.values() if run.best_dev is not None]
        means[lr] = statistics.fmean(devs) if devs else None
    sign = 1 if direction == "max" else -1

    def rank(lr):
        mean = means[lr]
        return (mean is not None, sign * mean if mean is not None else 0, len(by_lr[lr]),
                -(lr if lr is not None else 0))

    chosen = max(by_lr, key=rank)
    chosen_runs = sorted(by_lr[chosen].values(), key=lambda r: (r.seed is None, r.seed))
    return Cell(label=label, fraction=fraction, runs=chosen_runs, lr=chosen, lr_means=means,
                direction=direction)


IDENTITY_VARIES = {"lr", "seed"}


def setting_variants(label, runs):
    """``{row label: runs}``: runs of one cell that differ in a setting besides the lr and
    the seed (a 20-update smoke run beside the full one, another head size ...) are never
    pooled; each such variant is a row of its own, its label naming the differing values.

    Example
    -------
    >>> from types import SimpleNamespace as Run
    >>> runs = [Run(settings={"seed": s, "max_steps": m}) for s, m in ((1, 20), (2, 20), (1, 600))]
    >>> {k: len(v) for k, v in setting_variants("mixed", runs).items()}
    {'mixed [max_steps=20]': 2, 'mixed [max_steps=600]': 1}
    """
    keys = sorted({key for run in runs for key in run.settings} - IDENTITY_VARIES)

    def value(run, key):
        return json.dumps(run.settings.get(key), sort_keys=True)

    differing = [key for key in keys if len({value(run, key) for run in runs}) > 1]
    if not differing:
        return {label: runs}
    variants = defaultdict(list)
    for run in runs:
        named = ", ".join(f"{key}={value(run, key)}" for key in differing)
        variants[f"{label} [{named}]"].append(run)
    logger.warning("runs of %s differ in %s besides lr and seed: reported apart", label,
                   ", ".join(differing))
    return dict(sorted(variants.items()))


# ---------------------------------------------------------------------------- format
def digits_of(unit):
    """Printed decimals: 2 for a percentage, 4 for a plain number (MTWV)."""
    return 2 if unit else 4


def fraction_header(fraction):
    """``1 %`` for 0.01; ``zero-shot`` for None.

    Example
    -------
    >>> fraction_header(0.01), fraction_header(1.0), fraction_header(None)
    ('1 %', '100 %', 'zero-shot')
    """
    return "zero-shot" if fraction is None else f"{fraction * 100:g} %"


def updates_text(updates):
    """The ⌚ of a cell: thousands at a 0.1k resolution as the paper prints them; counts
    under 100 (the embedded default's short budgets) exactly, where 0.1k would read 0.

    Example
    -------
    >>> updates_text(1234), updates_text(150), updates_text(40)
    ('⌚1.2k', '⌚0.1k', '⌚40')
    """
    return f"⌚{updates / 1000:.1f}k" if updates >= 100 else f"⌚{updates:.0f}"


def _number(value, digits):
    return "–" if value is None else f"{value:.{digits}f}"


def cell_text(cell, digits, bold, show_seeds):
    score = f"{cell.mean_test:.{digits}f} ± {_number(cell.std_test, digits)}"
    text = f"**{score}**" if bold else score
    if cell.mean_updates is not None:
        text += f" {updates_text(cell.mean_updates)}"
    return text + (f" n={cell.seeds}" if show_seeds else "")


def _lr_text(lr):
    return "–" if lr is None else f"{lr:g}"


def block_markdown(block):
    """One block: the strategies × fractions table and what its numbers mean."""
    digits = digits_of(block.unit)
    fractions = block.fractions
    show_seeds = len({cell.seeds for cell in block.cells.values()}) > 1
    best = {fraction: block.best_labels(fraction, digits) for fraction in fractions}
    lines = [f"### {block.title} ({block.metric})", "",
             "| strategy | " + " | ".join(map(fraction_header, fractions)) + " |",
             "|---|" + "---|" * len(fractions)]
    for label in block.labels:
        row = []
        for fraction in fractions:
            cell = block.cells.get((label, fraction))
            row.append("–" if cell is None else
                       cell_text(cell, digits, label in best[fraction], show_seeds))
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    better = "higher" if block.direction == "max" else "lower"
    unit = f" in {block.unit}" if block.unit else " (a plain number)"
    notes = [f"Test {block.metric}{unit}, {better} is better (direction: {block.direction})."]
    if block.upstream_mode == TRAINABLE:
        notes.append("The encoder was fine-tuned with the head (upstream_mode trainable), not "
                     "frozen as SUPERB probes it: compare these runs with each other only.")
    resolutions = sorted({r for cell in block.cells.values() for r in cell.resolutions})
    if not block.zero_shot and resolutions:
        notes.append("⌚: updates-to-best at a resolution of "
                     f"{' / '.join(map(str, resolutions))} updates.")
    notes.extend(_lr_notes(block))
    if block.zero_shot:
        layers = [f"{label} " + ", ".join(str(run.chosen_layer) for run in cell.runs)
                  for label in block.labels if (cell := block.cells.get((label, None)))]
        notes.append(f"No training: layer chosen on dev: {'; '.join(layers)}.")
    return "\n".join(lines + [""] + notes) + "\n"


def _lr_notes(block):
    tried = sorted({lr for cell in block.cells.values() for lr in cell.lr_means if lr is not None})
    if not tried:
        return []
    if all(len(cell.lr_means) == 1 for cell in block.cells.values()):
        return [f"lr: {', '.join(map(_lr_text, tried))}."]
    fractions = block.fractions
    lines = [f"lr picked per cell on the mean best dev {block.dev_metric} over seeds (tried: "
             f"{', '.join(map(_lr_text, tried))}; {block.left_out} runs of other lrs left out):",
             "", "| lr | " + " | ".join(map(fraction_header, fractions)) + " |",
             "|---|" + "---|" * len(fractions)]
    for label in block.labels:
        row = [_lr_text(block.cells[label, f].lr) if (label, f) in block.cells else "–"
               for f in fractions]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return ["\n".join(lines)]


def profile_lines(collection):
    counts = defaultdict(int)
    for run in collection.runs:
        counts[str(run.profile)] += 1
    listed = ", ".join(f"{name} ({n} run{'s' * (n != 1)})" for name, n in sorted(counts.items()))
    lines = [f"Profile{'s' * (len(counts) > 1)} of the runs: {listed}."]
    if "embedded" in counts:
        lines.append(f"**{EMBEDDED_NOTE}**")
    return lines


def table2_markdown(collection, blocks, isotropy):
    """The whole ``table2.md``."""
    parts = ["# Table 2: downstream scores before and after rewiring", "",
             *profile_lines(collection), "",
             "Each cell: mean test score over seeds ± sample std over seeds (– for one seed), "
             "at each run's best dev checkpoint; ⌚ = mean updates to that checkpoint. "
             "Bold: the best of its column. – alone: no run.", ""]
    parts.extend(block_markdown(block) for block in blocks)
    if isotropy:
        parts.append(isotropy_markdown(isotropy))
    if collection.skipped:
        parts.append(f"Skipped {len(collection.skipped)} unreadable file(s):\n\n" + "\n".join(
            f"* `{path}`: {reason}" for path, reason in collection.skipped) + "\n")
    return "\n".join(parts)


def _csv_text(columns, rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return buffer.getvalue()


def table2_rows(blocks):
    """One dict per family × task × fraction × strategy (columns :data:`TABLE2_COLUMNS`)."""
    rows = []
    for block in blocks:
        for label in block.labels:
            for fraction in block.fractions:
                cell = block.cells.get((label, fraction))
                if cell is None:
                    continue
                rows.append({
                    "family": block.family, "task": block.task, "fraction": fraction,
                    "strategy": label, "encoder_content_hash": cell.content_hash,
                    "metric": block.metric, "unit": block.unit, "direction": block.direction,
                    "mean_test": cell.mean_test, "std_test": cell.std_test,
                    "mean_updates_to_best": cell.mean_updates, "seeds": cell.seeds,
                    "lr": cell.lr, "best_step_resolution": "/".join(map(str, cell.resolutions)),
                    "profile": "/".join(cell.profiles), "upstream_mode": block.upstream_mode,
                })
    return rows


# ---------------------------------------------------------------------------- isotropy
def isotropy_rows(collection, names):
    """One dict per representations record (columns :data:`ISOTROPY_COLUMNS`), with the
    record itself under ``"record"`` for the t-SNE figure."""
    rows = []
    for item in collection.representations:
        separation = item.class_separation or {}
        rows.append({
            "encoder": names.family(item.family_hash), "strategy": names.label(item),
            "dataset": item.task, "log10_is": item.log10_isotropy, "items": item.items,
            "layer": item.layer, "silhouette": separation.get("silhouette"),
            "knn_accuracy": separation.get("knn_accuracy"), "chance": separation.get("chance"),
            "record": item,
        })
    return sorted(rows, key=lambda r: (r["encoder"], task_key(r["dataset"]),
                                       strategy_key(r["strategy"]), str(r["layer"])))


def isotropy_markdown(rows):
    lines = ["## Isotropy and class separation", "",
             "| encoder | strategy | dataset | layer | log10 IS | silhouette | k-NN acc (chance) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        knn = ("–" if row["knn_accuracy"] is None else
               f"{100 * row['knn_accuracy']:.1f} % ({_percent(row['chance'])})")
        lines.append(f"| {row['encoder']} | {row['strategy']} | {row['dataset']} | "
                     f"{'–' if row['layer'] is None else row['layer']} | "
                     f"{row['log10_is']:.3f} | {_number(row['silhouette'], 3)} | {knn} |")
    return "\n".join(lines) + "\n"


def _percent(value):
    return "chance –" if value is None else f"chance {100 * value:.1f} %"


# ---------------------------------------------------------------------------- write
class WrittenReport(dict):
    """``{file name: path}`` of what :func:`write_report` wrote; ``skipped`` lists the
    ``(path, reason)`` of the files left out."""

    def __init__(self, paths, skipped):
        super().__init__(paths)
        self.skipped = skipped


def write_report(results_root, output_folder):
    """Writes ``table2.md``, ``table2.csv``, ``isotropy.csv`` (when representations exist)
    and the figures into ``output_folder``.

    Arguments
    ---------
    results_root : path
        Searched at any depth for ``results.json``, ``rewiring.json`` and
        ``representations.json``.
    output_folder : path
        Created when missing; every file is written atomically.

    Returns
    -------
    WrittenReport
        ``{file name: path}`` of every file written, with ``.skipped``.
    """
    from rewire_lobes.analysis import report_plots

    collection = collect(results_root)
    names = name_encoders(collection)
    blocks = aggregate(collection, names)
    isotropy = isotropy_rows(collection, names)
    out = Path(output_folder)
    out.mkdir(parents=True, exist_ok=True)
    written = {}

    def text(name, content):
        write_text_atomic(out / name, content)
        written[name] = out / name

    text("table2.md", table2_markdown(collection, blocks, isotropy))
    text("table2.csv", _csv_text(TABLE2_COLUMNS, table2_rows(blocks)))
    if isotropy:
        text("isotropy.csv", _csv_text(ISOTROPY_COLUMNS, [
            {key: row[key] for key in ISOTROPY_COLUMNS} for row in isotropy]))
    rewirings = unique_rewirings(collection.rewirings)
    for path in [*report_plots.plot_curves(blocks, out),
                 *report_plots.plot_layer_weights(blocks, out),
                 report_plots.plot_rewiring_loss(rewirings, names, out),
                 *report_plots.plot_tsne(isotropy, out)]:
        if path is not None:
            written[Path(path).name] = Path(path)
    return WrittenReport(written, list(collection.skipped))


def unique_rewirings(rewirings):
    """One record per rewired encoder (a copied record is read twice, drawn once)."""
    return list({item.content_hash: item for item in reversed(rewirings)}.values())[::-1]


def _optional_float(value):
    return None if value is None else float(value)
