"""The step-based schedule: rounds, the endless sampler, best-step bookkeeping."""

import math
from collections import Counter

import pytest

from rewire_lobes.downstream.schedule import EvalRounds, RunHistory, StepSampler, paper_step_budget


def rounds(sampler, first, last):
    out = []
    for epoch in range(first, last + 1):
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


def test_rounds_cover_max_steps():
    assert EvalRounds(600, 100).limit == 6
    assert EvalRounds(650, 100).limit == 7  # the last round is cut by optimizer_step_limit
    assert EvalRounds(5, 500).limit == 1
    with pytest.raises(ValueError):
        EvalRounds(0, 100)


def test_uniform_stream_visits_every_item_once_per_pass():
    sampler = StepSampler(7, samples_per_round=3, seed=1)
    stream = sum(rounds(sampler, 1, 7), [])  # 21 draws = 3 passes over 7 items
    for p in range(3):
        assert sorted(stream[7 * p: 7 * (p + 1)]) == list(range(7))
    assert stream[:7] != stream[7:14]  # each pass is shuffled anew


def test_round_is_longer_than_the_data():
    """At 1 % a round holds many passes over the few training items."""
    sampler = StepSampler(3, samples_per_round=32 * 4, seed=0)
    sampler.set_epoch(1)
    assert sorted(Counter(sampler).values()) == [42, 43, 43]


def test_rounds_are_reproducible_for_resume():
    a, b = StepSampler(10, 4, seed=5), StepSampler(10, 4, seed=5)
    assert rounds(a, 1, 5)[3:] == rounds(b, 4, 5)
    assert rounds(StepSampler(10, 4, seed=6), 1, 1) != rounds(a, 1, 1)


def test_weighted_sampler_balances_classes():
    labels = ["big"] * 900 + ["small"] * 100
    counts = Counter(labels)
    weights = [len(labels) / counts[label] for label in labels]
    sampler = StepSampler(len(labels), samples_per_round=20000, seed=0, weights=weights)
    sampler.set_epoch(1)
    drawn = Counter(labels[i] for i in sampler)
    assert abs(drawn["small"] / 20000 - 0.5) < 0.02


def test_history_best_is_earliest_of_ties_and_direction_aware():
    history = RunHistory()
    for step, value in [(100, 50.0), (200, 70.0), (300, 70.0), (400, 60.0)]:
        history.add(step, value, "max")
    assert (history.best_step, history.best_value) == (200, 70.0)
    low = RunHistory()
    for step, value in [(1, 30.0), (2, float("nan")), (3, 20.0), (4, 25.0)]:
        low.add(step, value, "min")
    assert (low.best_step, low.best_value) == (3, 20.0)
    restored = RunHistory()
    restored.load_state(history.state())
    assert restored.dev_curve == [[100, 50.0], [200, 70.0], [300, 70.0], [400, 60.0]]


def test_first_value_nan_then_real():
    history = RunHistory()
    history.add(1, float("nan"), "max")
    history.add(2, 10.0, "max")
    assert history.best_step == 2 and not math.isnan(history.best_value)


def test_paper_budgets():
    assert paper_step_budget("KS", 0.01) == 20_000
    assert paper_step_budget("KS", 0.05) == 50_000
    assert paper_step_budget("IC", 0.05) == 20_000
    assert paper_step_budget("IC", 0.1) == 50_000
    assert paper_step_budget("IC", 1.0) == 200_000
    assert paper_step_budget("IC", 0.2) is None


def test_tensorboard_is_optional(tmp_path):
    from rewire_lobes.downstream.core import make_tensorboard_writer

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"pip install -e '\.\[tensorboard\]'"):
            make_tensorboard_writer(tmp_path)
    else:
        make_tensorboard_writer(tmp_path).close()


def test_positions_number_every_draw_of_the_run_once():
    sampler = StepSampler(3, samples_per_round=4, seed=2, weights=[1.0, 1.0, 1.0],
                          with_positions=True)
    keyed = rounds(sampler, 1, 3)
    plain = rounds(StepSampler(3, samples_per_round=4, seed=2, weights=[1.0, 1.0, 1.0]), 1, 3)
    assert [[index for index, _ in r] for r in keyed] == plain  # the same items
    assert [draw for r in keyed for _, draw in r] == list(range(12))  # one position each
