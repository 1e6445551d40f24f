"""A folder of audio in any layout: the files found, read once, and what is skipped.

Used by the recipes that need no labels (pre-training, rewiring on the user's own audio).
``.wav``, ``.flac``, ``.ogg`` and ``.mp3``, as soundfile (libsndfile) reads them, at any
rate and channel count (:func:`rewire_lobes.data.audio.load_audio` makes them 16 kHz mono).
"""

import csv
import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path

from rewire_lobes.data.audio import SAMPLE_RATE, AudioError, load_audio
from rewire_lobes.errors import DataFolderError

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
# A peak under 1e-4 (-80 dBFS, about 3 steps of 16-bit audio) is digital silence or hum:
# nothing an encoder could learn speech from, and its pooled vector is noise.
SILENCE_PEAK = 1e-4
# The prepare steps may add their own (e.g. no transcript).
SKIP_REASONS = ("unreadable", "silent", "too_long")


def read_exclude_lists(audio_folder, exclude_lists):
    """Paths (relative to ``audio_folder``) named in held-out split lists.

    A list is a text file with one path per line (Speech Commands'
    ``testing_list.txt``) or a CSV with a ``path`` column (Fluent Speech Commands'
    ``test_data.csv``). Its paths may be relative to the list's folder or to any folder
    above it, up to ``audio_folder``; every reading is kept (a wrong one matches nothing).
    A list that does not exist is ignored, so one yaml serves any audio folder.
    """
    root = Path(audio_folder)
    listed = set()
    for name in exclude_lists:
        list_file = root / name
        if not list_file.is_file():
            continue
        if list_file.suffix.lower() == ".csv":
            with open(list_file, newline="", encoding="utf-8") as f:
                entries = [row["path"] for row in csv.DictReader(f) if row.get("path")]
        else:
            entries = list_file.read_text(encoding="utf-8").splitlines()
        bases = [list_file.parent.relative_to(root), *list_file.parent.relative_to(root).parents]
        for entry in filter(None, (e.strip() for e in entries)):
            listed.update((base / entry).as_posix() for base in bases)
    return listed


def find_audio_files(audio_folder, exclude_patterns=(), exclude_lists=()):
    """Sorted audio paths under ``audio_folder`` (recursive, any letter case of the
    suffix, hidden files and folders left out).

    Held-out evaluation audio should not be seen, even unlabelled, before it is used
    for evaluation, so files can be left out by ``exclude_patterns`` (shell globs
    matched against the path relative to ``audio_folder``, e.g.
    ``"LibriSpeech/test-clean/*"``) and by ``exclude_lists`` (see
    :func:`read_exclude_lists`).
    """
    root = Path(audio_folder)
    if not root.is_dir():
        raise DataFolderError(
            f"{audio_folder}: no such audio folder (pass --audio_folder, a folder holding "
            f"{'/'.join(AUDIO_SUFFIXES)} files, searched recursively)"
        )
    listed = read_exclude_lists(root, exclude_lists)
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if (path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file()
                or any(part.startswith(".") for part in relative.parts)):
            continue
        if relative.as_posix() in listed or any(fnmatch.fnmatch(relative.as_posix(), p)
                                                for p in exclude_patterns):
            continue
        files.append(path)
    return files


def utterance_id(path, root):
    """The path in the folder, posix, without its audio suffix: ``day1/take3``."""
    return Path(path).relative_to(root).with_suffix("").as_posix()


@dataclass
class FolderScan:
    """The usable files (``rows``) and the skipped ones, by reason, of ``files`` found."""

    rows: list
    files: int = 0
    skipped: dict = field(default_factory=lambda: {reason: [] for reason in SKIP_REASONS})

    def skip(self, reason, path, why):
        logger.warning("Skipping %s: %s", path, why)
        self.skipped.setdefault(reason, []).append({"path": str(path), "reason": why})

    def counts(self):
        return {reason: len(files) for reason, files in self.skipped.items()}


def scan_audio_folder(folder, max_samples=180_000, silence_peak=SILENCE_PEAK):
    """Reads every audio file of ``folder`` once; returns a :class:`FolderScan`.

    Each row holds ``ID`` (:func:`utterance_id`), ``wav`` (absolute path), ``samples``
    (at 16 kHz), ``duration`` (s) and ``spk_id`` (the file's folder, ``.`` at the top:
    a folder per speaker is the common layout, and nothing reads it for rewiring).
    Unreadable files, all-silent ones and those over ``max_samples`` (the paper's length
    rule) are skipped, logged and listed. No audio file, two files of one ID, or nothing
    usable is a :class:`DataFolderError`.
    """
    root = Path(folder).resolve()
    files = find_audio_files(root)
    if not files:
        raise DataFolderError(f"{folder}: no audio file ({', '.join(AUDIO_SUFFIXES)}) in it "
                              "or in its subfolders")
    scan, seen = FolderScan([], files=len(files)), {}
    for path in files:
        uid = utterance_id(path, root)
        if uid in seen:
            raise DataFolderError(f"{seen[uid]} and {path} give the same utterance ID {uid!r}: "
                                  "rename one of them")
        seen[uid] = path
        try:
            wav = load_audio(path)
        except AudioError as err:
            scan.skip("unreadable", path, str(err))
            continue
        peak = float(wav.abs().max())
        if peak < silence_peak:
            scan.skip("silent", path, f"all silent (peak {peak:.1e} < {silence_peak:.0e})")
        elif len(wav) > max_samples:
            scan.skip("too_long", path, f"{len(wav)} samples at 16 kHz, over {max_samples}")
        else:
            scan.rows.append({"ID": uid, "wav": str(path), "samples": len(wav),
                              "duration": f"{len(wav) / SAMPLE_RATE:.4f}",
                              "spk_id": Path(uid).parent.as_posix()})
    if not scan.rows:
        counts = ", ".join(f"{n} {reason}" for reason, n in scan.counts().items() if n)
        raise DataFolderError(f"{folder}: none of its {len(files)} audio files is usable "
                              f"({counts}); the log names each one")
    return scan
