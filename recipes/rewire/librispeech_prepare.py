"""Manifest of LibriSpeech utterances for contrastive rewiring.

Writes ``<save_folder>/train.csv`` with SpeechBrain's columns ``ID, duration, wav, spk_id,
wrd``: utterances of the chosen splits (the paper: ``train-clean-100``) that have a
transcript and at most ``max_samples`` samples at 16 kHz (the paper: 180k), optionally a
seeded random subset of ``max_utterances`` of them (the paper used 6.6k).

Idempotent: an existing CSV is kept when the options it was written with match. When
``data_folder`` is the embedded default (the generated mini corpus) and is absent, the
mini corpus is generated first; any other missing folder is an error.

Example
-------
python recipes/rewire/librispeech_prepare.py --data_folder /data/LibriSpeech \
    --save_folder results/rewire/manifest --max_utterances 6600

Authors
 * rewire-speech contributors
"""

import argparse
import csv
import json
import logging
import random
from pathlib import Path

from rewire_lobes.data.audio import SAMPLE_RATE, AudioError, audio_info
from rewire_lobes.io_utils import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST_NAME = "train.csv"
OPTIONS_NAME = "train_prepare_opts.json"
FIELDS = ["ID", "duration", "wav", "spk_id", "wrd"]


def prepare_librispeech_rewire(
    data_folder,
    save_folder,
    splits=("train-clean-100",),
    max_samples=180_000,
    max_utterances=None,
    seed=1234,
    embedded_data_folder=None,
    skip_prep=False,
):
    """Writes the manifest and returns its path.

    Arguments
    ---------
    data_folder : str
        The LibriSpeech root, holding ``<split>/<speaker>/<chapter>/``.
    save_folder : str
        Where ``train.csv`` and the options it was made with are written.
    splits : list of str
        LibriSpeech splits to read.
    max_samples : int
        Utterances longer than this (counted at 16 kHz) are left out.
    max_utterances : int, optional
        Keep a random subset of this size (drawn with ``seed``); ``None`` keeps all.
    seed : int
        Seed of the subset draw.
    embedded_data_folder : str, optional
        The embedded default; if ``data_folder`` is it and it is missing, the mini corpus
        is generated there.
    skip_prep : bool
        Do nothing (the CSV is assumed to exist).
    """
    save_folder = Path(save_folder)
    csv_path = save_folder / MANIFEST_NAME
    if skip_prep:
        return csv_path
    options = {
        "data_folder": str(Path(data_folder).resolve()),
        "splits": list(splits),
        "max_samples": int(max_samples),
        "max_utterances": None if max_utterances is None else int(max_utterances),
        "seed": int(seed),
    }
    if _up_to_date(csv_path, save_folder / OPTIONS_NAME, options):
        logger.info("%s is up to date, skipping preparation", csv_path)
        return csv_path

    _ensure_corpus(Path(data_folder), embedded_data_folder)
    rows, too_long = [], 0
    for split in splits:
        split_rows, split_too_long = _read_split(Path(data_folder) / split, max_samples)
        rows.extend(split_rows)
        too_long += split_too_long
    if not rows:
        raise FileNotFoundError(
            f"{data_folder}: no utterance with a transcript found in splits {list(splits)}"
        )
    logger.info(
        "%d utterances of at most %d samples (%d longer ones left out)",
        len(rows), max_samples, too_long,
    )
    if max_utterances is not None and len(rows) > max_utterances:
        rows = random.Random(seed).sample(rows, int(max_utterances))
        logger.info("Kept a random subset of %d utterances (seed %d)", len(rows), seed)
    rows.sort(key=lambda row: row["ID"])

    save_folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    write_json_atomic(save_folder / OPTIONS_NAME, options)
    logger.info("Wrote %s (%d utterances)", csv_path, len(rows))
    return csv_path


def _up_to_date(csv_path, options_path, options):
    if not (csv_path.is_file() and options_path.is_file()):
        return False
    try:
        return json.loads(options_path.read_text(encoding="utf-8")) == options
    except (OSError, ValueError):
        return False


def _ensure_corpus(data_folder, embedded_data_folder):
    embedded = embedded_data_folder is not None and (
        data_folder.resolve() == Path(embedded_data_folder).resolve()
    )
    if embedded:
        # Imported here: only the embedded default needs the generator. A no-op when the
        # mini corpus is complete; it (re)generates a missing or half-written one.
        from rewire_lobes.data.mini_corpus import ensure_mini_corpus

        ensure_mini_corpus(str(data_folder.parent), corpora=["librispeech"])
    if not data_folder.exists():
        raise FileNotFoundError(
            f"{data_folder}: no such LibriSpeech folder (pass --data_folder /path/to/LibriSpeech, "
            "the folder holding train-clean-100/)"
        )


def _read_split(split_dir, max_samples):
    """Rows of one split and the count of utterances over ``max_samples``."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: missing LibriSpeech split folder")
    rows, too_long = [], 0
    for transcript_file in sorted(split_dir.glob("*/*/*.trans.txt")):
        for line in transcript_file.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt_id, _, words = line.strip().partition(" ")
            audio = transcript_file.parent / f"{utt_id}.flac"
            if not audio.is_file():
                logger.warning("%s: listed in %s but missing, skipped", audio, transcript_file)
                continue
            try:
                frames, rate, _ = audio_info(audio)
            except AudioError as err:
                logger.warning("%s, skipped", err)
                continue
            if frames * SAMPLE_RATE / rate > max_samples:
                too_long += 1
                continue
            rows.append({
                "ID": utt_id,
                "duration": f"{frames / rate:.4f}",
                "wav": str(audio.resolve()),
                "spk_id": utt_id.split("-")[0],
                "wrd": " ".join(words.split()),
            })
    return rows, too_long


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--save_folder", required=True)
    parser.add_argument("--splits", nargs="+", default=["train-clean-100"])
    parser.add_argument("--max_samples", type=int, default=180_000)
    parser.add_argument("--max_utterances", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    prepare_librispeech_rewire(args.data_folder, args.save_folder, args.splits, args.max_samples,
                               args.max_utterances, args.seed)


if __name__ == "__main__":
    main()
