"""Manifests for self-supervised pre-training: every wav/flac file under a folder.

No labels are read, so any folder of speech works (a corpus, a podcast dump, the mini
corpus). Writes ``train.csv`` and ``valid.csv`` with the columns
``ID, duration, wav, sample_rate``; the valid split is a seeded random subset of files,
used only to report a held-out loss.

Authors
 * rewire-speech contributors
"""

import csv
import fnmatch
import json
import logging
import random
from pathlib import Path

from rewire_lobes.data.audio import AudioError, audio_info
from rewire_lobes.errors import DataFolderError, OptionError
from rewire_lobes.io_utils import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
OPTIONS_FILE = "opt_audio_folder_prepare.json"


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
    """Sorted wav/flac paths under ``audio_folder`` (recursive, any letter case).

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
            "wav or flac files, searched recursively)"
        )
    listed = read_exclude_lists(root, exclude_lists)
    files = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        if relative in listed or any(fnmatch.fnmatch(relative, p) for p in exclude_patterns):
            continue
        files.append(path)
    return files


def prepare_audio_folder(audio_folder, save_folder, exclude_patterns=(), exclude_lists=(),
                         valid_files=32, min_seconds=0.5, seed=1986, skip_prep=False):
    """Writes ``<save_folder>/{train,valid}.csv`` for the audio under ``audio_folder``.

    Arguments
    ---------
    audio_folder : str
        Searched recursively for ``*.wav`` and ``*.flac``.
    save_folder : str
    exclude_patterns : list of str
        Globs (relative to ``audio_folder``) of files to leave out.
    exclude_lists : list of str
        List files (relative to ``audio_folder``) naming files to leave out.
    valid_files : int
        Files held out for the validation loss (0: none).
    min_seconds : float
        Shorter files are skipped (too few frames for span masking), with a count.
    seed : int
        Chooses the held-out files.
    skip_prep : bool
    """
    if skip_prep:
        return
    save_folder = Path(save_folder)
    train_csv, valid_csv = save_folder / "train.csv", save_folder / "valid.csv"
    options = {
        "audio_folder": str(Path(audio_folder).resolve()),
        "exclude_patterns": list(exclude_patterns),
        "exclude_lists": list(exclude_lists),
        "valid_files": valid_files,
        "min_seconds": min_seconds,
        "seed": seed,
    }
    options_file = save_folder / OPTIONS_FILE
    if train_csv.exists() and valid_csv.exists() and options_file.exists():
        if json.loads(options_file.read_text(encoding="utf-8")) == options:
            logger.info("Manifests in %s are up to date; skipping preparation", save_folder)
            return

    rows, unreadable, too_short = [], 0, 0
    root = Path(audio_folder)
    for path in find_audio_files(audio_folder, exclude_patterns, exclude_lists):
        try:
            frames, sample_rate, _ = audio_info(path)
        except AudioError as err:
            logger.warning("Skipping %s", err)
            unreadable += 1
            continue
        duration = frames / sample_rate
        if duration < min_seconds:
            too_short += 1
            continue
        relative = path.relative_to(root).with_suffix("").as_posix()
        rows.append({
            "ID": relative.replace("/", "__"),
            "duration": f"{duration:.4f}",
            "wav": str(path.resolve()),
            "sample_rate": sample_rate,
        })
    if too_short or unreadable:
        logger.info("Skipped %d files shorter than %.2f s and %d unreadable files",
                    too_short, min_seconds, unreadable)
    if len(rows) <= valid_files:
        raise OptionError(
            f"{audio_folder}: found {len(rows)} usable wav/flac files (>= {min_seconds} s); "
            f"need more than --valid_files {valid_files}: pass a smaller --valid_files or "
            "--min_seconds, or an --audio_folder with more audio"
        )

    held_out = set(random.Random(seed).sample(range(len(rows)), valid_files))
    splits = {
        train_csv: [r for i, r in enumerate(rows) if i not in held_out],
        valid_csv: [r for i, r in enumerate(rows) if i in held_out],
    }
    for csv_path, split_rows in splits.items():
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["ID", "duration", "wav", "sample_rate"])
            writer.writeheader()
            writer.writerows(split_rows)
    write_json_atomic(options_file, options)
    hours = sum(float(r["duration"]) for r in rows) / 3600
    logger.info("%d files (%.2f h) under %s: %d train, %d valid", len(rows), hours,
                audio_folder, len(splits[train_csv]), len(splits[valid_csv]))
