"""An encoder's utterance representations of a task's training set, before fine-tuning.

The rewiring paper (§3.3, Fig. 2/3) shows what contrastive rewiring does to an encoder
before any task is learned: its utterance vectors become far more isotropic, and the
classes of a task's training set separate in a t-SNE map. This module measures both
for one encoder and one task, so that two encoders compare by numbers, not by eye:

* the vectors: each training utterance (a seeded sample of at most ``max_items``) goes
  once through the frozen encoder; its hidden states are mean-pooled over the valid
  frames (``rewire_lobes.downstream.features.FeatureCache``, the recipes' own cache, in
  ``<output_root>/feature_cache``), and one vector per utterance is kept: the uniform
  mean over all L+1 states (``layer="mean"``, what the rewiring's contrastive loss
  shapes), the last state (``"last"``) or state ``i``;
* ``log10_isotropy``: ``rewire_lobes.metrics.isotropy`` (Mu & Viswanath 2018);
* with label columns (KS: ``label``; IC: ``action|object|location`` as one class):
  ``class_separation``, the cosine silhouette, the leave-one-out 5-NN accuracy
  (cosine) and the chance level (the largest class share), and a 2-D t-SNE map of the
  vectors with each point's class.

Audio is read as the recipes read it: with the task's gain, and KS' ``_silence_``
random-crop rows cropped at a start fixed by the seed (as the dev set is).

Output: ``<output_root>/analysis/<task>/<encoder_id>/representations.json``. A rerun
with the same encoder weights, manifest bytes and settings, reading the same input as
the feature cache sees it (``features_fingerprint``: the encoder's features hash, the
sampled items' files with their sizes and times, the audio pipeline), reuses it (and
says so); any of these changed computes it again.

Example::

    python utils/representations.py --upstream_source assets/encoder --task KS \\
        --manifest results/manifests/KS/<hash>/train.csv
"""

import collections
import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import speechbrain as sb

from rewire_lobes.data.manifests import read_manifest
from rewire_lobes.downstream.dataio import (
    RandomCrops,
    audio_pipeline,
    audio_pipeline_tag,
    crop_length,
    has_random_crops,
)
from rewire_lobes.downstream.features import FeatureCache, manifest_fingerprint
from rewire_lobes.downstream.results import describe_device
from rewire_lobes.errors import DataFileError, DataFolderError, OptionError
from rewire_lobes.io_utils import write_json_atomic
from rewire_lobes.metrics.isotropy import log10_isotropy
from rewire_lobes.runs.cli import encoder_id
from rewire_lobes.runs.defaults import resolve_upstream_source
from rewire_lobes.runs.provenance import read_provenance, resolve_strategy
from rewire_lobes.upstream.encoder import SSLUpstream, describe_encoder

logger = logging.getLogger(__name__)

SCHEMA = 1
RECORD_FILE = "representations.json"
# What must be equal for a representations.json to be reused (encoder: its content hash).
REUSE_KEYS = ("manifest_sha256", "max_items", "seed", "layer", "gain_db", "label_columns",
              "features_fingerprint")
LAYERS = ("mean", "last")
KNN_K = 5
MAX_PERPLEXITY = 30.0
# Each task's labels and gain, as its yaml has them (hparams/ks.yaml, hparams/ic.yaml).
TASK_LABEL_COLUMNS = {"KS": ["label"], "IC": ["action", "object", "location"]}
TASK_GAIN_DB = {"KS": -3.0}


class Analysis(NamedTuple):
    """The record, where it is, and whether an earlier run's record was reused."""

    path: Path
    record: dict
    reused: bool


def task_defaults(task):
    """``(label_columns, gain_db)`` of ``task`` as its recipe reads it (none, 0 dB by default).

    Example
    -------
    >>> task_defaults("KS"), task_defaults("ASR")
    ((['label'], -3.0), ([], 0.0))
    """
    return list(TASK_LABEL_COLUMNS.get(task, [])), float(TASK_GAIN_DB.get(task, 0.0))


