"""Fixed-size batches: random ones (the paper's), or of similar-length utterances.

A contrastive batch must keep its size (it sets the number of negatives), so
SpeechBrain's ``DynamicBatchSampler`` (variable batch sizes) does not fit. This sampler
shuffles the data and slices it into batches. With ``bucket_batches`` = N > 1 it first
cuts the shuffled data into buckets of N batches and sorts each bucket by length before
slicing, then shuffles the batch order: batches are still random, but their members have
similar lengths, so one padded forward pass wastes little. The price: the in-batch
negatives of an anchor then have about its length, a different negative distribution from
the paper's random batches (``bucket_batches`` None, 0 or 1, the recipe's default).
"""

import random

from torch.utils.data import Sampler

from rewire_lobes.errors import OptionError


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
    bucket_batches : int or None
        Batches per length-sorted bucket; ``None``, 0 or 1 mean plain random batches.
    seed : int

    Example
    -------
    >>> sampler = LengthBucketBatchSampler([5, 1, 4, 2, 3, 6], batch_size=2, seed=0)
    >>> batches = list(sampler)
    >>> len(batches), sorted(i for b in batches for i in b), sampler.bucketed
    (3, [0, 1, 2, 3, 4, 5], False)
    """

    def __init__(self, lengths, batch_size, bucket_batches=None, seed=0):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise OptionError(
                f"--batch_size must be a positive whole number of pairs, got {batch_size!r}"
            )
        if len(lengths) < batch_size:
            raise OptionError(
                f"{len(lengths)} utterances cannot fill one batch of --batch_size {batch_size}: "
                "pass a smaller --batch_size, or more data (--data_folder, --max_utterances)"
            )
        if bucket_batches is not None and (isinstance(bucket_batches, bool)
                                           or not isinstance(bucket_batches, (int, float))
                                           or int(bucket_batches) != bucket_batches
                                           or bucket_batches < 0):
            raise OptionError(
                f"--bucket_batches must be null, 0 (random batches) or a positive number of "
                f"batches per length bucket, got {bucket_batches!r}"
            )
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.bucket_batches = max(1, int(bucket_batches or 1))
        self.seed = seed
        self.epoch = 0

    @property
    def bucketed(self):
        """Whether batches are drawn from length-sorted buckets (else: random batches)."""
        return self.bucket_batches > 1

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
        if not self.bucketed:
            return iter(
                order[i : i + self.batch_size] for i in range(0, usable, self.batch_size)
            )
        bucket = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, usable, bucket):
            members = sorted(order[start : start + bucket], key=lambda i: self.lengths[i])
            batches.extend(
                members[i : i + self.batch_size] for i in range(0, len(members), self.batch_size)
            )
        rng.shuffle(batches)
        return iter(batches)
