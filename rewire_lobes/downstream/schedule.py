"""The step-based schedule of a downstream run: budget, rounds, sampler, history.

How the step-based schedule maps onto SpeechBrain's epoch loop: one Brain "epoch" is an
**evaluation round** of ``eval_every_steps`` updates. :class:`StepSampler` draws exactly
``eval_every_steps * batch_size * grad_accumulation_factor`` training items per round from
an endless seeded stream, so a round ends with a dev evaluation whatever the size of the
training set (at 1 % an epoch of the data is only a few updates). :class:`EvalRounds`
counts ``ceil(max_steps / eval_every_steps)`` rounds, and ``optimizer_step_limit =
max_steps`` stops the last one on time. :class:`RunHistory` holds the dev curve and the
best point (ties go to the earliest update) and is checkpointed with the run.
"""

import hashlib
import json
import math

import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.epoch_loop import EpochCounter

from rewire_lobes.errors import OptionError

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
            raise OptionError(
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

    ``with_positions=True`` yields ``(index, draw)`` pairs instead, where ``draw`` is the
    position in the endless stream (unique over the whole run): for items whose content
    depends on the draw, such as a fresh random crop at every fetch (:class:`DrawKeyed`).

    Example
    -------
    >>> sampler = StepSampler(5, samples_per_round=4, seed=0)
    >>> sampler.set_epoch(1); first = list(sampler)
    >>> sampler.set_epoch(2); second = list(sampler)
    >>> sorted(first + second[:1]) == [0, 1, 2, 3, 4]
    True
    """

    def __init__(self, num_items, samples_per_round, seed, weights=None, with_positions=False):
        if num_items < 1:
            raise ValueError("the training set is empty")
        self.with_positions = bool(with_positions)
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
        indices = self._indices()
        if not self.with_positions:
            return iter(indices)
        first = (self.epoch - 1) * self.samples_per_round
        return iter([(index, first + k) for k, index in enumerate(indices)])

    def _indices(self):
        if self.weights is not None:
            drawn = torch.multinomial(
                self.weights, self.samples_per_round, replacement=True,
                generator=self._generator("weighted", self.epoch),
            )
            return drawn.tolist()
        start = (self.epoch - 1) * self.samples_per_round
        stop = start + self.samples_per_round
        indices = []
        for pass_index in range(start // self.num_items, (stop - 1) // self.num_items + 1):
            order = torch.randperm(self.num_items, generator=self._generator("pass", pass_index))
            offset = pass_index * self.num_items
            lo, hi = max(start - offset, 0), min(stop - offset, self.num_items)
            indices.extend(order[lo:hi].tolist())
        return indices

    def __len__(self):
        return self.samples_per_round


class DrawKeyed(torch.utils.data.Dataset):
    """A dataset read with ``(index, draw)`` keys: tells ``keyed`` the draw, then reads.

    ``keyed`` is the object whose ``draw`` attribute the dataset's pipeline reads (e.g. the
    random crops of ``rewire_lobes.downstream.dataio``); it is set in the process that
    reads the item, so loader workers see the right draw.

    Example
    -------
    >>> class Seen:
    ...     draw = None
    >>> seen = Seen()
    >>> data = DrawKeyed([10, 20, 30], seen)
    >>> data[(2, 41)], seen.draw, len(data)
    (30, 41, 3)
    """

    def __init__(self, dataset, keyed):
        self.dataset = dataset
        self.keyed = keyed

    def __getitem__(self, key):
        index, self.keyed.draw = key
        return self.dataset[index]

    def __len__(self):
        return len(self.dataset)


@register_checkpoint_hooks
class RunHistory:
    """The dev curve, the best point and the time spent: checkpointed with the run.

    ``dev_curve`` follows the metric that picks the checkpoint; ``dev_scores`` keeps every
    score of every evaluation (``{name: [[step, value], ...]}``), e.g. the CER beside the WER.
    """

    def __init__(self):
        self.dev_curve = []  # [[step, value], ...]
        self.dev_scores = {}
        self.best_step = None
        self.best_value = None
        self.seconds = 0.0

    def add(self, step, value, direction, scores=None):
        """Records a dev evaluation; True when it is a new best (ties keep the earlier)."""
        self.dev_curve.append([int(step), float(value)])
        for name, score in (scores or {}).items():
            self.dev_scores.setdefault(name, []).append([int(step), float(score)])
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
            "dev_scores": {name: [list(p) for p in curve] for name, curve in self.dev_scores.items()},
            "best_step": self.best_step,
            "best_value": self.best_value,
            "seconds": self.seconds,
        }

    def load_state(self, state):
        self.dev_curve = [list(p) for p in state["dev_curve"]]
        self.dev_scores = {name: [list(p) for p in curve]
                           for name, curve in state.get("dev_scores", {}).items()}
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
