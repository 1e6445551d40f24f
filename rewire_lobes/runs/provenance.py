"""Where an encoder comes from, read from the record written beside it.

A rewired encoder directory holds ``rewiring.json`` (written by
``rewire_lobes.rewiring.brain.RewireBrain.export``): its strategy, its source encoder and
that source's content hash, the updates, the profile and the hyperparameters. A
downstream run takes its ``strategy`` from there instead of from a hand-typed label, and
``results.json`` carries the record's sha256 so that a report joins runs on it, not on
folder names. A multi-task fine-tuned encoder holds ``mtl.json`` instead (written by
``rewire_lobes.multitask.brain``): its strategy is ``mtl`` (from a baseline) or
``<strategy>+mtl`` (from a rewired encoder), and its ``source_content_hash`` is the
family's root (the baseline the chain started from), so that the report groups it with
its family. An encoder without a record is a ``baseline``.
"""

import hashlib
import json
from pathlib import Path

from rewire_lobes.errors import OptionError

RECORD_FILE = "rewiring.json"
MTL_RECORD_FILE = "mtl.json"
BASELINE = "baseline"
# The rewiring recipes (hparams/<strategy>.yaml), in the order tables list them.
REWIRING_STRATEGIES = ("twin", "neutral", "mixed", "perturb")


def record_path(source):
    """The record of the encoder directory ``source`` (``mtl.json``, else
    ``rewiring.json``), or None when it has neither."""
    folder = Path(str(source)).expanduser()
    for name in (MTL_RECORD_FILE, RECORD_FILE):
        if (folder / name).is_file():
            return folder / name
    return None


def read_provenance(source):
    """The summary of the encoder's record (:func:`record_path`), or None when there is none."""
    path = record_path(source)
    if path is None:
        return None
    raw = path.read_bytes()
    try:
        record = json.loads(raw)
    except ValueError as err:
        raise OptionError(f"{path}: not a readable encoder record ({err})") from None
    if not isinstance(record, dict) or "strategy" not in record:
        raise OptionError(f"{path}: the encoder record names no strategy")
    return {
        "record": str(path.resolve()),
        "record_sha256": hashlib.sha256(raw).hexdigest(),
        "strategy": record["strategy"],
        "profile": record.get("profile"),
        "embedded_encoder": record.get("embedded_encoder"),
        "source": record.get("source"),
        "source_content_hash": record.get("source_content_hash"),
        "content_hash": record.get("content_hash"),
        "updates": record.get("updates"),
        "tasks": record.get("tasks"),
        "data": record.get("data"),  # a rewiring's subset file, carried on by fine-tuning
    }


def resolve_strategy(given, source):
    """The strategy label of a run on ``source``; a ``given`` label must agree with the record.

    ``given`` is None (or ``auto``) when the user did not pass ``--strategy``.
    """
    record = read_provenance(source)
    found = record["strategy"] if record else BASELINE
    if given in (None, "auto") or str(given) == found:
        return found
    if record:
        raise OptionError(
            f"--strategy {given} contradicts {record['record']}, which says this encoder was "
            f"rewired with '{found}'. Drop --strategy: it is read from the record."
        )
    raise OptionError(
        f"--strategy {given}: {source} has no {RECORD_FILE} (nor {MTL_RECORD_FILE}), so it is "
        "the baseline encoder. "
        "A rewired encoder is the upstream/ folder that the rewiring recipe exports; "
        "drop --strategy."
    )
