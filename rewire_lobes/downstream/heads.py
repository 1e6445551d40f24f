"""SUPERB downstream heads (``superb_protocol.md``).

``UtteranceLevelHead`` is s3prl's ``UtteranceLevel`` model for KS and IC:
``Linear(D -> 256)`` → mean pooling over the valid frames → ``Linear(256 -> C)``, with no
activation anywhere. Since the projector is affine, projecting then averaging equals
averaging then projecting: the head therefore also accepts features already mean-pooled
``[B, D]`` (the feature cache's path) and gives the same logits.

``RNNCTCHead`` is s3prl's ASR and SF head: projector → BLSTMs → linear, trained with CTC.

``SpeakerActivityHead`` is s3prl's diarization model: a unidirectional LSTM → linear, one
logit per speaker and frame, trained with the permutation-invariant BCE.
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


def reverse_padded(x, lengths):
    """``x`` ``[B, T, ...]`` with each sequence's first ``lengths[b]`` steps reversed.

    Example
    -------
    >>> reverse_padded(torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2])).tolist()
    [[3, 2, 1], [5, 4, 0]]
    """
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, index)


class PaddedBLSTM(nn.Module):
    """A single-layer bidirectional LSTM over padded sequences, padding never read.

    The same function as ``nn.LSTM(bidirectional=True)`` on a packed sequence (s3prl's
    ``RNNLayer``), computed as two one-way LSTMs, the second on each sequence reversed
    within its length: on a CPU the backward pass of a packed LSTM is about 20 times slower.
    Padded output frames are zero, as ``pad_packed_sequence`` leaves them.

    Example
    -------
    >>> blstm = PaddedBLSTM(3, 2)
    >>> x, lengths = torch.randn(2, 5, 3), torch.tensor([5, 2])
    >>> out = blstm(x, lengths)
    >>> tuple(out.shape), bool((out[1, 2:] == 0).all())
    ((2, 5, 4), True)
    """

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.forward_lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.backward_lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def forward(self, x, lengths):
        ahead, _ = self.forward_lstm(x)
        behind, _ = self.backward_lstm(reverse_padded(x, lengths))
        out = torch.cat([ahead, reverse_padded(behind, lengths)], dim=-1)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
        return out * valid.unsqueeze(-1).to(out.dtype)


class RNNCTCHead(nn.Module):
    """s3prl's ASR/SF head: projector → stacked single-layer BLSTMs → linear, for CTC.

    Each recurrent layer never reads the padding (:class:`PaddedBLSTM`, as s3prl's packed
    sequences) and is followed by dropout; there is no layer norm, projection or time
    down-sampling (SUPERB's ``asr/config.yaml``: ``project_dim 1024``, ``dim [1024, 1024]``,
    ``dropout [0.2, 0.2]``, ``total_rate -1``).

    Arguments
    ---------
    input_dim : int
        Feature size ``D`` of the upstream.
    num_outputs : int
        Vocabulary size, the CTC blank included.
    projector_dim : int
        SUPERB's 1024.
    hidden_sizes : list of int
        Units per direction of each layer (SUPERB: ``[1024, 1024]``).
    dropout : float
        After every recurrent layer (SUPERB: 0.2).

    Example
    -------
    >>> head = RNNCTCHead(8, 5, projector_dim=6, hidden_sizes=[4, 4]).eval()
    >>> frames, lengths = torch.randn(2, 7, 8), torch.tensor([7, 3])
    >>> logits = head(frames, lengths)
    >>> tuple(logits.shape)
    (2, 7, 5)
    >>> torch.allclose(logits[1, :3], head(frames[1:, :3], torch.tensor([3]))[0], atol=1e-6)
    True
    """

    def __init__(self, input_dim, num_outputs, projector_dim=1024, hidden_sizes=(1024, 1024),
                 dropout=0.2):
        super().__init__()
        self.projector = nn.Linear(input_dim, projector_dim)
        self.rnns = nn.ModuleList()
        size = projector_dim
        for hidden in hidden_sizes:
            self.rnns.append(PaddedBLSTM(size, hidden))
            size = 2 * hidden
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(size, num_outputs)

    def forward(self, features, lengths):
        """Logits ``[B, T, V]`` of ``features`` ``[B, T, D]`` with ``lengths`` valid frames."""
        x = self.projector(features)
        lengths = lengths.long().clamp(min=1)
        for rnn in self.rnns:
            x = self.dropout(rnn(x, lengths))
        return self.classifier(x)


class SpeakerActivityHead(nn.Module):
    """LSTM over the frames → ``Linear(hidden -> speakers)``: per-frame speaker logits.

    s3prl's ``diarization/model.py``: no projector, ``nn.LSTM(D, 512, num_layers=1)``,
    unidirectional. A unidirectional LSTM never reads the padding after a sequence
    before that sequence's valid frames, so padded batches need no packing.

    Arguments
    ---------
    input_dim : int
        Feature size ``D`` of the upstream.
    num_speakers : int
        Outputs per frame (SUPERB's Libri2Mix: 2).
    hidden_size : int
        SUPERB's 512.
    num_layers : int
        SUPERB's 1.

    Example
    -------
    >>> head = SpeakerActivityHead(8, num_speakers=2, hidden_size=4)
    >>> features = torch.randn(2, 5, 8)
    >>> logits = head(features)
    >>> logits.shape
    torch.Size([2, 5, 2])
    >>> padded = torch.cat([features[:1, :3], torch.randn(1, 2, 8)], dim=1)
    >>> torch.allclose(head(padded)[0, :3], head(features[:1, :3])[0])
    True
    """

    def __init__(self, input_dim, num_speakers=2, hidden_size=512, num_layers=1):
        super().__init__()
        self.rnn = nn.LSTM(input_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.classifier = nn.Linear(hidden_size, num_speakers)

    def forward(self, features):
        """``features`` ``[B, T, D]`` → logits ``[B, T, speakers]``."""
        output, _ = self.rnn(features)
        return self.classifier(output)


def repeat(value, times):
    """``[value] * times``, for a yaml list of equal layer sizes.

    Example
    -------
    >>> repeat(1024, 2)
    [1024, 1024]
    """
    return [value] * int(times)
