"""Reading QUESST 2014 (``quesst14Database``): its language keys and NIST STD ground truth.

The layout, as the corpus unpacks and as s3prl reads it (``superb_protocol.md`` §6)::

    quesst14Database/Audio/quesst14_<n>.wav                       documents (8 kHz mono)
    quesst14Database/{dev,eval}_queries/quesst14_{dev,eval}_<n>.wav
    quesst14Database/scoring/language_key_utterances.lst          <path> <language>
    quesst14Database/scoring/language_key_{dev,eval}.lst
    quesst14Database/scoring/groundtruth_quesst14_{dev,eval}/     *.ecf.xml, *.tlist.xml, *.rttm

A language key's paths start with the database's own folder name, which is dropped and
the rest joined to the folder given (s3prl's rule). Item ids are the file stems: the
stdlist names documents and queries by them, as the ground truth does.

The ground truth of a split is three files, found by suffix as the scoring script finds
them: the ECF lists the documents, the term list the queries, and each RTTM ``LEXEME``
line ``LEXEME <document> <channel> <tbeg> <dur> <query> ...`` one occurrence;
``NO_KEYWORD`` lines say that a document holds no query. Detection is per file, so only
the (query, document) pairs matter.
"""

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from rewire_lobes.errors import DataFileError, DataFolderError

logger = logging.getLogger(__name__)

SCORING_FOLDER = "scoring"
DOCUMENT_KEY = "language_key_utterances.lst"
QUERY_KEYS = {"dev": "language_key_dev.lst", "eval": "language_key_eval.lst"}
GROUNDTRUTH_FOLDERS = {"dev": "groundtruth_quesst14_dev", "eval": "groundtruth_quesst14_eval"}
GROUNDTRUTH_SUFFIXES = {"ecf": ".ecf.xml", "tlist": ".tlist.xml", "rttm": ".rttm"}
SPLITS = tuple(QUERY_KEYS)
# What quesst14_prepare.py writes: one manifest per item set, and the ground truth.
SPLIT_MANIFESTS = {"documents": "documents.csv", "dev": "dev.csv", "eval": "eval.csv"}
GROUNDTRUTH_FILE = "groundtruth.json"
NO_OCCURRENCE = "NO_KEYWORD"
OCCURRENCE_TYPE = "LEXEME"


@dataclass(frozen=True)
class ListedAudio:
    """One line of a language key: the item's id (file stem), audio path and language."""

    item_id: str
    path: Path
    language: str
    where: str  # "<key file>:<line>", for messages


def item_id(name):
    """The id of an audio file or an ECF entry: its stem (``Audio/x.wav`` -> ``x``).

    Example
    -------
    >>> item_id("quesst14Database/Audio/quesst14_00001.wav"), item_id("quesst14_00001")
    ('quesst14_00001', 'quesst14_00001')
    """
    name = PurePosixPath(str(name).replace("\\", "/")).name
    return name[: -len(".wav")] if name.lower().endswith(".wav") else name


def read_language_key(path, data_folder):
    """Every line of a language key, as :class:`ListedAudio`, in file order.

    A line is ``<path> <language>``; the path's first component (the database folder)
    is replaced by ``data_folder``. A malformed line and an id listed twice are a
    :class:`DataFileError` naming the line.
    """
    items, seen = [], {}
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        fields = line.split()
        parts = PurePosixPath(fields[0].replace("\\", "/")).parts if fields else ()
        if len(fields) != 2 or len(parts) < 2:
            raise DataFileError(f"{where}: expected '<database folder>/<path>.wav <language>', "
                                f"got {line.strip()!r}")
        audio = Path(data_folder).joinpath(*parts[1:])
        entry = ListedAudio(item_id(audio.name), audio, fields[1], where)
        if entry.item_id in seen:
            raise DataFileError(f"{where}: {entry.item_id} is listed twice (first on "
                                f"{seen[entry.item_id]})")
        seen[entry.item_id] = where
        items.append(entry)
    return items


def _read_lines(path):
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path}: not UTF-8 text ({err})") from None


