"""Building the mini corpus: the corpus specs, :func:`ensure_mini_corpus` and its summary.

Each corpus folder is built under a temporary name and renamed when done
(``atomic_dir``), then its marker is written (:mod:`.markers`); ``MINI_CORPUS.json``
comes last. A file lock beside the root keeps concurrent callers from generating twice.
"""

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import time
from pathlib import Path

from rewire_lobes.data.mini_corpus.context import WriterContext
from rewire_lobes.data.mini_corpus.diarization import relocate_kaldi_paths, write_diarization
from rewire_lobes.data.mini_corpus.fluent_commands import write_fluent_speech_commands
from rewire_lobes.data.mini_corpus.librispeech import write_librispeech
from rewire_lobes.data.mini_corpus.markers import (
    GENERATOR_VERSION,
    generation_fingerprint,
    marker_path,
    read_marker,
)
from rewire_lobes.data.mini_corpus.quesst14 import write_quesst14
from rewire_lobes.data.mini_corpus.snips import write_snips
from rewire_lobes.data.mini_corpus.speech_commands import write_speech_commands
from rewire_lobes.data.mini_corpus.tools import find_tools
from rewire_lobes.embedded import DEFAULT_DATA_FOLDER, REPO_ROOT, is_embedded_data, repo_path
from rewire_lobes.io_utils import atomic_dir, write_json_atomic

logger = logging.getLogger(__name__)

DEFAULT_SEED = 1234
DEFAULT_FOLDER = REPO_ROOT / DEFAULT_DATA_FOLDER
SUMMARY_FILE = "MINI_CORPUS.json"


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """A corpus: its top folders under the root, its writer, and what it is built from."""

    folders: tuple
    writer: object
    requires: tuple = ()


CORPORA = {
    "librispeech": CorpusSpec(("LibriSpeech",), write_librispeech),
    "speech_commands": CorpusSpec(
        ("speech_commands_v0.01", "speech_commands_test_set_v0.01"), write_speech_commands
    ),
    "fluent_speech_commands": CorpusSpec(
        ("fluent_speech_commands_dataset",), write_fluent_speech_commands
    ),
    "snips": CorpusSpec(("SNIPS",), write_snips),
    "diarization": CorpusSpec(("diarization",), write_diarization, requires=("librispeech",)),
    "quesst14": CorpusSpec(("quesst14Database",), write_quesst14),
}


def _is_complete(root, name, fingerprint):
    marker = read_marker(root, name)
    return (
        marker is not None
        and marker.get("fingerprint") == fingerprint
        and all((Path(root) / folder).is_dir() for folder in CORPORA[name].folders)
    )


def corpus_name(name):
    """The ``CORPORA`` key for a corpus name or one of its folder names, in any case.

    Example
    -------
    >>> corpus_name("LibriSpeech"), corpus_name("speech_commands_v0.01")
    ('librispeech', 'speech_commands')
    """
    key = str(name).lower()
    for corpus, spec in CORPORA.items():
        if key == corpus or key in (folder.lower() for folder in spec.folders):
            return corpus
    raise ValueError(
        f"Unknown corpus {name!r}; choose from {list(CORPORA)} (or one of their folder names)"
    )


def _resolve_names(corpora):
    names = list(CORPORA) if corpora is None else list(dict.fromkeys(map(corpus_name, corpora)))
    ordered = []
    for name in CORPORA:  # dependency order: requirements are declared before their users
        if name in names or any(name in CORPORA[n].requires for n in names):
            ordered.append(name)
    return ordered, names


