"""LibriSpeech as distributed, read into manifest rows; the rewiring subset an ASR run leaves out.

Layout::

    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac

A transcript line is ``<utterance id> <WORDS>``; an audio file that no transcript lists is
not used. The rewiring prepare step and the ASR one both read the corpus here, and differ
in what bad input means (``strict``):

* rewiring (``strict=False``): a listed utterance whose audio is missing, empty or
  unreadable, and a chapter folder without its transcript, are skipped with a warning:
  the rewiring subset is drawn from what is there;
* ASR (``strict=True``): each is a :class:`rewire_lobes.errors.DataFileError` naming the
  file. SUPERB evaluates every listed utterance, so a silent drop would change the test set.

With ``mono_16k`` a file that is not 16 kHz mono is bad input as well (s3prl asserts
16 kHz); only headers are read.

A rewired encoder's ``rewiring.json`` names the utterances it was rewired on
(``data.subset_file``, with its sha256); :func:`rewiring_exclusions` reads them, so that
the ASR recipe can leave them out of its training data (the paper's Table 2 footnote).

Authors
 * rewire-speech contributors
"""

import hashlib
import json
import logging
from pathlib import Path

from rewire_lobes.data.audio import SAMPLE_RATE, AudioError, audio_info
from rewire_lobes.data.manifests import checked_16k_mono
from rewire_lobes.embedded import is_embedded_data, resolve_data_folder
from rewire_lobes.errors import DataFileError, DataFolderError, OptionError
from rewire_lobes.runs.defaults import ensure_default_data
from rewire_lobes.runs.provenance import record_path as encoder_record

logger = logging.getLogger(__name__)

TRANSCRIPT_SUFFIX = ".trans.txt"
AUDIO_SUFFIX = ".flac"


# The folder a data_folder names, unchecked (see locate_librispeech): the name
# recipes/ASR/librispeech_prepare.py imports.
librispeech_root = resolve_data_folder


def locate_librispeech(data_folder, splits):
    """The LibriSpeech root to read, checked to hold ``splits``; returned resolved.

    When ``data_folder`` is the embedded default (under ``data/mini``) the mini corpus is
    generated first if absent; a user's own folder is never written to. A missing folder or
    split is a :class:`rewire_lobes.errors.DataFolderError` saying what is expected.
    """
    if is_embedded_data(data_folder):
        # A no-op when the mini corpus is complete; it (re)generates a missing or
        # half-written one.
        ensure_default_data(data_folder, splits[0], "librispeech")
    folder = resolve_data_folder(data_folder)
    if not folder.is_dir():
        raise DataFolderError(
            f"{data_folder}: no such LibriSpeech folder (pass --data_folder /path/to/LibriSpeech, "
            "the folder holding train-clean-100/)"
        )
    for split in splits:
        if not (folder / split).is_dir():
            raise DataFolderError(
                f"{folder / split}: missing LibriSpeech split folder (expected "
                f"{folder}/{split}/<speaker>/<chapter>/ with <speaker>-<chapter>.trans.txt "
                "and the .flac files)"
            )
    return folder


def read_librispeech_split(split_dir, strict=False, mono_16k=False):
    """Rows of the transcribed utterances of one split, in chapter and transcript order.

    Arguments
    ---------
    split_dir : str or Path
        ``<root>/<split>``, holding ``<speaker>/<chapter>/``.
    strict : bool
        Bad input (see the module docstring) raises :class:`DataFileError` naming the file;
        otherwise it is skipped with a warning.
    mono_16k : bool
        A file that is not 16 kHz mono is bad input.

    Returns
    -------
    list of dict
        ``ID``, ``duration`` (seconds, as text), ``wav`` (absolute path), ``spk`` (the
        speaker folder), ``wrd`` (the transcript, whitespace normalised) and ``samples``
        (the length at 16 kHz).

    Example
    -------
    >>> import tempfile, numpy, soundfile
    >>> chapter = Path(tempfile.mkdtemp()) / "dev-clean" / "84" / "121"
    >>> chapter.mkdir(parents=True)
    >>> soundfile.write(chapter / "84-121-0000.flac", numpy.zeros(8000), 16000)
    >>> _ = (chapter / "84-121.trans.txt").write_text("84-121-0000 GO  ON\\n")
    >>> rows = read_librispeech_split(chapter.parents[1])
    >>> [(row["ID"], row["spk"], row["wrd"], row["samples"]) for row in rows]
    [('84-121-0000', '84', 'GO ON', 8000)]
    """
    rows, seen = [], set()
    for chapter in sorted(Path(split_dir).glob("*/*")):
        if not chapter.is_dir() or chapter.name.startswith("."):
            continue
        transcripts = sorted(chapter.glob(f"*{TRANSCRIPT_SUFFIX}"))
        if not transcripts:
            _refuse_or_skip(strict, f"{chapter}: this chapter folder has no "
                                    f"<speaker>-<chapter>{TRANSCRIPT_SUFFIX}")
            continue
        for transcript in transcripts:
            for row in _transcript_rows(transcript, strict, mono_16k):
                if row["ID"] in seen:
                    _refuse_or_skip(strict, f"{transcript}: {row['ID']} is listed twice")
                    continue
                seen.add(row["ID"])
                rows.append(row)
    return rows


def _transcript_rows(transcript, strict, mono_16k):
    try:
        lines = transcript.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        _refuse_or_skip(strict, f"{transcript}: cannot read this transcript ({err})")
        return
    for line in lines:
        if not line.strip():
            continue
        utt_id, _, words = line.strip().partition(" ")
        audio = transcript.parent / f"{utt_id}{AUDIO_SUFFIX}"
        if not audio.is_file():
            _refuse_or_skip(strict, f"{audio}: listed in {transcript} but missing")
            continue
        try:
            samples, seconds = _length(audio, mono_16k)
        except DataFileError as err:
            _refuse_or_skip(strict, str(err))
            continue
        yield {
            "ID": utt_id,
            "duration": f"{seconds:.4f}",
            "wav": str(audio.resolve()),
            "spk": transcript.parent.parent.name,
            "wrd": " ".join(words.split()),
            "samples": samples,
        }


def _length(audio, mono_16k):
    """``(samples at 16 kHz, seconds)`` from the header; a bad file is a DataFileError."""
    if mono_16k:
        frames = checked_16k_mono(audio)
        return frames, frames / SAMPLE_RATE
    try:
        frames, rate, _ = audio_info(audio)
    except AudioError as err:
        raise DataFileError(str(err)) from None
    return round(frames * SAMPLE_RATE / rate), frames / rate


def _refuse_or_skip(strict, message):
    if strict:
        raise DataFileError(message)
    logger.warning("%s: skipped", message)


def subset_digest(path):
    """sha256 hex digest of a subset ID list (the file's bytes)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_subset(path):
    """The utterance IDs of a subset ID list, in file order."""
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def rewiring_exclusions(upstream_source):
    """``(ids, info)``: the utterances ``upstream_source`` was rewired on, for ASR to leave out.

    Reads ``<upstream_source>/rewiring.json`` (or the ``mtl.json`` of an encoder fine-tuned
    from a rewired one, which carries its subset): its ``data.subset_file`` (relative to the
    encoder directory) must exist and match ``data.subset_sha256``, else
    :class:`rewire_lobes.errors.OptionError` naming the file. An encoder without a record
    (the baseline, a hub id) or whose record names no subset file excludes nothing.

    Returns
    -------
    ids : set of str
    info : dict
        For ``results.json``: ``excluded_source`` (the subset file, or None when nothing is
        excluded), ``excluded_sha256``, ``excluded_utterances`` and ``rewiring_record``.

    Example
    -------
    >>> rewiring_exclusions("facebook/wav2vec2-base")
    (set(), {'excluded_source': None})
    """
    encoder_dir = Path(str(upstream_source)).expanduser()
    record_path = encoder_record(encoder_dir)
    nothing = (set(), {"excluded_source": None})
    if record_path is None:
        return nothing
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        data = record.get("data") or {}
        name = data.get("subset_file")
    except (ValueError, AttributeError) as err:
        raise OptionError(f"{record_path}: not a readable rewiring record ({err})") from None
    if not name:
        return nothing
    subset_file = encoder_dir / name
    if not subset_file.is_file():
        raise OptionError(
            f"{subset_file}: the rewiring subset named by {record_path} is missing; the ASR "
            "recipe needs it to leave the rewiring utterances out of its training data"
        )
    digest = subset_digest(subset_file)
    if digest != data.get("subset_sha256"):
        raise OptionError(
            f"{subset_file}: sha256 {digest} differs from the subset_sha256 "
            f"{data.get('subset_sha256')} recorded in {record_path}; the file was changed "
            "after the rewiring run"
        )
    ids = set(read_subset(subset_file))
    return ids, {
        "excluded_source": str(subset_file.resolve()),
        "excluded_sha256": digest,
        "excluded_utterances": len(ids),
        "rewiring_record": str(record_path.resolve()),
    }
