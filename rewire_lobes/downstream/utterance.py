"""Utterance classification on a frozen upstream: what the KS and IC recipes share.

* ``UtteranceBrain``: SUPERB's utterance-level head trained by ``DownstreamBrain``, on
  cached mean-pooled features or on the encoder run at every step. The labels form one
  or more groups, each with its own softmax: KS has one group of 12 classes; IC has
  three (action, object, location), the loss is the sum of the three cross-entropies and
  an utterance counts as right only when all three are (``superb_protocol.md`` §2-3).
* ``dataio_prepare``: the manifests written by a ``*_prepare.py`` script turned into
  SpeechBrain datasets, with the training set cut to ``--fraction``.

Manifest contract (CSV, one row per item): ``ID, duration, wav, start, stop, spk``, the
label columns named in the yaml (``label_columns``), the column to stratify the
fraction on (``stratify_column``), optionally a ``group`` column (items kept or dropped
together), and ``<manifest_folder>/labels.json`` listing each label column's values in
index order.
"""

import contextlib
import json
import logging
import time
from pathlib import Path

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.utils.distributed import run_on_main

from rewire_lobes.data.audio import load_audio
from rewire_lobes.downstream.core import DownstreamBrain
from rewire_lobes.downstream.features import FeatureCache
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


class GroupAccuracy:
    """Accumulates predictions ``[B, G]`` and labels ``[B, G]`` of the label groups."""

    def __init__(self):
        self.predictions, self.labels = [], []

    def append(self, predictions, labels):
        self.predictions.append(predictions.detach().cpu())
        self.labels.append(labels.detach().cpu())

    def summarize(self, group_names):
        """``accuracy`` (all groups right), then per-group accuracies (several groups) or
        ``balanced_accuracy`` (one group).

        ``balanced_accuracy`` is the mean per-class recall over the
        classes present: the expected value of s3prl's Speech Commands dev accuracy,
        which is measured on a class-balanced weighted resample of dev.
        """
        if not self.labels:
            return {"accuracy": float("nan"), "balanced_accuracy": float("nan")}  # empty set
        predictions, labels = torch.cat(self.predictions), torch.cat(self.labels)
        correct = predictions == labels
        scores = {"accuracy": 100.0 * correct.all(dim=1).float().mean().item()}
        if len(group_names) > 1:
            for g, name in enumerate(group_names):
                scores[f"{name}_accuracy"] = 100.0 * correct[:, g].float().mean().item()
        else:
            recalls = [correct[labels[:, 0] == c, 0].float().mean().item()
                       for c in labels[:, 0].unique()]
            scores["balanced_accuracy"] = 100.0 * sum(recalls) / len(recalls)
        return scores


