"""QbE's batched subsequence DTW against dtw-python (s3prl's), and its frame distances.

dtw-python is what s3prl calls (``asymmetric``, open begin and end, normalised
distance); scipy's ``cdist`` is what s3prl computes its distance matrices with.
"""

import numpy as np
import pytest
import torch
from dtw import dtw
from scipy.spatial.distance import cdist

from rewire_lobes.downstream.dtw import (
    frame_distances,
    match_costs,
    minmax_rows,
    subsequence_dtw,
)
from rewire_lobes.errors import OptionError


def reference_cost(matrix):
    """s3prl's call of dtw-python on one query x document distance matrix."""
    return dtw(x=matrix, step_pattern="asymmetric", open_begin=True, open_end=True,
               distance_only=False, keep_internals=False).normalizedDistance


@pytest.mark.parametrize("rows, cols", [(1, 1), (1, 6), (4, 7), (12, 40), (30, 9), (9, 3), (2, 1)])
def test_cost_equals_dtw_python(rows, cols):
    rng = np.random.default_rng(rows * 100 + cols)
    for _ in range(5):
        matrix = rng.random((rows, cols))
        ours = subsequence_dtw(torch.from_numpy(matrix).unsqueeze(0))
        assert ours.item() == pytest.approx(reference_cost(matrix), rel=1e-12, abs=1e-12)


def test_padded_batch_equals_each_document_alone():
    rng = np.random.default_rng(3)
    lengths = [17, 5, 30, 1, 2, 29]
    width = max(lengths)
    batch = rng.random((len(lengths), 8, width))
    # Padding that would win every min if it were ever read.
    for b, length in enumerate(lengths):
        batch[b, :, length:] = -1e6
    costs = subsequence_dtw(torch.from_numpy(batch), lengths)
    for b, length in enumerate(lengths):
        assert costs[b].item() == pytest.approx(reference_cost(batch[b, :, :length]), rel=1e-12)


def test_float32_costs_close_to_float64():
    rng = np.random.default_rng(4)
    matrix = rng.random((3, 60, 400))
    single = subsequence_dtw(torch.from_numpy(matrix).float())
    double = subsequence_dtw(torch.from_numpy(matrix))
    assert single.dtype == torch.float32
    assert torch.allclose(single.double(), double, rtol=1e-5)


def test_dtw_refuses_empty_input():
    with pytest.raises(ValueError, match="frames"):
        subsequence_dtw(torch.zeros(1, 0, 4))


@pytest.mark.parametrize("method, scipy_metric", [
    ("cosine", "cosine"), ("cityblock", "cityblock"), ("euclidean", "euclidean"),
])
def test_distances_match_scipy(method, scipy_metric):
    rng = np.random.default_rng(5)
    query, docs = rng.standard_normal((7, 16)), rng.standard_normal((3, 11, 16))
    ours = frame_distances(torch.from_numpy(query), torch.from_numpy(docs), method)
    assert ours.shape == (3, 7, 11)
    for b in range(3):
        np.testing.assert_allclose(ours[b].numpy(), cdist(query, docs[b], scipy_metric),
                                   rtol=1e-9, atol=1e-9)


def test_cosine_exp_and_neg_log_transform_the_cosine_distance():
    rng = np.random.default_rng(6)
    query, docs = rng.standard_normal((5, 8)), rng.standard_normal((2, 6, 8))
    cos_dist = np.stack([cdist(query, d, "cosine") for d in docs])
    q, d = torch.from_numpy(query), torch.from_numpy(docs)
    np.testing.assert_allclose(frame_distances(q, d, "cosine_exp").numpy(),
                               np.exp(cos_dist) - 1, rtol=1e-9, atol=1e-12)
    similar = np.where(cos_dist < 1, cos_dist, np.nan)  # -log(1-d) is defined there only
    neg_log = frame_distances(q, d, "cosine_neg_log").numpy()
    finite = ~np.isnan(similar)
    np.testing.assert_allclose(neg_log[finite], -np.log(1 - similar[finite]), rtol=1e-9)
    # Opposite frames: a large finite cost rather than NaN, which would poison the DTW.
    assert np.isfinite(neg_log).all() and (neg_log[~finite] > 20).all()


def test_unknown_distance_is_an_option_error():
    with pytest.raises(OptionError, match="cosine_exp"):
        frame_distances(torch.ones(1, 2), torch.ones(1, 1, 2), "cosine_squared")


def test_minmax_rescales_each_query_frame_over_valid_columns():
    rng = np.random.default_rng(7)
    dist = rng.random((2, 4, 9)) * 5 + 1
    dist[1, :, 6:] = 100.0  # padding of the second document: ignored by min and max
    scaled = minmax_rows(torch.from_numpy(dist), [9, 6]).numpy()
    for b, length in enumerate([9, 6]):
        valid = dist[b, :, :length]
        low, high = valid.min(axis=1, keepdims=True), valid.max(axis=1, keepdims=True)
        np.testing.assert_allclose(scaled[b, :, :length], (valid - low) / (high - low), rtol=1e-12)
    assert np.isinf(scaled[1, :, 6:]).all()
    # A constant row (one frame, or identical frames) becomes zeros, not NaN.
    flat = minmax_rows(torch.full((1, 2, 3), 0.7)).numpy()
    assert (flat == 0).all()


def test_match_costs_equal_s3prl_pipeline_per_document():
    """Distance, per-row min-max, DTW: batched vs s3prl's steps on each unpadded pair."""
    rng = np.random.default_rng(8)
    query = rng.standard_normal((6, 10))
    lengths = [14, 3, 9]
    docs = np.zeros((3, 14, 10))
    for b, length in enumerate(lengths):
        docs[b, :length] = rng.standard_normal((length, 10))
    costs = match_costs(torch.from_numpy(query), torch.from_numpy(docs), lengths)
    for b, length in enumerate(lengths):
        dist = np.exp(cdist(query, docs[b, :length], "cosine")) - 1
        low, high = dist.min(axis=1, keepdims=True), dist.max(axis=1, keepdims=True)
        dist = (dist - low) / np.maximum(high - low, 1e-9)
        assert costs[b].item() == pytest.approx(reference_cost(dist), rel=1e-9)


def test_a_query_inside_a_document_costs_nothing():
    rng = np.random.default_rng(9)
    doc = rng.standard_normal((20, 4))
    query = doc[5:12]
    other = rng.standard_normal((20, 4))
    costs = match_costs(torch.from_numpy(query), torch.from_numpy(np.stack([other, doc])),
                        [20, 20])
    assert costs[1].item() == pytest.approx(0.0, abs=1e-12)
    assert costs[0].item() > 0.05
