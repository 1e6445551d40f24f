"""The downstream core every SUPERB task recipe shares.

``DownstreamBrain`` trains a head on a frozen SSL upstream the way s3prl does
(``superb_protocol.md`` §0.4) and records what the paper adds: the score at the best
dev checkpoint *and* the number of updates needed to reach it.

How the step-based schedule maps onto SpeechBrain's epoch loop: one Brain "epoch" is an
**evaluation round** of ``eval_every_steps`` updates. :class:`StepSampler` draws exactly
``eval_every_steps * batch_size`` training items per round from an endless seeded
stream, so a round ends with a dev evaluation whatever the size of the training set
(at 1 % an epoch of the data is only a few updates). :class:`EvalRounds` counts
``ceil(max_steps / eval_every_steps)`` rounds, and ``optimizer_step_limit = max_steps``
stops the last one on time. Each dev evaluation saves a checkpoint; the best one (ties
go to the earliest step) and the latest one are kept, so an interrupted run resumes
exactly, and the test set is evaluated at the best dev checkpoint.

Subclasses (one per head family) implement ``compute_forward``,
``compute_objectives``, ``reset_scores(stage)`` and ``summarize_scores(stage)``.
"""

import hashlib
import json
import logging
import math
import os
import platform
import time

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.epoch_loop import EpochCounter

from rewire_lobes.io_utils import write_json_atomic
from rewire_lobes.upstream.encoder import describe_encoder

logger = logging.getLogger(__name__)

RESULTS_SCHEMA = 1

# The paper's Table 3: maximum updates per task and label fraction (100 %: ~200k, §B).
PAPER_STEP_BUDGETS = {
    "SD": {0.01: 20_000, 0.05: 20_000, 0.1: 50_000},
    "SF": {0.01: 50_000, 0.05: 100_000, 0.1: 100_000},
    "IC": {0.01: 20_000, 0.05: 20_000, 0.1: 50_000},
    "KS": {0.01: 20_000, 0.05: 50_000, 0.1: 50_000},
    "ASR": {0.01: 50_000, 0.05: 100_000, 0.1: 100_000},
}
FULL_RESOURCE_STEPS = 200_000


def paper_step_budget(task, fraction):
    """The paper's update budget for ``task`` at ``fraction`` (None when it gives none)."""
    if math.isclose(float(fraction), 1.0):
        return FULL_RESOURCE_STEPS
    for known, steps in PAPER_STEP_BUDGETS.get(task, {}).items():
        if math.isclose(float(fraction), known):
            return steps
    return None


class EvalRounds(EpochCounter):
    """An epoch counter whose epochs are evaluation rounds of ``eval_every_steps`` updates.

    Example
    -------
    >>> EvalRounds(max_steps=1000, eval_every_steps=300).limit
    4
    """

    def __init__(self, max_steps, eval_every_steps):
        if int(max_steps) < 1 or int(eval_every_steps) < 1:
            raise ValueError(
                f"max_steps ({max_steps}) and eval_every_steps ({eval_every_steps}) must be >= 1"
            )
        super().__init__(math.ceil(int(max_steps) / int(eval_every_steps)))
        self.max_steps = int(max_steps)
        self.eval_every_steps = int(eval_every_steps)