@dataclass
class GroundTruth:
    """One split's trials and occurrences.

    ``documents`` (the ECF) and ``queries`` (the term list), in file order;
    ``occurrences[query]``: the documents holding it, sorted. Occurrences of a query or
    document that the lists lack are left out, and counted in ``unlisted``.
    """

    documents: list
    queries: list
    occurrences: dict
    files: dict = field(default_factory=dict)
    unlisted: int = 0

    def as_dict(self):
        return {
            "documents": list(self.documents),
            "queries": list(self.queries),
            "occurrences": {q: list(d) for q, d in self.occurrences.items()},
            "files": dict(self.files),
            "unlisted": int(self.unlisted),
        }

    @classmethod
    def from_dict(cls, record):
        return cls(
            documents=list(record["documents"]),
            queries=list(record["queries"]),
            occurrences={q: list(d) for q, d in record["occurrences"].items()},
            files=dict(record.get("files", {})),
            unlisted=int(record.get("unlisted", 0)),
        )


def groundtruth_files(folder):
    """``{"ecf": path, "tlist": path, "rttm": path}`` of a ground-truth folder.

    Found by suffix, as ``score-TWV-Cnxe.sh`` passes ``$GT/*.ecf.xml`` and the others to
    the scorer; none or several of a kind is a :class:`DataFolderError`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFolderError(f"{folder}: no such ground-truth folder (expected "
                              "*.ecf.xml, *.tlist.xml and *.rttm in it)")
    found = {}
    for kind, suffix in GROUNDTRUTH_SUFFIXES.items():
        matches = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(suffix))
        if len(matches) != 1:
            what = "no" if not matches else f"{len(matches)} ({', '.join(p.name for p in matches)})"
            raise DataFolderError(f"{folder}: {what} *{suffix} file; the scorer reads exactly "
                                  "one ECF, one term list and one RTTM per ground-truth folder")
        found[kind] = matches[0]
    return found


def read_groundtruth(folder):
    """The :class:`GroundTruth` of one ``groundtruth_quesst14_<split>`` folder."""
    files = groundtruth_files(folder)
    documents = _xml_ids(files["ecf"], "excerpt", "audio_filename")
    queries = _xml_ids(files["tlist"], "term", "termid")
    occurrences, unlisted = _read_rttm(files["rttm"], set(documents), set(queries))
    if unlisted:
        logger.warning("%s: %d occurrences name a query or document that %s or %s lacks; "
                       "they are not scored", files["rttm"], unlisted, files["tlist"].name,
                       files["ecf"].name)
    return GroundTruth(documents, queries, occurrences,
                       files={kind: str(path) for kind, path in files.items()},
                       unlisted=unlisted)


def _xml_ids(path, tag, attribute):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise DataFileError(f"{path}: not readable XML ({err})") from None
    ids, seen = [], set()
    for element in root.iter(tag):
        value = element.get(attribute)
        if not value:
            raise DataFileError(f"{path}: a <{tag}> has no {attribute}")
        value = item_id(value)
        if value in seen:
            raise DataFileError(f"{path}: {attribute} {value} is listed twice")
        seen.add(value)
        ids.append(value)
    if not ids:
        raise DataFileError(f"{path}: no <{tag} {attribute}=...> element")
    return ids


def _read_rttm(path, documents, queries):
    occurrences, unlisted = {}, 0
    for number, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields or fields[0].startswith(";;") or fields[0] != OCCURRENCE_TYPE:
            continue
        if len(fields) < 6:
            raise DataFileError(f"{path}:{number}: expected 'LEXEME <document> <channel> "
                                f"<tbeg> <dur> <query> ...', got {line.strip()!r}")
        document, query = item_id(fields[1]), fields[5]
        if query == NO_OCCURRENCE:
            continue
        if document not in documents or query not in queries:
            unlisted += 1
            continue
        occurrences.setdefault(query, set()).add(document)
    return {q: sorted(d) for q, d in occurrences.items()}, unlisted


__all__ = [
    "SCORING_FOLDER",
    "DOCUMENT_KEY",
    "QUERY_KEYS",
    "GROUNDTRUTH_FOLDERS",
    "SPLITS",
    "ListedAudio",
    "GroundTruth",
    "item_id",
    "read_language_key",
    "groundtruth_files",
    "read_groundtruth",
]