class UtteranceBrain(DownstreamBrain):
    """SUPERB's utterance-level head (KS, IC) on a frozen upstream.

    Extra hyperparameters: ``featurizer`` (``WeightedLayerSum``), ``head``
    (``UtteranceLevelHead``), ``label_columns`` and ``label_groups`` (the output size of
    each group), ``cache_features``, ``feature_cache_folder``, ``feature_batch_size``,
    ``gain_db``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        featurizer = self.hparams.featurizer
        self.feature_layer_norm = featurizer.layer_norm
        if self.hparams.cache_features:
            # The cache already holds the per-layer means of the normalised frames
            # (features.py); normalising those means again would change the result.
            featurizer.layer_norm = False

    def use_cached_features(self, datasets):
        """Chooses the input of every dataset: cached ``feats`` or ``sig`` from the audio.

        With ``cache_features`` the frozen encoder runs once per utterance (on the main
        process, on this Brain's device), then every process reads the cache file.
        """
        if not self.hparams.cache_features:
            sb.dataio.dataset.set_output_keys(list(datasets.values()), ["id", "sig", "labels"])
            self.run_info["feature_mode"] = "on_the_fly"
            return datasets
        cache = FeatureCache(
            self.hparams.feature_cache_folder,
            self.hparams.upstream,
            layer_norm=self.feature_layer_norm,
            batch_size=self.hparams.feature_batch_size,
            encoder_hash=self.encoder_info()["content_hash"],
        )
        tag = audio_pipeline_tag(self.hparams.gain_db)
        start = time.time()
        for dataset in datasets.values():
            # Extract on the main process only; the cache file is then read everywhere.
            run_on_main(_ensure_cached, args=[cache, dataset, tag, not self.noprogressbar])
            features = cache.load(dataset, tag, progressbar=False)
            sb.dataio.dataset.add_dynamic_item([dataset], feature_pipeline(features))
            sb.dataio.dataset.set_output_keys([dataset], ["id", "feats", "labels"])
        self.run_info["feature_mode"] = "cached"
        self.run_info["feature_seconds"] = round(time.time() - start, 3)
        return datasets

    @contextlib.contextmanager
    def _head_threads(self):
        """One CPU thread while training on cached features, then the previous setting.

        The head's ops are tiny, so a second OpenMP thread only adds synchronisation: 225
        vs 40 updates/s of this head with 1 vs 2 threads on 2 busy cores.
        """
        threads = torch.get_num_threads()
        if self.hparams.cache_features and self.device_type == "cpu":
            torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def fit(self, *args, **kwargs):
        with self._head_threads():
            return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with self._head_threads():
            return super().evaluate(*args, **kwargs)

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        if self.hparams.cache_features:
            pooled = batch.feats.data  # [B, L+1, D]
            return self.modules.head(self.modules.featurizer(pooled.transpose(0, 1)))
        wavs, wav_lens = batch.sig
        hidden, frame_lens = self.modules.upstream(wavs, wav_lens)
        return self.modules.head(self.modules.featurizer(hidden), frame_lens)

    def compute_objectives(self, logits, batch, stage):
        labels = batch.labels.data  # [B, G]
        groups = logits.split(list(self.hparams.label_groups), dim=-1)
        loss = sum(F.cross_entropy(group, labels[:, g]) for g, group in enumerate(groups))
        if stage != sb.Stage.TRAIN:
            predictions = torch.stack([group.argmax(dim=-1) for group in groups], dim=-1)
            self.scores.append(predictions, labels)
        return loss

    def reset_scores(self, stage):
        self.scores = GroupAccuracy()

    def summarize_scores(self, stage):
        return self.scores.summarize(self.hparams.label_columns)


def _ensure_cached(cache, dataset, tag, progressbar):
    cache.load(dataset, tag, progressbar=progressbar)  # returns nothing: no broadcast


# ---------------------------------------------------------------------- data pipelines
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
    with open(save_folder / "labels.json", encoding="utf-8") as fin:
        label_values = json.load(fin)
    check_label_groups(hparams["label_columns"], hparams["label_groups"], label_values)

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


def check_label_groups(label_columns, label_groups, label_values):
    """Each label column must fit the head's output group for it."""
    if len(label_columns) != len(label_groups):
        raise ValueError(f"label_columns {label_columns} and label_groups {label_groups} "
                         "differ in length")
    for column, size in zip(label_columns, label_groups):
        values = label_values.get(column)
        if values is None:
            raise ValueError(f"labels.json has no values for '{column}'")
        if len(values) > size:
            raise ValueError(
                f"'{column}' has {len(values)} values in the training data but the head has "
                f"{size} outputs for it: {values}"
            )
        if len(values) < size:
            logger.info("'%s': %d of %d outputs are used by the data", column, len(values), size)


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


def train_and_test(hparams, run_opts, datasets):
    """Trains the head on ``datasets["train"]``, then tests it at the best dev checkpoint."""
    brain = UtteranceBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.run_info.update(describe_datasets(hparams, datasets))
    brain.use_cached_features(datasets)
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["dev"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    brain.evaluate(
        datasets["test"],
        max_key=hparams["dev_metric"],
        test_loader_kwargs=hparams["test_dataloader_opts"],
    )
    return brain