def parse_layer(value):
    """``"mean"``, ``"last"`` or a state index (an int, or a string of one).

    Example
    -------
    >>> parse_layer("mean"), parse_layer("-1"), parse_layer(3)
    ('mean', -1, 3)
    """
    if isinstance(value, str) and value in LAYERS:
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise OptionError(f"--layer {value}: give mean, last or a hidden-state index") from None


def select_layer(pooled, layer):
    """``[N, L+1, D]`` pooled states → ``[N, D]`` float64: ``layer``'s, or their mean.

    Example
    -------
    >>> pooled = np.arange(12.0).reshape(1, 3, 4)
    >>> select_layer(pooled, "mean").tolist(), select_layer(pooled, "last").tolist()
    ([[4.0, 5.0, 6.0, 7.0]], [[8.0, 9.0, 10.0, 11.0]])
    """
    pooled = np.asarray(pooled, dtype=np.float64)
    if layer == "mean":
        return pooled.mean(axis=1)
    if layer == "last":
        return pooled[:, -1]
    num_states = pooled.shape[1]
    if not -num_states <= layer < num_states:
        raise OptionError(f"--layer {layer}: this encoder has hidden states 0..{num_states - 1}")
    return pooled[:, layer]


def read_training_manifest(manifest, label_columns):
    """The rows of ``manifest``, checked: there, with ``ID`` and ``wav``, the label columns
    and at least 2 rows; otherwise a ``DataFolderError`` / ``DataFileError`` naming it."""
    path = Path(manifest)
    if not path.is_file():
        raise DataFolderError(f"{path}: no such training manifest (the task's prepare step "
                              "writes <manifest_folder>/train.csv)")
    rows = read_manifest(path)
    if not rows:
        raise DataFileError(f"{path}: the training manifest has no rows")
    missing = [c for c in ["ID", "wav", *label_columns] if c not in rows[0]]
    if missing:
        raise DataFileError(f"{path}: no column {', '.join(missing)} (it has "
                            f"{', '.join(rows[0])})")
    if len(rows) < 2:
        raise DataFileError(f"{path}: one row; representations need at least 2")
    return rows


def sample_rows(rows, max_items, seed):
    """A seeded sample of at most ``max_items`` rows, in manifest order.

    Example
    -------
    >>> sample_rows(list("abcdef"), 3, seed=1) == sample_rows(list("abcdef"), 3, seed=1)
    True
    >>> sample_rows(list("abc"), 5, seed=1)
    ['a', 'b', 'c']
    """
    if len(rows) <= max_items:
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), max_items))
    return [rows[i] for i in keep]


def row_classes(rows, label_columns):
    """One class per row: the label columns' values joined with ``|`` (None without labels).

    Example
    -------
    >>> row_classes([{"action": "bring", "object": "shoes", "location": "none"}],
    ...             ["action", "object", "location"])
    ['bring|shoes|none']
    """
    if not label_columns:
        return None
    return ["|".join(row[column] for column in label_columns) for row in rows]


def training_dataset(rows, gain_db, seed):
    """``rows`` as a ``DynamicItemDataset`` with a ``sig`` item, and its feature-cache tag.

    Random-crop rows (KS ``_silence_``) are cropped at a start fixed by ``seed``, as
    ``dataio_prepare`` reads the dev set; the tag then names the seed and the crops, so
    another seed never reads these vectors from the cache.
    """
    data = {}
    for row in rows:
        item = {key: value for key, value in row.items() if key != "ID"}
        for column in ("start", "stop", "random_crop"):
            item.setdefault(column, "")
        item["duration"] = float(item.get("duration") or 0.0)
        data[row["ID"]] = item
    dataset = sb.dataio.dataset.DynamicItemDataset(data)
    tag = audio_pipeline_tag(gain_db)
    crops = None
    if has_random_crops(dataset):
        crops = RandomCrops(seed, per_draw=False)
        digest = hashlib.sha256()
        for data_id in dataset.data_ids:
            digest.update(f"{data_id}\0{crop_length(data[data_id]['random_crop'])}\n".encode())
        tag += f";fixed_crops=seed{seed}:{digest.hexdigest()[:16]}"
    dataset.add_dynamic_item(audio_pipeline(gain_db, crops))
    dataset.set_output_keys(["id", "sig"])
    return dataset, tag


