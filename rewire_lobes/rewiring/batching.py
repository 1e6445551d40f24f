"""Fixed-size batches of similar-length utterances.

A contrastive batch must keep its size (it sets the number of negatives), so
SpeechBrain's ``DynamicBatchSampler`` (variable batch sizes) does not fit. This sampler
shuffles the data, cuts it into buckets of ``bucket_batches`` batches, sorts each bucket
by length and slices it into batches, then shuffles the batch order: batches are random
but their members have similar lengths, so one padded forward pass wastes little.
"""

import random

from torch.utils.data import Sampler


class LengthBucketBatchSampler(Sampler):
    """Yields lists of dataset indices, ``batch_size`` each (the remainder is dropped).

    Deterministic given ``(seed, epoch)``; ``set_epoch`` is called by SpeechBrain's Brain
    (directly, or through ``DistributedSamplerWrapper`` under DDP, which then deals whole
    batches to the ranks).

    Arguments
    ---------
    lengths : list of float
        One length per dataset item (any unit).
    batch_size : int
    bucket_batches : int
        Batches per length-sorted bucket; 1 means plain random batches.
    seed : int

    Example
    -------
    >>> sampler = LengthBucketBatchSampler([5, 1, 4, 2, 3, 6], batch_size=2, seed=0)
    >>> batches = list(sampler)
    >>> len(batches), sorted(i for b in batches for i in b)
    (3, [0, 1, 2, 3, 4, 5])
    """

    def __init__(self, lengths, batch_size, bucket_batches=16, seed=0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(lengths) < batch_size:
            raise ValueError(
                f"{len(lengths)} utterances cannot fill one batch of {batch_size}; "
                "lower --batch_size or use more data"
            )
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.bucket_batches = max(1, bucket_batches)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths) // self.batch_size

    def __iter__(self):
        rng = random.Random(f"{self.seed}/batches/{self.epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        usable = len(self) * self.batch_size
        order = order[:usable]
        bucket = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, usable, bucket):
            members = sorted(order[start : start + bucket], key=lambda i: self.lengths[i])
            batches.extend(
                members[i : i + self.batch_size] for i in range(0, len(members), self.batch_size)
            )
        rng.shuffle(batches)
        return iter(batches)
