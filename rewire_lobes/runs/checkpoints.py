"""SpeechBrain's checkpointer, with a checkpoint's mark written once its files are complete.

SpeechBrain 1.1.2 writes a checkpoint's ``CKPT.yaml`` first and the parameter files
after it, and takes any ``CKPT+*`` folder holding ``CKPT.yaml`` for a checkpoint. A run
killed while it saves thus leaves a checkpoint that every rerun loads and fails on (an
empty ``CKPT.yaml``, a missing ``featurizer.ckpt``, a truncated ``optimizer.ckpt``): the
run folder cannot resume until someone deletes it by hand.
"""

import logging
import time

import yaml
from speechbrain.utils.checkpoints import Checkpointer

from rewire_lobes.io_utils import write_text_atomic


class CrashSafeCheckpointer(Checkpointer):
    """A ``Checkpointer`` whose ``CKPT.yaml`` is written last, atomically.

    A save that does not finish leaves a ``CKPT+*`` folder without ``CKPT.yaml``, which
    is not a checkpoint: a rerun resumes from the previous one. Relies on
    ``Checkpointer.save_checkpoint`` calling ``_save_checkpoint_metafile`` before the
    parameter files are written (speechbrain 1.1.2, the pinned version).

    Example
    -------
    >>> import tempfile, torch
    >>> checkpointer = CrashSafeCheckpointer(tempfile.mkdtemp(), {"layer": torch.nn.Linear(2, 2)})
    >>> checkpoint = checkpointer.save_checkpoint(meta={"step": 3})
    >>> sorted(path.name for path in checkpoint.path.iterdir())
    ['CKPT.yaml', 'layer.ckpt']
    >>> checkpointer.find_checkpoint().meta["step"]
    3
    """

    _pending_meta = None

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):
        self._pending_meta = None
        try:
            checkpoint = super().save_checkpoint(meta, end_of_epoch, name, verbosity)
            if self._pending_meta is not None:  # the main process: its files are written
                write_text_atomic(*self._pending_meta)
        finally:
            self._pending_meta = None
        return checkpoint

    def _save_checkpoint_metafile(self, fpath, meta_to_include={}, end_of_epoch=True):
        """The meta record, kept for :meth:`save_checkpoint` to write once the parameter
        files are (SpeechBrain calls this before writing them)."""
        meta = {"unixtime": time.time(), "end-of-epoch": end_of_epoch, **meta_to_include}
        self._pending_meta = (fpath, "# yamllint disable\n" + yaml.dump(meta))
        return meta
