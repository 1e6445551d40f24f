"""Seeded, stratified, nested subsets of a training set: the paper's 1 / 5 / 10 / 100 %.

The rule, for a fraction ``f`` and a seed:

1. items are grouped (a group is the unit that is kept or dropped together: one row, or
   all the crops of one noise file), and each group carries one label;
2. per label, the groups are sorted by name and shuffled with a generator seeded by
   ``(seed, label)``;
3. the first ``c_label`` groups of each label's permutation are kept, where ``c_label`` is
   given by the quota:

   * ``ceil`` (the default): ``ceil(f * n_label)``, so every label with at least one group
     keeps at least one (KS, IC: classes);
   * ``proportional``: ``round(f * N)`` groups in all (at least one; N groups in all, .5
     rounded up), shared over the labels in proportion to their sizes by Balinski and
     Young's quota method (:func:`proportional_counts`): each label keeps
     ``floor`` or ``ceil`` of its exact share ``round(f * N) * n_label / N``, and a small
     label may keep none (ASR: 1 % of train-clean-100's 28,539 utterances of 251
     speakers is 285 utterances, where ``ceil`` keeps one or, mostly, two per speaker).

Because the permutation does not depend on ``f`` and both quotas only grow with ``f``,
the 1 % subset is contained in the 5 % subset, which is contained in the 10 % subset
(same seed). Dev and test sets are never subsampled. The input order of the rows does not
matter.
"""

import hashlib
import math
import random
from collections import defaultdict

import numpy as np

from rewire_lobes.errors import OptionError, UserError

QUOTAS = ("ceil", "proportional")


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


def check_quota(quota):
    """``quota`` if it is one of :data:`QUOTAS`; anything else raises :class:`OptionError`."""
    if quota not in QUOTAS:
        raise OptionError(f"fraction_quota must be one of {', '.join(QUOTAS)}, got {quota!r}")
    return quota


def select_groups(group_labels, fraction, seed, quota="ceil"):
    """The kept groups, as a set, from a ``{group: label}`` mapping.

    Example
    -------
    >>> labels = {f"u{i}": "a" if i < 80 else "b" for i in range(100)}
    >>> small, large = select_groups(labels, 0.05, 1), select_groups(labels, 0.5, 1)
    >>> len(small), small <= large, sum(labels[g] == "b" for g in small)
    (5, True, 1)
    >>> len(select_groups(labels, 0.05, 1, quota="proportional"))
    5
    """
    fraction = check_fraction(fraction)
    check_quota(quota)
    by_label = defaultdict(list)
    for group, label in group_labels.items():
        by_label[label].append(group)
    if quota == "ceil":
        counts = {label: math.ceil(fraction * len(groups)) for label, groups in by_label.items()}
    else:
        counts = proportional_counts(
            {label: len(groups) for label, groups in by_label.items()}, fraction, seed)
    kept = set()
    for label, groups in by_label.items():
        groups = sorted(groups)
        random.Random(_label_seed(seed, label)).shuffle(groups)
        kept.update(groups[: counts[label]])
    return kept


def proportional_counts(sizes, fraction, seed):
    """Groups kept per label by the ``proportional`` quota, from ``{label: groups}``.

    ``round(fraction * N)`` groups (at least one) are handed out one at a time, as
    Balinski and Young's quota method hands out seats: the next one goes to the label with
    the most groups per kept group, ``n / (c + 1)``, among the labels still below their
    exact share of the new total ``h * n / N``; equal claims are settled by an order of the
    labels drawn with ``seed``. So each label keeps ``floor`` or ``ceil`` of its exact
    share at every total, and a total's counts never shrink at a larger one: the subsets
    are nested in ``fraction``.

    Example
    -------
    >>> proportional_counts({"a": 50, "b": 30, "c": 20}, 0.1, seed=0)
    {'a': 5, 'b': 3, 'c': 2}
    >>> sum(proportional_counts({f"s{i}": 3 for i in range(10)}, 0.1, seed=0).values())
    3
    """
    total = sum(sizes.values())
    target = max(1, math.floor(fraction * total + 0.5))
    if target >= total:
        return dict(sizes)
    # The labels in a seeded order: np.argmax takes the first of equal claims.
    labels = sorted(sizes, key=lambda label: (_label_seed(seed, f"{label}\0quota"), str(label)))
    size = np.array([sizes[label] for label in labels], dtype=np.int64)
    kept = np.zeros(len(labels), dtype=np.int64)
    for handed in range(1, target + 1):
        below_share = kept * total < handed * size  # kept + 1 <= ceil(handed * size / total)
        claim = np.where(below_share, size / (kept + 1), -1.0)
        kept[int(np.argmax(claim))] += 1
    counts = dict(zip(labels, kept.tolist()))
    return {label: counts[label] for label in sizes}


def subsample_rows(rows, fraction, seed, label_key="label", group_key=None, quota="ceil"):
    """The rows of a training manifest that the ``fraction`` subset keeps, in input order.

    Arguments
    ---------
    rows : list of dict
        Manifest rows; each needs an ``ID`` and ``label_key``.
    fraction : float
        Share of the groups of each label to keep, in (0, 1].
    seed : int
        Seeds the per-label permutations.
    label_key : str or None
        The column to stratify on; None: no stratification (one stratum, as for
        diarization mixtures).
    group_key : str, optional
        Rows with the same value here are kept or dropped together (and must share a
        label). ``None``: each row is its own group.
    quota : str
        ``ceil`` (``ceil(f * n)`` groups per label) or ``proportional`` (``round(f * N)``
        groups in all, shared in proportion to the labels' sizes); see the module docstring.
    """
    group_labels = {}
    for row in rows:
        group = row[group_key] if group_key else row["ID"]
        label = row[label_key] if label_key else ""
        if group_labels.setdefault(group, label) != label:
            raise ValueError(
                f"group '{group}' mixes labels '{group_labels[group]}' and '{label}'"
            )
    kept = select_groups(group_labels, fraction, seed, quota)
    return [row for row in rows if (row[group_key] if group_key else row["ID"]) in kept]

