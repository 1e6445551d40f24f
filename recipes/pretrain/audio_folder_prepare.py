"""Manifests for self-supervised pre-training: every audio file (wav/flac/ogg/mp3) under a folder.

No labels are read, so any folder of speech works (a corpus, a podcast dump, the mini
corpus). Writes ``train.csv`` and ``valid.csv`` with the columns
``ID, duration, wav, sample_rate``; the valid split is a seeded random subset of files,
used only to report a held-out loss.

Authors
 * rewire-speech contributors
"""

import csv
import json
import logging
import random
from pathlib import Path

from rewire_lobes.data.audio import AudioError, audio_info
from rewire_lobes.data.audio_folder import find_audio_files
from rewire_lobes.errors import OptionError
from rewire_lobes.io_utils import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

OPTIONS_FILE = "opt_audio_folder_prepare.json"


def prepare_audio_folder(audio_folder, save_folder, exclude_patterns=(), exclude_lists=(),
                         valid_files=32, min_seconds=0.5, seed=1986, skip_prep=False):
    """Writes ``<save_folder>/{train,valid}.csv`` for the audio under ``audio_folder``.

    Arguments
    ---------
    audio_folder : str
        Searched recursively for audio files (``rewire_lobes.data.audio_folder``).
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
            f"{audio_folder}: found {len(rows)} usable audio files (>= {min_seconds} s); "
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
