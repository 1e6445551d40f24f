"""Speech Commands v0.01 manifests for SUPERB keyword spotting.

Expected layout (the two archives unpacked side by side under ``data_folder``)::

    <data_folder>/speech_commands_v0.01/<word>/<speaker>_nohash_<n>.wav
    <data_folder>/speech_commands_v0.01/_background_noise_/*.wav
    <data_folder>/speech_commands_test_set_v0.01/<class>/*.wav   (10 keywords, _unknown_, _silence_)

What SUPERB does, and so do we (``superb_protocol.md`` §2):

* classes: the keywords (default: SUPERB's ten), then ``_unknown_`` (every other word)
  and ``_silence_``;
* train/dev: TensorFlow's hash split on the speaker part of the file name: sha1 →
  ``p = (int mod 2^27) * 100 / (2^27 - 1)``; ``p < 10`` is dev, ``10 <= p < 20`` (the
  original "testing" part) is dropped, the rest is train;
* ``_silence_`` for train and dev comes from ``_background_noise_``: as in s3prl, every
  noise file is one ``_silence_`` item per split, and each fetch takes a 1 s crop of it.
  Such a row has an empty ``start``/``stop`` and ``random_crop`` = the crop length in
  16 kHz samples (16000); where the crop starts is decided when the item is read
  (:class:`rewire_lobes.downstream.dataio.RandomCrops`): anew every round in train,
  once per seed in dev. ``--fraction`` keeps or drops a noise file as a whole, like any
  row;
* test: the separate v0.01 test archive, labelled by folder; a SUPERB keyword folder
  that is not in a custom keyword list counts as ``_unknown_``.

Every file's header is read here, so an unreadable or empty file fails now, by name.

Authors: rewire-speech contributors
"""

import logging
from pathlib import Path

from rewire_lobes.data.audio import SAMPLE_RATE, audio_info
from rewire_lobes.data.manifests import (
    already_prepared,
    checked_duration,
    mark_prepared,
    prepared_folder,
    write_manifest,
)
from rewire_lobes.data.speech_commands import hash_split
from rewire_lobes.io_utils import write_json_atomic
from rewire_lobes.downstream.dataio import SILENCE, UNKNOWN, keyword_classes
from rewire_lobes.errors import DataFolderError, OptionError

logger = logging.getLogger(__name__)

TRAIN_FOLDER = "speech_commands_v0.01"
TEST_FOLDER = "speech_commands_test_set_v0.01"
NOISE_FOLDER = "_background_noise_"
SUPERB_KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
HASH_SPLIT_NAMES = {"validation": "dev", "testing": "hash_test", "train": "train"}
MANIFESTS = ("train.csv", "dev.csv", "test.csv", "labels.json")
COLUMNS = ["ID", "duration", "wav", "start", "stop", "random_crop", "spk", "label"]
SILENCE_CROP_SAMPLES = SAMPLE_RATE  # s3prl's 1 s crop of a background-noise file
TEST_SET_CHOICES = ("error", "hash_split")


def prepare_speech_commands(
    data_folder,
    manifest_root,
    keywords=SUPERB_KEYWORDS,
    missing_test_set="error",
    skip_prep=False,
):
    """Writes ``train.csv``, ``dev.csv``, ``test.csv`` and ``labels.json``; returns their folder.

    Arguments
    ---------
    data_folder : str
        The folder holding ``speech_commands_v0.01/`` and ``speech_commands_test_set_v0.01/``
        (or the ``speech_commands_v0.01`` folder itself).
    manifest_root : str
        The manifests go to ``<manifest_root>/<hash of the options>``, shared by every
        run with the same data and options.
    keywords : list of str
        The keyword classes; all other words become ``_unknown_``.
    missing_test_set : str
        ``error`` (default): stop when the test archive is missing. ``hash_split``: test
        on the hash split's "testing" part instead (not comparable with SUPERB).
    skip_prep : bool
        Do nothing (manifests made elsewhere); the folder is still returned.

    Returns
    -------
    Path : the folder holding the manifests.
    """
    classes = keyword_classes(keywords)
    if missing_test_set not in TEST_SET_CHOICES:
        raise OptionError(f"missing_test_set must be one of {TEST_SET_CHOICES}, got {missing_test_set}")
    data_folder = Path(data_folder).resolve()
    options = {
        "data_folder": str(data_folder),
        "keywords": list(classes[:-2]),
        # Names the _silence_ layout, so manifests of another layout are never reused.
        "silence": f"one item per noise file, random_crop={SILENCE_CROP_SAMPLES}",
        "missing_test_set": missing_test_set,
    }
    save_folder = prepared_folder(manifest_root, options)
    if skip_prep:
        return save_folder
    if already_prepared(save_folder, options, MANIFESTS):
        logger.info("Speech Commands manifests in %s are up to date", save_folder)
        return save_folder

    train_root, test_root = locate_roots(data_folder)
    if not train_root.is_dir():
        raise DataFolderError(
            f"{train_root} not found: --data_folder must hold {TRAIN_FOLDER}/ (one folder per "
            f"word plus {NOISE_FOLDER}/) and {TEST_FOLDER}/"
        )
    splits = {"train": [], "dev": [], "hash_test": []}
    for row, split in word_items(train_root, classes):
        splits[split].append(row)
    for split in ("train", "dev"):
        splits[split].extend(silence_items(train_root / NOISE_FOLDER, split))

    if test_root.is_dir():
        test_rows = test_items(test_root, classes)
        test_source = f"{TEST_FOLDER} (SUPERB)"
    elif missing_test_set == "hash_split":
        logger.warning(
            "%s not found: testing on the hash split's 'testing' part (%d files), which "
            "SUPERB discards. Scores are NOT comparable with SUPERB's.",
            test_root, len(splits["hash_test"]),
        )
        test_rows = splits["hash_test"]
        test_source = "hash split 10 <= p < 20 (fallback, not SUPERB's test set)"
    else:
        raise DataFolderError(
            f"{test_root} not found. SUPERB tests keyword spotting on the separate v0.01 "
            "test archive (speech_commands_test_set_v0.01.tar.gz): unpack it next to "
            f"{TRAIN_FOLDER}/. To run without it, pass --missing_test_set hash_split: the test "
            "set is then the hash split's 'testing' part (testing_list.txt), which SUPERB "
            "discards, and the scores are not comparable with SUPERB's."
        )

    for split, rows in (("train", splits["train"]), ("dev", splits["dev"]), ("test", test_rows)):
        if not rows:
            raise DataFolderError(
                f"{data_folder}: the {split} split of Speech Commands is empty: --data_folder "
                f"must hold {TRAIN_FOLDER}/ (one folder of wavs per word plus {NOISE_FOLDER}/) "
                f"and {TEST_FOLDER}/ (one folder per class)"
            )
        report_counts(split, rows, classes)
    write_manifest(save_folder / "train.csv", splits["train"], COLUMNS)
    write_manifest(save_folder / "dev.csv", splits["dev"], COLUMNS)
    write_manifest(save_folder / "test.csv", test_rows, COLUMNS)
    write_json_atomic(save_folder / "labels.json", {"label": classes, "test_set": test_source})
    mark_prepared(save_folder, options)
    return save_folder


