"""Audio SNIPS manifests for SUPERB slot filling (CTC over characters and slot tags).

Expected layout (SUPERB's preprocessed Audio SNIPS; ``superb_protocol.md`` §4)::

    <data_folder>/train/<Speaker>-snips-train-<n>.wav     (16 kHz mono)
    <data_folder>/valid/<Speaker>-snips-valid-<n>.wav
    <data_folder>/test/<Speaker>-snips-test-<n>.wav
    <data_folder>/all.iob.snips.txt    <uttid> BOS <WORDS> EOS<TAB>O <slot per word> <intent>
    <data_folder>/slots.txt            the slot labels, line 1 being O

As s3prl's ``snips.yaml``, each set takes its voices from its own folder: train the 8 US
voices of ``train/``, dev 4 voices of ``valid/``, test 4 voices of ``test/``; the sets
share no voice. ``train.csv``, ``dev.csv`` and ``test.csv`` have the columns
``ID, duration, wav, start, stop, spk, wrd, slots, intent``: ``wrd`` the words without
``BOS``/``EOS``, ``slots`` their slot labels (one per word, ``O`` outside a slot), both
space-joined; ``labels.json`` holds ``{"slot_types": [slots.txt after its first line]}``.

Every selected utterance must be whole, so each of these stops preparation with a
:class:`rewire_lobes.errors.DataFileError` naming the file (and line): a line whose word
and label counts differ, a slot label not in ``slots.txt``, a listed utterance of a
selected voice with no wav, a wav of a selected voice with no line, a wav that is empty,
unreadable or not 16 kHz mono (s3prl asserts 16 kHz; only headers are read), and words
spelled with characters outside s3prl's SF vocabulary (space, A-Z, apostrophe; ``&``,
read AND, and the marks ``? ! . , ; -``, which s3prl skips, are fine). SUPERB's
preprocessing normalised the text, so any other character means a corpus that was not.

The manifests go to ``<manifest_root>/<hash of the options>`` and are made once; the
embedded default (``data/mini/SNIPS``) is generated first when absent.

Example
-------
python recipes/SF/snips_prepare.py --data_folder /data/SNIPS --manifest_root results/manifests/sf

Authors
 * rewire-speech contributors
"""

import argparse
import logging
import re
from pathlib import Path

from rewire_lobes.data.audio import SAMPLE_RATE
from rewire_lobes.data.manifests import (
    already_prepared,
    checked_16k_mono,
    mark_prepared,
    prepared_folder,
    write_manifest,
)
from rewire_lobes.embedded import is_embedded_data, resolve_data_folder
from rewire_lobes.errors import DataFileError, DataFolderError, OptionError
from rewire_lobes.io_utils import write_json_atomic
from rewire_lobes.runs.defaults import ensure_default_data
from rewire_lobes.text.slots import OUTSIDE, unspellable_characters

logger = logging.getLogger(__name__)

TRANSCRIPT = "all.iob.snips.txt"
SLOTS_FILE = "slots.txt"
SPLIT_FOLDERS = {"train": "train", "dev": "valid", "test": "test"}
# s3prl/downstream/ctc/snips.yaml: the Polly voices of each set, each from its own folder.
TRAIN_SPEAKERS = ("Ivy", "Joanna", "Joey", "Justin", "Kendra", "Kimberly", "Matthew", "Salli")
DEV_SPEAKERS = ("Aditi", "Amy", "Geraint", "Nicole")
TEST_SPEAKERS = ("Brian", "Emma", "Raveena", "Russell")
COLUMNS = ["ID", "duration", "wav", "start", "stop", "spk", "wrd", "slots", "intent"]
MANIFESTS = ("train.csv", "dev.csv", "test.csv", "labels.json")
UTTERANCE_ID = re.compile(r"(?P<speaker>.+?)-snips-(?P<folder>[a-z]+)-(?P<n>\d+)")
LISTED_AT_MOST = 10


