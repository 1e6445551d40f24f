"""Data plumbing of the downstream recipes: manifests → SpeechBrain datasets.

* the ``--fraction`` subset of the training manifest (``rewire_lobes.data.fractions``),
  written into the run folder; dev and test are never subsampled;
* audio (mono 16 kHz, optional gain, optional crop), label and cached-feature pipelines;
* random-crop items (:class:`RandomCrops`): read as a crop whose start is drawn when the
  item is fetched, anew at every training draw (KS ``_silence_``, as s3prl);
* the label inventory (``labels.json``), from which the heads take their sizes.

Manifest contract (CSV, one row per item): ``ID, duration, wav, start, stop, spk``, the
label columns named in the yaml (``label_columns``), the column to stratify the
fraction on (``stratify_column``), optionally a ``group`` column (items kept or dropped
together), optionally a ``random_crop`` column (a crop length in 16 kHz samples: the row
is a random-crop item, its ``start``/``stop`` are empty; empty for the other rows), and
``<manifest_folder>/labels.json`` listing each label column's values in index order.
"""

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.distributed import run_on_main

from rewire_lobes.data.audio import SAMPLE_RATE, audio_info, load_audio
from rewire_lobes.data.fractions import check_fraction, check_quota, subsample_rows
from rewire_lobes.data.manifests import read_manifest, write_manifest
from rewire_lobes.errors import OptionError

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
        raise OptionError(f"--keywords holds booleans {keywords}: quote the words")
    keywords = [str(word) for word in keywords]
    if not keywords:
        raise OptionError("--keywords is empty: give at least one word")
    duplicates = sorted({w for w in keywords if keywords.count(w) > 1})
    if duplicates:
        raise OptionError(f"--keywords repeats {duplicates}")
    reserved = [w for w in keywords if w in (UNKNOWN, SILENCE) or w.startswith("_")]
    if reserved:
        raise OptionError(f"--keywords may not contain {reserved}: folders starting with '_' "
                         "are not words")
    return keywords + [UNKNOWN, SILENCE]


def audio_pipeline_tag(gain_db):
    """What the audio pipeline does, for the feature cache key."""
    return f"sr=16000;gain_db={float(gain_db)}"


class RandomCrops:
    """Where the random crops of one split start: anew at every draw, or fixed per seed.

    A random-crop item (a manifest row with a ``random_crop`` length) is read as that
    many 16 kHz samples of its file, from a start drawn with a generator keyed by
    ``(seed, draw, id)`` when ``per_draw`` (training: :attr:`draw` is the item's position
    in the sampler's endless stream, set for each item by
    ``rewire_lobes.downstream.schedule.DrawKeyed``), else by ``(seed, id)`` (dev: the same
    crop at every evaluation, as s3prl's re-seeded evaluation gives). Keyed rather than
    drawn from one stream, so a resumed run and any number of loader workers read the
    same crops, and every draw of an item (s3prl: every fetch) gets a crop of its own.

    Example
    -------
    >>> crops = RandomCrops(seed=1, per_draw=True)
    >>> crops.draw = 3
    >>> start = crops.start("noise", num_samples=48000, length=16000)
    >>> 0 <= start <= 32000, start == crops.start("noise", 48000, 16000)
    (True, True)
    """

    def __init__(self, seed, per_draw):
        self.seed = int(seed)
        self.per_draw = bool(per_draw)
        self.draw = None

    def start(self, data_id, num_samples, length):
        """The first sample of ``data_id``'s crop of ``length`` in ``num_samples``."""
        if not self.per_draw:
            key = f"{self.seed}/fixed/{data_id}"
        elif self.draw is None:
            raise RuntimeError(f"{data_id}: a training crop needs its draw; read the training "
                               "set through schedule.DrawKeyed, as DownstreamBrain does")
        else:
            key = f"{self.seed}/draw{self.draw}/{data_id}"
        # A str seed is hashed with sha512: the same start in every process.
        return random.Random(key).randint(0, max(num_samples - length, 0))

    def read(self, data_id, wav, length):
        """``(start, sig)``: ``length`` samples at 16 kHz of ``wav`` (all of a shorter file)."""
        num_frames, rate, _ = audio_info(wav)
        if rate == SAMPLE_RATE:
            start = self.start(data_id, num_frames, length)
            return start, load_audio(wav, start=start, stop=start + length)
        # Resampled first, then cropped, as s3prl crops sox's 16 kHz output.
        sig = load_audio(wav)
        start = self.start(data_id, len(sig), length)
        return start, sig[start : start + length]


@dataclass
class CropAudio:
    """A random crop in a cached-feature batch, for the Brain to encode.

    Not a tensor, so ``PaddedBatch`` leaves these in a list (``None`` for cached items)
    instead of padding them with the rest of the batch.
    """

    data_id: str
    start: int
    sig: torch.Tensor

    @property
    def key(self):
        """Equal for equal audio: one encoding serves every draw of the same crop."""
        return (self.data_id, self.start, len(self.sig))


def crop_length(value):
    """The ``random_crop`` column as a length, or None for a fixed item (empty or absent)."""
    return _sample(value)


def _gain(gain_db):
    scale = 10.0 ** (float(gain_db) / 20.0)
    return (lambda sig: sig * scale) if scale != 1.0 else (lambda sig: sig)


