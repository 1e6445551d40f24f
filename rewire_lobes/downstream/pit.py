"""Permutation-invariant training (PIT) for speaker diarization, as SUPERB's SD trains it.

The head outputs one logit per frame and speaker slot, but which slot is which reference
speaker is arbitrary: :func:`pit_bce` scores every assignment of the label columns to the
slots and keeps, per utterance, the cheapest (``superb_protocol.md`` §5, s3prl's
``pit_loss``). :func:`frame_error_counts` gives the frame-level error counts of s3prl's
``calc_diarization_error`` for labels already put in that order, as sums that a recipe
accumulates over a split.
"""

import itertools

import torch
import torch.nn.functional as F


def valid_frames(lengths, frames):
    """``[batch, frames]`` bool mask, True on the first ``lengths[b]`` frames of each row.

    Example
    -------
    >>> valid_frames(torch.tensor([2, 1]), 3)
    tensor([[ True,  True, False],
            [ True, False, False]])
    """
    lengths = torch.as_tensor(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be [batch], got shape {tuple(lengths.shape)}")
    if (lengths < 0).any() or (lengths > frames).any():
        raise ValueError(f"lengths {lengths.tolist()} must lie within 0..{frames} frames")
    return torch.arange(frames, device=lengths.device) < lengths[:, None]


def _check_shapes(logits, labels, lengths):
    if logits.ndim != 3 or logits.shape != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must both be "
            "[batch, frames, speakers]"
        )
    if len(lengths) != logits.shape[0]:
        raise ValueError(f"{len(lengths)} lengths for a batch of {logits.shape[0]}")
    return valid_frames(torch.as_tensor(lengths, device=logits.device), logits.shape[1])


def pit_bce(logits, labels, lengths):
    """PIT binary cross-entropy over the permutations of the speaker columns.

    For each permutation of the label columns: BCE-with-logits per frame and speaker, mean
    over speakers, sum over the valid frames, giving one loss per utterance; each utterance
    keeps its minimum. The loss is the sum of the minima divided by the number of valid
    frames in the batch. Frames past an utterance's length count for nothing, whatever
    they hold. The cost grows with ``speakers!``: meant for a few speakers.

    Arguments
    ---------
    logits : torch.Tensor
        ``[batch, frames, speakers]`` head outputs (before the sigmoid).
    labels : torch.Tensor
        ``[batch, frames, speakers]`` 0/1 speaker activities.
    lengths : torch.Tensor
        ``[batch]`` number of valid frames of each utterance.

    Returns
    -------
    loss : torch.Tensor
        Scalar.
    permuted_labels : torch.Tensor
        ``labels`` with each utterance's columns in its best order (detached).

    Example
    -------
    >>> logits = torch.tensor([[[9.0, -9.0], [9.0, -9.0]]])
    >>> labels = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    >>> loss, permuted = pit_bce(logits, labels, torch.tensor([2]))
    >>> permuted.tolist(), round(loss.item(), 4)
    ([[[1.0, 0.0], [1.0, 0.0]]], 0.0001)
    """
    mask = _check_shapes(logits, labels, lengths)
    labels = labels.to(logits.dtype)
    permutations = list(itertools.permutations(range(logits.shape[2])))
    candidates = torch.stack([labels[:, :, list(order)] for order in permutations])
    per_utterance = []
    for permuted in candidates:
        frame_loss = F.binary_cross_entropy_with_logits(logits, permuted, reduction="none").mean(2)
        # where, not a product: a padded frame whose loss is inf or nan still counts for 0.
        per_utterance.append(torch.where(mask, frame_loss, 0.0).sum(1))
    minima, best = torch.stack(per_utterance).min(0)
    total_frames = mask.sum()
    if total_frames == 0:
        raise ValueError("the batch has no valid frame")
    batch_index = torch.arange(logits.shape[0], device=logits.device)
    return minima.sum() / total_frames, candidates[best, batch_index].detach()


@torch.no_grad()
def frame_error_counts(logits, labels, lengths):
    """Frame-level diarization error counts of a batch (s3prl's ``calc_diarization_error``).

    A slot is active where its logit is > 0. Per valid frame, ``n_ref`` and ``n_sys`` count
    the active reference and system speakers, ``n_correct`` those active in both.

    Arguments
    ---------
    logits : torch.Tensor
        ``[batch, frames, speakers]`` head outputs.
    labels : torch.Tensor
        ``[batch, frames, speakers]`` 0/1 labels, already permuted (:func:`pit_bce`).
    lengths : torch.Tensor
        ``[batch]`` valid frames.

    Returns
    -------
    dict
        Sums over the valid frames: ``miss`` = Σ max(n_ref − n_sys, 0), ``false_alarm`` =
        Σ max(n_sys − n_ref, 0), ``confusion`` = Σ (min(n_ref, n_sys) − n_correct),
        ``speaker_time`` = Σ n_ref, ``correct`` = Σ over frames and speakers of
        [decision == label] / speakers (a float), ``frames``. Frame DER is
        ``(miss + false_alarm + confusion) / speaker_time``; frame accuracy
        ``correct / frames``.

    Example
    -------
    >>> logits = torch.tensor([[[1.0, -1.0], [1.0, -1.0]]])
    >>> labels = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    >>> counts = frame_error_counts(logits, labels, torch.tensor([2]))
    >>> counts["miss"], counts["confusion"], counts["speaker_time"], counts["correct"]
    (1, 1, 3, 0.5)
    """
    mask = _check_shapes(logits, labels, lengths)
    system = (logits > 0) & mask[:, :, None]
    reference = (labels > 0.5) & mask[:, :, None]
    n_sys, n_ref = system.sum(2), reference.sum(2)
    n_correct = (system & reference).sum(2)
    agree = ((system == reference) & mask[:, :, None]).sum()
    return {
        "miss": int((n_ref - n_sys).clamp(min=0).sum()),
        "false_alarm": int((n_sys - n_ref).clamp(min=0).sum()),
        "confusion": int((torch.minimum(n_ref, n_sys) - n_correct).sum()),
        "speaker_time": int(n_ref.sum()),
        "correct": float(agree) / logits.shape[2],
        "frames": int(mask.sum()),
    }
