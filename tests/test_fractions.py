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


# ------------------------------------------------------------------------------ proportional quota


def librispeech_like_counts(speakers=251, utterances=28_539):
    """``speakers`` labels of uneven sizes (about 40 to 180) summing to ``utterances``."""
    sizes = [40 + (37 * i) % 141 for i in range(speakers)]
    step = 1 if sum(sizes) < utterances else -1
    i = 0
    while sum(sizes) != utterances:
        sizes[i % speakers] += step
        i += 1
    return {f"spk{i:03d}": n for i, n in enumerate(sizes)}


TRAIN_CLEAN_100 = librispeech_like_counts()
FRACTIONS = (0.001, 0.01, 0.05, 0.1, 0.37, 0.5, 0.99, 1.0)


def proportional(rows, fraction, seed, **kwargs):
    return subsample_rows(rows, fraction, seed, quota="proportional", **kwargs)


def test_proportional_keeps_285_of_train_clean_100_at_one_percent():
    rows = make_rows(TRAIN_CLEAN_100)
    assert len(rows) == 28_539 and len(TRAIN_CLEAN_100) == 251
    kept = Counter(r["label"] for r in proportional(rows, 0.01, seed=0))
    assert sum(kept.values()) == 285
    assert all(abs(kept[label] - 0.01 * n) < 1 for label, n in TRAIN_CLEAN_100.items())
    ceil_total = sum(math.ceil(0.01 * n) for n in TRAIN_CLEAN_100.values())
    assert len(subsample_rows(rows, 0.01, seed=0)) == ceil_total > 1.3 * 285, "one or two each"


@pytest.mark.parametrize("counts", [COUNTS, TRAIN_CLEAN_100, {"a": 7, "b": 3, "c": 1000}],
                         ids=["classes", "speakers", "skewed"])
def test_proportional_is_nested_exact_in_total_and_within_one_of_each_share(counts):
    rows = make_rows(counts)
    total = sum(counts.values())
    for seed in (0, 1, 1986):
        previous = set()
        for fraction in FRACTIONS:
            subset = proportional(rows, fraction, seed)
            ids = {r["ID"] for r in subset}
            assert previous <= ids, (seed, fraction)
            previous = ids
            target = max(1, math.floor(fraction * total + 0.5))
            assert len(ids) == target
            kept = Counter(r["label"] for r in subset)
            for label, n in counts.items():
                assert abs(kept[label] - target * n / total) < 1, (seed, fraction, label)
                if counts is TRAIN_CLEAN_100:
                    assert abs(kept[label] - fraction * n) < 1
        assert previous == {r["ID"] for r in rows}


def test_proportional_keeps_a_prefix_of_each_labels_permutation():
    """The same per-label permutation as ``ceil``: a label's kept rows are what ``ceil``
    keeps of that label alone at the fraction giving the same count."""
    rows = make_rows(TRAIN_CLEAN_100)
    subset = proportional(rows, 0.05, seed=4)
    for label in ("spk000", "spk117", "spk250"):
        mine = {r["ID"] for r in subset if r["label"] == label}
        alone = [r for r in rows if r["label"] == label]
        fraction = (len(mine) - 0.5) / len(alone)
        assert mine == {r["ID"] for r in subsample_rows(alone, fraction, seed=4)}


def test_proportional_is_seeded_independent_of_row_order_and_keeps_groups_whole():
    rows = make_rows(TRAIN_CLEAN_100)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    first = {r["ID"] for r in proportional(rows, 0.01, seed=7)}
    assert first == {r["ID"] for r in proportional(shuffled, 0.01, seed=7)}
    assert first != {r["ID"] for r in proportional(rows, 0.01, seed=8)}

    grouped = make_rows({"_silence_": 6, "yes": 50, "no": 44}, group_size=10)
    kept = proportional(grouped, 0.1, seed=0, group_key="group")
    per_group = Counter(r["group"] for r in kept)
    assert set(per_group.values()) == {10} and len(per_group) == 10


def test_an_unknown_quota_is_an_option_error():
    from rewire_lobes.errors import OptionError

    with pytest.raises(OptionError, match="fraction_quota must be one of ceil, proportional"):
        subsample_rows(make_rows({"a": 3}), 0.5, seed=0, quota="floor")


def test_dataio_prepare_reads_the_quota_from_hparams(tmp_path):
    import json

    from rewire_lobes.data.manifests import write_manifest
    from rewire_lobes.downstream.dataio import dataio_prepare

    counts = {"s1": 30, "s2": 25, "s3": 45}  # ceil at 1 %: one each; proportional: one in all
    rows = [{"ID": f"{spk}-{i}", "duration": "1.0", "wav": f"/nowhere/{spk}-{i}.wav",
             "start": "", "stop": "", "spk": spk, "label": "x"}
            for spk, n in counts.items() for i in range(n)]
    for name in ("train", "dev", "test"):
        write_manifest(tmp_path / f"{name}.csv", rows)
    (tmp_path / "labels.json").write_text(json.dumps({"label": ["x"]}))
    hparams = {"fraction": 0.01, "seed": 0, "manifest_folder": str(tmp_path),
               "output_folder": str(tmp_path), "stratify_column": "spk", "group_column": None,
               "label_columns": ["label"], "gain_db": 0.0}
    assert len(dataio_prepare(hparams)["train"]) == 3
    assert len(dataio_prepare({**hparams, "fraction_quota": "proportional"})["train"]) == 1
    assert len(dataio_prepare({**hparams, "fraction": 0.5,
                               "fraction_quota": "proportional"})["train"]) == 50
