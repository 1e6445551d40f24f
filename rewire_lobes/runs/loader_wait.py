"""How long a training loop waits for its data: the share of the loop's time spent in the
loader's ``next()``, which is time the accelerator idles for want of audio.

:class:`TimedLoader` wraps a DataLoader (SpeechBrain's saveable one too: iterating the
wrapper iterates it, so intra-epoch resumption is unchanged) and splits the loop's wall time
into *waiting* (inside ``next()``, worker start-up included) and *busy* (between a batch's
delivery and the next request: forward, backward, the optimizer, logging, checkpoints).
"""

import time


class TimedLoader:
    """Iterates ``loader``, counting the seconds spent waiting for each batch.

    Example
    -------
    >>> loader = TimedLoader([1, 2, 3])
    >>> [batch * 10 for batch in loader], loader.batches, len(loader)
    ([10, 20, 30], 3, 3)
    >>> 0.0 <= loader.wait_share() <= 1.0
    True
    """

    def __init__(self, loader, clock=time.perf_counter):
        self.loader = loader
        self.clock = clock
        self.wait_s = 0.0
        self.busy_s = 0.0
        self.batches = 0
        self._delivered_at = None

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        # The wrapped loader's attributes (batch_sampler, dataset, ...), for SpeechBrain.
        loader = self.__dict__.get("loader")
        if loader is None:
            raise AttributeError(name)
        return getattr(loader, name)

    def __iter__(self):
        iterator = iter(self.loader)
        while True:
            requested = self.clock()
            self.book_busy(requested)
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self._delivered_at = self.clock()
            self.wait_s += self._delivered_at - requested
            self.batches += 1
            yield batch

    def book_busy(self, now=None):
        """Counts the time since the last delivery as busy (call it when the loop stops
        without asking for another batch, e.g. at the update limit)."""
        if self._delivered_at is not None:
            self.busy_s += (self.clock() if now is None else now) - self._delivered_at
            self._delivered_at = None

    def wait_share(self):
        """Waiting ÷ (waiting + busy); 0.0 before the first batch."""
        total = self.wait_s + self.busy_s
        return self.wait_s / total if total > 0 else 0.0

    def summary(self):
        """What a run records: seconds waiting and busy, batches, and the share."""
        return {"wait_s": round(self.wait_s, 3), "busy_s": round(self.busy_s, 3),
                "batches": self.batches, "wait_share": round(self.wait_share(), 4)}
