"""TimedLoader: the loop's time split into waiting for a batch and using it."""

import pytest

from rewire_lobes.runs.loader_wait import TimedLoader


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class SlowLoader:
    """Each batch takes ``fetch_s`` of the fake clock to arrive."""

    def __init__(self, clock, batches, fetch_s):
        self.clock, self.batches, self.fetch_s = clock, batches, fetch_s
        self.batch_sampler = "the sampler"

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.clock.now += self.fetch_s
            yield batch


def test_wait_and_busy_time_are_split_and_accumulate_over_epochs():
    clock = FakeClock()
    timed = TimedLoader(SlowLoader(clock, [1, 2, 3, 4], fetch_s=1.0), clock=clock)
    for _ in timed:
        clock.now += 3.0  # the update
    assert (timed.wait_s, timed.busy_s, timed.batches) == (4.0, 12.0, 4)
    assert timed.wait_share() == pytest.approx(0.25)

    for batch in timed:  # a second epoch, stopped early (an update limit)
        clock.now += 1.0
        if batch == 2:
            break
    timed.book_busy()
    assert (timed.wait_s, timed.busy_s, timed.batches) == (6.0, 14.0, 6)
    timed.book_busy()  # nothing pending: nothing counted twice
    assert timed.summary() == {"wait_s": 6.0, "busy_s": 14.0, "batches": 6, "wait_share": 0.3}


def test_the_wrapped_loader_still_answers_for_itself():
    clock = FakeClock()
    timed = TimedLoader(SlowLoader(clock, [1, 2], fetch_s=0.0), clock=clock)
    assert len(timed) == 2 and timed.batch_sampler == "the sampler"
    assert timed.wait_share() == 0.0, "no batch yet"
    with pytest.raises(AttributeError):
        timed.no_such_attribute
