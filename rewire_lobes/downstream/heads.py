"""SUPERB downstream heads (``superb_protocol.md``).

``UtteranceLevelHead`` is s3prl's ``UtteranceLevel`` model for KS and IC:
``Linear(D -> 256)`` → mean pooling over the valid frames → ``Linear(256 -> C)``, with no
activation anywhere. Since the projector is affine, projecting then averaging equals
averaging then projecting: the head therefore also accepts features already mean-pooled
``[B, D]`` (the feature cache's path) and gives the same logits.
"""

import torch
from torch import nn

from rewire_lobes.upstream.pooling import masked_mean


class UtteranceLevelHead(nn.Module):
    """Projector → mean pooling → linear classifier.

    Arguments
    ---------
    input_dim : int
        Feature size ``D`` of the upstream (768 for Base, 1024 for Large).
    num_outputs : int
        Logits returned (12 for KS; 6 + 14 + 4 = 24 for IC).
    projector_dim : int
        SUPERB's 256.

    Example
    -------
    >>> head = UtteranceLevelHead(8, 3, projector_dim=4)
    >>> frames, lengths = torch.randn(2, 5, 8), torch.tensor([5, 3])
    >>> pooled = masked_mean(frames, lengths)
    >>> torch.allclose(head(frames, lengths), head(pooled), atol=1e-6)
    True
    """

    def __init__(self, input_dim, num_outputs, projector_dim=256):
        super().__init__()
        self.projector = nn.Linear(input_dim, projector_dim)
        self.classifier = nn.Linear(projector_dim, num_outputs)

    def forward(self, features, lengths=None):
        """``features`` is ``[B, T, D]`` with frame counts ``lengths``, or pooled ``[B, D]``."""
        projected = self.projector(features)
        if features.dim() == 3:
            if lengths is None:
                lengths = torch.full(
                    (features.shape[0],), features.shape[1], device=features.device
                )
            projected = masked_mean(projected, lengths)
        elif features.dim() != 2:
            raise ValueError(f"expected [B, T, D] or [B, D] features, got {tuple(features.shape)}")
        return self.classifier(projected)
