"""LibriSpeech manifests for SUPERB ASR (character CTC).

Expected layout (the corpus as distributed; ``superb_protocol.md`` §1)::

    <data_folder>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    <data_folder>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac

SUPERB trains on ``train-clean-100``, picks the best checkpoint on ``dev-clean`` and tests
on ``test-clean``. Each set may join several splits. ``train.csv``, ``dev.csv`` and
``test.csv`` have the columns ``ID, duration, wav, start, stop, spk, wrd`` (``start`` and
``stop`` empty: whole files; ``wrd`` the transcript as in the ``.trans.txt``, whitespace
normalised), sorted by ID.

SUPERB evaluates every listed utterance, so nothing is skipped: a transcript line whose
audio is missing, an empty or unreadable file, a file that is not 16 kHz mono (s3prl
asserts 16 kHz) and a chapter folder without its transcript each stop preparation with a
:class:`rewire_lobes.errors.DataFileError` naming the file. Only headers are read. An
audio file that no transcript lists is not used.

The manifests go to ``<manifest_root>/<hash of the options>`` and are made once; the
embedded default (``data/mini/LibriSpeech``) is generated first when absent.

Example
-------
python recipes/ASR/librispeech_prepare.py --data_folder /data/LibriSpeech \
    --manifest_root results/manifests/asr

Authors
 * rewire-speech contributors
"""

import argparse
import logging

from rewire_lobes.data.librispeech import (
    librispeech_root,
    locate_librispeech,
    read_librispeech_split,
)
from rewire_lobes.data.manifests import (
    already_prepared,
    mark_prepared,
    prepared_folder,
    write_manifest,
)
from rewire_lobes.errors import DataFolderError, OptionError

logger = logging.getLogger(__name__)

COLUMNS = ["ID", "duration", "wav", "start", "stop", "spk", "wrd"]
MANIFESTS = ("train.csv", "dev.csv", "test.csv")


def prepare_librispeech_asr(
    data_folder,
    manifest_root,
    train_splits=("train-clean-100",),
    dev_splits=("dev-clean",),
    test_splits=("test-clean",),
    skip_prep=False,
):
    """Writes ``train.csv``, ``dev.csv`` and ``test.csv``; returns their folder.

    Arguments
    ---------
    data_folder : str
        The LibriSpeech root, holding ``<split>/<speaker>/<chapter>/``.
    manifest_root : str
        The manifests go to ``<manifest_root>/<hash of the options>``, shared by every
        run on the same data and splits.
    train_splits, dev_splits, test_splits : list of str
        The LibriSpeech splits joined into each set.
    skip_prep : bool
        Do nothing (manifests made elsewhere); the folder is still returned.

    Returns
    -------
    Path : the folder holding the manifests.
    """
    sets = {
        "train": _split_list(train_splits, "train_splits"),
        "dev": _split_list(dev_splits, "dev_splits"),
        "test": _split_list(test_splits, "test_splits"),
    }
    options = {"data_folder": str(librispeech_root(data_folder)),
               **{f"{name}_splits": splits for name, splits in sets.items()}}
    save_folder = prepared_folder(manifest_root, options)
    if skip_prep:
        return save_folder
    root = locate_librispeech(data_folder, [split for splits in sets.values() for split in splits])
    if already_prepared(save_folder, options, MANIFESTS):
        logger.info("LibriSpeech ASR manifests in %s are up to date", save_folder)
        return save_folder

    for name, splits in sets.items():
        rows = []
        for split in splits:
            split_rows = read_librispeech_split(root / split, strict=True, mono_16k=True)
            if not split_rows:
                raise DataFolderError(
                    f"{root / split}: no transcribed utterance (expected <speaker>/<chapter>/ "
                    "folders holding <speaker>-<chapter>.trans.txt and the .flac files)"
                )
            rows.extend(split_rows)
        rows.sort(key=lambda row: row["ID"])
        logger.info("%s (%s): %d utterances", name, " + ".join(splits), len(rows))
        write_manifest(save_folder / f"{name}.csv", [_manifest_row(row) for row in rows], COLUMNS)
    mark_prepared(save_folder, options)
    return save_folder


def _split_list(splits, option):
    """``splits`` as a non-empty list (one split name given as a string is a list of one)."""
    splits = [splits] if isinstance(splits, str) else [str(split) for split in splits]
    if not splits:
        raise OptionError(f"--{option} is empty: give at least one LibriSpeech split")
    repeated = sorted({split for split in splits if splits.count(split) > 1})
    if repeated:
        raise OptionError(f"--{option} repeats {repeated}")
    return splits


def _manifest_row(row):
    return {"ID": row["ID"], "duration": row["duration"], "wav": row["wav"], "start": "",
            "stop": "", "spk": row["spk"], "wrd": row["wrd"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--manifest_root", required=True)
    parser.add_argument("--train_splits", nargs="+", default=["train-clean-100"])
    parser.add_argument("--dev_splits", nargs="+", default=["dev-clean"])
    parser.add_argument("--test_splits", nargs="+", default=["test-clean"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    folder = prepare_librispeech_asr(args.data_folder, args.manifest_root,
                                     train_splits=args.train_splits, dev_splits=args.dev_splits,
                                     test_splits=args.test_splits)
    print(folder)


if __name__ == "__main__":
    from rewire_lobes.runs.cli import user_errors

    with user_errors():
        main()
