"""QUESST 2014 manifests for SUPERB query-by-example (the ``nnenglish`` subset).

Expected layout (``quesst14Database.tgz`` unpacked; ``superb_protocol.md`` §6)::

    <data_folder>/Audio/*.wav                    documents, 8 kHz mono
    <data_folder>/dev_queries/*.wav, eval_queries/*.wav
    <data_folder>/scoring/language_key_utterances.lst, language_key_dev.lst,
                          language_key_eval.lst  (<path> <language> per line)
    <data_folder>/scoring/groundtruth_quesst14_dev/, groundtruth_quesst14_eval/
                                                 (*.ecf.xml, *.tlist.xml, *.rttm)

As s3prl, only the lines tagged ``nnenglish`` (``--language``) are kept; documents are
shared by dev and eval. ``documents.csv``, ``dev.csv`` and ``eval.csv`` have the columns
``ID, duration, wav, start, stop, language`` (``ID`` the file stem, the name the stdlist
and the ground truth use); ``groundtruth.json`` holds each split's trial lists (the
ECF's documents, the term list's queries, of every language, as the scorer reads them)
and occurrences. The audio is read later at 16 kHz (resampled) with s3prl's
``gain -3``.

Each of these stops preparation with a :class:`rewire_lobes.errors.DataFileError` or
:class:`rewire_lobes.errors.DataFolderError` naming the file (and line): a malformed
language key line, an id listed twice, a listed wav that is missing, empty, unreadable,
stereo or at a rate other than 8000 or 16000 Hz (the corpus is 8 kHz mono: anything
else means another folder), no line of the language, and a kept document or query
that the ground truth's ECF or term list lacks (the scorer could not score it).

The manifests go to ``<manifest_root>/<hash of the options>`` and are made once; the
embedded default (``data/mini/quesst14Database``) is generated first when absent.

Example
-------
python recipes/QbE/quesst14_prepare.py --data_folder /data/quesst14Database \\
    --manifest_root results/manifests/QbE

Authors
 * rewire-speech contributors
"""

import argparse
import logging

from rewire_lobes.data.audio import AudioError, audio_info
from rewire_lobes.data.manifests import (
    already_prepared,
    mark_prepared,
    prepared_folder,
    write_manifest,
)
from rewire_lobes.data.quesst14 import (
    DOCUMENT_KEY,
    GROUNDTRUTH_FILE,
    GROUNDTRUTH_FOLDERS,
    QUERY_KEYS,
    SCORING_FOLDER,
    SPLIT_MANIFESTS,
    read_groundtruth,
    read_language_key,
)
from rewire_lobes.embedded import is_embedded_data, resolve_data_folder
from rewire_lobes.errors import DataFileError, DataFolderError
from rewire_lobes.io_utils import write_json_atomic
from rewire_lobes.runs.defaults import ensure_default_data

logger = logging.getLogger(__name__)

LANGUAGE = "nnenglish"
AUDIO_RATES = (8000, 16000)
COLUMNS = ["ID", "duration", "wav", "start", "stop", "language"]
MANIFESTS = (*SPLIT_MANIFESTS.values(), GROUNDTRUTH_FILE)
DATABASE_FOLDER = "quesst14Database"


def prepare_quesst14(data_folder, manifest_root, language=LANGUAGE, skip_prep=False):
    """Writes ``documents.csv``, ``dev.csv``, ``eval.csv`` and ``groundtruth.json``.

    Arguments
    ---------
    data_folder : str
        The ``quesst14Database`` folder.
    manifest_root : str
        The manifests go to ``<manifest_root>/<hash of the options>``.
    language : str
        The language tag kept (SUPERB: ``nnenglish``).
    skip_prep : bool
        Do nothing (manifests made elsewhere); the folder is still returned.

    Returns
    -------
    Path : the folder holding the manifests.
    """
    options = {"data_folder": str(resolve_data_folder(data_folder)), "language": str(language)}
    save_folder = prepared_folder(manifest_root, options)
    if skip_prep:
        return save_folder
    root = locate_quesst14(data_folder)
    if already_prepared(save_folder, options, MANIFESTS):
        logger.info("QUESST 2014 manifests in %s are up to date", save_folder)
        return save_folder

    scoring = root / SCORING_FOLDER
    groundtruth = {split: read_groundtruth(scoring / folder)
                   for split, folder in GROUNDTRUTH_FOLDERS.items()}
    keys = {"documents": DOCUMENT_KEY, **QUERY_KEYS}
    for name, key in keys.items():
        items = language_items(scoring / key, root, language)
        for split, truth in groundtruth.items():
            if name in (split, "documents"):
                check_in_groundtruth(items, truth, name, split)
        rows = [manifest_row(item) for item in items]
        logger.info("%s: %d %s items (of %s)", name, len(rows), language, key)
        write_manifest(save_folder / SPLIT_MANIFESTS[name], rows, COLUMNS)
    write_json_atomic(save_folder / GROUNDTRUTH_FILE,
                      {split: truth.as_dict() for split, truth in groundtruth.items()})
    mark_prepared(save_folder, options)
    return save_folder