@contextlib.contextmanager
def _exclusive(root):
    """Holds a lock beside ``root`` so that concurrent callers generate only once."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_mini_corpus(
    output_folder=None, corpora=None, seed=DEFAULT_SEED, scale=1.0, workers=None, force=False
):
    """Generates the mini corpus under ``output_folder`` unless it is already complete.

    A no-op (no file written, no tool run) when every requested corpus has a marker for
    the same generator version, seed and scale. Safe against crashes (nothing half-written
    is trusted) and against concurrent callers (a file lock).

    Arguments
    ---------
    output_folder : str or Path
        Root of the mini corpus; default ``data/mini`` in the repository.
    corpora : list of str or None
        Names from ``CORPORA``; None means all six. Requirements come along
        (``diarization`` mixes the mini LibriSpeech).
    seed : int
        Seeds everything random.
    scale : float
        Multiplies the number of speakers, utterances and mixtures (1.0 is the default size).
    workers : int or None
        Threads running espeak-ng and sox; default: the number of CPU cores.
    force : bool
        Regenerate the requested corpora even if complete.

    Returns
    -------
    Path
        The root folder.
    """
    root = Path(output_folder or DEFAULT_FOLDER).expanduser().resolve()
    ordered, requested = _resolve_names(corpora)
    fingerprint = generation_fingerprint(seed, scale)
    if (
        not force
        and (root / SUMMARY_FILE).exists()
        and all(_is_complete(root, n, fingerprint) for n in ordered)
    ):
        relocate_kaldi_paths(root)
        return root

    with _exclusive(root):
        todo = [
            n
            for n in ordered
            if (force and n in requested) or not _is_complete(root, n, fingerprint)
        ]
        tools = find_tools() if todo else None
        for name in todo:
            _generate(root, name, fingerprint, tools, workers or os.cpu_count() or 1)
        _write_summary(root, fingerprint, tools)
        relocate_kaldi_paths(root)
    return root


def _generate(root, name, fingerprint, tools, workers):
    spec = CORPORA[name]
    started = time.time()
    logger.info("Generating the mini %s corpus under %s", name, root)
    marker_path(root, name).unlink(missing_ok=True)
    with contextlib.ExitStack() as stack:
        staging = {
            folder: stack.enter_context(atomic_dir(root / folder)) for folder in spec.folders
        }
        ctx = WriterContext(
            root, staging, fingerprint["seed"], fingerprint["scale"], tools, workers
        )
        counts, items = spec.writer(ctx)
    marker = {
        "corpus": name,
        "fingerprint": fingerprint,
        "folders": list(spec.folders),
        "tools": tools.versions,
        "counts": counts,
        "items": items,
    }
    write_json_atomic(marker_path(root, name), marker)
    logger.info("Mini %s corpus: %s in %.1f s", name, counts, time.time() - started)


def _write_summary(root, fingerprint, tools):
    """``MINI_CORPUS.json``: versions, seed and counts of every complete corpus; written last."""
    corpora = {}
    for name in CORPORA:
        marker = read_marker(root, name)
        if marker is not None and all((root / folder).is_dir() for folder in marker["folders"]):
            corpora[name] = {
                key: marker[key] for key in ("fingerprint", "folders", "tools", "counts")
            }
    summary = {
        "generator": "rewire_lobes.data.mini_corpus",
        "generator_version": GENERATOR_VERSION,
        "seed": fingerprint["seed"],
        "scale": fingerprint["scale"],
        "tools": tools.versions if tools else _read_summary_tools(root),
        "corpora": corpora,
    }
    path = root / SUMMARY_FILE
    if not path.exists() or json.loads(path.read_text(encoding="utf-8")) != summary:
        write_json_atomic(path, summary)


def _read_summary_tools(root):
    try:
        return json.loads((root / SUMMARY_FILE).read_text(encoding="utf-8"))["tools"]
    except (OSError, ValueError, KeyError):
        return {}


def read_manifest(root, name):
    """The generation manifest of corpus ``name``: every file with its labels, voice and noise.

    Returns
    -------
    list of dict
    """
    marker = read_marker(root, name)
    if marker is None:
        raise FileNotFoundError(
            f"{marker_path(root, name)}: the {name} mini corpus is not complete"
        )
    return marker["items"]


def ensure_embedded_data(data_folder, seed=DEFAULT_SEED):
    """Generates the mini corpus behind ``data_folder`` if it lies under the embedded default.

    For a recipe's prepare step: a ``data_folder`` under ``data/mini`` (relative to the
    working directory or to the repository) gets its corpus generated when absent; any
    other folder (real data) is returned untouched.

    Returns
    -------
    Path
        ``data_folder``, resolved when it is the embedded default.
    """
    path = Path(data_folder).expanduser()
    if not is_embedded_data(path):
        return path
    default, resolved = repo_path(DEFAULT_DATA_FOLDER), repo_path(path)
    top = resolved.relative_to(default).parts[:1]
    names = [name for name, spec in CORPORA.items() if set(top) & set(spec.folders)]
    ensure_mini_corpus(default, corpora=names or None, seed=seed)
    return resolved

