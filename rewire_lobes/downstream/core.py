"""The downstream core every SUPERB task recipe shares.

``DownstreamBrain`` trains a head on a frozen SSL upstream the way s3prl does
(``superb_protocol.md`` §0.4) and records what the paper adds: the score at the best
dev checkpoint *and* the number of updates needed to reach it.

One Brain "epoch" is an evaluation round of ``eval_every_steps`` updates
(``rewire_lobes.downstream.schedule``). Each dev evaluation saves a checkpoint; the best
one (ties go to the earliest step) and the latest one are kept, so an interrupted run
resumes exactly, and the test set is evaluated at the best dev checkpoint.
``results.json`` is written by ``rewire_lobes.downstream.results``.

Two upstream modes: **frozen** (SUPERB's probing: the encoder in eval mode without
gradients, never checkpointed, features may be cached) and **trainable** (fine-tuning,
e.g. multi-task: ``SSLUpstream(freeze=False)`` with its own learning rate
``upstream_lr``, layerdrop 0 and the CNN fixed by ``SSLUpstream``, no feature cache; the
encoder is then checkpointed with the head).

Subclasses (one per head family) implement ``compute_forward``,
``compute_objectives``, ``reset_scores(stage)`` and ``summarize_scores(stage)``.
"""

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.distributed import if_main_process

from rewire_lobes.downstream.batching import BatchStepSampler
from rewire_lobes.downstream.plots import DEV_PLOT, plot_dev_scores
from rewire_lobes.downstream.results import (
    check_metrics,
    describe_device,
    results_record,
    write_results,
)
from rewire_lobes.downstream.schedule import (
    DrawKeyed,
    RunHistory,
    StepSampler,
    paper_step_budget,
)
from rewire_lobes.errors import OptionError
from rewire_lobes.runs.provenance import read_provenance
from rewire_lobes.runs.optim import clipped_step
from rewire_lobes.runs.random_state import RandomState
from rewire_lobes.upstream.encoder import describe_encoder, trainable_parameters

logger = logging.getLogger(__name__)

KEEP = object()  # make_brain: the checkpointer of the hparams


