"""The two programs the mini corpus is synthesised with: finding espeak-ng and sox, running them."""

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile

INSTALL_COMMAND = "sudo apt-get install -y espeak-ng sox"


class MissingToolError(RuntimeError):
    """espeak-ng or sox is not installed; the message gives the install command."""


@dataclasses.dataclass(frozen=True)
class Tools:
    """Paths and versions of the two programs the generator runs."""

    espeak: str
    sox: str
    versions: dict


def find_tools():
    """Locates espeak-ng and sox and reads their versions.

    Returns
    -------
    Tools

    Raises
    ------
    MissingToolError
        When either program is not on ``PATH``; the message names the install command.
    """
    paths = {name: shutil.which(name) for name in ("espeak-ng", "sox")}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        raise MissingToolError(
            f"The mini corpus is synthesised with espeak-ng and sox, but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed (not found on PATH). "
            f"Install them with:\n    {INSTALL_COMMAND}"
        )
    versions = {
        "espeak-ng": _first_line([paths["espeak-ng"], "--version"]),
        "sox": _first_line([paths["sox"], "--version"]),
        "numpy": np.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
    }
    return Tools(espeak=paths["espeak-ng"], sox=paths["sox"], versions=versions)


def _first_line(command):
    """First line of a program's ``--version`` output, without machine-specific paths.

    Example
    -------
    >>> _first_line(["printf", "/usr/bin/sox:      SoX v14.4.2\\n"])
    'SoX v14.4.2'
    """
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).strip()
    if not text:
        return "unknown"
    line = re.sub(r"\s+Data at:.*", "", text.splitlines()[0])  # espeak-ng names its data folder
    return re.sub(r"^/\S*:\s*", "", line).strip()  # sox starts with its own path


def run_tool(command, data):
    """Runs ``command`` (an argument list, never a shell) with ``data`` on stdin."""
    done = subprocess.run(command, input=data, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(command[0]).name} failed (exit {done.returncode}): "
            f"{done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout

