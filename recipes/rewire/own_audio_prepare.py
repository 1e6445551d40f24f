"""Manifest for contrastive rewiring on a folder of the user's own audio.

Writes ``<save_folder>/train.csv`` (the columns of ``librispeech_prepare``: ``ID,
duration, wav, spk_id, wrd``), ``rewiring_subset.txt`` and ``audio_folder_report.json``:

1. every audio file of the folder, in any layout, read once
   (``rewire_lobes.data.audio_folder``): unreadable, all-silent and too long files
   (over ``max_samples`` at 16 kHz, the paper's rule) are skipped;
2. with ``transcripts_file``, its texts (``rewire_lobes.data.transcripts``); when text is
   needed (Neutral pairs, transcript hard negatives) a file with none is skipped;
3. the ``max_utterances`` kept by the ``subset`` rule, as for LibriSpeech (the others are
   counted as ``not_in_subset``);
4. when text is needed and no file gave it, ``transcribe(rows) -> {ID: text}`` (an ASR
   pass) on the subset; an empty text is skipped and its place refilled by the rule from
   the files not yet transcribed.

Every skip is logged, counted and named in the report, which ``rewiring.json`` copies
(written also when no utterance is left, before the error that points to it).
Idempotent: a rerun with the same options, the same transcript file and ASR model, and the
same files (names, sizes, modification times) reuses the manifest.

Example
-------
python recipes/rewire/own_audio_prepare.py --audio_folder /my/audio \
    --save_folder results/rewire/manifest --transcripts /my/audio/metadata.csv

Authors
 * rewire-speech contributors
"""

import argparse
import csv
import hashlib
import json
import logging
from pathlib import Path

from rewire_lobes.data.audio_folder import find_audio_files, scan_audio_folder
from rewire_lobes.data.transcripts import match_transcripts, read_transcripts
from rewire_lobes.errors import OptionError
from rewire_lobes.io_utils import atomic_path, write_json_atomic, write_text_atomic

from librispeech_prepare import (  # sibling script  # isort: skip
    FIELDS,
    MANIFEST_NAME,
    OPTIONS_NAME,
    SUBSET_NAME,
    SUBSET_RULES,
    check_subset_rule,
    select_subset,
)

logger = logging.getLogger(__name__)

REPORT_NAME = "audio_folder_report.json"


def file_source(path):
    """The record of a transcript file: its resolved path and sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return {"source": "file", "path": str(Path(path).resolve()), "sha256": digest.hexdigest()}


def keep_with_text(rows, scan, reason, why):
    """The rows that have a text; the others are skipped (logged, counted) for ``reason``."""
    kept = []
    for row in rows:
        if row["wrd"]:
            kept.append(row)
        else:
            scan.skip(reason, row["wav"], why)
    return kept


def select_transcribed(rows, max_utterances, subset, seed, transcribe, scan):
    """The subset of ``rows`` by the ``subset`` rule, transcribed by ``transcribe``: a row
    with an empty text is skipped and its place refilled from the rows not yet tried."""
    kept, untried = [], list(rows)
    while untried:
        wanted = None if max_utterances is None else int(max_utterances) - len(kept)
        if wanted == 0:
            break
        chosen = select_subset(untried, wanted, subset, seed)
        chosen_ids = {row["ID"] for row in chosen}
        untried = [row for row in untried if row["ID"] not in chosen_ids]
        texts = transcribe(chosen)
        for row in chosen:
            row["wrd"] = " ".join(str(texts.get(row["ID"]) or "").split())
        kept += keep_with_text(chosen, scan, "empty_transcript", "the ASR pass gave no text")
    return kept


def folder_fingerprint(folder):
    """sha256 of the folder's audio file names, sizes and modification times."""
    digest = hashlib.sha256()
    for path in find_audio_files(folder):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def prepare_audio_folder_rewire(
    audio_folder,
    save_folder,
    max_samples=180_000,
    max_utterances=None,
    seed=1234,
    subset="shortest",
    transcripts_file=None,
    needs_text=False,
    transcribe=None,
    transcriber_identity=None,
    skip_prep=False,
):
    """Writes the manifest, the subset's ID list and the report; returns the manifest's path.

    Arguments
    ---------
    audio_folder : str
        Any folder holding audio files, searched recursively.
    save_folder : str
    max_samples, max_utterances, seed, subset
        As ``prepare_librispeech_rewire``.
    transcripts_file : str, optional
        CSV/TSV/pipe-separated or Kaldi ``text`` (``read_transcripts``).
    needs_text : bool
        Every utterance needs a transcript: one without is skipped.
    transcribe : callable, optional
        ``transcribe(rows) -> {ID: text}`` for the subset's rows when no file gives text.
    transcriber_identity : dict, optional
        What identifies ``transcribe`` (its model): a changed one redoes the manifest.
    skip_prep : bool
    """
    save_folder = Path(save_folder)
    csv_path = save_folder / MANIFEST_NAME
    if skip_prep:
        return csv_path
    check_subset_rule(subset)
    if needs_text and transcripts_file is None and transcribe is None:
        raise OptionError(f"{audio_folder}: this strategy needs a transcript per utterance: "
                          "pass --transcripts FILE or --asr_source DIR")
    source = None
    if transcripts_file is not None:
        source = file_source(transcripts_file)
    elif needs_text:
        source = {"source": "asr", "model": transcriber_identity}
    options = {
        "audio_folder": str(Path(audio_folder).resolve()),
        "files": folder_fingerprint(audio_folder),
        "max_samples": int(max_samples),
        "max_utterances": None if max_utterances is None else int(max_utterances),
        "subset": subset,
        "seed": int(seed),
        "needs_text": bool(needs_text),
        "transcripts": source,
    }
    options_file = save_folder / OPTIONS_NAME
    if (csv_path.is_file() and (save_folder / REPORT_NAME).is_file() and options_file.is_file()
            and json.loads(options_file.read_text(encoding="utf-8")) == options):
        logger.info("%s is up to date, skipping preparation", csv_path)
        return csv_path

    scan = scan_audio_folder(audio_folder, max_samples)
    rows, match_report = scan.rows, None
    if transcripts_file is not None:
        texts, match_report = match_transcripts(rows, read_transcripts(transcripts_file),
                                                audio_folder, transcripts_file)
        for row in rows:
            row["wrd"] = texts.get(row["ID"], "")
        if needs_text:
            rows = keep_with_text(rows, scan, "no_transcript",
                                  f"no transcript in {transcripts_file}")
    candidates = len(rows)
    if needs_text and transcripts_file is None:
        rows = select_transcribed(rows, max_utterances, subset, seed, transcribe, scan)
    else:
        rows = select_subset(rows, max_utterances, subset, seed)
    save_folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(save_folder / REPORT_NAME, {
        "audio_folder": options["audio_folder"],
        "audio_files": scan.files,
        "utterances": len(rows),
        "max_utterances": options["max_utterances"],
        "subset": subset,
        "not_in_subset": candidates - len(rows) - scan.counts().get("empty_transcript", 0),
        "skipped_counts": scan.counts(),
        "skipped": scan.skipped,
        "transcripts": source,
        "transcript_matching": match_report,
    })
    if not rows:
        raise OptionError(f"{audio_folder}: no utterance is left to rewire on "
                          f"(skipped: {scan.counts()}); {save_folder / REPORT_NAME} names them")
    rows.sort(key=lambda row: row["ID"])

    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore",
                                    restval="")
            writer.writeheader()
            writer.writerows(rows)
    write_text_atomic(save_folder / SUBSET_NAME, "".join(f"{row['ID']}\n" for row in rows))
    write_json_atomic(options_file, options)
    logger.info("Wrote %s: %d utterances of %s (skipped: %s)", csv_path, len(rows),
                audio_folder, scan.counts())
    return csv_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio_folder", required=True)
    parser.add_argument("--save_folder", required=True)
    parser.add_argument("--transcripts", default=None)
    parser.add_argument("--max_samples", type=int, default=180_000)
    parser.add_argument("--max_utterances", type=int, default=None)
    parser.add_argument("--subset", default="shortest", choices=SUBSET_RULES)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    prepare_audio_folder_rewire(args.audio_folder, args.save_folder, args.max_samples,
                                args.max_utterances, args.seed, args.subset, args.transcripts,
                                needs_text=args.transcripts is not None)


if __name__ == "__main__":
    main()