def prepare_snips(
    data_folder,
    manifest_root,
    train_speakers=TRAIN_SPEAKERS,
    dev_speakers=DEV_SPEAKERS,
    test_speakers=TEST_SPEAKERS,
    skip_prep=False,
):
    """Writes ``train.csv``, ``dev.csv``, ``test.csv`` and ``labels.json``; returns their folder.

    Arguments
    ---------
    data_folder : str
        SUPERB's Audio SNIPS folder, holding ``train/``, ``valid/``, ``test/``,
        ``all.iob.snips.txt`` and ``slots.txt``.
    manifest_root : str
        The manifests go to ``<manifest_root>/<hash of the options>``, shared by every
        run on the same data and voices.
    train_speakers, dev_speakers, test_speakers : list of str
        The voices of each set, read from ``train/``, ``valid/`` and ``test/``.
    skip_prep : bool
        Do nothing (manifests made elsewhere); the folder is still returned.

    Returns
    -------
    Path : the folder holding the manifests.
    """
    speakers = {
        "train": _speaker_list(train_speakers, "train_speakers"),
        "dev": _speaker_list(dev_speakers, "dev_speakers"),
        "test": _speaker_list(test_speakers, "test_speakers"),
    }
    shared = sorted(set(speakers["train"]) & set(speakers["dev"] + speakers["test"])
                    | set(speakers["dev"]) & set(speakers["test"]))
    if shared:
        raise OptionError(f"voices {shared} are in two sets: SUPERB's train, dev and test "
                          "voices are distinct")
    options = {"data_folder": str(resolve_data_folder(data_folder)),
               **{f"{name}_speakers": voices for name, voices in speakers.items()}}
    save_folder = prepared_folder(manifest_root, options)
    if skip_prep:
        return save_folder
    root = locate_snips(data_folder)
    if already_prepared(save_folder, options, MANIFESTS):
        logger.info("SNIPS manifests in %s are up to date", save_folder)
        return save_folder

    slot_types = read_slot_types(root / SLOTS_FILE)
    utterances = read_iob(root / TRANSCRIPT, slot_types)
    for name, folder in SPLIT_FOLDERS.items():
        rows = split_rows(root, folder, speakers[name], utterances)
        logger.info("%s (%s/, voices %s): %d utterances", name, folder,
                    ", ".join(speakers[name]), len(rows))
        write_manifest(save_folder / f"{name}.csv", rows, COLUMNS)
    write_json_atomic(save_folder / "labels.json", {"slot_types": slot_types})
    mark_prepared(save_folder, options)
    return save_folder


def _speaker_list(voices, option):
    voices = [voices] if isinstance(voices, str) else [str(voice) for voice in voices]
    if not voices:
        raise OptionError(f"--{option} is empty: give at least one voice")
    return voices


def locate_snips(data_folder):
    """The SNIPS folder to read, checked to hold the layout; the embedded one is generated."""
    if is_embedded_data(data_folder):
        # A no-op when the mini corpus is complete; a user's own folder is never written to.
        ensure_default_data(data_folder, TRANSCRIPT, "snips")
    root = resolve_data_folder(data_folder)
    needed = [*SPLIT_FOLDERS.values(), TRANSCRIPT, SLOTS_FILE]
    missing = [name for name in needed if not (root / name).exists()]
    if missing:
        hint = (f"; {root / 'SNIPS'} looks like one: pass that folder"
                if (root / "SNIPS" / TRANSCRIPT).is_file() else "")
        raise DataFolderError(
            f"{root} lacks {missing}: --data_folder must be SUPERB's Audio SNIPS folder, "
            f"holding train/, valid/, test/ (<Speaker>-snips-<split>-<n>.wav), {TRANSCRIPT} "
            f"and {SLOTS_FILE}{hint}"
        )
    return root


def read_slot_types(path):
    """The slot types: the lines of ``slots.txt`` after its first, which must be ``O``.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "slots.txt"
    >>> _ = path.write_text("O\\nartist\\ncity\\n")
    >>> read_slot_types(path)
    ['artist', 'city']
    """
    labels = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    labels = [label for label in labels if label]
    if not labels or labels[0] != OUTSIDE:
        raise DataFileError(f"{path}: line 1 must be '{OUTSIDE}' (then one slot type a line)")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise DataFileError(f"{path}: slot labels {repeated} are listed twice")
    return labels[1:]


