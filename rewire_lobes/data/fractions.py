"""Seeded, stratified, nested subsets of a training set: the paper's 1 / 5 / 10 / 100 %.

The rule, for a fraction ``f`` and a seed:

1. items are grouped (a group is the unit that is kept or dropped together: one row, or
   all the crops of one noise file), and each group carries one label;
2. per label, the groups are sorted by name and shuffled with a generator seeded by
   ``(seed, label)``;
3. the first ``ceil(f * n_label)`` groups of each label are kept.

Because the permutation does not depend on ``f`` and ``ceil`` is monotonic, the 1 %
subset is contained in the 5 % subset, which is contained in the 10 % subset (same seed).
Every label with at least one group keeps at least one. Dev and test sets are never
subsampled. The input order of the rows does not matter.
"""

import hashlib
import math
import random
from collections import defaultdict

from rewire_lobes.errors import UserError


class FractionError(UserError, ValueError):
    """An invalid ``--fraction``."""


def check_fraction(fraction):
    """``fraction`` as a float in (0, 1]; anything else raises :class:`FractionError`.

    Example
    -------
    >>> check_fraction("0.05")
    0.05
    >>> check_fraction(5)
    Traceback (most recent call last):
     ...
    rewire_lobes.data.fractions.FractionError: --fraction must be in (0, 1] (a share of the training labels, e.g. 0.01 for 1 %), got 5
    """
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = float("nan")
    if not (0.0 < value <= 1.0):  # also rejects NaN
        raise FractionError(
            "--fraction must be in (0, 1] (a share of the training labels, e.g. 0.01 for 1 %), "
            f"got {fraction}"
        )
    return value


def _label_seed(seed, label):
    """A seed for one label's permutation, stable across Python runs (no ``hash()``)."""
    digest = hashlib.sha256(f"{seed}\0{label}".encode()).hexdigest()
    return int(digest[:16], 16)


def select_groups(group_labels, fraction, seed):
    """The kept groups, as a set, from a ``{group: label}`` mapping.

    Example
    -------
    >>> labels = {f"u{i}": "a" if i < 80 else "b" for i in range(100)}
    >>> small, large = select_groups(labels, 0.05, 1), select_groups(labels, 0.5, 1)
    >>> len(small), small <= large, sum(labels[g] == "b" for g in small)
    (5, True, 1)
    """
    fraction = check_fraction(fraction)
    by_label = defaultdict(list)
    for group, label in group_labels.items():
        by_label[label].append(group)
    kept = set()
    for label, groups in by_label.items():
        groups = sorted(groups)
        random.Random(_label_seed(seed, label)).shuffle(groups)
        kept.update(groups[: math.ceil(fraction * len(groups))])
    return kept


def subsample_rows(rows, fraction, seed, label_key="label", group_key=None):
    """The rows of a training manifest that the ``fraction`` subset keeps, in input order.

    Arguments
    ---------
    rows : list of dict
        Manifest rows; each needs an ``ID`` and ``label_key``.
    fraction : float
        Share of the groups of each label to keep, in (0, 1].
    seed : int
        Seeds the per-label permutations.
    label_key : str
        The column to stratify on.
    group_key : str, optional
        Rows with the same value here are kept or dropped together (and must share a
        label). ``None``: each row is its own group.
    """
    group_labels = {}
    for row in rows:
        group = row[group_key] if group_key else row["ID"]
        label = row[label_key]
        if group_labels.setdefault(group, label) != label:
            raise ValueError(
                f"group '{group}' mixes labels '{group_labels[group]}' and '{label}'"
            )
    kept = select_groups(group_labels, fraction, seed)
    return [row for row in rows if (row[group_key] if group_key else row["ID"]) in kept]

