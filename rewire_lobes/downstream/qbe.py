"""SUPERB query-by-example on one hidden layer: normalise, match by DTW, z-normalise, score.

s3prl's ``quesst14_dtw`` expert (``superb_protocol.md`` §6), one layer and one split
(dev or eval queries against the shared documents) at a time:

1. features: the layer's frames, z-scored per dimension with the mean and std
   (unbiased, clamped at 1e-9) of all frames of the split's queries and of every
   document (:class:`FeatureStats`);
2. every query against every document: frame distances (``cosine_exp`` by default),
   each query frame's row min-max rescaled, subsequence DTW (``rewire_lobes.downstream.dtw``);
   the score is minus the normalised cost;
3. a query of fewer than ``min_query_frames`` (5) frames is not matched: score 0 for
   every document, as s3prl. A query longer than every document is not matched
   either (our rule: it means a swapped or wrong folder); both are counted;
4. each query's scores are z-normalised over the documents (population std, clamped
   at 1e-9).

Frames are read from a ``FrameCache`` one layer at a time through its memory map
(:class:`LayerFrames`), and the documents are held in memory in chunks of at most
``max_document_frames`` frames, so the real corpus's Large-model features never need to
fit in RAM; each chunk is matched against every query before the next is read.
"""

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from rewire_lobes.downstream.dtw import PaddedDocuments, check_distance, match_costs
from rewire_lobes.errors import OptionError

logger = logging.getLogger(__name__)

STD_FLOOR = 1e-9
SKIP_SHORT = "shorter_than_min_frames"
SKIP_LONG = "longer_than_every_document"


@dataclass(frozen=True)
class MatchSettings:
    """How queries are matched (s3prl's defaults) and how much work one call holds.

    ``batch_elements`` bounds one DTW call (documents × query frames × document frames
    of the padded batch), ``max_document_frames`` the documents held in memory at once;
    ``device`` is where the distances and the DTW run (the statistics stay on the CPU,
    in float64).
    """

    dist_method: str = "cosine_exp"
    minmax_norm: bool = True
    feature_normalization: bool = True
    min_query_frames: int = 5
    batch_elements: int = 1 << 22
    max_document_frames: int = 250_000
    device: str = "cpu"

    def __post_init__(self):
        check_distance(self.dist_method)

    def identity(self):
        """What changes the scores (the work sizes do not)."""
        return {"dist_method": self.dist_method, "minmax_norm": bool(self.minmax_norm),
                "feature_normalization": bool(self.feature_normalization),
                "min_query_frames": int(self.min_query_frames)}


class LayerFrames:
    """One hidden state of a loaded ``FrameFeatures``, read through its memory map.

    ``frames(item_id, layer)`` is a float32 ``[T, D]`` tensor: only that layer's values
    are read from disk, not the utterance's ``L+1`` states.

    Arguments
    ---------
    features : FrameFeatures
        ``FrameCache.load(...)``'s result.
    """

    def __init__(self, features):
        self.features = features

    @property
    def ids(self):
        return self.features.ids

    @property
    def num_states(self):
        return self.features.num_states

    def num_frames(self, item_id):
        return self.features.num_frames(item_id)

    def frames(self, item_id, layer):
        return self.features.frames(item_id, layer=layer)


class InMemoryFrames:
    """:class:`LayerFrames`' interface over in-memory ``{id: [T, L+1, D]}`` frames.

    For tests and benchmarks, which match features that no frame cache holds.

    Example
    -------
    >>> frames = InMemoryFrames({"q": torch.ones(4, 2, 3)})
    >>> frames.ids, frames.num_frames("q"), tuple(frames.frames("q", 1).shape)
    (['q'], 4, (4, 3))
    """

    def __init__(self, items):
        self.items = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in items.items()}

    @property
    def ids(self):
        return list(self.items)

    def num_frames(self, item_id):
        return self.items[item_id].shape[0]

    def frames(self, item_id, layer):
        return self.items[item_id][:, layer].clone()