def locate_quesst14(data_folder):
    """The database folder to read, checked to hold the layout; the embedded one is generated."""
    if is_embedded_data(data_folder):
        # A no-op when the mini corpus is complete; a user's own folder is never written to.
        ensure_default_data(data_folder, f"{SCORING_FOLDER}/{DOCUMENT_KEY}", "quesst14")
    root = resolve_data_folder(data_folder)
    needed = [f"{SCORING_FOLDER}/{name}" for name in
              (DOCUMENT_KEY, *QUERY_KEYS.values(), *GROUNDTRUTH_FOLDERS.values())]
    missing = [name for name in needed if not (root / name).exists()]
    if missing:
        hint = (f"; {root / DATABASE_FOLDER} looks like one: pass that folder"
                if (root / DATABASE_FOLDER / SCORING_FOLDER / DOCUMENT_KEY).is_file() else "")
        raise DataFolderError(
            f"{root} lacks {missing}: --data_folder must be the unpacked {DATABASE_FOLDER} "
            f"folder, holding Audio/, dev_queries/, eval_queries/ and {SCORING_FOLDER}/ "
            f"(the language keys and groundtruth_quesst14_{{dev,eval}}/){hint}"
        )
    return root


def language_items(key_path, root, language):
    """The lines of ``key_path`` tagged ``language``; at least one must be there."""
    entries = read_language_key(key_path, root)
    kept = [entry for entry in entries if entry.language == language]
    if not kept:
        found = sorted({entry.language for entry in entries})
        raise DataFileError(f"{key_path}: no line is tagged {language!r} (tags found: "
                            f"{found}); check --language")
    return kept


def check_in_groundtruth(items, truth, name, split):
    """Every kept item must be a trial of the split's ground truth, or it cannot be scored."""
    listed = set(truth.documents if name == "documents" else truth.queries)
    absent = [item for item in items if item.item_id not in listed]
    if absent:
        kind = "ecf" if name == "documents" else "tlist"
        examples = ", ".join(f"{item.item_id} ({item.where})" for item in absent[:3])
        raise DataFileError(
            f"{truth.files[kind]}: lacks {len(absent)} {name} item(s) of the language key, "
            f"e.g. {examples}: the {split} ground truth and the language key come from "
            "different corpora"
        )


def manifest_row(item):
    """A manifest row for one listed item, its audio checked from the header."""
    return {
        "ID": item.item_id,
        "duration": f"{checked_quesst_audio(item.path, item.where):.4f}",
        "wav": str(item.path),
        "start": "",
        "stop": "",
        "language": item.language,
    }


def checked_quesst_audio(path, where):
    """Duration of a listed wav, which must be there, non-empty and 8 or 16 kHz mono."""
    if not path.is_file():
        raise DataFileError(f"{where}: {path} does not exist")
    try:
        frames, rate, channels = audio_info(path)
    except AudioError as err:
        raise DataFileError(f"{err} (listed at {where})") from None
    if rate not in AUDIO_RATES or channels != 1:
        raise DataFileError(
            f"{path}: {rate} Hz, {channels} channel{'s' if channels > 1 else ''}; QUESST 2014 "
            "is 8 kHz mono (16 kHz mono is read too): this is not the corpus' audio "
            f"(listed at {where})"
        )
    return frames / rate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--manifest_root", required=True)
    parser.add_argument("--language", default=LANGUAGE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(prepare_quesst14(args.data_folder, args.manifest_root, language=args.language))


if __name__ == "__main__":
    from rewire_lobes.runs.cli import user_errors

    with user_errors():
        main()
