"""Fluent Speech Commands manifests for SUPERB intent classification.

Expected layout (the corpus as distributed)::

    <data_folder>/fluent_speech_commands_dataset/data/{train,valid,test}_data.csv
    <data_folder>/fluent_speech_commands_dataset/wavs/speakers/<speakerId>/<uuid>.wav

The CSVs have an unnamed index column, then ``path`` (relative to the dataset root),
``speakerId``, ``transcription``, ``action``, ``object``, ``location``. As in s3prl
(``superb_protocol.md`` §3) the three slots are classified separately, and the values of
each slot are indexed in the order they first appear in ``train_data.csv`` (written to
``labels.json``). ``intent`` (``action|object|location``) is what ``--fraction``
stratifies on. Every file's header is read here, so a bad file fails now, by name.

Authors: rewire-speech contributors
"""

import csv
import logging
from pathlib import Path

from rewire_lobes.data.manifests import (
    already_prepared,
    checked_duration,
    mark_prepared,
    prepared_folder,
    write_manifest,
)
from rewire_lobes.errors import DataFileError, DataFolderError
from rewire_lobes.io_utils import write_json_atomic

logger = logging.getLogger(__name__)

DATASET_FOLDER = "fluent_speech_commands_dataset"
SLOTS = ("action", "object", "location")
SPLITS = {"train": "train_data.csv", "dev": "valid_data.csv", "test": "test_data.csv"}
MANIFESTS = ("train.csv", "dev.csv", "test.csv", "labels.json")
COLUMNS = ["ID", "duration", "wav", "start", "stop", "spk", *SLOTS, "intent", "transcription"]


def prepare_fluent_commands(data_folder, manifest_root, skip_prep=False):
    """Writes ``train.csv``, ``dev.csv``, ``test.csv`` and ``labels.json``; returns their folder.

    Arguments
    ---------
    data_folder : str
        The folder holding ``fluent_speech_commands_dataset/``.
    manifest_root : str
        The manifests go to ``<manifest_root>/<hash of the options>``, shared by every
        run on the same data.
    skip_prep : bool
        Do nothing (manifests made elsewhere); the folder is still returned.

    Returns
    -------
    Path : the folder holding the manifests.
    """
    data_folder = Path(data_folder).resolve()
    options = {"data_folder": str(data_folder)}
    save_folder = prepared_folder(manifest_root, options)
    if skip_prep:
        return save_folder
    if already_prepared(save_folder, options, MANIFESTS):
        logger.info("Fluent Speech Commands manifests in %s are up to date", save_folder)
        return save_folder
    root = data_folder / DATASET_FOLDER
    missing = [name for name in SPLITS.values() if not (root / "data" / name).is_file()]
    if missing:
        raise DataFolderError(
            f"{root / 'data'} lacks {missing}: --data_folder must hold {DATASET_FOLDER}/ "
            "with data/{train,valid,test}_data.csv and wavs/speakers/"
        )

    rows = {split: read_split(root, name) for split, name in SPLITS.items()}
    labels = slot_values(rows["train"])
    for split in ("dev", "test"):
        check_known_values(rows[split], labels, split)
    for split, split_rows in rows.items():
        if not split_rows:
            raise DataFileError(
                f"{root / 'data' / SPLITS[split]} has no rows: --data_folder must hold the "
                f"complete {DATASET_FOLDER}/"
            )
        logger.info("%s: %d utterances", split, len(split_rows))
        write_manifest(save_folder / f"{split}.csv", split_rows, COLUMNS)
    write_json_atomic(save_folder / "labels.json", labels)
    mark_prepared(save_folder, options)
    return save_folder


def read_split(root, csv_name):
    """Manifest rows of one FSC csv, with each audio header checked."""
    rows, seen = [], set()
    with open(root / "data" / csv_name, newline="", encoding="utf-8") as fin:
        for line, record in enumerate(csv.DictReader(fin), start=2):
            try:
                path = record["path"]
                slots = [record[slot].strip() for slot in SLOTS]
            except KeyError as err:
                raise DataFileError(
                    f"{root / 'data' / csv_name}: no column {err} (a Fluent Speech Commands "
                    f"csv has path, speakerId, transcription, {', '.join(SLOTS)})"
                ) from err
            wav = root / path
            data_id = Path(path).with_suffix("").as_posix()
            if data_id in seen:
                raise DataFileError(f"{root / 'data' / csv_name}:{line}: {path} is listed twice")
            seen.add(data_id)
            rows.append({
                "ID": data_id,
                "duration": f"{checked_duration(wav):.4f}",
                "wav": str(wav),
                "start": "",
                "stop": "",
                "spk": record.get("speakerId", ""),
                **dict(zip(SLOTS, slots)),
                "intent": "|".join(slots),
                "transcription": record.get("transcription", ""),
            })
    return rows


def slot_values(train_rows):
    """Each slot's values in order of first appearance in the training csv."""
    values = {slot: [] for slot in SLOTS}
    for row in train_rows:
        for slot in SLOTS:
            if row[slot] not in values[slot]:
                values[slot].append(row[slot])
    return values


def check_known_values(rows, labels, split):
    """Dev and test may only use slot values seen in training."""
    for row in rows:
        for slot in SLOTS:
            if row[slot] not in labels[slot]:
                raise DataFileError(
                    f"{row['wav']} ({split}): {slot} '{row[slot]}' never occurs in train_data.csv"
                )
