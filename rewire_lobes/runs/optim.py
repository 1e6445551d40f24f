"""One optimizer step with the gradient clipped over every parameter group.

SpeechBrain 1.1.2's ``Brain.optimizers_step`` clips only the first parameter group of
each optimizer, so an encoder trained in a group of its own (at its own learning rate)
would never be clipped. s3prl clips all trainable parameters together.
"""

import torch


def clipped_step(brain):
    """``Brain.optimizers_step`` for a Brain with one ``brain.optimizer``, clipping the norm
    of all its groups' gradients together to ``brain.max_grad_norm``."""
    optimizer = brain.optimizer
    brain.scaler.unscale_(optimizer)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(parameters, brain.max_grad_norm)
    if not brain.scaler.is_enabled() and brain.skip_nonfinite_grads:
        brain.check_gradients()
    brain.scaler.step(optimizer)
    brain.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    brain.optimizer_step += 1