class FeatureStats:
    """Per-dimension count, mean and sum of squared deviations, merged exactly (float64).

    Chan's pairwise update, so that adding an utterance at a time loses no precision
    even when a dimension's mean dwarfs its spread.

    Example
    -------
    >>> x = torch.randn(100, 3, dtype=torch.float64) * 5 + 1000
    >>> stats = FeatureStats()
    >>> for part in x.split(7):
    ...     _ = stats.add(part)
    >>> bool(torch.allclose(stats.std(), x.std(dim=0)))
    True
    """

    def __init__(self):
        self.count = 0
        self.mean = None
        self.m2 = None

    def add(self, frames):
        """Adds ``[T, D]`` frames."""
        frames = torch.as_tensor(frames, dtype=torch.float64)
        if frames.shape[0] == 0:
            return self
        other = FeatureStats()
        other.count = frames.shape[0]
        other.mean = frames.mean(dim=0)
        other.m2 = ((frames - other.mean) ** 2).sum(dim=0)
        return self.merge(other)

    def merge(self, other):
        """Adds another :class:`FeatureStats` in place; returns self."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean.clone(), other.m2.clone()
            return self
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.count = total
        return self

    def copy(self):
        return FeatureStats().merge(self)

    def std(self):
        """Unbiased (n - 1) standard deviation, as torch's default ``std``, floored at 1e-9."""
        if self.count < 2:
            return torch.full_like(self.mean, STD_FLOOR)
        return (self.m2 / (self.count - 1)).sqrt().clamp_min(STD_FLOOR)


def layer_statistics(frames, item_ids, layer):
    """:class:`FeatureStats` of every frame of ``item_ids`` at ``layer``."""
    stats = FeatureStats()
    for item_id in item_ids:
        stats.add(frames.frames(item_id, layer))
    return stats


@dataclass
class SplitMatch:
    """One layer's scores for one split: ``scores[q, d]`` z-normalised, in id order."""

    query_ids: list
    document_ids: list
    scores: np.ndarray
    skipped: dict = field(default_factory=dict)
    seconds: float = 0.0

    def score_rows(self):
        """``{query: {document: score}}`` for ``write_stdlist``."""
        return {q: dict(zip(self.document_ids, self.scores[i].tolist()))
                for i, q in enumerate(self.query_ids)}


def normalise_scores(scores):
    """Each row (query) z-normalised over its documents: ``(s - mean) / max(std, 1e-9)``.

    numpy's population std (ddof 0), as s3prl. A constant row (a query not matched)
    comes out all zeros.

    Example
    -------
    >>> normalise_scores(np.array([[1.0, 3.0], [0.0, 0.0]])).tolist()
    [[-1.0, 1.0], [0.0, 0.0]]
    """
    scores = np.asarray(scores, dtype=np.float64)
    mean = scores.mean(axis=1, keepdims=True)
    std = np.maximum(scores.std(axis=1, keepdims=True), STD_FLOOR)
    return (scores - mean) / std