def locate_roots(data_folder):
    """``(train root, test root)``: under ``data_folder``, or ``data_folder`` is the train root.

    Pointing ``--data_folder`` at the unpacked ``speech_commands_v0.01`` folder itself
    (recognised by its ``validation_list.txt``) also works; the test archive is then
    looked for beside it.
    """
    if not (data_folder / TRAIN_FOLDER).is_dir() and (data_folder / "validation_list.txt").is_file():
        return data_folder, data_folder.parent / TEST_FOLDER
    return data_folder / TRAIN_FOLDER, data_folder / TEST_FOLDER


def which_split(file_name):
    """``dev``, ``hash_test`` or ``train`` from the speaker part of the name (TensorFlow's rule).

    The rule is :func:`rewire_lobes.data.speech_commands.hash_split`; its ``validation``
    part is our dev set and its ``testing`` part is ``hash_test``.

    Example
    -------
    >>> which_split("026290a7_nohash_0.wav")
    'dev'
    """
    return HASH_SPLIT_NAMES[hash_split(file_name)]


def _row(data_id, wav, label, duration, spk="", random_crop=""):
    return {"ID": data_id, "duration": f"{duration:.4f}", "wav": str(wav), "start": "",
            "stop": "", "random_crop": random_crop, "spk": spk, "label": label}


def word_items(train_root, classes):
    """``(row, split)`` for every word recording; non-keywords are labelled ``_unknown_``."""
    for word_dir in sorted(p for p in train_root.iterdir() if p.is_dir()):
        if word_dir.name.startswith(("_", ".")):
            continue
        label = word_dir.name if word_dir.name in classes else UNKNOWN
        for wav in sorted(word_dir.glob("*.wav")):
            row = _row(f"{word_dir.name}/{wav.stem}", wav, label, checked_duration(wav),
                       spk=wav.name.split("_nohash_")[0])
            yield row, which_split(wav.name)


def silence_items(noise_dir, split):
    """One ``_silence_`` item per noise file, read as a random 1 s crop (s3prl's rule).

    A file shorter than 1 s is read whole.
    """
    if not noise_dir.is_dir():
        logger.warning("%s not found: the %s class has no %s examples", noise_dir, SILENCE, split)
        return []
    rows = []
    for wav in sorted(noise_dir.glob("*.wav")):
        frames, rate, _ = audio_info(wav)
        seconds = min(SILENCE_CROP_SAMPLES / SAMPLE_RATE, frames / rate)
        rows.append(_row(f"{SILENCE}/{split}/{wav.stem}", wav, SILENCE, seconds,
                         random_crop=str(SILENCE_CROP_SAMPLES)))
    return rows


def test_items(test_root, classes):
    """Rows of the v0.01 test archive, labelled by folder."""
    rows = []
    for class_dir in sorted(p for p in test_root.iterdir() if p.is_dir()):
        name = class_dir.name
        label = name if name in classes else UNKNOWN  # includes SUPERB keywords not in a custom list
        for wav in sorted(class_dir.glob("*.wav")):
            rows.append(_row(f"test/{name}/{wav.stem}", wav, label, checked_duration(wav),
                             spk=wav.name.split("_nohash_")[0]))
    return rows


def report_counts(split, rows, classes):
    """Logs examples per class and warns about empty classes."""
    counts = {c: 0 for c in classes}
    for row in rows:
        counts[row["label"]] += 1
    logger.info("%s: %d items %s", split, len(rows), counts)
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        logger.warning("%s: no examples of %s (the class stays in the output layer)", split, empty)
