"""The embedded default: what a recipe uses when the user passes nothing.

The default encoder lives in ``assets/encoder`` (a small SSL encoder shipped with the
repository). Until it is there, recipes fall back to a randomly initialised small
encoder written once under the output root, and say so loudly: the recipes then run
end to end, but their scores mean nothing.
"""

import fcntl
import logging
from pathlib import Path

from rewire_lobes.embedded import (  # noqa: F401 (re-exported: the recipes' defaults)
    DEFAULT_DATA_FOLDER,
    DEFAULT_UPSTREAM,
    FALLBACK_NAME,
    is_embedded_data,
    repo_path,
)

logger = logging.getLogger(__name__)


def resolve_upstream_source(source, fallback_folder):
    """The encoder directory or hub id to load for ``source``.

    * an existing directory (relative to the working directory or to the repository) is
      returned as a path;
    * the embedded default ``assets/encoder``, when missing, is replaced by a random
      small encoder created (once, seeded) in ``<fallback_folder>/random_small_encoder``,
      with a warning;
    * anything else (a hub id, a wrong path) is returned unchanged, for ``SSLUpstream``
      to load or to reject with a clear message.

    Safe to call from several processes at once: creation holds a file lock.
    """
    found = repo_path(source)
    if found.exists():
        return str(found)
    if found != repo_path(DEFAULT_UPSTREAM):
        return str(source)

    fallback = Path(fallback_folder) / FALLBACK_NAME
    logger.warning(
        "The embedded encoder %s is not there yet; using a RANDOMLY INITIALISED small "
        "encoder at %s instead. Everything runs, but scores are meaningless. Pass "
        "--upstream_source <encoder dir or hub id> for real results.",
        DEFAULT_UPSTREAM,
        fallback,
    )
    if not (fallback / "config.json").exists():
        _create_fallback(fallback)
    return str(fallback.resolve())


def _create_fallback(fallback):
    from rewire_lobes.upstream.encoder import save_random_encoder  # loads transformers: only when needed

    fallback.parent.mkdir(parents=True, exist_ok=True)
    with open(fallback.parent / f".{fallback.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (fallback / "config.json").exists():  # another process may have made it
            save_random_encoder(fallback, size="small", seed=0)


PROFILES = ("embedded", "paper")


def is_embedded_encoder(source):
    """True for the shipped encoder, its random stand-in, and encoders rewired from them.

    A rewired encoder's ``rewiring.json`` says whether it descends from the embedded one
    (``embedded_encoder``); a record without that field is followed to its ``source``.
    """
    from rewire_lobes.runs.provenance import read_provenance  # no cycle at import time

    path = Path(str(source)).expanduser()
    if path.name == FALLBACK_NAME or repo_path(path) == repo_path(DEFAULT_UPSTREAM):
        return True
    record = read_provenance(path)
    if record is None:
        return False
    if record.get("embedded_encoder") is not None:
        return bool(record["embedded_encoder"])
    parent = record.get("source")
    return bool(parent) and repo_path(parent) != repo_path(path) and is_embedded_encoder(parent)


def choose_profile(requested, upstream_source, data_folder):
    """``(profile, reason)``: ``embedded`` for the embedded encoder or corpus, else ``paper``.

    ``requested`` is the yaml's or the user's ``run_profile``: ``auto`` chooses; ``embedded``
    and ``paper`` are taken as they are.
    """
    requested = str(requested)
    if requested in PROFILES:
        return requested, "requested"
    if requested != "auto":
        from rewire_lobes.errors import OptionError

        raise OptionError(f"--run_profile must be auto, embedded or paper, got {requested!r}")
    if is_embedded_encoder(upstream_source):
        return "embedded", f"the encoder {upstream_source} is the embedded one"
    if data_folder is not None and is_embedded_data(data_folder):
        return "embedded", f"the data folder {data_folder} is the mini corpus"
    return "paper", "a real encoder on real data"


def ensure_default_data(data_folder, expected, corpus):
    """Generates the mini ``corpus`` when ``data_folder`` is the embedded ``data/mini``.

    ``expected`` is the sub-folder the prepare script needs (e.g.
    ``speech_commands_v0.01``). A user's own ``--data_folder`` is never written to: the
    prepare script then reports what is missing.
    """
    if not is_embedded_data(data_folder):
        return
    from rewire_lobes.data.mini_corpus import ensure_mini_corpus  # imported only when needed

    root = repo_path(DEFAULT_DATA_FOLDER)
    # A no-op when the corpus is complete; regenerates a half-written one.
    ensure_mini_corpus(root, corpora=[corpus])
    if not (repo_path(data_folder) / expected).exists():
        from rewire_lobes.errors import DataFolderError

        raise DataFolderError(
            f"{data_folder}: the mini {corpus} corpus lacks {expected} after generating it; "
            f"delete {root} to regenerate it, or pass --data_folder with the real corpus"
        )