class DownstreamBrain(sb.Brain):
    """SSL upstream → weighted layer sum → head, on a fixed update budget.

    Hyperparameters read (all in every task yaml): ``task``, ``strategy``, ``run_profile``,
    ``fraction``, ``seed``, ``max_steps``, ``eval_every_steps``, ``metric``,
    ``dev_metric`` (their units and directions come from
    ``rewire_lobes.downstream.results.METRICS``), ``upstream``, ``results_file``,
    ``train_logger``, ``use_tensorboard``, ``tensorboard_folder``, ``balance_column``
    (class-balanced sampling on that manifest column, or null); in trainable mode also
    ``upstream_lr``.

    Frozen mode: the upstream stays in eval mode (``SSLUpstream(freeze=True)`` ignores
    ``.train()``), its parameters are never given to the optimizer, and it must not be
    registered with the checkpointer (checkpoints hold only the featurizer, the head,
    the optimizer and the counters). Trainable mode: the upstream's trainable
    parameters get their own parameter group at ``upstream_lr`` and are checkpointed.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        upstream = self.hparams.upstream
        self.trains_upstream = not upstream.freeze
        if self.trains_upstream and getattr(self.hparams, "upstream_lr", None) is None:
            raise ValueError("a trainable upstream (freeze: False) needs its own upstream_lr")
        if self.trains_upstream:
            trainable_parameters(upstream)  # before DDP wraps it (a grad-less parameter is refused)
        self.direction = check_metrics(self.hparams.metric, self.hparams.dev_metric)
        self.history = RunHistory()
        # Dropout and SpecAugment draw from the global generators: a resumed run restores
        # them where the checkpoint was taken (the end of a dev evaluation).
        self.random_state = RandomState()
        if self.checkpointer is not None:
            registered = [name for name, obj in self.checkpointer.recoverables.items()
                          if obj is upstream or obj is getattr(upstream, "model", None)]
            if registered and not self.trains_upstream:
                raise ValueError(
                    f"checkpointer recoverable '{registered[0]}' is the frozen upstream: remove "
                    "it (checkpoints would copy the whole encoder at every evaluation)"
                )
            if self.trains_upstream and not registered:
                self.checkpointer.add_recoverable("upstream", upstream)
            self.checkpointer.add_recoverable("history", self.history)
            self.checkpointer.add_recoverable("random_state", self.random_state)
        # The step budget is the recipe's, not a run option (pitfall C.12: count updates).
        self.optimizer_step_limit = int(self.hparams.max_steps)
        self.run_info = {}  # extra fields for results.json, filled by the recipe
        # None: read from the encoder's folder (a multi-task run gives its export's).
        self.encoder_provenance = None
        self.step_sampler = None
        self._tensorboard = None
        self._encoder_info = None
        self._clock = None

    # ------------------------------------------------------------------ optimisation
    def init_optimizers(self):
        """One optimizer over the trainable parameters: the head's, and the upstream's
        in their own group at ``upstream_lr`` when it trains (never a frozen encoder's)."""
        upstream_ids = {id(p) for p in self.hparams.upstream.parameters()}
        head = [p for p in self.modules.parameters()
                if p.requires_grad and id(p) not in upstream_ids]
        groups = [{"params": head}]
        if self.trains_upstream:
            groups.append({
                "params": trainable_parameters(self.hparams.upstream),
                "lr": float(self.hparams.upstream_lr),
            })
        self.optimizer = self.opt_class(groups)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def optimizers_step(self):
        """Clips the head's and a trainable upstream's gradients together (s3prl)."""
        clipped_step(self)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """The train loader draws ``eval_every_steps`` updates' batches per round.

        With gradient accumulation an update takes ``grad_accumulation_factor`` batches, so
        ``max_steps`` and ``eval_every_steps`` stay counted in updates.
        """
        if stage == sb.Stage.TRAIN:
            loader_kwargs = dict(loader_kwargs)
            loader_kwargs.pop("shuffle", None)
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            per_round = (int(self.hparams.eval_every_steps) * int(loader_kwargs["batch_size"])
                         * int(self.grad_accumulation_factor) * world_size)
            batches = self.train_batches(dataset)
            if batches is not None:
                if world_size > 1:
                    raise OptionError("length-aware training batches run on one process; "
                                      "use a single GPU for this task")
                self.step_sampler = BatchStepSampler(
                    batches, int(self.hparams.eval_every_steps) * int(self.grad_accumulation_factor),
                    seed=self.hparams.seed)
                for key in ("batch_size", "shuffle", "drop_last", "sampler"):
                    loader_kwargs.pop(key, None)
                loader_kwargs["batch_sampler"] = self.step_sampler
                return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
            keyed = self.draw_keyed(dataset)
            self.step_sampler = StepSampler(
                len(dataset), per_round, seed=self.hparams.seed,
                weights=self.sample_weights(dataset), with_positions=keyed is not None,
            )
            if keyed is not None:
                dataset = DrawKeyed(dataset, keyed)
                loader_kwargs.setdefault("collate_fn", PaddedBatch)
            loader_kwargs["sampler"] = self.step_sampler
            loader_kwargs["drop_last"] = True
        return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)

    def train_batches(self, dataset):
        """The training batches of one pass (lists of item indices), or None (the default:
        ``batch_size`` items drawn one by one)."""
        return None

    def draw_keyed(self, dataset):
        """The object to tell each training draw's stream position, or None (the default).

        For training items whose content depends on the draw (a fresh random crop at
        every fetch): the sampler then yields ``(index, draw)`` keys (``DrawKeyed``).
        """
        return None

    def sample_weights(self, dataset):
        """``N / count(label)`` per item when ``balance_column`` is set (s3prl's KS sampler)."""
        column = getattr(self.hparams, "balance_column", None)
        if not column:
            return None
        labels = [dataset.data[data_id][column] for data_id in dataset.data_ids]
        counts = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        return [len(labels) / counts[label] for label in labels]

    # CPU threads while a head trains on cached features (None: torch's setting, which
    # trains the BLSTM-CTC head 1.3x faster with 2 threads than 1 on 2 idle cores).
    cached_head_threads = None

    @contextlib.contextmanager
    def _head_threads(self):
        """``cached_head_threads`` CPU threads while training on cached features, then the
        previous setting (see the subclasses for what was measured)."""
        threads = torch.get_num_threads()
        wanted = self.cached_head_threads
        if wanted and getattr(self.hparams, "cache_features", False) and self.device_type == "cpu":
            torch.set_num_threads(wanted)
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

    # ------------------------------------------------------------------ stages
    def on_fit_start(self):
        super().on_fit_start()  # wraps DDP, builds the optimizer, resumes
        if getattr(self.hparams, "use_tensorboard", False) and if_main_process():
            self._tensorboard = make_tensorboard_writer(self.hparams.tensorboard_folder)
        self._clock = time.time()
        budget = paper_step_budget(self.hparams.task, self.hparams.fraction)
        logger.info(
            "%s at fraction %s, %s profile, strategy %s: %d updates, dev every %d (paper's "
            "budget: %s); resuming at update %d",
            self.hparams.task, self.hparams.fraction, self.hparams.run_profile,
            self.hparams.strategy, self.hparams.max_steps, self.hparams.eval_every_steps,
            budget or "none given", self.optimizer_step,
        )

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            # Before the loader's iterator is made: making it draws from the generator.
            self.random_state.apply_recovered()
            if self.step_sampler is not None:
                self.step_sampler.set_epoch(epoch)
        else:
            self.reset_scores(stage)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        scores = self.summarize_scores(stage)
        if stage == sb.Stage.VALID:
            self._end_of_round(epoch, stage_loss, scores)
        else:
            self._end_of_test(stage_loss, scores)

    def _tick(self):
        """Adds the time since the last tick to the checkpointed total."""
        now = time.time()
        if self._clock is not None:
            self.history.seconds += now - self._clock
        self._clock = now

    def _end_of_round(self, epoch, loss, scores):
        step = self.optimizer_step
        value = scores[self.hparams.dev_metric]
        improved = self.history.add(step, value, self.direction, scores)
        self._tick()
        lr = self.optimizer.param_groups[0]["lr"]
        self.hparams.train_logger.log_stats(  # on every rank (pitfall C.11)
            stats_meta={"round": epoch, "step": step, "lr": lr},
            train_stats={"loss": getattr(self, "train_loss", float("nan"))},
            valid_stats={"loss": loss, **scores},
        )
        if self._tensorboard is not None:
            self._tensorboard.add_scalar("train/loss", self.train_loss, step)
            self._tensorboard.add_scalar("dev/loss", loss, step)
            for name, score in scores.items():
                self._tensorboard.add_scalar(f"dev/{name}", score, step)
            self._tensorboard.flush()
        if improved:
            logger.info("New best dev %s %.4g at update %d", self.hparams.dev_metric, value, step)
        self.checkpointer.save_and_keep_only(
            meta={"step": step, "dev_score": value},
            importance_keys=[self._checkpoint_importance],
            num_to_keep=1,
            keep_recent=True,
        )

    def _checkpoint_importance(self, ckpt):
        return dev_importance("dev_score", self.direction)(ckpt)

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Loads the best dev checkpoint, keeping the full run history and step count."""
        if self.checkpointer is not None and not self.history.dev_curve:
            # --test_only (fit never ran): the latest checkpoint has the whole history.
            self.checkpointer.recover_if_possible()
        history, steps = self.history.state(), self.optimizer_step
        if self.checkpointer is not None:
            self.checkpointer.recover_if_possible(importance_key=self._checkpoint_importance)
        # The checkpoint also restores the dev curve and update count of its own time.
        self.history.load_state(history)
        self.optimizer_step = max(steps, self.optimizer_step)

    def _end_of_test(self, loss, scores):
        self._tick()
        self.hparams.train_logger.log_stats(
            stats_meta={"best step": self.history.best_step, "steps": self.optimizer_step},
            test_stats={"loss": loss, **scores},
        )
        if if_main_process():
            plot_dev_scores(self.history.dev_scores, self.history.best_step,
                            Path(self.hparams.results_file).with_name(DEV_PLOT))
            write_results(self.hparams.results_file, self.results(scores))
            logger.info("Wrote %s", self.hparams.results_file)
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    # ------------------------------------------------------------------ results
    def encoder_info(self):
        if self._encoder_info is None:
            self._encoder_info = describe_encoder(self.hparams.upstream)
        return self._encoder_info

    def results(self, test_scores):
        """The results.json record of this run (see docs/design.md)."""
        hp = self.hparams
        return results_record(
            task=hp.task,
            encoder=self.encoder_info(),
            provenance=self.encoder_provenance or read_provenance(hp.upstream.source),
            strategy=hp.strategy,
            profile=hp.run_profile,
            profile_reason=getattr(hp, "profile_reason", None),
            settings=getattr(hp, "run_identity", None),
            fraction=hp.fraction,
            seed=hp.seed,
            metric=hp.metric,
            dev_metric=hp.dev_metric,
            test_scores=test_scores,
            dev_curve=self.history.dev_curve,
            dev_scores=self.history.dev_scores,
            best_step=self.history.best_step,
            best_dev=self.history.best_value,
            steps=self.optimizer_step,
            max_steps=hp.max_steps,
            eval_every_steps=hp.eval_every_steps,
            upstream_mode="trainable" if self.trains_upstream else "frozen",
            wall_seconds=self.history.seconds,
            device=describe_device(self.device),
            layer_weights=self.layer_weights(),
            manifest_folder=self.manifest_folder(),
            **self.run_info,
        )

    def layer_weights(self):
        """The featurizer's softmax layer weights at the loaded (best) checkpoint."""
        featurizer = getattr(self.modules, "featurizer", None)
        if featurizer is None:
            return None
        return [round(w, 6) for w in torch.softmax(featurizer.weights.detach().float().cpu(),
                                                   dim=0).tolist()]

    def manifest_folder(self):
        """Where the task's prepared manifests are (the report's analysis reads train.csv)."""
        folder = getattr(self.hparams, "manifest_folder", None)
        return None if folder is None else str(Path(folder).resolve())

    # ------------------------------------------------------------------ for subclasses
    def reset_scores(self, stage):
        """Starts fresh metric trackers for a VALID or TEST stage."""
        raise NotImplementedError

    def summarize_scores(self, stage):
        """``{metric name: value}`` for the stage just finished (must hold dev_metric/metric)."""
        raise NotImplementedError


