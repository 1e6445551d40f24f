"""Utterance classification (KS, IC): SUPERB's utterance-level head on an SSL upstream.

``UtteranceBrain`` trains the head with ``DownstreamBrain``'s schedule, on cached
mean-pooled features or on the encoder run at every step. The labels form one or more
groups, each with its own softmax: KS has one group of 12 classes; IC has three (action,
object, location), the loss is the sum of the three cross-entropies and an utterance
counts as right only when all three are (``superb_protocol.md`` §2-3). The head's group
sizes come from the prepared label inventory (``labels.json``), not from the yaml.
The data plumbing is in ``rewire_lobes.downstream.dataio``.

Random-crop items (KS ``_silence_``: a fresh 1 s crop of a noise file at each draw, as
s3prl takes one at each fetch) can not be cached. In cached mode their crops reach the
Brain as waveforms in the batch, which ``compute_forward`` encodes and pools exactly as
the cache does, so both modes see the same inputs. Dev crops are fixed, so each is
encoded once per evaluation.
"""

import logging
import time
from collections import Counter

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.utils.distributed import run_on_main

from rewire_lobes.downstream.core import DownstreamBrain, TaskFamily
from rewire_lobes.downstream.dataio import (
    audio_pipeline_tag,
    crop_audio_pipeline,
    dataio_prepare,
    describe_datasets,
    feature_pipeline,
    fixed_items,
    label_inventory,
)
from rewire_lobes.downstream.features import FeatureCache, ensure_cached, pool_states

logger = logging.getLogger(__name__)

