"""--fraction subsets: bounds, nesting, stratification, seeding, groups."""

import math
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from rewire_lobes.data.fractions import FractionError, check_fraction, subsample_rows


def make_rows(counts, group_size=1):
    """Manifest-like rows: ``counts[label]`` groups of ``group_size`` rows each."""
    rows = []
    for label, n in counts.items():
        for g in range(n):
            for k in range(group_size):
                rows.append({"ID": f"{label}-{g}-{k}", "label": label, "group": f"{label}-{g}"})
    return rows


COUNTS = {"yes": 200, "no": 150, "_unknown_": 1000, "_silence_": 6, "rare": 1}


@pytest.mark.parametrize("value", [0.01, "0.05", 0.1, 1, 1.0, 1e-9])
def test_valid_fractions(value):
    assert check_fraction(value) == float(value)


@pytest.mark.parametrize("value", [0, 0.0, -0.1, 1.0001, 5, float("nan"), float("inf"), "abc", None])
def test_invalid_fraction_is_a_clear_error(value):
    with pytest.raises(FractionError, match=r"--fraction must be in \(0, 1\]"):
        check_fraction(value)
    with pytest.raises(FractionError):
        subsample_rows(make_rows({"a": 3}), value, seed=0)


def test_nested_across_fractions():
    rows = make_rows(COUNTS)
    for seed in (0, 1, 1986):
        subsets = [
            {r["ID"] for r in subsample_rows(rows, f, seed)} for f in (0.01, 0.05, 0.1, 0.5, 1.0)
        ]
        for small, large in zip(subsets, subsets[1:]):
            assert small < large or small == large
        assert subsets[-1] == {r["ID"] for r in rows}


def test_stratified_with_at_least_one_per_class():
    rows = make_rows(COUNTS)
    for fraction in (0.001, 0.01, 0.05, 0.3):
        kept = Counter(r["label"] for r in subsample_rows(rows, fraction, seed=3))
        assert kept == {label: math.ceil(fraction * n) for label, n in COUNTS.items()}
        assert all(kept[label] >= 1 for label in COUNTS)


def test_seeded_and_independent_of_row_order():
    rows = make_rows(COUNTS)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    first = {r["ID"] for r in subsample_rows(rows, 0.05, seed=7)}
    assert first == {r["ID"] for r in subsample_rows(shuffled, 0.05, seed=7)}
    assert first != {r["ID"] for r in subsample_rows(rows, 0.05, seed=8)}


def test_subset_keeps_input_order():
    rows = make_rows(COUNTS)
    kept = subsample_rows(rows, 0.2, seed=0)
    positions = [rows.index(r) for r in kept]
    assert positions == sorted(positions)


def test_groups_are_kept_or_dropped_whole():
    rows = make_rows({"_silence_": 6, "yes": 50}, group_size=10)
    kept = subsample_rows(rows, 0.01, seed=0, group_key="group")
    per_group = Counter(r["group"] for r in kept)
    assert set(per_group.values()) == {10}
    assert Counter(r["label"] for r in kept) == {"_silence_": 10, "yes": 10}


def test_group_with_two_labels_is_rejected():
    rows = [{"ID": "a", "label": "x", "group": "g"}, {"ID": "b", "label": "y", "group": "g"}]
    with pytest.raises(ValueError, match="mixes labels"):
        subsample_rows(rows, 0.5, seed=0, group_key="group")


def test_same_subset_in_every_process():
    """The permutation seed must not come from hash(), which Python salts per process."""
    code = (
        "from rewire_lobes.data.fractions import select_groups;"
        "print(sorted(select_groups({f'u{i}': 'ab'[i % 2] for i in range(200)}, 0.05, 1986)))"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(salt)}).stdout
        for salt in (1, 2)
    }
    assert len(outputs) == 1
