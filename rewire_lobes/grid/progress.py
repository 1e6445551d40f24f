"""What the runner tells: a line per finished cell, and ``<R>/grid/summary.json``.

``[done/total] <cell name>: ok|FAILED|reused in 12.3 s (ETA 3 min 20 s)``, the ETA from
the mean time of the cells run so far, the cells left and the parallel jobs.
"""

import time

from rewire_lobes.io_utils import write_json_atomic

OK, REUSED, FAILED, PENDING, RUNNING = "ok", "reused", "FAILED", "pending", "running"
SUCCEEDED = (OK, REUSED)


def duration(seconds):
    """``12 s``, ``3 min 20 s``, ``2 h 05 min``.

    Example
    -------
    >>> duration(12.4), duration(200), duration(7500)
    ('12 s', '3 min 20 s', '2 h 05 min')
    """
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def eta(run_seconds, left, jobs):
    """Seconds until the grid ends: the mean of ``run_seconds`` per cell, for ``left``
    cells, ``jobs`` at a time; None before any cell ran.

    Example
    -------
    >>> eta([10.0, 30.0], left=4, jobs=2)
    40.0
    """
    if not run_seconds:
        return None
    return sum(run_seconds) / len(run_seconds) * left / max(1, min(jobs, left or 1))


class Entry:
    """One cell as the summary shows it (a placeholder until its encoder is there)."""

    def __init__(self, cell, log=None):
        self.cell, self.log = cell, log
        self.status, self.seconds, self.command, self.message = PENDING, None, None, None

    def as_json(self):
        cell = self.cell
        return {"name": cell.name, "kind": cell.kind, "task": cell.task,
                "strategy": cell.strategy, "lr": cell.lr, "status": self.status,
                "seconds": None if self.seconds is None else round(self.seconds, 1),
                "log": None if self.log is None else str(self.log), "output": str(cell.output),
                "command": self.command, "message": self.message}


class Progress:
    """Counts finished cells, prints their lines and keeps summary.json current."""

    def __init__(self, summary_path, jobs, command=None, out=print):
        self.summary_path, self.jobs, self.out = summary_path, jobs, out
        self.entries, self.run_seconds, self.finished = [], [], 0
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.command = command

    def add(self, entries):
        self.entries.extend(entries)

    def finish(self, entry, status, seconds=None, message=None):
        entry.status, entry.seconds, entry.message = status, seconds, message
        self.finished += 1
        if status in (OK, FAILED) and seconds is not None:  # None: it never ran
            self.run_seconds.append(seconds)
        line = f"[{self.finished}/{len(self.entries)}] {entry.cell.name}: {status}"
        if seconds is not None:
            line += f" in {seconds:.1f} s"
        left = len(self.entries) - self.finished
        remaining = eta(self.run_seconds, left, self.jobs)
        if left and remaining is not None:
            line += f" (ETA {duration(remaining)})"
        self.out(line)
        self.write()

    def write(self, done=False):
        counts = {}
        for entry in self.entries:
            key = entry.status.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
        write_json_atomic(self.summary_path, {
            "command": self.command,
            "started": self.started,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "finished": done,
            "counts": counts,
            "cells": [entry.as_json() for entry in self.entries],
        })
