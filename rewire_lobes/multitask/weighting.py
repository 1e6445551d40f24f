"""How the task losses of an update become one objective.

``sum`` (the default, s3prl's multi-task branch): the plain sum. ``uncertainty`` (Kendall
et al., 2018): each task ``i`` learns ``log σ_i`` and adds ``L_i / σ_i² + log σ_i``.
``pcgrad`` (Yu et al., 2020): the sum, but the shared encoder's gradient is the sum of the
task gradients each projected off the others it conflicts with (:func:`pcgrad`); the
heads get their own task's gradient either way.
"""

import torch

from rewire_lobes.errors import OptionError

WEIGHTINGS = ("sum", "uncertainty", "pcgrad")


class TaskWeighting(torch.nn.Module):
    """``forward({task: loss}) -> objective``; holds the learned ``log σ`` of ``uncertainty``."""

    def __init__(self, tasks, rule="sum"):
        super().__init__()
        if rule not in WEIGHTINGS:
            raise OptionError(f"--weighting must be one of {', '.join(WEIGHTINGS)}, got {rule!r}")
        self.tasks = list(tasks)
        self.rule = rule
        if rule == "uncertainty":
            self.log_sigma = torch.nn.Parameter(torch.zeros(len(self.tasks)))

    def forward(self, losses):
        stacked = torch.stack([losses[task].float() for task in self.tasks])
        if self.rule != "uncertainty":
            return stacked.sum()
        return (stacked * torch.exp(-2 * self.log_sigma) + self.log_sigma).sum()

    def weights(self):
        """``{task: weight of its loss}`` now (1 for ``sum`` and ``pcgrad``)."""
        if self.rule != "uncertainty":
            return dict.fromkeys(self.tasks, 1.0)
        return dict(zip(self.tasks, torch.exp(-2 * self.log_sigma.detach()).tolist()))


def pcgrad(task_grads, generator=None):
    """PCGrad's combination of flat task gradients ``[K, P]`` into one ``[P]``.

    Each task's gradient is projected, in a random order of the others, off every gradient
    it has a negative inner product with; the projected gradients are summed.

    Example
    -------
    >>> g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    >>> pcgrad(g, torch.Generator().manual_seed(0))
    tensor([0.5000, 1.5000])
    """
    projected = task_grads.clone()
    count = task_grads.shape[0]
    for i in range(count):
        others = [j for j in torch.randperm(count, generator=generator).tolist() if j != i]
        for j in others:
            dot = torch.dot(projected[i], task_grads[j])
            if dot < 0:
                projected[i] -= dot / task_grads[j].pow(2).sum().clamp_min(1e-20) * task_grads[j]
    return projected.sum(dim=0)
