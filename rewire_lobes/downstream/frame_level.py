"""What the frame-level tasks (ASR, SF, SD) share: frames from the cache or the encoder.

``FrameLevelBrain`` gives each split its input, the frozen encoder's frames read from the
frame cache (``cached_splits``: the encoder ran once per item) or the audio (the encoder
runs at every batch, and always for a trainable upstream), and hands ``compute_forward``
the hidden states of a batch in the upstream's layout whichever it was.
"""

import logging
import math
import time

import speechbrain as sb

from rewire_lobes.downstream.core import DownstreamBrain
from rewire_lobes.downstream.dataio import audio_pipeline_tag
from rewire_lobes.downstream.features import ensure_cached
from rewire_lobes.downstream.frame_cache import FrameCache, frame_batch, frame_feature_pipeline
from rewire_lobes.errors import OptionError

logger = logging.getLogger(__name__)


class FrameLevelBrain(DownstreamBrain):
    """A ``DownstreamBrain`` whose head reads every frame of the weighted layer sum.

    Extra hyperparameters: ``cache_features``, ``cached_splits``, ``frame_cache_folder``,
    ``frame_cache_dtype``, ``frame_cache_max_gb``, ``feature_batch_size``, ``gain_db``.
    Subclasses name the pipeline outputs their objectives read in ``target_keys``.
    """

    target_keys = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.trains_upstream and self.hparams.cache_features:
            raise OptionError("cache_features needs a frozen upstream: a trained encoder's "
                              "frames change at every update (set --cache_features False)")
        self.final_split = None  # "dev" / "test" while scored at the best checkpoint

    def score_at_best(self, datasets, loader_kwargs):
        """Evaluates dev, then test, at the best dev checkpoint, ``final_split`` naming the
        split (the subclass writes its outputs); test last, since its results.json marks
        the run as done."""
        for split in ("dev", "test"):
            self.final_split = split
            self.evaluate(datasets[split], test_loader_kwargs=loader_kwargs)
        self.final_split = None

    def use_cached_features(self, datasets):
        """Gives each split its input: cached ``feats`` (``cached_splits``) or ``sig``."""
        cached = list(self.hparams.cached_splits) if self.hparams.cache_features else []
        unknown = sorted(set(cached) - set(datasets))
        if unknown:
            raise OptionError(f"--cached_splits names {unknown}; the splits are {sorted(datasets)}")
        cache = None
        if cached:
            cache = FrameCache(
                self.hparams.frame_cache_folder,
                self.hparams.upstream,
                dtype=self.hparams.frame_cache_dtype,
                max_disk_gb=self.hparams.frame_cache_max_gb,
                batch_size=self.hparams.feature_batch_size,
                encoder_hash=self.encoder_info()["content_hash"],
            )
        tag = audio_pipeline_tag(self.hparams.gain_db)
        start = time.time()
        for name, dataset in datasets.items():
            if name not in cached:
                sb.dataio.dataset.set_output_keys([dataset], ["id", "sig", *self.target_keys])
                continue
            sb.utils.distributed.run_on_main(
                ensure_cached, args=[cache, dataset, tag, not self.noprogressbar])
            frames = cache.load(dataset, tag, progressbar=False)
            sb.dataio.dataset.add_dynamic_item([dataset], frame_feature_pipeline(frames))
            sb.dataio.dataset.set_output_keys(
                [dataset], ["id", "feats", "frame_len", *self.target_keys])
        self.run_info["feature_mode"] = {name: "cached" if name in cached else "on_the_fly"
                                         for name in datasets}
        if cached:
            self.run_info["feature_seconds"] = round(time.time() - start, 3)
        return datasets

    def check_dev_rescore(self, scores, record_key):
        """Records the dev ``scores`` at the best checkpoint under ``record_key`` and whether
        they reproduce the best dev value recorded during training (a run that cannot is
        warned about and says so in results.json: ``dev_rescored_matches_best``)."""
        value = scores[self.hparams.dev_metric]
        best = self.history.best_value
        agrees = best is not None and math.isclose(value, best, rel_tol=1e-6, abs_tol=1e-6)
        self.run_info[record_key] = scores
        self.run_info["dev_rescored_matches_best"] = agrees
        if not agrees:
            logger.warning("dev %s at the best checkpoint is %.4f, but %s was recorded during "
                           "training", self.hparams.dev_metric, value, best)
        return agrees

    def hidden_states(self, batch):
        """``(hidden [L+1, B, T, D], frame_lens [B])`` of a batch already on the device."""
        feats = getattr(batch, "feats", None)
        if feats is not None:
            return frame_batch(feats, batch.frame_len)
        wavs, wav_lens = batch.sig
        return self.modules.upstream(wavs, wav_lens)
