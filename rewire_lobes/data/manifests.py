"""Manifest CSVs: reading, atomic writing, and "already prepared?" bookkeeping.

A ``*_prepare.py`` script writes its manifests into ``<manifest root>/<options hash>``
(:func:`prepared_folder`) and, last, ``prepare_options.json`` recording the options it ran
with. Every run on the same corpus with the same options (any fraction, encoder,
strategy or seed) reuses that folder, so the corpus' audio headers are read once; other
options (say another keyword list) get a folder of their own.
"""

import csv
import hashlib
import json
from pathlib import Path

from rewire_lobes.data.audio import SAMPLE_RATE, AudioError, audio_info
from rewire_lobes.errors import DataFileError
from rewire_lobes.io_utils import atomic_path, write_json_atomic

OPTIONS_FILE = "prepare_options.json"


def read_manifest(path):
    """Rows of a manifest CSV as dicts of strings, in file order."""
    with open(path, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def write_manifest(path, rows, fieldnames=None):
    """Writes ``rows`` as CSV atomically; columns are ``fieldnames`` or the first row's keys."""
    if fieldnames is None:
        if not rows:
            raise ValueError(f"{path}: no rows and no column names to write")
        fieldnames = list(rows[0].keys())
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fout:
            writer = csv.DictWriter(fout, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


def prepared_folder(manifest_root, options):
    """``<manifest_root>/<sha256 of options>[:12]``: the manifests of one corpus and options.

    Example
    -------
    >>> prepared_folder("m", {"a": 1}) == prepared_folder("m", {"a": 1}) != prepared_folder("m", {"a": 2})
    True
    """
    text = json.dumps(options, sort_keys=True, default=str)
    return Path(manifest_root) / hashlib.sha256(text.encode()).hexdigest()[:12]


def already_prepared(save_folder, options, manifests):
    """True when ``manifests`` exist in ``save_folder`` and were made with ``options``."""
    save_folder = Path(save_folder)
    marker = save_folder / OPTIONS_FILE
    if not marker.exists() or not all((save_folder / m).exists() for m in manifests):
        return False
    with open(marker, encoding="utf-8") as fin:
        return json.load(fin) == json.loads(json.dumps(options))


def mark_prepared(save_folder, options):
    write_json_atomic(Path(save_folder) / OPTIONS_FILE, options)


def checked_duration(path, max_channels=None):
    """Duration in seconds from the header, raising ``AudioError`` naming a bad file.

    Unreadable, empty and header-less files fail here, at preparation, rather than
    hours into training. Other sample rates and stereo are fine: ``load_audio``
    resamples and down-mixes.
    """
    frames, rate, channels = audio_info(path)
    if max_channels is not None and channels > max_channels:
        raise AudioError(f"{path}: {channels} channels (at most {max_channels} expected)")
    return frames / rate


def checked_16k_mono(path):
    """Sample count of ``path`` from its header; a file that is not 16 kHz mono is refused.

    For SUPERB's ASR and SF, where s3prl asserts 16 kHz and reads one channel: such a
    file is not resampled or down-mixed but reported, as are unreadable and empty ones,
    by a :class:`rewire_lobes.errors.DataFileError` naming the file and what it is.
    """
    try:
        frames, rate, channels = audio_info(path)
    except AudioError as err:
        raise DataFileError(str(err)) from None
    if rate != SAMPLE_RATE or channels != 1:
        raise DataFileError(
            f"{path}: {rate} Hz, {channels} channel{'s' if channels > 1 else ''}; SUPERB reads "
            f"{SAMPLE_RATE} Hz mono audio (s3prl asserts it): convert the corpus, e.g. "
            f"sox in.wav -r {SAMPLE_RATE} -c 1 out.wav"
        )
    return frames
