"""Transcript files of a user's audio folder, and which audio file each line is for.

Formats (:func:`read_transcripts` tells them apart by the first line):

* tab- or pipe-separated (``|``: LJ Speech's ``metadata.csv``), a header row optional: the
  key is the column named like ``id``/``path``/``file``/``wav`` (else the first), the text
  the column named like ``text``/``transcript``/``wrd``/``normalized_text`` (else the last);
* comma-separated with a header row naming those columns (without one, a comma in a
  Kaldi transcript could not be told from a delimiter); when the text is the last column,
  unquoted commas in it are kept as text;
* otherwise Kaldi ``text``: ``<uttid> <words ...>`` (a headerless comma-separated file
  reads as Kaldi lines without a space and fails on its first line).

A key is an utterance ID, a file name or stem, or a path (absolute, or relative to the
audio folder or to the transcript file's folder): :func:`match_transcripts`.
"""

import csv
import logging
from collections import defaultdict
from pathlib import Path

from rewire_lobes.data.audio_folder import AUDIO_SUFFIXES
from rewire_lobes.errors import DataFileError

logger = logging.getLogger(__name__)

KEY_COLUMNS = ("id", "utt_id", "uttid", "utterance_id", "utt", "path", "file", "file_name",
               "filename", "wav", "audio", "audio_path")
TEXT_COLUMNS = ("text", "transcript", "transcription", "wrd", "words", "sentence",
                "normalized_text", "normalised_text")


def _column(header, names):
    lowered = [name.strip().lower() for name in header]
    return next((lowered.index(name) for name in names if name in lowered), None)


def _rows(path, lines):
    """``(line number, key, text)`` of every non-empty line."""
    first_line = next((line for line in lines if line.strip()), "")
    delimiter = next((d for d in ("\t", "|") if d in first_line), None)
    header = next(csv.reader([first_line]), [])
    if delimiter is None and None not in (_column(header, KEY_COLUMNS),
                                          _column(header, TEXT_COLUMNS)):
        delimiter = ","
    if delimiter is None:  # Kaldi text
        for number, line in enumerate(lines, 1):
            if line.strip():
                key, text = (line.split(None, 1) + [""])[:2]
                if not text.strip():
                    raise DataFileError(f"{path}:{number}: no text after the key {key!r} (Kaldi "
                                        "text: '<uttid> <words>'; a CSV needs a header row "
                                        "naming its key and text columns)")
                yield number, key, text
        return
    table = list(csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE
                            if delimiter == "|" else csv.QUOTE_MINIMAL))
    first = next(i for i, row in enumerate(table) if any(cell.strip() for cell in row))
    key_at, text_at = _column(table[first], KEY_COLUMNS), _column(table[first], TEXT_COLUMNS)
    has_header = key_at is not None and text_at is not None
    key_at, text_at = (key_at, text_at) if has_header else (0, -1)
    columns = len(table[first])
    text_is_last = text_at in (-1, columns - 1)
    for number, row in enumerate(table[first + has_header:], first + has_header + 1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 2:
            raise DataFileError(f"{path}:{number}: one column only, expected a key and a text "
                                f"separated by {delimiter!r}")
        if has_header and len(row) != columns:
            if not (delimiter == "," and text_is_last and len(row) > columns):
                raise DataFileError(f"{path}:{number}: {len(row)} fields, its header has "
                                    f"{columns}")
            row = row[:columns - 1] + [",".join(row[columns - 1:])]
        yield number, row[key_at].strip(), row[text_at]


def read_transcripts(path):
    """``{key: text}`` of a transcript file (text on one line, single spaces)."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataFileError(f"{path}: cannot read the transcripts ({err})") from err
    texts = {}
    for number, key, text in _rows(path, lines):
        text = " ".join(text.split())
        if not key:
            raise DataFileError(f"{path}:{number}: no key (an utterance ID or a path)")
        if key in texts and texts[key] != text:
            raise DataFileError(f"{path}:{number}: {key!r} has a second, different transcript")
        texts[key] = text
    if not texts:
        raise DataFileError(f"{path}: no transcript in it")
    return texts


def _without_audio_suffix(path):
    return path.with_suffix("") if path.suffix.lower() in AUDIO_SUFFIXES else path


def match_transcripts(rows, transcripts, audio_folder, transcripts_path):
    """``(texts {ID: text}, report)``: each transcript key matched to a scanned row.

    A key matches an ID; else a path (absolute, or relative to the audio folder or to the
    transcript file's folder), with or without its suffix; else a file name or stem that
    only one audio file has. A stem that several files share matches none (counted as
    ``ambiguous``: give a fuller key). The report counts matched and unmatched keys and the
    rows without a transcript, with a few examples.
    """
    root = Path(audio_folder).resolve()
    ids = {row["ID"] for row in rows}
    by_stem = defaultdict(list)
    for uid in ids:
        by_stem[Path(uid).name].append(uid)
    bases = (root, Path(transcripts_path).resolve().parent)

    def match(key):
        if key in ids:
            return key
        for base in bases:
            candidate = _without_audio_suffix(Path(base, key).resolve())
            if candidate.is_relative_to(root) and candidate.relative_to(root).as_posix() in ids:
                return candidate.relative_to(root).as_posix()
        return by_stem.get(_without_audio_suffix(Path(key)).name, [None, None])

    texts, keys, unmatched, ambiguous = {}, {}, [], []
    for key, text in transcripts.items():
        found = match(key)
        if not isinstance(found, str):
            if found[0] is None:
                unmatched.append(key)
                continue
            if len(found) > 1:
                ambiguous.append(key)
                continue
            found = found[0]
        if found in texts and texts[found] != text:
            raise DataFileError(f"{transcripts_path}: {keys[found]!r} and {key!r} are both "
                                f"{found!r}, with different transcripts")
        texts[found], keys[found] = text, key
    untranscribed = sorted(ids - set(texts))
    report = {"keys": len(transcripts), "matched": len(texts), "unmatched_keys": len(unmatched),
              "ambiguous_keys": len(ambiguous), "rows_without_transcript": len(untranscribed),
              "examples": {"unmatched": unmatched[:5], "ambiguous": ambiguous[:5],
                           "without_transcript": untranscribed[:5]}}
    if unmatched or ambiguous:
        logger.warning("%s: %d keys match no audio file (e.g. %s), %d match several by name "
                       "(e.g. %s)", transcripts_path, len(unmatched), unmatched[:3],
                       len(ambiguous), ambiguous[:3])
    return texts, report