def unit_rows(vectors):
    """Each row scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def knn_predict(vectors, labels, k=KNN_K, chunk=1024):
    """Leave-one-out k-NN classes in ``vectors`` (cosine): each row's class predicted by
    its ``k`` most similar other rows, majority vote, ties to the class of the nearest.

    Example
    -------
    >>> points = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, -0.3], [-1.0, 0.0]])
    >>> knn_predict(points, ["a", "a", "b", "b"], k=2).tolist()
    ['a', 'a', 'a', 'b']
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    k = min(int(k), len(codes) - 1)
    unit = unit_rows(vectors)
    predicted = np.empty(len(codes), dtype=np.int64)
    for begin in range(0, len(codes), chunk):
        rows = np.arange(begin, min(begin + chunk, len(codes)))
        similarity = unit[rows] @ unit.T
        similarity[np.arange(len(rows)), rows] = -np.inf  # leave the row itself out
        votes = codes[np.argsort(-similarity, axis=1, kind="stable")[:, :k]]  # nearest first
        counts = np.zeros((len(rows), len(classes)), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(len(rows)), k), votes.ravel()), 1)
        tied = counts == counts.max(axis=1, keepdims=True)
        first_tied = np.argmax(np.take_along_axis(tied, votes, axis=1), axis=1)
        predicted[rows] = votes[np.arange(len(rows)), first_tied]
    return classes[predicted]


def knn_accuracy(vectors, labels, k=KNN_K):
    """The share of rows whose :func:`knn_predict` class is their own (0..1)."""
    return float(np.mean(knn_predict(vectors, labels, k) == np.asarray(labels)))


def class_separation(vectors, labels, k=KNN_K):
    """How well ``labels`` separate in ``vectors``: silhouette, k-NN accuracy, chance.

    ``silhouette`` (cosine) is None when it is undefined: one class, or a class per row.

    Example
    -------
    >>> points = np.array([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, 0.1]])
    >>> scores = class_separation(points, ["a", "a", "b", "b"], k=1)
    >>> scores["knn_accuracy"], scores["chance"], scores["classes"], scores["silhouette"] > 0.9
    (1.0, 0.5, 2, True)
    """
    from sklearn.metrics import silhouette_score

    counts = collections.Counter(labels)
    silhouette = None
    if 2 <= len(counts) < len(labels):
        silhouette = float(silhouette_score(vectors, labels, metric="cosine"))
    return {
        "silhouette": silhouette,
        "knn_accuracy": knn_accuracy(vectors, labels, k),
        "knn_k": int(k),
        "chance": max(counts.values()) / len(labels),
        "classes": len(counts),
    }


def tsne_map(vectors, labels, seed):
    """The 2-D t-SNE map of ``vectors`` (PCA init, perplexity ``min(30, (N-1)/3)``)."""
    from sklearn.manifold import TSNE

    perplexity = min(MAX_PERPLEXITY, (len(vectors) - 1) / 3)
    points = TSNE(n_components=2, init="pca", perplexity=perplexity,
                  random_state=seed).fit_transform(vectors)
    return {
        "points": [[round(float(x), 4), round(float(y), 4)] for x, y in points],
        "labels": list(labels),
        "perplexity": float(perplexity),
        "seed": int(seed),
    }


