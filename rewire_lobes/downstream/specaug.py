"""s3prl's SpecAugment of the featurizer output (ASR and SF, training only).

``superb_protocol.md`` §1: a time warp of window 5 (bicubic) per utterance over its valid
frames, then 4 feature-dimension masks of width ``U[0, 50)`` and 2 time masks of width
``U[0, 40)``, the masked values set to 0. As in s3prl, the mask widths and positions are
drawn per utterance and the time masks' positions range over the padded length.

SpeechBrain's ``speechbrain.augment.freq_domain`` masks draw one width per batch and warp
the whole padded batch at once, so their draws are not s3prl's; this module keeps
s3prl's, from the global torch generator (which ``DownstreamBrain`` checkpoints).
"""

import torch
import torch.nn.functional as F
from torch import nn


class FeatureSpecAugment(nn.Module):
    """Time warp, then feature masks, then time masks, on ``[B, T, D]`` features.

    Arguments
    ---------
    time_warp_window : int
        0 disables the warp. SUPERB: 5.
    time_warp_mode : str
        ``torch.nn.functional.interpolate`` mode. SUPERB: ``bicubic``.
    num_freq_masks, freq_mask_width : int
        Masks along the feature dimension, each ``U[0, width)`` wide. SUPERB: 4, 50.
    num_time_masks, time_mask_width : int
        Masks along time. SUPERB: 2, 40.

    Example
    -------
    >>> augment = FeatureSpecAugment(time_warp_window=0, num_freq_masks=0, num_time_masks=1,
    ...                              time_mask_width=3)
    >>> features = torch.ones(2, 10, 4)
    >>> masked = augment(features, torch.tensor([10, 6]))
    >>> tuple(masked.shape), bool((masked == 0).any(dim=2).sum() <= 2 * 2)
    ((2, 10, 4), True)
    """

    def __init__(self, time_warp_window=5, time_warp_mode="bicubic", num_freq_masks=4,
                 freq_mask_width=50, num_time_masks=2, time_mask_width=40):
        super().__init__()
        self.time_warp_window = int(time_warp_window)
        self.time_warp_mode = time_warp_mode
        self.num_freq_masks = int(num_freq_masks)
        self.freq_mask_width = int(freq_mask_width)
        self.num_time_masks = int(num_time_masks)
        self.time_mask_width = int(time_mask_width)

    def forward(self, features, lengths):
        """The augmented copy of ``features`` ``[B, T, D]`` (``lengths``: valid frames)."""
        if self.time_warp_window > 0:
            features = self.time_warp(features, lengths)
        features = self.mask(features, dim=2, count=self.num_freq_masks,
                             width=self.freq_mask_width)
        return self.mask(features, dim=1, count=self.num_time_masks, width=self.time_mask_width)

    def time_warp(self, features, lengths):
        """Stretches the frames before a random centre and squeezes those after (or the
        reverse), per utterance over its valid frames; padding stays zero."""
        warped = torch.zeros_like(features)
        window = self.time_warp_window
        for row, length in enumerate(lengths.tolist()):
            frames = features[row, :length]
            if length - window <= window:
                warped[row, :length] = frames
                continue
            centre = int(torch.randint(window, length - window, (1,))[0])
            target = int(torch.randint(centre - window, centre + window, (1,))[0]) + 1
            image = frames[None, None]  # [1, 1, T, D]
            left = F.interpolate(image[:, :, :centre], (target, frames.shape[1]),
                                 mode=self.time_warp_mode, align_corners=False)
            right = F.interpolate(image[:, :, centre:], (length - target, frames.shape[1]),
                                  mode=self.time_warp_mode, align_corners=False)
            warped[row, :length] = torch.cat([left, right], dim=2)[0, 0]
        return warped

    @staticmethod
    def mask(features, dim, count, width):
        """Zeroes ``count`` spans of ``U[0, width)`` along ``dim`` in every utterance."""
        if count < 1 or width < 1:
            return features
        batch, size = features.shape[0], features.shape[dim]
        widths = torch.randint(0, width, (batch, count, 1), device=features.device)
        starts = torch.randint(0, max(1, size - int(widths.max())), (batch, count, 1),
                               device=features.device)
        positions = torch.arange(size, device=features.device)[None, None, :]
        masked = ((starts <= positions) & (positions < starts + widths)).any(dim=1)
        masked = masked.unsqueeze(2) if dim == 1 else masked.unsqueeze(1)
        return features.masked_fill(masked, 0.0)
