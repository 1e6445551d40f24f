"""Mean pooling over the valid frames of padded frame sequences.

The one pooling rule of the project: the rewiring loss
(:func:`rewire_lobes.rewiring.contrastive.pool_utterances`), the feature cache
(:func:`rewire_lobes.downstream.features.pool_states`) and the SUPERB utterance head
(:class:`rewire_lobes.downstream.heads.UtteranceLevelHead`) all average frames with
:func:`masked_mean`, so an utterance vector means the same thing everywhere.
"""

import torch


def masked_mean(frames, frame_lens):
    """Mean over the first ``frame_lens[b]`` frames of ``frames [..., B, T, D]``: ``[..., B, D]``.

    Padded frames never count, whatever they hold. Leading dimensions (e.g. the layer axis
    of ``hidden [L+1, B, T, D]``) are pooled independently; an utterance of zero frames
    pools to zero.

    Example
    -------
    >>> frames = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> masked_mean(frames, torch.tensor([2]))
    tensor([[2.]])
    >>> masked_mean(torch.ones(4, 2, 3, 5), torch.tensor([3, 1])).shape
    torch.Size([4, 2, 5])
    """
    if frames.dim() < 3:
        raise ValueError(f"expected frames shaped [..., B, T, D], got {tuple(frames.shape)}")
    steps = torch.arange(frames.shape[-2], device=frames.device)
    mask = (steps[None, :] < frame_lens.to(frames.device)[:, None]).to(frames.dtype)
    total = torch.einsum("...btd,bt->...bd", frames, mask)
    return total / mask.sum(dim=1).clamp(min=1.0)[:, None]
