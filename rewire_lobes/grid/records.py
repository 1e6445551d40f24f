"""Done-records: what lets a rerun of the grid skip the cells that finished.

A cell's key is the sha256 of its script and yaml (their contents), the fingerprint of
the encoder it reads and its whole argument list: another setting, another encoder or
changed code is another key, hence a cell to run. A finished cell writes
``<R>/grid/done/<key>.json`` holding the sha256 of its output file; a rerun reuses the
cell when that record exists and the output is still there, unchanged. A cell killed
mid-run has no record and runs again (the recipe then resumes from its checkpoints).
"""

import hashlib
import json
import time
from pathlib import Path

from rewire_lobes.io_utils import write_json_atomic


def file_sha256(path):
    """The sha256 of a file's bytes, or None when it is not there."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _fingerprint(source):
    from rewire_lobes.runs.cli import encoder_fingerprint  # loads torch: only when needed

    return encoder_fingerprint(source)


def cell_key(cell, programs, fingerprint=_fingerprint):
    """The sha256 naming a cell's done-record (see the module docstring)."""
    parts = {
        "kind": cell.kind,
        "script": [cell.program.script, file_sha256(programs.path(cell.program.script))],
        "hparams": cell.program.hparams and [
            cell.program.hparams, file_sha256(programs.path(cell.program.hparams))],
        "encoder_fingerprint": fingerprint(cell.encoder),
        "args": list(cell.args),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class DoneRecords:
    """The done-records of one output root (``<R>/grid/done/``)."""

    def __init__(self, output_root, programs):
        self.folder = Path(output_root) / "grid" / "done"
        self.programs = programs

    def path(self, cell):
        return self.folder / f"{cell_key(cell, self.programs)}.json"

    def finished(self, cell):
        """True when the cell finished before and its output is there, unchanged."""
        path = self.path(cell)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return False
        return record.get("output_sha256") is not None and \
            record["output_sha256"] == file_sha256(cell.output)

    def record(self, cell, command, seconds):
        """Writes the cell's done-record; its output file must exist."""
        write_json_atomic(self.path(cell), {
            "cell": cell.name,
            "kind": cell.kind,
            "command": command,
            "output": str(cell.output),
            "output_sha256": file_sha256(cell.output),
            "seconds": round(seconds, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
