"""The global random generators, checkpointed so that a resumed run draws what an
uninterrupted one would (dropout masks, SpecAugment)."""

import json
import random
from pathlib import Path

import numpy as np
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)


@register_checkpoint_hooks
class RandomState:
    """The global random generators (dropout draws from them), saved with checkpoints.

    SpeechBrain does not checkpoint them; without this a resumed run would draw other
    dropout masks than an uninterrupted one. Creating the data loader's iterator draws from
    the torch generator, so where a recovered state is applied matters: one saved at the end
    of an epoch was saved before the next epoch's iterator was made, and is applied at the
    start of the stage; one saved within an epoch was saved after it, and is applied just
    before the first batch (:meth:`apply_recovered`). Stored as JSON (no pickle on load).
    """

    def __init__(self):
        self.recovered = None
        self.recovered_end_of_epoch = None

    def apply_recovered(self, end_of_epoch=None):
        """Applies the recovered state, if any; with ``end_of_epoch`` True (False), only
        one from an end-of-epoch (intra-epoch) checkpoint. Returns whether it applied."""
        if self.recovered is None or end_of_epoch not in (None, self.recovered_end_of_epoch):
            return False
        state, self.recovered = self.recovered, None
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
        if state["cuda"] and torch.cuda.is_available() and (
            len(state["cuda"]) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(
                [torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]]
            )
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        return True

    @mark_as_saver
    def _save(self, path):
        numpy_state = np.random.get_state()
        state = {
            "torch": torch.get_rng_state().tolist(),
            "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()]
            if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        }
        Path(path).write_text(json.dumps(state), encoding="utf-8")

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True):
        self.recovered = json.loads(Path(path).read_text(encoding="utf-8"))
        self.recovered_end_of_epoch = end_of_epoch