def audio_pipeline(gain_db=0.0, crops=None):
    """``wav, start, stop -> sig``: mono 16 kHz float32, with a gain in dB (s3prl KS: -3).

    With ``crops`` (:class:`RandomCrops`), a row with a ``random_crop`` length is read as
    a crop drawn by ``crops``; the manifest then needs the ``random_crop`` column.
    """
    gain = _gain(gain_db)
    if crops is None:

        @sb.utils.data_pipeline.takes("wav", "start", "stop")
        @sb.utils.data_pipeline.provides("sig")
        def read(wav, start, stop):
            return gain(load_audio(wav, start=_sample(start), stop=_sample(stop)))

        return read

    @sb.utils.data_pipeline.takes("id", "wav", "start", "stop", "random_crop")
    @sb.utils.data_pipeline.provides("sig")
    def read_or_crop(data_id, wav, start, stop, random_crop):
        length = crop_length(random_crop)
        if length is None:
            return gain(load_audio(wav, start=_sample(start), stop=_sample(stop)))
        return gain(crops.read(data_id, wav, length)[1])

    return read_or_crop


def crop_audio_pipeline(gain_db, crops):
    """``crop_audio``: a :class:`CropAudio` for a random-crop item, None for the others.

    Cached-feature mode: the cache holds fixed items only, so the Brain encodes the crops
    in the batch. The audio is the ``sig`` that :func:`audio_pipeline` reads.
    """
    gain = _gain(gain_db)

    @sb.utils.data_pipeline.takes("id", "wav", "random_crop")
    @sb.utils.data_pipeline.provides("crop_audio")
    def read_crop(data_id, wav, random_crop):
        length = crop_length(random_crop)
        if length is None:
            return None
        start, sig = crops.read(data_id, wav, length)
        return CropAudio(data_id, start, gain(sig))

    return read_crop


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


def feature_pipeline(features, crop_placeholder=None):
    """``id -> feats`` ``[L+1, D]`` from a loaded feature cache.

    With ``crop_placeholder`` (a ``[L+1, D]`` tensor), random-crop items, which the cache
    cannot hold, get it instead; the Brain puts their encoded crops in its place.
    """
    if crop_placeholder is None:

        @sb.utils.data_pipeline.takes("id")
        @sb.utils.data_pipeline.provides("feats")
        def read(data_id):
            return features[data_id]

        return read

    @sb.utils.data_pipeline.takes("id", "random_crop")
    @sb.utils.data_pipeline.provides("feats")
    def read_or_placeholder(data_id, random_crop):
        if crop_length(random_crop) is not None:
            return crop_placeholder
        return features[data_id]

    return read_or_placeholder


def fixed_items(dataset):
    """The items of ``dataset`` that are not random crops: what a feature cache may hold."""
    return dataset.filtered_sorted(
        key_test={"random_crop": lambda value: crop_length(value) is None})


def has_random_crops(dataset):
    """Whether any row of ``dataset`` is a random-crop item."""
    return any(crop_length(dataset.data[data_id].get("random_crop")) is not None
               for data_id in dataset.data_ids)


def write_train_subset(train_csv, subset_csv, fraction, seed, stratify_column,
                       group_column=None, quota="ceil"):
    """Writes the ``fraction`` subset of ``train_csv`` to ``subset_csv``; returns its rows.

    ``quota`` is ``ceil`` (``ceil(f * n)`` per label) or ``proportional`` (``round(f * N)``
    in all, shared in proportion to the labels' sizes): ``rewire_lobes.data.fractions``.
    """
    rows = read_manifest(train_csv)
    if not rows:
        raise ValueError(f"{train_csv}: the training manifest is empty")
    subset = subsample_rows(rows, fraction, seed, label_key=stratify_column,
                            group_key=group_column or None, quota=quota)
    write_manifest(subset_csv, subset, fieldnames=list(rows[0].keys()))
    return subset


def dataio_prepare(hparams):
    """Train (the fraction subset), dev and test datasets with audio and label pipelines.

    Reads ``<manifest_folder>/{train,dev,test}.csv`` and ``labels.json``; writes the train
    subset to ``<output_folder>/train_subset.csv`` (on the main process), by the yaml's
    ``fraction_quota`` (default ``ceil``). Each dataset's ``random_crops`` attribute is its
    :class:`RandomCrops` (None without random-crop items): per draw in train, fixed in dev
    and test.
    """
    check_fraction(hparams["fraction"])
    quota = check_quota(hparams.get("fraction_quota", "ceil"))
    save_folder = Path(hparams["manifest_folder"])
    subset_csv = Path(hparams["output_folder"]) / "train_subset.csv"
    run_on_main(
        write_train_subset,
        args=[save_folder / "train.csv", subset_csv, hparams["fraction"], hparams["seed"],
              hparams["stratify_column"], hparams["group_column"]],
        kwargs={"quota": quota},
    )
    label_values = label_inventory(save_folder, hparams["label_columns"])

    datasets = {
        "train": sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=str(subset_csv)),
        "dev": sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=str(save_folder / "dev.csv")).filtered_sorted(sort_key="duration"),
        "test": sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=str(save_folder / "test.csv")).filtered_sorted(sort_key="duration"),
    }
    for name, dataset in datasets.items():
        dataset.random_crops = (RandomCrops(hparams["seed"], per_draw=name == "train")
                                if has_random_crops(dataset) else None)
        sb.dataio.dataset.add_dynamic_item(
            [dataset], audio_pipeline(hparams["gain_db"], dataset.random_crops))
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
