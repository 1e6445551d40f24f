"""The isotropy of a set of vectors (Mu & Viswanath 2018), as the rewiring paper's §3.3.

For vectors ``V`` (the rows of an ``[N, D]`` matrix) and a unit direction ``m``, the
partition function ``Z(m) = sum_{v in V} exp(m^T v)`` is the same in every direction
when the vectors spread evenly around the origin. The isotropy score compares its
extremes over the eigenvectors ``M`` of ``V^T V``:

    IS(V) = min_{m in M} Z(m) / max_{m in M} Z(m)          (0 < IS <= 1, 1 = isotropic)

An eigenvector's sign is arbitrary (``eigh`` may return ``u`` or ``-u``) and ``Z(u)``
differs from ``Z(-u)`` whenever the vectors are not centred, so ``M`` holds both signs
of every eigenvector: the score then depends on ``V`` alone, and a set shifted away from
the origin, the anisotropy the score is meant to find, scores low in either case.

The paper reports scores down to 1e-300, where ``Z`` itself overflows (or the ratio
underflows) in float64: ``log Z(m)`` is computed as a log-sum-exp over the rows, in
float64, and the score is returned as its logarithm ``log min Z - log max Z <= 0``.

A command-line tool scores a saved ``[N, D]`` matrix::

    python utils/isotropy.py --npy vectors.npy
"""

import math
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from rewire_lobes.errors import UserError


class VectorsError(UserError, ValueError):
    """The vectors cannot be scored: not a finite ``[N, D]`` matrix of at least 2 rows."""


def checked_vectors(vectors, name="vectors"):
    """``vectors`` (numpy or torch, ``[N, D]``) as a float64 numpy array, or a VectorsError.

    Example
    -------
    >>> checked_vectors([[1, 2], [3, 4]]).dtype
    dtype('float64')
    """
    if hasattr(vectors, "detach"):  # a torch tensor, possibly on a GPU
        vectors = vectors.detach().cpu().double().numpy()
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim != 2:
        raise VectorsError(f"{name}: expected an [N, D] matrix, got shape {array.shape}")
    if array.shape[0] < 2 or array.shape[1] < 1:
        raise VectorsError(f"{name}: the isotropy of {array.shape[0]} vector(s) of "
                           f"dimension {array.shape[1]} is undefined; give at least 2 rows")
    if not np.isfinite(array).all():
        raise VectorsError(f"{name}: holds {int((~np.isfinite(array)).sum())} non-finite "
                           "values (NaN or inf)")
    return array


def log_partition(vectors, directions):
    """``log Z(m)`` for each column ``m`` of ``directions`` ``[D, K]``: ``[K]`` float64."""
    return logsumexp(vectors @ directions, axis=0)


def log_isotropy(vectors):
    """The natural log of IS(``vectors``): 0 for isotropic vectors, very negative otherwise.

    Arguments
    ---------
    vectors : numpy.ndarray or torch.Tensor
        ``[N, D]``, N >= 2, finite.

    Returns
    -------
    float
        ``log(min_m Z(m) / max_m Z(m))`` over both signs of the eigenvectors of ``V^T V``.

    Example
    -------
    >>> round(log_isotropy([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]), 12)
    0.0
    >>> log_isotropy([[10.0, 0.0], [10.0, 1.0]]) < -19
    True
    """
    vectors = checked_vectors(vectors)
    _, eigenvectors = np.linalg.eigh(vectors.T @ vectors)
    log_z = log_partition(vectors, np.concatenate([eigenvectors, -eigenvectors], axis=1))
    return float(log_z.min() - log_z.max())


def log10_isotropy(vectors):
    """``log10`` IS(``vectors``) (the paper's 1e-300 is -300); see :func:`log_isotropy`.

    Example
    -------
    >>> round(log10_isotropy([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]]), 12)
    0.0
    >>> round(log10_isotropy([[3.0, 0.0], [-3.0, 0.0]]), 3)  # nothing along the 2nd axis
    -1.003
    """
    return log_isotropy(vectors) / math.log(10.0)


def load_vectors(path):
    """The ``[N, D]`` matrix saved in ``path`` (``.npy``), checked; a VectorsError names it."""
    path = Path(path)
    if not path.is_file():
        raise VectorsError(f"{path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise VectorsError(f"{path}: not a readable .npy matrix ({err})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise VectorsError(f"{path}: holds {getattr(array, 'dtype', type(array).__name__)}, "
                           "not real numbers")
    return checked_vectors(array, name=str(path))