def read_iob(path, slot_types):
    """``{uttid: (line number, words, slots, intent)}`` of every line of ``all.iob.snips.txt``.

    A line reads ``<uttid> BOS <WORDS> EOS<TAB>O <slot per word> <intent>``; the ``BOS``
    and ``EOS`` words and the leading ``O`` and trailing intent are dropped. A malformed
    line, a slot label not in ``slot_types`` or a repeated uttid is a
    :class:`DataFileError` naming the line; so are words s3prl cannot spell
    (:func:`rewire_lobes.text.slots.unspellable_characters`), listed all at once.
    """
    known = {OUTSIDE, *slot_types}
    utterances, unspellable = {}, []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        text, tab, labels = line.partition("\t")
        tokens, tags = text.split(), labels.split()
        if not tab or len(tokens) < 4 or tokens[1] != "BOS" or tokens[-1] != "EOS":
            raise DataFileError(f"{where}: expected '<uttid> BOS <words> EOS<TAB>O <slot per "
                                "word> <intent>'")
        uttid, words = tokens[0], tokens[2:-1]
        if not UTTERANCE_ID.fullmatch(uttid):
            raise DataFileError(f"{where}: '{uttid}' is not a SNIPS utterance ID "
                                "(<Speaker>-snips-<split>-<n>)")
        if len(tags) != len(words) + 2:
            raise DataFileError(f"{where}: {uttid} has {len(words)} words but {len(tags) - 2} "
                                "slot labels (expected O, one label per word, the intent)")
        slots, intent = tags[1:-1], tags[-1]
        unknown = sorted(set(slots) - known)
        if unknown:
            raise DataFileError(f"{where}: {uttid} has slot labels {unknown} not in "
                                f"{Path(path).parent / SLOTS_FILE}")
        if uttid in utterances:
            raise DataFileError(f"{where}: {uttid} is listed twice (first on line "
                                f"{utterances[uttid][0]})")
        characters = sorted(set(unspellable_characters(words)))
        if characters:
            unspellable.append(f"line {number} {uttid}: {' '.join(map(repr, characters))}")
        utterances[uttid] = (number, words, slots, intent)
    if unspellable:
        listed = "; ".join(unspellable[:LISTED_AT_MOST])
        more = (f"; ... ({len(unspellable)} utterances in all)"
                if len(unspellable) > LISTED_AT_MOST else "")
        raise DataFileError(
            f"{path}: words with characters outside s3prl's SF vocabulary (space, A-Z, "
            f"apostrophe): {listed}{more}. SUPERB's preprocessing normalises the text "
            "(s3prl/preprocess/snips_text_norm.py); this corpus was not normalised"
        )
    return utterances


def split_rows(root, folder, speakers, utterances):
    """Manifest rows of the ``speakers``' wavs in ``<root>/<folder>``, sorted by ID.

    A wav of a selected voice needs its line in ``all.iob.snips.txt`` and a line of a
    selected voice in this folder needs its wav; a voice with no wav here is refused.
    """
    selected = set(speakers)
    wavs, voices_found = {}, set()
    for wav in sorted((root / folder).glob("*.wav")):
        match = UTTERANCE_ID.fullmatch(wav.stem)
        if not match or match["folder"] != folder:
            continue
        voices_found.add(match["speaker"])
        if match["speaker"] in selected:
            wavs[wav.stem] = wav
    absent = [voice for voice in speakers if voice not in voices_found]
    if absent:
        raise DataFolderError(
            f"{root / folder}: no wav of voice(s) {absent} (found {sorted(voices_found)}); "
            f"expected {folder}/<Speaker>-snips-{folder}-<n>.wav"
        )
    for uttid, (number, *_) in utterances.items():
        match = UTTERANCE_ID.fullmatch(uttid)
        if match["folder"] == folder and match["speaker"] in selected and uttid not in wavs:
            raise DataFileError(f"{root / TRANSCRIPT}:{number}: {uttid} has no wav "
                                f"{root / folder / (uttid + '.wav')}")
    rows = []
    for uttid, wav in sorted(wavs.items()):
        if uttid not in utterances:
            raise DataFileError(f"{wav}: {uttid} has no line in {root / TRANSCRIPT}")
        _, words, slots, intent = utterances[uttid]
        rows.append({
            "ID": uttid,
            "duration": f"{checked_16k_mono(wav) / SAMPLE_RATE:.4f}",
            "wav": str(wav),
            "start": "",
            "stop": "",
            "spk": UTTERANCE_ID.fullmatch(uttid)["speaker"],
            "wrd": " ".join(words),
            "slots": " ".join(slots),
            "intent": intent,
        })
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--manifest_root", required=True)
    parser.add_argument("--train_speakers", nargs="+", default=list(TRAIN_SPEAKERS))
    parser.add_argument("--dev_speakers", nargs="+", default=list(DEV_SPEAKERS))
    parser.add_argument("--test_speakers", nargs="+", default=list(TEST_SPEAKERS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    folder = prepare_snips(args.data_folder, args.manifest_root,
                           train_speakers=args.train_speakers, dev_speakers=args.dev_speakers,
                           test_speakers=args.test_speakers)
    print(folder)


if __name__ == "__main__":
    from rewire_lobes.runs.cli import user_errors

    with user_errors():
        main()
