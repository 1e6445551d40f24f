"""Runs a grid: rewiring cells, then downstream cells, then analysis cells.

A small pool: at most ``jobs`` cells at a time (one GPU each with ``gpus``), the next
ready cell of the earliest stage first. A downstream cell waits for its encoder (a
rewired strategy's rewiring cell; the baseline's ASR cells wait for every rewiring, whose
utterances they leave out too), and is skipped when that rewiring failed. An analysis
cell waits for the downstream cells of its encoder and task, and runs once one of them
succeeded. A cell whose done-record matches (``records.py``) is reused without running.

One failing cell stops nothing else; at the end the failed cells are listed with their
logs (``<R>/grid/logs/<cell name>.log``) and the run returns 1 (0 when all is well).
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from pathlib import Path

from rewire_lobes.errors import UserError
from rewire_lobes.grid.cells import ANALYSIS, DOWNSTREAM, EXCLUDING_TASKS, REWIRE, _encoder_id
from rewire_lobes.grid.progress import (
    FAILED, OK, PENDING, REUSED, RUNNING, SUCCEEDED, Entry, Progress,
)
from rewire_lobes.grid.records import DoneRecords
from rewire_lobes.runs.provenance import BASELINE

STAGES = {REWIRE: 0, DOWNSTREAM: 1, ANALYSIS: 2}
ENCODER_FAILED = "skipped: encoder failed"
TAIL_LINES = 15


class RunnerBusyError(UserError, RuntimeError):
    """Another grid runner works on the same output root."""


class Group:
    """Cells of one strategy and task, made once the entries they ``need`` finished."""

    def __init__(self, kind, strategy, task, needs, entries, must_succeed=True,
                 excludes=False):
        self.kind, self.strategy, self.task = kind, strategy, task
        self.needs, self.entries, self.must_succeed = needs, entries, must_succeed
        self.excludes = excludes  # the baseline's ASR runs: the rewired encoders' utterances

    def ready(self):
        return all(entry.status not in (PENDING, RUNNING) for entry in self.needs)


class GridRunner:
    """Runs the cells of ``grid`` with ``launcher``.

    Arguments
    ---------
    grid : rewire_lobes.grid.cells.Grid
    launcher
        ``rewire_lobes.grid.launchers``: ``start(command, cwd, env, log) -> handle``.
    jobs : int
        Cells at a time (``len(gpus)`` when ``gpus`` are given).
    gpus : list of str
        GPU ids: each running cell gets one (``CUDA_VISIBLE_DEVICES``).
    out : callable
        Prints a line.
    command : list of str, optional
        The grid's own command line, for summary.json.
    """

    def __init__(self, grid, launcher, jobs=1, gpus=(), out=print, command=None):
        self.grid, self.launcher, self.out = grid, launcher, out
        self.gpus = [str(gpu) for gpu in gpus]
        self.jobs = len(self.gpus) if self.gpus else max(1, int(jobs))
        self.free_gpus = list(self.gpus)
        self.folder = grid.output_root / "grid"
        self.records = DoneRecords(grid.output_root, grid.programs)
        self.progress = Progress(self.folder / "summary.json", self.jobs, command, out)
        self.threads = getattr(launcher, "threads", None) or max(1, (os.cpu_count() or 1)
                                                                  // self.jobs)
        self.queue, self.running, self.groups, self.encoder_ids = [], {}, [], {}
        self.rewiring = {}
        self._order = 0

    # ------------------------------------------------------------------ plan
    def plan(self):
        """Every cell of the grid as an entry (placeholders where the encoder is unknown)."""
        grid = self.grid
        self.rewiring = {s: Entry(grid.rewiring_cell(s)) for s in grid.rewired_here()}
        self.progress.add(self.rewiring.values())
        rewired = set(self.rewiring)
        others = [s for s in grid.strategies if s != BASELINE]
        for strategy in grid.strategies:
            for task in grid.tasks:
                excludes = strategy == BASELINE and task in EXCLUDING_TASKS and bool(others)
                if strategy in rewired:
                    needs = [self.rewiring[strategy]]
                else:
                    needs = list(self.rewiring.values()) if excludes else []
                known = None if strategy in rewired else self.encoder_id(strategy)
                extra = {"exclude_utterances": "<the rewired encoders' utterances>"} \
                    if excludes else None
                cells = grid.downstream_cells(strategy, task, known, extra)
                if needs or excludes:  # made again when ready: names and arguments change
                    cells = [dataclasses.replace(cell, placeholder=True) for cell in cells]
                entries = [Entry(cell) for cell in cells]
                self.progress.add(entries)
                self.groups.append(Group(DOWNSTREAM, strategy, task, needs, entries,
                                         must_succeed=strategy in rewired, excludes=excludes))
                if task in grid.analysed_tasks():
                    analysis = Entry(grid.analysis_cell(strategy, task, known))
                    self.progress.add([analysis])
                    self.groups.append(Group(ANALYSIS, strategy, task, entries, [analysis]))

    def encoder_id(self, strategy):
        if strategy not in self.encoder_ids:
            self.encoder_ids[strategy] = (self.grid.baseline_id if strategy == BASELINE
                                          else _encoder_id(self.grid.encoder_of(strategy)))
        return self.encoder_ids[strategy]

    def make_cells(self, group, write=True):
        """The real cells of a group whose needs finished."""
        grid = self.grid
        if group.kind == DOWNSTREAM:
            extra = None
            if group.excludes:
                encoders = [grid.encoder_of(e.cell.strategy) for e in group.needs
                            if e.status in SUCCEEDED]
                encoders += [grid.encoders[s] for s in grid.strategies if s in grid.encoders]
                extra = grid.baseline_exclusions(encoders, write=write)
            return grid.downstream_cells(group.strategy, group.task,
                                         self.encoder_id(group.strategy), extra)
        first = next(e for e in group.needs if e.status in SUCCEEDED)
        results = json.loads(Path(first.cell.output).read_text(encoding="utf-8"))
        return [grid.analysis_cell(group.strategy, group.task,
                                   self.encoder_id(group.strategy), results)]

    # ------------------------------------------------------------------ running
    def run(self):
        """Runs every cell; returns 0 when all succeeded, else 1 (after listing failures)."""
        with self.lock():
            self.plan()
            self.progress.write()
            for entry in self.rewiring.values():
                self.enqueue(entry)
            finished = False  # an interrupted run stopped its cells: summary.json says so
            try:
                while True:
                    self.release()
                    self.start_ready()
                    if not self.running:
                        if not self.queue:
                            break
                        continue
                    time.sleep(self.launcher.poll_seconds)
                    self.collect()
                if self.groups:
                    raise RuntimeError(f"cells never made: {[g.entries for g in self.groups]}")
                finished = True
            except BaseException:
                self.stop()
                raise
            finally:
                self.progress.write(done=finished)
        return self.report()

    @contextlib.contextmanager
    def lock(self):
        path = self.folder / "runner.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunnerBusyError(f"{self.grid.output_root}: another run_grid.py is running "
                                      f"there ({path} is locked); wait for it or stop it") from None
            yield

    def release(self):
        """Makes the cells of every group whose needs finished (or skips them)."""
        changed = True
        while changed:
            changed = False
            for group in [g for g in self.groups if g.ready()]:
                self.groups.remove(group)
                changed = True
                reason = self.skip_reason(group)
                if reason:
                    for entry in group.entries:
                        self.progress.finish(entry, reason)
                    continue
                try:
                    cells = self.make_cells(group)
                except (UserError, OSError, ValueError) as err:  # e.g. an unreadable results.json
                    for entry in group.entries:
                        self.progress.finish(entry, FAILED, message=str(err))
                    continue
                for entry, cell in zip(group.entries, cells, strict=True):
                    entry.cell = cell
                    self.enqueue(entry)

    def skip_reason(self, group):
        if not group.must_succeed:
            return None
        if group.kind == DOWNSTREAM:
            return None if all(e.status in SUCCEEDED for e in group.needs) else ENCODER_FAILED
        if any(e.status == ENCODER_FAILED for e in group.needs):
            return ENCODER_FAILED
        if not any(e.status in SUCCEEDED for e in group.needs):
            return f"skipped: no {group.task} run succeeded"
        return None

    def enqueue(self, entry):
        entry.log = self.folder / "logs" / f"{entry.cell.name}.log"
        entry.command = self.grid.programs.command(entry.cell.program, entry.cell.args)
        start = time.time()
        if self.records.finished(entry.cell):
            self.progress.finish(entry, REUSED, time.time() - start)
            return
        self._order += 1
        self.queue.append((STAGES[entry.cell.kind], self._order, entry))

    def start_ready(self):
        while self.queue and len(self.running) < self.jobs:
            item = min(self.queue, key=lambda queued: queued[:2])
            self.queue.remove(item)
            entry = item[2]
            env = {}
            if "OMP_NUM_THREADS" not in os.environ:
                env["OMP_NUM_THREADS"] = str(self.threads)
            gpu = self.free_gpus.pop(0) if self.gpus else None
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            try:
                handle = self.launcher.start(entry.command, self.grid.programs.root, env,
                                             entry.log)
            except Exception as err:  # e.g. a job the cluster refused: the others go on
                if gpu is not None:
                    self.free_gpus.append(gpu)
                self.progress.finish(entry, FAILED, 0.0, f"could not start: {err}")
                continue
            entry.status = RUNNING
            self.running[id(entry)] = (entry, handle, time.time(), gpu)
            self.progress.write()

    def collect(self):
        for key, (entry, handle, start, gpu) in list(self.running.items()):
            status = handle.poll()
            if status is None:
                continue
            del self.running[key]
            if gpu is not None:
                self.free_gpus.append(gpu)
            seconds = time.time() - start
            output = Path(entry.cell.output)
            if status == 0 and output.is_file():
                self.records.record(entry.cell, entry.command, seconds)
                self.progress.finish(entry, OK, seconds)
            else:
                message = (f"exit status {status}" if status != 0
                           else f"exited 0 but wrote no {output}")
                self.progress.finish(entry, FAILED, seconds, message)

    def stop(self):
        """Stops the running cells (the runner was interrupted); they rerun next time."""
        for entry, handle, _, _ in self.running.values():
            handle.kill()
            entry.status = PENDING
        self.running.clear()

    # ------------------------------------------------------------------ report
    def report(self):
        failed = [e for e in self.progress.entries if e.status == FAILED]
        skipped = [e for e in self.progress.entries if e.status.startswith("skipped")]
        counts = {}
        for entry in self.progress.entries:
            counts[entry.status] = counts.get(entry.status, 0) + 1
        self.out("grid: " + ", ".join(f"{n} {status}" for status, n in counts.items())
                 + f"; summary in {self.progress.summary_path}")
        if not failed and not skipped:
            return 0
        for entry in failed:
            lines = tail(entry.log, TAIL_LINES)
            where = f"; log: {entry.log}" if entry.log and Path(entry.log).exists() else ""
            self.out(f"\nFAILED {entry.cell.name} ({entry.message}){where}")
            for line in lines:
                self.out(f"    {line}")
        return 1


def tail(path, lines):
    """The last ``lines`` lines of a text file (none when it is not there)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, TypeError):
        return []
    return text.splitlines()[-lines:]


def dry_run(grid, out=print):
    """Prints every cell and its command, marking those a run would reuse; runs nothing."""
    runner = GridRunner(grid, launcher=None, out=out)
    runner.plan()
    for group in runner.groups:
        if not group.needs:
            for entry, cell in zip(group.entries, runner.make_cells(group, write=False)):
                entry.cell = cell
    rewired = {entry.cell.strategy for entry in runner.rewiring.values()}
    for entry in runner.progress.entries:
        _print_cell(runner, entry.cell, out)
    if rewired:
        out("\n<rewired-STRATEGY>: the encoder_id of the rewired encoder, "
            "known once its rewiring cell finished.")
    out(f"{len(runner.progress.entries)} cells; logs and done-records in {runner.folder}")


def _print_cell(runner, cell, out):
    if cell.placeholder:
        state = "after the rewiring" if cell.kind == DOWNSTREAM else "after its runs"
    else:
        state = "reuse" if runner.records.finished(cell) else "run"
    command = " ".join(runner.grid.programs.command(cell.program, cell.args))
    out(f"[{cell.kind}, {state}] {cell.name}\n    {command}")
