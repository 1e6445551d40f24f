"""Greedy CTC decoding as official s3prl does it (``superb_protocol.md`` §4, §7.1)."""

import torch


def greedy_ctc(log_probs, lengths, blank_index):
    """Best-path CTC decoding of each utterance over its valid frames.

    Per frame the arg-max id; consecutive repeats are collapsed FIRST, then blanks are
    dropped (official s3prl: ``argmax().unique_consecutive()`` then ``!= blank``), so a
    genuine double letter ``L <blank> L`` stays ``L L``. The paper's fork dropped blanks
    before collapsing repeats, which merges such double letters into one.

    Arguments
    ---------
    log_probs : torch.Tensor
        ``[B, T, C]`` scores (log-probabilities or logits: only the arg-max is used).
    lengths : torch.LongTensor
        ``[B]`` valid frame counts (not SpeechBrain's relative lengths); frames from
        ``lengths[b]`` on are padding and ignored. A length may be 0.
    blank_index : int
        The CTC blank.

    Returns
    -------
    list of list of int
        The decoded ids of each utterance, blanks removed.

    Example
    -------
    >>> frames = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 0]])  # ids per frame, blank 0
    >>> log_probs = torch.nn.functional.one_hot(frames, 3).float().log()
    >>> greedy_ctc(log_probs, torch.tensor([8]), blank_index=0)
    [[1, 1, 2]]
    >>> greedy_ctc(log_probs, torch.tensor([2]), blank_index=0)
    [[1]]
    """
    if log_probs.dim() != 3:
        raise ValueError(f"expected [B, T, C] log_probs, got {tuple(log_probs.shape)}")
    if lengths.dtype.is_floating_point:
        raise TypeError("lengths must be frame counts (integers), not relative lengths")
    batch, frames = log_probs.shape[:2]
    lengths = lengths.to("cpu", torch.long)
    if lengths.shape != (batch,) or (lengths < 0).any() or (lengths > frames).any():
        raise ValueError(
            f"lengths {lengths.tolist()} must be {batch} frame counts in [0, {frames}]"
        )
    best = log_probs.argmax(dim=-1).cpu()
    starts_a_run = torch.ones_like(best, dtype=torch.bool)
    starts_a_run[:, 1:] = best[:, 1:] != best[:, :-1]
    valid = torch.arange(frames).unsqueeze(0) < lengths.unsqueeze(1)
    kept = starts_a_run & valid & (best != blank_index)
    return [row[keep].tolist() for row, keep in zip(best, kept)]
