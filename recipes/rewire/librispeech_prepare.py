"""Manifest of LibriSpeech utterances for contrastive rewiring, and the subset it used.

Writes ``<save_folder>/train.csv`` with SpeechBrain's columns ``ID, duration, wav, spk_id,
wrd``: utterances of the chosen splits (the paper: ``train-clean-100``) that have a
transcript and at most ``max_samples`` samples at 16 kHz (the paper: 180k), of which
``max_utterances`` (the paper: 6.6k) are kept by the ``subset`` rule:

* ``shortest`` (default): the shortest ones, as the paper's code took them (it sorted
  train-clean-100 by length and rewired on the short end); ties in length are broken by
  utterance ID, so the subset is the same on every machine;
* ``random``: a draw seeded by ``seed``.

The kept IDs are also listed, sorted, one per line, in ``<save_folder>/rewiring_subset.txt``
(the recipe copies it beside the exported encoder and hashes it into ``rewiring.json``):
the ASR recipe leaves these utterances out of its training data (the paper's Table 2
footnote).

Idempotent: existing files are kept when the options they were written with match. When
``data_folder`` is the embedded default (the mini corpus under ``data/mini``,
:func:`rewire_lobes.runs.defaults.is_embedded_data`), it is generated first if absent; any
other missing folder is a :class:`rewire_lobes.errors.DataFolderError`.

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

from rewire_lobes.data.librispeech import (  # noqa: F401 (read_subset, subset_digest: the recipe's)
    locate_librispeech,
    read_librispeech_split,
    read_subset,
    subset_digest,
)
from rewire_lobes.errors import DataFolderError, OptionError
from rewire_lobes.io_utils import atomic_path, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

MANIFEST_NAME = "train.csv"
SUBSET_NAME = "rewiring_subset.txt"
OPTIONS_NAME = "train_prepare_opts.json"
FIELDS = ["ID", "duration", "wav", "spk_id", "wrd"]
SUBSET_RULES = ("shortest", "random")


def prepare_librispeech_rewire(
    data_folder,
    save_folder,
    splits=("train-clean-100",),
    max_samples=180_000,
    max_utterances=None,
    seed=1234,
    subset="shortest",
    skip_prep=False,
):
    """Writes the manifest and the subset's ID list; returns the manifest's path.

    Arguments
    ---------
    data_folder : str
        The LibriSpeech root, holding ``<split>/<speaker>/<chapter>/``.
    save_folder : str
        Where ``train.csv``, ``rewiring_subset.txt`` and the options they were made with
        are written.
    splits : list of str
        LibriSpeech splits to read.
    max_samples : int
        Utterances longer than this (counted at 16 kHz) are left out.
    max_utterances : int, optional
        Keep this many utterances, chosen by ``subset``; ``None`` keeps all.
    seed : int
        Seed of the ``random`` subset draw.
    subset : str
        ``shortest`` (the paper's code) or ``random``.
    skip_prep : bool
        Do nothing (the files are assumed to exist).
    """
    save_folder = Path(save_folder)
    csv_path = save_folder / MANIFEST_NAME
    if skip_prep:
        return csv_path
    check_subset_rule(subset)
    folder = locate_librispeech(data_folder, splits)
    options = {
        "data_folder": str(folder.resolve()),
        "splits": list(splits),
        "max_samples": int(max_samples),
        "max_utterances": None if max_utterances is None else int(max_utterances),
        "subset": subset,
        "seed": int(seed),
    }
    if _up_to_date(save_folder, options):
        logger.info("%s is up to date, skipping preparation", csv_path)
        return csv_path

    rows, too_long = [], 0
    for split in splits:
        # A listed utterance whose audio is missing or unreadable is skipped with a warning.
        for row in read_librispeech_split(folder / split, strict=False):
            if row["samples"] > max_samples:
                too_long += 1
            else:
                rows.append({**row, "spk_id": row["spk"]})
    if not rows:
        raise DataFolderError(
            f"{data_folder}: no utterance with a transcript found in splits {list(splits)}"
        )
    logger.info(
        "%d utterances of at most %d samples (%d longer ones left out)",
        len(rows), max_samples, too_long,
    )
    rows = select_subset(rows, max_utterances, subset, seed)
    rows.sort(key=lambda row: row["ID"])

    save_folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    write_text_atomic(save_folder / SUBSET_NAME, "".join(f"{row['ID']}\n" for row in rows))
    write_json_atomic(save_folder / OPTIONS_NAME, options)
    logger.info("Wrote %s (%d utterances) and %s", csv_path, len(rows), SUBSET_NAME)
    return csv_path


def check_subset_rule(subset):
    """An :class:`OptionError` unless ``subset`` is one of :data:`SUBSET_RULES`."""
    if subset not in SUBSET_RULES:
        raise OptionError(f"--subset must be one of {', '.join(SUBSET_RULES)}, got {subset!r}")


def select_subset(rows, max_utterances, subset="shortest", seed=1234):
    """The ``max_utterances`` rows kept by the ``subset`` rule (all when it is None).

    ``shortest`` sorts by sample count, then utterance ID; ``random`` draws with ``seed``
    from the rows in the order they were read.

    Example
    -------
    >>> rows = [{"ID": i, "samples": n} for i, n in (("c", 5), ("a", 9), ("b", 5))]
    >>> [row["ID"] for row in select_subset(rows, 2)]
    ['b', 'c']
    """
    if max_utterances is None or len(rows) <= int(max_utterances):
        if max_utterances is not None:
            logger.info("%d utterances, no more than max_utterances %d: all are kept",
                        len(rows), int(max_utterances))
        return list(rows)
    count = int(max_utterances)
    if subset == "random":
        kept = random.Random(seed).sample(rows, count)
        logger.info("Kept a random subset of %d utterances (seed %d)", count, seed)
        return kept
    kept = sorted(rows, key=lambda row: (row["samples"], row["ID"]))[:count]
    logger.info("Kept the %d shortest utterances (%d to %d samples)", count,
                kept[0]["samples"], kept[-1]["samples"])
    return kept


def _up_to_date(save_folder, options):
    paths = [save_folder / name for name in (MANIFEST_NAME, SUBSET_NAME, OPTIONS_NAME)]
    if not all(path.is_file() for path in paths):
        return False
    try:
        return json.loads(paths[-1].read_text(encoding="utf-8")) == options
    except (OSError, ValueError):
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--save_folder", required=True)
    parser.add_argument("--splits", nargs="+", default=["train-clean-100"])
    parser.add_argument("--max_samples", type=int, default=180_000)
    parser.add_argument("--max_utterances", type=int, default=None)
    parser.add_argument("--subset", choices=SUBSET_RULES, default="shortest")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    prepare_librispeech_rewire(args.data_folder, args.save_folder, splits=args.splits,
                               max_samples=args.max_samples, max_utterances=args.max_utterances,
                               seed=args.seed, subset=args.subset)


if __name__ == "__main__":
    from rewire_lobes.runs.cli import user_errors

    with user_errors():
        main()
