"""Frame distances and batched subsequence DTW, as SUPERB's QbE matches a query to documents.

s3prl (``superb_protocol.md`` §6) builds a query-frames × document-frames distance
matrix, rescales each query frame's row to [0, 1] and runs dtw-python with the
``asymmetric`` step pattern, ``open_begin`` and ``open_end``: the whole query aligns with
any span of the document, each query frame to one document frame, moving 0, 1 or 2
document frames per query frame. With ``D`` the distance matrix the accumulated cost is

    g[0, j] = D[0, j]
    g[i, j] = D[i, j] + min(g[i-1, j], g[i-1, j-1], g[i-1, j-2])     (out of range: +inf)

and the match cost is ``min_j g[N-1, j] / N`` for a query of ``N`` frames (dtw-python's
``normalizedDistance`` for this pattern). Row ``i`` depends on row ``i-1`` alone, so
:func:`subsequence_dtw` runs the recursion once per query frame over every document
frame of a whole batch of documents at once. Shorter documents are padded with +inf
distances: a step only moves right (to ``j`` from ``j``, ``j-1`` or ``j-2``), so padded
columns, which lie right of every valid one, can never feed a valid column, and their
own cost stays +inf.
"""

import torch
import torch.nn.functional as F

from rewire_lobes.errors import OptionError

# Guards against zero vectors (cosine) and empty ranges (min-max), as s3prl's 1e-9 clamps.
EPSILON = 1e-9
DISTANCES = ("cosine_exp", "cosine", "cosine_neg_log", "cityblock", "euclidean")


def check_distance(method):
    """``method`` if it is one of :data:`DISTANCES`, else an :class:`OptionError`."""
    if method not in DISTANCES:
        raise OptionError(f"--dist_method {method!r}: use one of {', '.join(DISTANCES)}")
    return method


COSINE_FAMILY = ("cosine_exp", "cosine", "cosine_neg_log")


def frame_distances(query, documents, method="cosine_exp"):
    """Distances between every query frame and every frame of a batch of documents.

    Arguments
    ---------
    query : torch.Tensor
        ``[N, D]`` query frames.
    documents : torch.Tensor or PaddedDocuments
        ``[B, M, D]`` document frames (padded frames may hold anything: they are masked
        later), or a :class:`PaddedDocuments` batch, whose unit-norm frames are reused.
    method : str
        ``cosine_exp`` (s3prl's default: ``exp(d) - 1`` of the cosine distance ``d``),
        ``cosine`` (``d = 1 - cos``), ``cosine_neg_log`` (``-log(1 - d)``, with ``1 - d``
        clamped at 1e-9 so that opposite frames cost a large finite value instead of
        NaN), ``cityblock`` (L1) or ``euclidean`` (L2).

    Returns
    -------
    torch.Tensor : ``[B, N, M]``, rows the query frames.

    Example
    -------
    >>> query = torch.tensor([[1.0, 0.0]])
    >>> docs = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    >>> frame_distances(query, docs, "cosine").tolist()
    [[[0.0, 1.0]]]
    """
    check_distance(method)
    if not isinstance(documents, PaddedDocuments):
        documents = PaddedDocuments.from_padded(documents, None, method)
    if method not in COSINE_FAMILY:
        p = 1.0 if method == "cityblock" else 2.0
        frames = documents.frames
        return torch.cdist(query.unsqueeze(0).expand(frames.shape[0], -1, -1), frames, p=p)
    unit_query = F.normalize(query, dim=-1, eps=EPSILON)
    # [N, D] x [B, D, M]: the result is contiguous [B, N, M], rows the query frames.
    cosine = torch.matmul(unit_query, documents.unit.transpose(1, 2))
    if method == "cosine":
        return 1.0 - cosine
    if method == "cosine_exp":
        return torch.exp(1.0 - cosine) - 1.0
    return -torch.log(cosine.clamp_min(EPSILON))


class PaddedDocuments:
    """Documents padded into one batch, prepared once for every query matched against it.

    Arguments
    ---------
    frames : torch.Tensor
        ``[B, M, D]``, each document's frames first, then padding.
    lengths : torch.Tensor
        ``[B]`` valid frames per document.
    method : str
        The distance: for the cosine ones, the unit-norm frames are computed here.

    Example
    -------
    >>> batch = PaddedDocuments.pad([torch.ones(3, 2), torch.ones(1, 2)], "cosine")
    >>> tuple(batch.frames.shape), batch.lengths.tolist()
    ((2, 3, 2), [3, 1])
    """

    def __init__(self, frames, lengths, method="cosine_exp"):
        self.frames = frames
        self.lengths = torch.as_tensor(lengths, device=frames.device)
        self.unit = (F.normalize(frames, dim=-1, eps=EPSILON) if method in COSINE_FAMILY
                     else None)

    @classmethod
    def pad(cls, documents, method="cosine_exp"):
        """A batch of ``[M_b, D]`` documents, zero-padded to the longest."""
        lengths = [doc.shape[0] for doc in documents]
        frames = documents[0].new_zeros(len(documents), max(lengths), documents[0].shape[1])
        for b, doc in enumerate(documents):
            frames[b, : doc.shape[0]] = doc
        return cls(frames, lengths, method)

    @classmethod
    def from_padded(cls, frames, lengths=None, method="cosine_exp"):
        """A batch already padded; ``lengths`` None: every frame is valid."""
        if lengths is None:
            lengths = [frames.shape[1]] * frames.shape[0]
        return cls(frames, lengths, method)

    def __len__(self):
        return self.frames.shape[0]


