"""Libri2Mix manifests for SUPERB speaker diarization (two speakers, overlap, noise).

Expected layout (the Kaldi-style dirs of s3prl's LibriMix recipe; ``superb_protocol.md`` §5)::

    <data_folder>/train/{wav.scp, segments, utt2spk, reco2dur, rttm}   (13,900 mixtures)
    <data_folder>/dev/...                                               (3,000)
    <data_folder>/test/...                                              (3,000)

with 16 kHz mono wav files wherever ``wav.scp`` points (absolute paths, as s3prl writes
them; a relative path is read from the working directory, then from the split folder).
``train.csv``, ``dev.csv`` and ``test.csv`` have one row per recording with the columns
``ID, duration, wav, segments`` (``segments``: JSON ``[[speaker, start, end], ...]`` from
``segments`` + ``utt2spk``, the training labels as s3prl makes them); ``dev.rttm`` and
``test.rttm`` are the scoring references, read from each split's ``rttm`` with overlapping
turns of one speaker merged (as dscore does; logged and counted in ``stats.json``).

Each of these stops preparation with a :class:`rewire_lobes.errors.DataFileError` naming
the file: a malformed line, a segment or rttm turn of a recording missing from
``wav.scp``, a segment without a speaker, a recording without a duration or with more
speakers than ``num_speakers``, and a wav that is missing, empty, unreadable or not 16 kHz
mono (s3prl reads the samples as they are; only headers are read here).

The manifests go to ``<manifest_root>/<hash of the options>`` and are made once; the
embedded default (``data/mini/diarization``) is generated first when absent.

Example
-------
python recipes/SD/diarization_prepare.py --data_folder /data/Libri2Mix_sd --manifest_root results/manifests/SD

Authors
 * rewire-speech contributors
"""

import argparse
import json
import logging
from pathlib import Path

from rewire_lobes.data.diarization import KALDI_FILES, read_recordings
from rewire_lobes.data.manifests import (
    already_prepared,
    checked_16k_mono,
    mark_prepared,
    prepared_folder,
    write_manifest,
)
from rewire_lobes.embedded import is_embedded_data, resolve_data_folder
from rewire_lobes.errors import DataFileError, DataFolderError
from rewire_lobes.io_utils import write_json_atomic
from rewire_lobes.metrics.diarization import read_rttm, write_rttm
from rewire_lobes.runs.defaults import ensure_default_data

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
SCORED_SPLITS = ("dev", "test")
COLUMNS = ["ID", "duration", "wav", "segments"]
MANIFESTS = ("train.csv", "dev.csv", "test.csv", "dev.rttm", "test.rttm", "stats.json")


def prepare_diarization(data_folder, manifest_root, num_speakers=2, skip_prep=False):
    """Writes the manifests, the scoring references and ``stats.json``; returns their folder.

    Arguments
    ---------
    data_folder : str
        The folder holding the ``train/``, ``dev/`` and ``test/`` Kaldi dirs.
    manifest_root : str
        The manifests go to ``<manifest_root>/<hash of the options>``.
    num_speakers : int
        Speakers per recording the head can tell apart (SUPERB: 2).
    skip_prep : bool
        Do nothing (manifests made elsewhere); the folder is still returned.
    """
    options = {"data_folder": str(resolve_data_folder(data_folder)),
               "num_speakers": int(num_speakers)}
    save_folder = prepared_folder(manifest_root, options)
    if skip_prep:
        return save_folder
    root = locate_diarization(data_folder)
    if already_prepared(save_folder, options, MANIFESTS):
        logger.info("Diarization manifests in %s are up to date", save_folder)
        return save_folder

    stats = {}
    for split in SPLITS:
        folder = root / split
        recordings = read_recordings(folder, int(num_speakers))
        rows = [{"ID": mixid, "duration": recording["duration"],
                 "wav": str(locate_wav(folder, mixid, recording["wav"])),
                 "segments": json.dumps(recording["segments"])}
                for mixid, recording in recordings.items()]
        if not rows:
            raise DataFileError(f"{folder / 'wav.scp'}: no recordings")
        turns, rttm_stats = read_rttm(folder / "rttm", recordings=recordings)
        if split in SCORED_SPLITS:
            write_rttm(save_folder / f"{split}.rttm", turns, decimals=3)
        stats[split] = {"recordings": len(rows),
                        "hours": round(sum(r["duration"] for r in rows) / 3600, 3),
                        "speakers": len({s for r in recordings.values() for s, _, _ in r["segments"]}),
                        "rttm": rttm_stats}
        logger.info("%s: %d recordings, %.2f h, %d speakers", split, len(rows),
                    stats[split]["hours"], stats[split]["speakers"])
        write_manifest(save_folder / f"{split}.csv", rows, COLUMNS)
    write_json_atomic(save_folder / "stats.json", stats)
    mark_prepared(save_folder, options)
    return save_folder


def locate_diarization(data_folder):
    """The folder to read, checked to hold the three Kaldi dirs; the embedded one is generated."""
    if is_embedded_data(data_folder):
        ensure_default_data(data_folder, "test/rttm", "diarization")
    root = resolve_data_folder(data_folder)
    missing = [f"{split}/{name}" for split in SPLITS for name in KALDI_FILES
               if not (root / split / name).is_file()]
    if missing:
        raise DataFolderError(
            f"{root} lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}: --data_folder "
            "must hold SUPERB's Libri2Mix Kaldi dirs train/, dev/ and test/ (wav.scp, segments, "
            "utt2spk, reco2dur, rttm), as s3prl's LibriMix/scripts/prepare_diarization.py "
            "writes them"
        )
    return root


def locate_wav(folder, mixid, path):
    """The checked wav of ``mixid``: as written, else relative to the split folder."""
    candidates = [Path(path)]
    if not Path(path).is_absolute():
        candidates.append(folder / path)
    for candidate in candidates:
        if candidate.is_file():
            checked_16k_mono(candidate)
            return candidate.resolve()
    raise DataFileError(
        f"{folder / 'wav.scp'}: the wav of '{mixid}' ({path}) does not exist; s3prl's wav.scp "
        "holds the absolute paths of the machine it was made on: rewrite them (e.g. sed "
        "s#/old/Libri2Mix#/new/Libri2Mix#) or regenerate the dirs"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--manifest_root", required=True)
    parser.add_argument("--num_speakers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(prepare_diarization(args.data_folder, args.manifest_root, args.num_speakers))


if __name__ == "__main__":
    from rewire_lobes.runs.cli import user_errors

    with user_errors():
        main()