class StepSampler(torch.utils.data.Sampler):
    """``samples_per_round`` indices per round, from an endless seeded stream.

    Uniform mode: the stream is a sequence of seeded permutations of the items, read
    across round boundaries, so every item is seen once per pass, as with shuffled
    epochs. Weighted mode (``weights``): independent draws with replacement in
    proportion to the weights, as s3prl's ``WeightedRandomSampler`` for Speech
    Commands. Round ``r`` (SpeechBrain's epoch number, from 1) depends only on the
    seed and ``r``, so a resumed run draws the same items.

    Example
    -------
    >>> sampler = StepSampler(5, samples_per_round=4, seed=0)
    >>> sampler.set_epoch(1); first = list(sampler)
    >>> sampler.set_epoch(2); second = list(sampler)
    >>> sorted(first + second[:1]) == [0, 1, 2, 3, 4]
    True
    """

    def __init__(self, num_items, samples_per_round, seed, weights=None):
        if num_items < 1:
            raise ValueError("the training set is empty")
        self.num_items = int(num_items)
        self.samples_per_round = int(samples_per_round)
        self.seed = int(seed)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch = 1

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def _generator(self, *parts):
        # hashlib, not hash(): string hashing changes between Python processes.
        key = "\0".join(str(p) for p in (self.seed,) + parts).encode()
        return torch.Generator().manual_seed(int(hashlib.sha256(key).hexdigest()[:15], 16))

    def __iter__(self):
        if self.weights is not None:
            drawn = torch.multinomial(
                self.weights, self.samples_per_round, replacement=True,
                generator=self._generator("weighted", self.epoch),
            )
            return iter(drawn.tolist())
        start = (self.epoch - 1) * self.samples_per_round
        stop = start + self.samples_per_round
        indices = []
        for pass_index in range(start // self.num_items, (stop - 1) // self.num_items + 1):
            order = torch.randperm(self.num_items, generator=self._generator("pass", pass_index))
            offset = pass_index * self.num_items
            lo, hi = max(start - offset, 0), min(stop - offset, self.num_items)
            indices.extend(order[lo:hi].tolist())
        return iter(indices)

    def __len__(self):
        return self.samples_per_round


@register_checkpoint_hooks
class RunHistory:
    """The dev curve, the best point and the time spent: checkpointed with the run."""

    def __init__(self):
        self.dev_curve = []  # [[step, value], ...]
        self.best_step = None
        self.best_value = None
        self.seconds = 0.0

    def add(self, step, value, direction):
        """Records a dev evaluation; True when it is a new best (ties keep the earlier)."""
        self.dev_curve.append([int(step), float(value)])
        better = (
            self.best_value is None
            or (math.isnan(self.best_value) and not math.isnan(value))
            or (value > self.best_value if direction == "max" else value < self.best_value)
        )
        if better:
            self.best_step, self.best_value = int(step), float(value)
        return better

    def state(self):
        return {
            "dev_curve": [list(p) for p in self.dev_curve],
            "best_step": self.best_step,
            "best_value": self.best_value,
            "seconds": self.seconds,
        }

    def load_state(self, state):
        self.dev_curve = [list(p) for p in state["dev_curve"]]
        self.best_step = state["best_step"]
        self.best_value = state["best_value"]
        self.seconds = float(state["seconds"])

    @mark_as_saver
    def _save(self, path):
        with open(path, "w", encoding="utf-8") as fout:
            json.dump(self.state(), fout)

    @mark_as_loader
    def _load(self, path, end_of_epoch=True):
        del end_of_epoch
        with open(path, encoding="utf-8") as fin:
            self.load_state(json.load(fin))


def describe_device(device):
    """A readable device name for results.json."""
    device = str(device)
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class DownstreamBrain(sb.Brain):
    """Frozen SSL upstream → weighted layer sum → head, on a fixed update budget.

    Hyperparameters read (all in every task yaml): ``task``, ``strategy``, ``fraction``,
    ``seed``, ``max_steps``, ``eval_every_steps``, ``metric``,
    ``dev_metric``, ``metric_direction`` (``max``/``min``), ``upstream``,
    ``results_file``, ``train_logger``, ``use_tensorboard``, ``tensorboard_folder``,
    ``balance_column`` (class-balanced sampling on that manifest column, or null).

    The upstream stays frozen and in eval mode (``SSLUpstream(freeze=True)`` ignores
    ``.train()``), its parameters are never given to the optimizer, and it must not be
    registered with the checkpointer (checkpoints hold only the featurizer, the head,
    the optimizer and the counters).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        upstream = self.hparams.upstream
        if not upstream.freeze:
            raise ValueError("DownstreamBrain trains heads on a frozen upstream (freeze: True)")
        self.history = RunHistory()
        if self.checkpointer is not None:
            for name, obj in self.checkpointer.recoverables.items():
                if obj is upstream or obj is getattr(upstream, "model", None):
                    raise ValueError(
                        f"checkpointer recoverable '{name}' is the frozen upstream: remove it "
                        "(checkpoints would copy the whole encoder at every evaluation)"
                    )
            self.checkpointer.add_recoverable("history", self.history)
        # The step budget is the recipe's, not a run option (pitfall C.12: count updates).
        self.optimizer_step_limit = int(self.hparams.max_steps)
        self.run_info = {}  # extra fields for results.json, filled by the recipe
        self.step_sampler = None
        self._tensorboard = None
        self._encoder_info = None
        self._clock = None

    # ------------------------------------------------------------------ optimisation
    def init_optimizers(self):
        """One optimizer over the trainable parameters only (never the frozen encoder)."""
        params = [p for p in self.modules.parameters() if p.requires_grad]
        self.optimizer = self.opt_class(params)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """The train loader draws ``eval_every_steps`` batches per round (a StepSampler)."""
        if stage == sb.Stage.TRAIN:
            loader_kwargs = dict(loader_kwargs)
            loader_kwargs.pop("shuffle", None)
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            per_round = (int(self.hparams.eval_every_steps) * int(loader_kwargs["batch_size"])
                         * world_size)
            self.step_sampler = StepSampler(
                len(dataset), per_round, seed=self.hparams.seed,
                weights=self.sample_weights(dataset),
            )
            loader_kwargs["sampler"] = self.step_sampler
            loader_kwargs["drop_last"] = True
        return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)

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

    # ------------------------------------------------------------------ stages
    def on_fit_start(self):
        super().on_fit_start()  # wraps DDP, builds the optimizer, resumes
        if getattr(self.hparams, "use_tensorboard", False) and if_main_process():
            self._tensorboard = make_tensorboard_writer(self.hparams.tensorboard_folder)
        self._clock = time.time()
        budget = paper_step_budget(self.hparams.task, self.hparams.fraction)
        logger.info(
            "%s at fraction %s: %d updates, dev every %d (paper's budget: %s); "
            "resuming at update %d",
            self.hparams.task, self.hparams.fraction, self.hparams.max_steps,
            self.hparams.eval_every_steps, budget or "none given", self.optimizer_step,
        )

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
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
        improved = self.history.add(step, value, self.hparams.metric_direction)
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
        """Higher is better: the dev score in the metric's direction, then the earlier step."""
        if "dev_score" not in ckpt.meta:
            return (-math.inf, 0)
        value = float(ckpt.meta["dev_score"])
        if math.isnan(value):
            return (-math.inf, 0)
        signed = value if self.hparams.metric_direction == "max" else -value
        return (signed, -int(ckpt.meta["step"]))

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
            write_json_atomic(self.hparams.results_file, self.results(scores))
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
        return {
            "schema": RESULTS_SCHEMA,
            "task": hp.task,
            "encoder": self.encoder_info(),
            "strategy": hp.strategy,
            "fraction": float(hp.fraction),
            "seed": int(hp.seed),
            "metric": hp.metric,
            "dev_metric": hp.dev_metric,
            "direction": hp.metric_direction,
            "unit": "%",
            "best_dev": self.history.best_value,
            "test": test_scores[hp.metric],
            "test_scores": test_scores,
            "best_step": self.history.best_step,
            "steps": self.optimizer_step,
            "max_steps": int(hp.max_steps),
            "eval_every_steps": int(hp.eval_every_steps),
            "paper_max_steps": paper_step_budget(hp.task, hp.fraction),
            "dev_curve": self.history.dev_curve,
            "wall_seconds": round(self.history.seconds, 3),
            "device": describe_device(self.device),
            **self.run_info,
        }

    # ------------------------------------------------------------------ for subclasses
    def reset_scores(self, stage):
        """Starts fresh metric trackers for a VALID or TEST stage."""
        raise NotImplementedError

    def summarize_scores(self, stage):
        """``{metric name: value}`` for the stage just finished (must hold dev_metric/metric)."""
        raise NotImplementedError


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
