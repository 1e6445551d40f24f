"""Where the embedded default lives, and the one rule that recognises it.

The embedded default is the mini corpus under ``data/mini`` (generated on first use) and
the small encoder shipped under ``assets/encoder``. Every module that must know whether
a path is the embedded default asks :func:`is_embedded_data` or compares
:func:`repo_path` results, so a relative path, an absolute one and a sub-folder are all
recognised the same way.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_UPSTREAM = "assets/encoder"
DEFAULT_DATA_FOLDER = "data/mini"
FALLBACK_NAME = "random_small_encoder"


def repo_path(path):
    """``path`` resolved: as given when absolute or existing, else under the repository."""
    path = Path(str(path)).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (REPO_ROOT / path).resolve()


def is_embedded_data(data_folder):
    """True for the mini corpus folder ``data/mini`` or any folder under it.

    Relative paths are read from the working directory, then from the repository;
    absolute paths count too.

    Example
    -------
    >>> is_embedded_data("data/mini/LibriSpeech"), is_embedded_data("/data/LibriSpeech")
    (True, False)
    """
    default = repo_path(DEFAULT_DATA_FOLDER)
    resolved = repo_path(data_folder)
    return resolved == default or default in resolved.parents


def resolve_data_folder(data_folder):
    """The folder ``data_folder`` names, resolved: under the repository for the embedded default.

    The embedded default (:func:`is_embedded_data`) is found from any working directory
    (:func:`repo_path`); any other folder is read as given, ``~`` expanded, relative to
    the working directory. Nothing is generated or checked.

    Example
    -------
    >>> resolve_data_folder("data/mini/SNIPS") == REPO_ROOT / "data" / "mini" / "SNIPS"
    True
    >>> resolve_data_folder("/corpora/SNIPS/../LibriSpeech").as_posix()
    '/corpora/LibriSpeech'
    """
    if is_embedded_data(data_folder):
        return repo_path(data_folder)
    return Path(str(data_folder)).expanduser().resolve()
