"""One encoder forward for every task's batch of an update.

s3prl's multi-task branch draws one batch per task and runs the shared upstream once on
all of them. :func:`joint_signals` pads the tasks' waveforms into one batch; because
``SSLUpstream`` keeps padding from changing any valid output, each task's rows of the
joint output equal what the encoder gives on the task's batch alone (to float rounding).
:class:`TaskUpstream` hands those rows to the task's own Brain, whose ``compute_forward``
calls ``modules.upstream(wavs, wav_lens)`` as in a single-task run.
"""

import torch
import torch.nn.functional as F


def joint_signals(signals):
    """``(wavs [ΣB, T], rel_lens [ΣB], spans)`` from the tasks' ``(wavs, rel_lens)``.

    ``spans`` gives each task's rows ``(start, stop)`` in the joint batch, in order.
    """
    longest = max(wavs.shape[1] for wavs, _ in signals)
    padded, samples, spans, start = [], [], [], 0
    for wavs, rel_lens in signals:
        padded.append(F.pad(wavs, (0, longest - wavs.shape[1])))
        samples.append(torch.round(rel_lens.to(wavs.device).float() * wavs.shape[1]))
        spans.append((start, start + wavs.shape[0]))
        start += wavs.shape[0]
    return torch.cat(padded), torch.cat(samples) / longest, spans


def task_rows(hidden, frame_lens, span):
    """A task's rows of the joint output, trimmed to its own longest item's frames."""
    start, stop = span
    lens = frame_lens[start:stop]
    return hidden[:, start:stop, : int(lens.max())], lens


class TaskUpstream(torch.nn.Module):
    """A task's view of the shared encoder.

    Called with a batch's waveforms, it returns the hidden states :meth:`provide` was given
    for that batch (training: the task's rows of the joint forward), else it runs the
    encoder (evaluation). Attributes it lacks (``num_states``, ``freeze``, ``source`` ...)
    are the encoder's. The encoder is not a submodule: the multi-task Brain owns,
    optimises and checkpoints it once.
    """

    def __init__(self, encoder):
        super().__init__()
        object.__setattr__(self, "_encoder", encoder)
        object.__setattr__(self, "_runner", encoder)
        self._pending = None

    def run_with(self, runner):
        """Evaluation runs ``runner`` (the encoder, or its DDP wrapper while training)."""
        object.__setattr__(self, "_runner", runner)

    def provide(self, hidden, frame_lens):
        """The output of the next call (one batch)."""
        self._pending = (hidden, frame_lens)

    def forward(self, wavs, wav_lens=None):
        if self._pending is None:
            return self._runner(wavs, wav_lens)
        hidden, frame_lens = self._pending
        self._pending = None
        if hidden.shape[1] != wavs.shape[0]:
            raise RuntimeError(f"the shared encoder output holds {hidden.shape[1]} items, the "
                               f"batch {wavs.shape[0]}: a task's rows were mixed up")
        return hidden, frame_lens

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_encoder"), name)