def valid_columns(lengths, width, device=None):
    """``[B, width]`` bool mask: True for the first ``lengths[b]`` columns of row ``b``."""
    lengths = torch.as_tensor(lengths, device=device)
    return torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def minmax_rows(distances, lengths=None):
    """Rescales each query frame's row to [0, 1] over the document's valid frames.

    ``(d - row min) / max(row max - row min, 1e-9)``, the min and max taken over the
    first ``lengths[b]`` columns of document ``b``; padded columns come back +inf.

    Arguments
    ---------
    distances : torch.Tensor
        ``[B, N, M]`` from :func:`frame_distances`.
    lengths : sequence of int, optional
        Valid frames of each document; None: all ``M``.

    Example
    -------
    >>> d = torch.tensor([[[1.0, 3.0, 2.0, 9.0]]])
    >>> minmax_rows(d, [3]).tolist()
    [[[0.0, 1.0, 0.5, inf]]]
    """
    if lengths is None:
        lengths = [distances.shape[-1]] * distances.shape[0]
    valid = valid_columns(lengths, distances.shape[-1], distances.device).unsqueeze(1)
    low = distances.masked_fill(~valid, float("inf")).amin(dim=-1, keepdim=True)
    high = distances.masked_fill(~valid, float("-inf")).amax(dim=-1, keepdim=True)
    scaled = (distances - low) / (high - low).clamp_min(EPSILON)
    return scaled.masked_fill(~valid, float("inf"))


def subsequence_dtw(distances, lengths=None):
    """Normalised cost of the best open-begin, open-end asymmetric alignment per document.

    Arguments
    ---------
    distances : torch.Tensor
        ``[B, N, M]``: a query of ``N`` frames against ``B`` documents.
    lengths : sequence of int, optional
        Valid frames of each document (each >= 1); the columns past it are ignored.
        None: all ``M``.

    Returns
    -------
    torch.Tensor : ``[B]`` costs, ``min_j g[N-1, j] / N`` (see the module docstring),
    in the dtype of ``distances``.

    Example
    -------
    >>> d = torch.tensor([[[5.0, 1.0, 5.0, 5.0],
    ...                    [5.0, 5.0, 5.0, 1.0]]])
    >>> subsequence_dtw(d).tolist()  # frame 1, then a 2-frame skip to frame 3
    [1.0]
    """
    batch, rows, width = distances.shape
    if rows == 0 or width == 0:
        raise ValueError(f"subsequence_dtw needs a query and documents with frames, got "
                         f"{tuple(distances.shape)}")
    if lengths is not None:
        valid = valid_columns(lengths, width, distances.device).unsqueeze(1)
        distances = distances.masked_fill(~valid, float("inf"))
    cost = distances[:, 0].clone()
    best = torch.empty_like(cost)
    for i in range(1, rows):
        # best[j] = min(cost[j], cost[j-1], cost[j-2]); the first columns lack the diagonals.
        best.copy_(cost)
        torch.minimum(best[:, 1:], cost[:, :-1], out=best[:, 1:])
        torch.minimum(best[:, 2:], cost[:, :-2], out=best[:, 2:])
        torch.add(best, distances[:, i], out=cost)
    return cost.amin(dim=-1) / rows


def match_costs(query, documents, lengths=None, method="cosine_exp", minmax=True):
    """DTW costs of one query against a padded batch of documents (s3prl's ``match``).

    Arguments
    ---------
    query : torch.Tensor
        ``[N, D]``.
    documents : PaddedDocuments or torch.Tensor
        The batch; a ``[B, M, D]`` tensor needs ``lengths`` (None: no padding).
    lengths : sequence of int, optional
        Valid frames per document of a tensor batch.
    method : str
        See :func:`frame_distances`.
    minmax : bool
        Rescale each query frame's row to [0, 1] first (s3prl's ``minmax_norm``).

    Returns
    -------
    torch.Tensor : ``[B]`` costs; the score is their negative.
    """
    if not isinstance(documents, PaddedDocuments):
        documents = PaddedDocuments.from_padded(documents, lengths, method)
    distances = frame_distances(query, documents, method)
    if minmax:
        # minmax_rows leaves the padded columns +inf already.
        return subsequence_dtw(minmax_rows(distances, documents.lengths))
    return subsequence_dtw(distances, documents.lengths)


__all__ = [
    "DISTANCES",
    "PaddedDocuments",
    "check_distance",
    "frame_distances",
    "valid_columns",
    "minmax_rows",
    "subsequence_dtw",
    "match_costs",
]