def dev_importance(key, direction):
    """A checkpoint ``importance_key``: higher is better, by the dev value ``ckpt.meta[key]``
    in the metric's ``direction``, then the earlier step; no (or a NaN) value is the worst."""

    def importance(ckpt):
        value = float(ckpt.meta.get(key, math.nan))
        if math.isnan(value):
            return (-math.inf, 0)
        return (value if direction == "max" else -value, -int(ckpt.meta["step"]))

    importance.__name__ = f"best_{key}"
    return importance


def make_brain(brain_class, hparams, run_opts, run_info, checkpointer=KEEP):
    """A task's Brain from the recipe's hparams (``checkpointer`` None: a Brain that is never
    fitted by itself, e.g. one task of a multi-task run), each split given its input
    (cached features or audio: the subclass's ``use_cached_features``)."""
    brain = brain_class(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"] if checkpointer is KEEP else checkpointer,
    )
    brain.run_info.update(run_info)
    return brain


def fit_downstream(brain_class, hparams, run_opts, datasets, run_info):
    """Builds a task's Brain (:func:`make_brain`) and trains it for the step budget; returns
    the Brain, ready to test at its best dev checkpoint."""
    brain = make_brain(brain_class, hparams, run_opts, run_info)
    brain.use_cached_features(datasets)
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["dev"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    return brain


@dataclass(frozen=True)
class TaskFamily:
    """What a family of task recipes (utterance, CTC, diarization) does after the prepare step.

    ``setup(hparams) -> (datasets, run_info)`` builds the splits, the targets and the head
    (added to ``modules`` and the checkpointer); ``test(brain, datasets, hparams)`` scores
    the best dev checkpoint and writes results.json. The single-task recipes call
    :meth:`run`; the multi-task recipe calls ``setup`` and ``test`` around its own loop.
    """

    brain_class: type
    setup: Callable
    test: Callable

    def run(self, hparams, run_opts):
        datasets, run_info = self.setup(hparams)
        brain = fit_downstream(self.brain_class, hparams, run_opts, datasets, run_info)
        self.test(brain, datasets, hparams)
        return brain


def make_tensorboard_writer(folder):
    """A ``SummaryWriter``, imported only when asked for (tensorboard is an optional extra)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise RuntimeError(
            "use_tensorboard: True needs the tensorboard package: "
            "pip install -e '.[tensorboard]' (or set --use_tensorboard False)"
        ) from err
    return SummaryWriter(log_dir=str(folder))