def reusable(path, settings, content_hash):
    """Whether ``path`` holds a record of this encoder, manifest and settings."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("schema") != SCHEMA or record.get("kind") != "representations":
        return None
    if (record.get("encoder") or {}).get("content_hash") != content_hash:
        return None
    if any(record.get(key) != settings[key] for key in REUSE_KEYS):
        return None
    return record


def record_path(output_root, task, source):
    """``<output_root>/analysis/<task>/<encoder_id>/representations.json``."""
    return Path(output_root) / "analysis" / task / encoder_id(source) / RECORD_FILE


def analyse_representations(upstream_source, manifest, task, label_columns=None, gain_db=None,
                            max_items=5000, seed=1986, layer="mean", output_root="results",
                            device="cpu", batch_size=16, progressbar=True):
    """Writes (or reuses) ``representations.json`` of one encoder on one task's training set.

    Arguments
    ---------
    upstream_source : str
        Encoder directory (or hub id), resolved as the recipes do (``assets/encoder``).
    manifest : str
        The task's prepared training manifest (``<manifest_folder>/train.csv``).
    task : str
        Task name (``KS``, ``IC``, ``ASR``, ``SF``, ``SD``): the output folder, and the
        default label columns and gain.
    label_columns : list of str, optional
        Columns whose joined values are a row's class; None: the task's (KS ``label``,
        IC ``action, object, location``, none for the others); ``[]``: none.
    gain_db : float, optional
        Gain applied when reading the audio; None: the task's (KS -3, others 0).
    max_items : int
        At most this many rows, a seeded random sample when the manifest has more.
    seed : int
        Seed of the sample, of the ``_silence_`` crops and of t-SNE.
    layer : str or int
        ``mean`` (over all hidden states), ``last`` or a hidden-state index.
    output_root : str
        Results root; the feature cache is ``<output_root>/feature_cache``.
    device : str
        Where the encoder runs.
    batch_size : int
        Utterances per extraction batch.

    Returns
    -------
    Analysis
        ``(path, record, reused)``.
    """
    start = time.time()
    if not str(task) or not all(c.isalnum() or c in "-_" for c in str(task)):
        raise OptionError(f"--task {task!r}: give a task name such as KS, IC or ASR")
    default_columns, default_gain = task_defaults(task)
    label_columns = list(default_columns if label_columns is None else label_columns)
    gain_db = float(default_gain if gain_db is None else gain_db)
    layer = parse_layer(layer)
    if int(max_items) < 2:
        raise OptionError(f"--max_items {max_items}: give at least 2")
    manifest = Path(manifest).resolve()
    rows = read_training_manifest(manifest, label_columns)
    settings = {
        "task": str(task),
        "manifest": str(manifest),
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "max_items": int(max_items),
        "seed": int(seed),
        "layer": layer,
        "gain_db": gain_db,
        "label_columns": label_columns,
    }

    source = resolve_upstream_source(upstream_source, output_root)
    upstream = SSLUpstream(source, freeze=True).to(device)
    encoder = describe_encoder(upstream)
    rows = sample_rows(rows, settings["max_items"], settings["seed"])
    dataset, tag = training_dataset(rows, gain_db, settings["seed"])
    cache = FeatureCache(Path(output_root) / "feature_cache", upstream, batch_size=batch_size,
                         encoder_hash=encoder["content_hash"])
    # The manifest's bytes do not cover its audio: regenerated files must not be reused.
    settings["features_fingerprint"] = hashlib.sha256(
        f"{cache.encoder_hash};{manifest_fingerprint(dataset, tag)}".encode()).hexdigest()
    path = record_path(output_root, task, source)
    previous = reusable(path, settings, encoder["content_hash"])
    if previous is not None:
        logger.info("Reusing %s: same encoder, manifest, audio and settings", path)
        return Analysis(path, previous, True)

    pooled = cache.load(dataset, tag, progressbar=progressbar).vectors
    vectors = select_layer(pooled.numpy(), layer)
    labels = row_classes(rows, label_columns)
    record = {
        "schema": SCHEMA,
        "kind": "representations",
        "task": settings["task"],
        "manifest": settings["manifest"],
        "manifest_sha256": settings["manifest_sha256"],
        "items": len(rows),
        **{key: settings[key] for key in ("max_items", "seed", "layer", "gain_db",
                                          "label_columns", "features_fingerprint")},
        "encoder": encoder,
        "strategy": resolve_strategy(None, source),
        "provenance": read_provenance(source),
        "log10_isotropy": log10_isotropy(vectors),
        "class_separation": class_separation(vectors, labels) if labels else None,
        "tsne": tsne_map(vectors, labels, settings["seed"]) if labels else None,
        # Evaluated after the lines above: the whole analysis, loading included.
        "seconds": round(time.time() - start, 3),
        "device": describe_device(device),
    }
    write_json_atomic(path, record)
    return Analysis(path, record, False)