STAGE_NAMES = {sb.Stage.TRAIN: "train", sb.Stage.VALID: "dev", sb.Stage.TEST: "test"}


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
    """SUPERB's utterance-level head (KS, IC) on an SSL upstream.

    Extra hyperparameters: ``featurizer`` (``WeightedLayerSum``), ``head``
    (``UtteranceLevelHead``), ``label_columns`` and ``label_groups`` (the output size of
    each group), ``cache_features``, ``feature_cache_folder``, ``feature_batch_size``,
    ``gain_db``.
    """

    # The head's ops are tiny, so a second OpenMP thread only adds synchronisation: 225
    # vs 40 updates/s of this head with 1 vs 2 threads on 2 busy cores.
    cached_head_threads = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.trains_upstream and self.hparams.cache_features:
            raise ValueError("cache_features needs a frozen upstream: a trained encoder's "
                             "features change at every update")
        featurizer = self.hparams.featurizer
        self.feature_layer_norm = featurizer.layer_norm
        if self.hparams.cache_features:
            # The cache already holds the per-layer means of the normalised frames
            # (features.py); normalising those means again would change the result.
            featurizer.layer_norm = False
        self.encoded_crops = {}  # CropAudio.key -> pooled [L+1, D], for one stage
        self.crop_counts = Counter()  # "<split>_draws" / "<split>_encoded" in cached mode

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
            crops = getattr(dataset, "random_crops", None)
            cached = dataset if crops is None else fixed_items(dataset)
            features = None
            if len(cached):
                # Extract on the main process only; the cache file is then read everywhere.
                run_on_main(ensure_cached, args=[cache, cached, tag, not self.noprogressbar])
                features = cache.load(cached, tag, progressbar=False)
            if crops is None:
                sb.dataio.dataset.add_dynamic_item([dataset], feature_pipeline(features))
                sb.dataio.dataset.set_output_keys([dataset], ["id", "feats", "labels"])
                continue
            upstream = self.hparams.upstream
            placeholder = torch.zeros(upstream.num_states, upstream.hidden_size)
            sb.dataio.dataset.add_dynamic_item([dataset], feature_pipeline(features, placeholder))
            sb.dataio.dataset.add_dynamic_item(
                [dataset], crop_audio_pipeline(self.hparams.gain_db, crops))
            sb.dataio.dataset.set_output_keys([dataset], ["id", "feats", "crop_audio", "labels"])
        self.run_info["feature_mode"] = "cached"
        self.run_info["feature_seconds"] = round(time.time() - start, 3)
        return datasets

    def draw_keyed(self, dataset):
        """The training set's random crops learn each draw's position (a crop per draw)."""
        return getattr(dataset, "random_crops", None)

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        self.encoded_crops = {}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if self.crop_counts:
            self.run_info["on_the_fly_crops"] = dict(self.crop_counts)
        super().on_stage_end(stage, stage_loss, epoch)

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        if self.hparams.cache_features:
            pooled = batch.feats.data  # [B, L+1, D]
            crops = getattr(batch, "crop_audio", None)
            if crops is not None and any(crop is not None for crop in crops):
                pooled = self.with_encoded_crops(pooled, crops, stage)
            return self.modules.head(self.modules.featurizer(pooled.transpose(0, 1)))
        wavs, wav_lens = batch.sig
        hidden, frame_lens = self.modules.upstream(wavs, wav_lens)
        return self.modules.head(self.modules.featurizer(hidden), frame_lens)

    def with_encoded_crops(self, pooled, crops, stage):
        """``pooled`` with the rows of random crops (``CropAudio``, else None) filled in."""
        rows = [row for row, crop in enumerate(crops) if crop is not None]
        new = {crop.key: crop for crop in crops if crop is not None
               and crop.key not in self.encoded_crops}
        if new:
            self.encoded_crops.update(self.encode_crops(list(new.values())))
        self.crop_counts[f"{STAGE_NAMES[stage]}_draws"] += len(rows)
        self.crop_counts[f"{STAGE_NAMES[stage]}_encoded"] += len(new)
        pooled = pooled.clone()
        pooled[rows] = torch.stack([self.encoded_crops[crops[row].key] for row in rows]).to(
            pooled.dtype)
        return pooled

    @torch.no_grad()
    def encode_crops(self, crops):
        """``{crop.key: [L+1, D]}``: the frozen encoder pooled as the feature cache pools.

        Crops of one length (all of them, for 1 s crops) share a batch without padding.
        Autocast is off because the cache is extracted in float32.
        """
        upstream = self.hparams.upstream
        by_length = {}
        for crop in crops:
            by_length.setdefault(len(crop.sig), []).append(crop)
        encoded = {}
        with torch.autocast(device_type=self.device_type, enabled=False):
            for same_length in by_length.values():
                wavs = torch.stack([crop.sig for crop in same_length]).to(self.device)
                whole = torch.ones(len(same_length), device=self.device)
                hidden, frame_lens = upstream(wavs, whole)
                pooled = pool_states(hidden, frame_lens, self.feature_layer_norm).float()
                encoded.update(zip([crop.key for crop in same_length], pooled))
        return encoded

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


def add_head(hparams):
    """Builds the head for the prepared labels: one output group per label column.

    Sets ``hparams["label_groups"]`` (the group sizes), adds the head to ``modules`` and
    to the checkpointer.
    """
    values = label_inventory(hparams["manifest_folder"], hparams["label_columns"])
    groups = [len(values[column]) for column in hparams["label_columns"]]
    head = hparams["head_class"](num_outputs=sum(groups))
    hparams["label_groups"] = groups
    hparams["modules"]["head"] = head
    hparams["checkpointer"].add_recoverable("head", head)
    logger.info("Head outputs: %s", dict(zip(hparams["label_columns"], groups)))
    return head


def setup_utterance_task(hparams):
    """The splits (``dataio_prepare``) and the head; ``TaskFamily.setup`` of KS and IC."""
    datasets = dataio_prepare(hparams)
    add_head(hparams)
    return datasets, describe_datasets(hparams, datasets)


def test_at_best(brain, datasets, hparams):
    """Tests the head at the best dev checkpoint (results.json)."""
    brain.evaluate(
        datasets["test"],
        max_key=hparams["dev_metric"],
        test_loader_kwargs=hparams["test_dataloader_opts"],
    )


UTTERANCE_TASK = TaskFamily(UtteranceBrain, setup_utterance_task, test_at_best)
