"""s3prl's length-aware training batches for the sequence tasks, drawn step by step.

s3prl does not batch ASR and SF utterances at random: it sorts them by length and batches
neighbours, so that little of a batch is padding (``superb_protocol.md`` §1, §4).

* **ASR** (:func:`length_buckets`): sorted by audio length, longest first, cut into
  consecutive buckets of ``batch_size``; a full bucket whose longest utterance exceeds
  ``half_batch_above`` samples is split into two halves (s3prl compares a sample count with
  2000, so nearly every bucket is halved and the effective batch is 16); a last partial
  bucket is kept when it holds more than one utterance. A pass is the buckets shuffled.
* **SF** (:func:`sliding_windows`): sorted by target length, longest first; a batch is
  the ``batch_size`` consecutive utterances from a start index (clipped to ``N -
  batch_size``), halved when its first utterance exceeds ``half_batch_above`` samples. A
  pass draws every start index once, shuffled, so an "epoch" has ``N`` batches.

:class:`BatchStepSampler` reads a run's batches from the endless stream of such passes,
``batches_per_round`` per evaluation round, like ``schedule.StepSampler`` does for items:
round ``r`` depends only on the seed and ``r``, so a resumed run draws the same batches.
"""

import torch

from rewire_lobes.downstream.schedule import StepSampler


def _longest_first(lengths):
    # Ties by position: the same order on every machine.
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def length_buckets(lengths, batch_size, half_batch_above):
    """s3prl ASR's fixed buckets of item indices (see the module docstring).

    Example
    -------
    >>> length_buckets([5, 9, 7, 1, 3], batch_size=2, half_batch_above=8)
    [[1], [2], [0, 4]]
    """
    order = _longest_first(lengths)
    buckets = []
    for start in range(0, len(order), batch_size):
        bucket = order[start : start + batch_size]
        if len(bucket) < batch_size:
            if len(bucket) > 1 or not buckets:
                buckets.append(bucket)
        elif batch_size >= 2 and lengths[bucket[0]] > half_batch_above:
            buckets.extend([bucket[: batch_size // 2], bucket[batch_size // 2 :]])
        else:
            buckets.append(bucket)
    return buckets


def sliding_windows(sort_lengths, sample_lengths, batch_size, half_batch_above):
    """s3prl SF's window of each start index (see the module docstring).

    ``sort_lengths`` orders the items (target tokens); ``sample_lengths`` (audio samples)
    decides the halving.

    Example
    -------
    >>> sliding_windows([3, 1, 2], [10, 99, 10], batch_size=2, half_batch_above=50)
    [[0, 2], [2, 1], [2, 1]]
    """
    order = _longest_first(sort_lengths)
    size = min(batch_size, len(order))
    windows = []
    for start in range(len(order)):
        start = min(start, len(order) - size)
        width = size // 2 if size > 1 and sample_lengths[order[start]] > half_batch_above else size
        windows.append(order[start : start + max(width, 1)])
    return windows


class BatchStepSampler(torch.utils.data.Sampler):
    """``batches_per_round`` batches per round from seeded shuffles of ``batches``.

    ``batches`` (lists of item indices) form one pass; every pass visits them all in a
    seeded order and the stream runs across round boundaries: ``schedule.StepSampler``'s
    stream, over batches instead of items.

    Example
    -------
    >>> sampler = BatchStepSampler([[0, 1], [2], [3, 4]], batches_per_round=2, seed=0)
    >>> sampler.set_epoch(1); first = list(sampler)
    >>> sampler.set_epoch(2); second = list(sampler)
    >>> sorted(map(tuple, first + second[:1]))
    [(0, 1), (2,), (3, 4)]
    """

    def __init__(self, batches, batches_per_round, seed):
        if not batches:
            raise ValueError("the training set is empty")
        self.batches = [list(batch) for batch in batches]
        self.order = StepSampler(len(self.batches), batches_per_round, seed=seed)

    def set_epoch(self, epoch):
        self.order.set_epoch(epoch)

    def __iter__(self):
        return iter([self.batches[b] for b in self.order])

    def __len__(self):
        return len(self.order)
