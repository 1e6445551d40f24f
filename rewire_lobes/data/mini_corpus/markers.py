"""Completion markers: ``_generation/<corpus>.json``, written once a corpus is complete.

A marker is the corpus's generation manifest (every file with its labels, voice and
noise) plus the fingerprint (generator version, seed, scale) it was generated with; a
corpus counts as complete only when its marker has the fingerprint asked for.
"""

import json
from pathlib import Path

GENERATOR_VERSION = "1.0"
MARKER_FOLDER = "_generation"


def generation_fingerprint(seed, scale):
    """What a marker must record for a corpus to be reused: generator version, seed, scale.

    Example
    -------
    >>> generation_fingerprint(7, 1)
    {'generator_version': '1.0', 'seed': 7, 'scale': 1.0}
    """
    return {"generator_version": GENERATOR_VERSION, "seed": int(seed), "scale": float(scale)}


def marker_path(root, name):
    """``<root>/_generation/<name>.json``."""
    return Path(root) / MARKER_FOLDER / f"{name}.json"


def read_marker(root, name):
    """The marker of corpus ``name`` under ``root`` as a dict, or None if absent or unreadable."""
    try:
        return json.loads(marker_path(root, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

