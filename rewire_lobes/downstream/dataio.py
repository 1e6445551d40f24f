"""Data plumbing of the downstream recipes: manifests → SpeechBrain datasets.

* the ``--fraction`` subset of the training manifest (``rewire_lobes.data.fractions``),
  written into the run folder; dev and test are never subsampled;
* audio (mono 16 kHz, optional gain, optional crop), label and cached-feature pipelines;
* the label inventory (``labels.json``), from which the heads take their sizes.

Manifest contract (CSV, one row per item): ``ID, duration, wav, start, stop, spk``, the
label columns named in the yaml (``label_columns``), the column to stratify the
fraction on (``stratify_column``), optionally a ``group`` column (items kept or dropped
together), and ``<manifest_folder>/labels.json`` listing each label column's values in
index order.
"""

import json
import logging
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.distributed import run_on_main

from rewire_lobes.data.audio import load_audio
from rewire_lobes.data.fractions import check_fraction, subsample_rows
from rewire_lobes.data.manifests import read_manifest, write_manifest

logger = logging.getLogger(__name__)

UNKNOWN = "_unknown_"
SILENCE = "_silence_"


def keyword_classes(keywords):
    """Speech Commands output classes: the keywords, then ``_unknown_``, ``_silence_``.

    The two extra classes are always there, even when every word is a keyword
    (``_unknown_`` then simply has no examples), so the head keeps ``len(keywords) + 2``
    outputs and class indices never depend on the data.

    Example
    -------
    >>> keyword_classes(["yes", "no"])
    ['yes', 'no', '_unknown_', '_silence_']
    """
    if any(isinstance(word, bool) for word in keywords):
        # A YAML 1.1 parser reads yes/no/on/off as booleans.
        raise ValueError(f"--keywords holds booleans {keywords}: quote the words")
    keywords = [str(word) for word in keywords]
    if not keywords:
        raise ValueError("--keywords is empty: give at least one word")
    duplicates = sorted({w for w in keywords if keywords.count(w) > 1})
    if duplicates:
        raise ValueError(f"--keywords repeats {duplicates}")
    reserved = [w for w in keywords if w in (UNKNOWN, SILENCE) or w.startswith("_")]
    if reserved:
        raise ValueError(f"--keywords may not contain {reserved}: folders starting with '_' "
                         "are not words")
    return keywords + [UNKNOWN, SILENCE]


def audio_pipeline_tag(gain_db):
    """What the audio pipeline does, for the feature cache key."""
    return f"sr=16000;gain_db={float(gain_db)}"


def audio_pipeline(gain_db=0.0):
    """``wav, start, stop -> sig``: mono 16 kHz float32, with a gain in dB (s3prl KS: -3)."""
    scale = 10.0 ** (float(gain_db) / 20.0)

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def read(wav, start, stop):
        sig = load_audio(wav, start=_sample(start), stop=_sample(stop))
        return sig * scale if scale != 1.0 else sig

    return read


def _sample(value):
    return int(value) if str(value).strip() not in ("", "None") else None


def label_pipeline(label_columns, label_values):
    """The label columns → ``labels`` LongTensor ``[G]``; unknown values name the item."""
    index = {c: {v: i for i, v in enumerate(label_values[c])} for c in label_columns}

    @sb.utils.data_pipeline.takes("id", *label_columns)
    @sb.utils.data_pipeline.provides("labels")
    def encode(data_id, *values):
        try:
            return torch.tensor([index[c][v] for c, v in zip(label_columns, values)])
        except KeyError as err:
            raise ValueError(f"{data_id}: label {err} is not among the training labels") from err

    return encode


def feature_pipeline(features):
    """``id -> feats`` ``[L+1, D]`` from a loaded feature cache."""

    @sb.utils.data_pipeline.takes("id")
    @sb.utils.data_pipeline.provides("feats")
    def read(data_id):
        return features[data_id]

    return read


def write_train_subset(train_csv, subset_csv, fraction, seed, stratify_column,
                       group_column=None):
    """Writes the ``fraction`` subset of ``train_csv`` to ``subset_csv``; returns its rows."""
    rows = read_manifest(train_csv)
    if not rows:
        raise ValueError(f"{train_csv}: the training manifest is empty")
    subset = subsample_rows(rows, fraction, seed, label_key=stratify_column,
                            group_key=group_column or None)
    write_manifest(subset_csv, subset, fieldnames=list(rows[0].keys()))
    return subset


def dataio_prepare(hparams):
    """Train (the fraction subset), dev and test datasets with audio and label pipelines.

    Reads ``<manifest_folder>/{train,dev,test}.csv`` and ``labels.json``; writes the train
    subset to ``<output_folder>/train_subset.csv`` (on the main process).
    """
    check_fraction(hparams["fraction"])
    save_folder = Path(hparams["manifest_folder"])
    subset_csv = Path(hparams["output_folder"]) / "train_subset.csv"
    run_on_main(
        write_train_subset,
        args=[save_folder / "train.csv", subset_csv, hparams["fraction"], hparams["seed"],
              hparams["stratify_column"], hparams["group_column"]],
    )
    label_values = label_inventory(save_folder, hparams["label_columns"])

    datasets = {
        "train": sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=str(subset_csv)),
        "dev": sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=str(save_folder / "dev.csv")).filtered_sorted(sort_key="duration"),
        "test": sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=str(save_folder / "test.csv")).filtered_sorted(sort_key="duration"),
    }
    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), audio_pipeline(hparams["gain_db"]))
    sb.dataio.dataset.add_dynamic_item(
        list(datasets.values()), label_pipeline(hparams["label_columns"], label_values)
    )
    sb.dataio.dataset.set_output_keys(list(datasets.values()), ["id", "sig", "labels"])
    return datasets


def label_inventory(manifest_folder, label_columns):
    """``{column: [values in index order]}`` from ``labels.json``; the head's sizes follow it.

    The prepare step writes every label column's values (Speech Commands: the fixed class
    list; Fluent Speech Commands: each slot's values in first-appearance order), so an
    FSC-layout corpus with another number of actions needs no option.
    """
    path = Path(manifest_folder) / "labels.json"
    with open(path, encoding="utf-8") as fin:
        values = json.load(fin)
    missing = [column for column in label_columns if not values.get(column)]
    if missing:
        raise ValueError(f"{path} lists no values for {missing}")
    return {column: list(values[column]) for column in label_columns}


def describe_datasets(hparams, datasets):
    """What results.json records about the data: items per split, training classes, test set."""
    info = {f"{name}_items": len(data) for name, data in datasets.items()}
    column = hparams["balance_column"] or hparams["stratify_column"]
    train = datasets["train"]
    counts = {}
    for data_id in train.data_ids:
        label = train.data[data_id][column]
        counts[label] = counts.get(label, 0) + 1
    info[f"train_{column}_counts"] = dict(sorted(counts.items()))
    with open(Path(hparams["manifest_folder"]) / "labels.json", encoding="utf-8") as fin:
        test_set = json.load(fin).get("test_set")
    if test_set:
        info["test_set"] = test_set
    return info
