"""A trained encoder written as an encoder directory with the record of how it was made.

Rewiring (``rewiring.json``) and multi-task fine-tuning (``mtl.json``) both export their
encoder this way, so that every task recipe, the grid and the report take it as one more
encoder (``rewire_lobes.runs.provenance`` reads the record).
"""

import shutil
from pathlib import Path

from rewire_lobes.io_utils import atomic_dir, write_json_atomic


def export_with_record(upstream, directory, record_file, record, extra_files=None):
    """Writes ``upstream`` (HF layout), the files of ``extra_files`` (``{name in the export:
    file to copy}``) and, last, ``record`` as ``record_file``; all under a temporary name
    renamed when complete, so a crash leaves no half-written encoder."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        staged = Path(upstream.save_pretrained(tmp / "encoder"))
        for item in staged.iterdir():
            item.rename(tmp / item.name)
        staged.rmdir()
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
        write_json_atomic(tmp / record_file, record)
    return directory