def match_split(queries, query_ids, documents, document_ids, layer, settings,
                document_stats=None, progress=None):
    """Scores every query of a split against every document at one layer.

    Arguments
    ---------
    queries, documents : LayerFrames
        The cached frames of the split's queries and of the documents.
    query_ids, document_ids : list of str
        The items to match, in the order of the result.
    layer : int
        The hidden state (0 = the CNN/input of the first layer ... L = the output).
    settings : MatchSettings
        Distances, normalisations, work sizes.
    document_stats : FeatureStats, optional
        :func:`layer_statistics` of the documents at ``layer``, shared by dev and eval;
        computed when not given.
    progress : callable, optional
        Called with a message after each chunk of documents.

    Returns
    -------
    SplitMatch
    """
    start = time.time()
    if not document_ids:
        raise ValueError("match_split needs at least one document")
    doc_frames = {d: documents.num_frames(d) for d in document_ids}
    empty = [d for d, count in doc_frames.items() if count == 0]
    if empty:
        raise ValueError(f"documents {empty[:5]} have no frames (audio under 25 ms?)")
    longest = max(doc_frames.values())

    query_frames = {q: queries.frames(q, layer) for q in query_ids}
    skipped = {SKIP_SHORT: [], SKIP_LONG: []}
    for q, frames in query_frames.items():
        if frames.shape[0] < settings.min_query_frames:
            skipped[SKIP_SHORT].append(q)
        elif frames.shape[0] > longest:
            skipped[SKIP_LONG].append(q)
    not_matched = set(skipped[SKIP_SHORT]) | set(skipped[SKIP_LONG])

    device = torch.device(settings.device)
    mean = std = None
    if settings.feature_normalization:
        stats = (layer_statistics(documents, document_ids, layer) if document_stats is None
                 else document_stats.copy())
        for frames in query_frames.values():
            stats.add(frames)
        mean, std = stats.mean.float().to(device), stats.std().float().to(device)

    def normalise(frames):
        frames = frames.to(device)
        return frames if mean is None else (frames - mean) / std

    matched = {q: normalise(f) for q, f in query_frames.items() if q not in not_matched}
    scores = np.zeros((len(query_ids), len(document_ids)))
    column = {d: j for j, d in enumerate(document_ids)}
    row = {q: i for i, q in enumerate(query_ids)}
    # Sorted by length, so that a batch pads little.
    order = sorted(document_ids, key=lambda d: (doc_frames[d], column[d]))
    query_rows = max((f.shape[0] for f in matched.values()), default=1)
    for chunk in _chunks(order, doc_frames, settings.max_document_frames) if matched else ():
        batches = document_batches([normalise(documents.frames(d, layer)) for d in chunk],
                                    query_rows, settings)
        columns = [column[d] for d in chunk]
        for q, frames in matched.items():
            scores[row[q], columns] = -_costs(frames, batches, settings)
        if progress is not None:
            progress(f"layer {layer}: {len(chunk)} documents x {len(matched)} queries matched")
    for reason, ids in skipped.items():
        if ids:
            logger.warning("layer %d: %d queries not matched (%s): %s", layer, len(ids),
                           reason, ", ".join(ids[:10]))
    return SplitMatch(list(query_ids), list(document_ids), normalise_scores(scores),
                      skipped=skipped, seconds=time.time() - start)


def _chunks(order, frames, budget):
    """Consecutive runs of ``order`` holding at most ``budget`` frames (at least one item)."""
    chunk, total = [], 0
    for item in order:
        if chunk and total + frames[item] > budget:
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += frames[item]
    if chunk:
        yield chunk


def document_batches(loaded, query_rows, settings):
    """``PaddedDocuments`` batches of ``loaded`` (``[M, D]`` frames sorted by length), each
    holding at most ``settings.batch_elements`` distances for a query of ``query_rows``
    frames; prepared once for every query of a split."""
    batches, start = [], 0
    while start < len(loaded):
        stop = start + 1
        # Sorted ascending, so the last document of a batch is its longest.
        while (stop < len(loaded) and (stop - start + 1) * query_rows * loaded[stop].shape[0]
               <= settings.batch_elements):
            stop += 1
        batches.append(PaddedDocuments.pad(loaded[start:stop], settings.dist_method))
        start = stop
    return batches


@torch.no_grad()
def _costs(query, batches, settings):
    """DTW costs of one query against every batch, in document order."""
    costs = [match_costs(query, batch, method=settings.dist_method, minmax=settings.minmax_norm)
             for batch in batches]
    return torch.cat(costs).double().cpu().numpy()


# ---------------------------------------------------------------------- trial scopes
TRIAL_SCOPES = ("groundtruth", "english")


def trial_lists(scope, groundtruth, query_ids, document_ids):
    """``(queries, documents)`` scored by MTWV in ``scope``.

    ``groundtruth``: every query of the split's term list against every document of its
    ECF, unreported trials at the default score (the MediaEval scorer as SUPERB runs
    it, to our reading); ``english``: only the queries and documents that were matched.
    """
    if scope == "groundtruth":
        return list(groundtruth.queries), list(groundtruth.documents)
    if scope == "english":
        return list(query_ids), list(document_ids)
    raise OptionError(f"--mtwv_trials {scope!r}: use one of {', '.join(TRIAL_SCOPES)}")


__all__ = [
    "MatchSettings",
    "LayerFrames",
    "InMemoryFrames",
    "FeatureStats",
    "SplitMatch",
    "layer_statistics",
    "normalise_scores",
    "match_split",
    "document_batches",
    "trial_lists",
    "TRIAL_SCOPES",
    "SKIP_SHORT",
    "SKIP_LONG",
]
