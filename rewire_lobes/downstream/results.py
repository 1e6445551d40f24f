"""``results.json``: one record per downstream run, written in one place.

The record says what was run (task, encoder and its content hash, where the encoder came
from, the profile and every setting of the run identity), what was measured (the dev
curve, the best dev score and the update that reached it, the test scores at that
checkpoint) and how (the evaluation interval, i.e. the resolution of ``best_step``; wall
time; device). A zero-shot run (QbE: no training, no fraction, no updates) records
``zero_shot: true`` and None for the fraction, seed and every update count. The unit and direction of a score come from its metric's name, never from
a yaml line, so an MTWV cannot be printed as a percentage and a WER cannot be maximised.

:func:`results_record` needs no Brain: a task that trains nothing (QbE) and the report
use it as well.
"""

import platform
from dataclasses import dataclass

import torch

from rewire_lobes.downstream.schedule import paper_step_budget
from rewire_lobes.errors import OptionError
from rewire_lobes.io_utils import write_json_atomic

RESULTS_SCHEMA = 2


@dataclass(frozen=True)
class MetricSpec:
    unit: str  # "%" or "" (a plain number)
    direction: str  # "max" or "min": which way is better


METRICS = {
    "accuracy": MetricSpec("%", "max"),
    "balanced_accuracy": MetricSpec("%", "max"),
    "frame_accuracy": MetricSpec("%", "max"),
    "wer": MetricSpec("%", "min"),
    "cer": MetricSpec("%", "min"),
    "slot_type_f1": MetricSpec("%", "max"),
    "slot_value_cer": MetricSpec("%", "min"),
    "der": MetricSpec("%", "min"),
    "frame_der": MetricSpec("%", "min"),
    "mtwv": MetricSpec("", "max"),
    "loss": MetricSpec("", "min"),
}


def metric_spec(name):
    """The unit and direction of the metric ``name``.

    Example
    -------
    >>> metric_spec("wer").direction, metric_spec("mtwv").unit
    ('min', '')
    """
    try:
        return METRICS[name]
    except KeyError:
        raise OptionError(f"unknown metric '{name}' (known: {', '.join(METRICS)})") from None


def check_metrics(metric, dev_metric):
    """The direction shared by the test ``metric`` and the ``dev_metric`` that picks the
    checkpoint; checked before training, so that a typo does not cost a whole run."""
    spec, dev_spec = metric_spec(metric), metric_spec(dev_metric)
    if spec.direction != dev_spec.direction:
        raise OptionError(f"--dev_metric {dev_metric} ({dev_spec.direction}) and --metric "
                          f"{metric} ({spec.direction}) point in different directions")
    return spec.direction


def describe_device(device):
    """A readable device name for results.json."""
    device = str(device)
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def results_record(*, task, encoder, metric, dev_metric, test_scores, dev_curve, best_step,
                   best_dev, steps, max_steps, eval_every_steps, fraction, seed, strategy,
                   profile, profile_reason=None, provenance=None, settings=None,
                   wall_seconds=None, device=None, zero_shot=False, **extra):
    """The results.json record of one run (schema :data:`RESULTS_SCHEMA`).

    Arguments
    ---------
    task : str
        KS, IC, ASR, SF, SD or QbE.
    encoder : dict
        ``describe_encoder(upstream)``: source, content_hash, model type, sizes.
    metric, dev_metric : str
        Names in :data:`METRICS`: the test metric and the one that picks the checkpoint.
    test_scores : dict
        Every test score, by name; must hold ``metric``.
    dev_curve : list of [update, value]
        The dev metric after each evaluation round.
    best_step, best_dev
        The update that reached the best dev value, and that value.
    steps, max_steps, eval_every_steps : int
        Updates done, the budget, and the evaluation interval (the resolution of
        ``best_step``).
    fraction, seed
        The share of the training labels and the run's seed.
    zero_shot : bool
        A run that trains nothing (QbE): ``fraction``, ``seed``, ``best_step``, ``steps``,
        ``max_steps`` and ``eval_every_steps`` must then be None, and are recorded so.
    provenance : dict, optional
        ``rewire_lobes.runs.provenance.read_provenance`` of the encoder (None: baseline).
    settings : dict, optional
        The run identity (``run_identity.json``).
    **extra
        Recipe-specific fields (item counts, feature mode, test set ...).
    """
    check_metrics(metric, dev_metric)
    spec = metric_spec(metric)
    if metric not in test_scores:
        raise ValueError(f"test scores {sorted(test_scores)} lack the metric '{metric}'")
    training = {"fraction": fraction, "seed": seed, "best_step": best_step, "steps": steps,
                "max_steps": max_steps, "eval_every_steps": eval_every_steps}
    if zero_shot:
        given = sorted(name for name, value in training.items() if value is not None)
        if given:
            raise ValueError(f"a zero-shot run trains nothing, yet {given} are given")
    return {
        "schema": RESULTS_SCHEMA,
        "task": task,
        "encoder": encoder,
        "strategy": strategy,
        "provenance": provenance,
        "profile": profile,
        "profile_reason": profile_reason,
        "zero_shot": bool(zero_shot),
        "fraction": _optional(float, fraction),
        "seed": _optional(int, seed),
        "metric": metric,
        "dev_metric": dev_metric,
        "direction": spec.direction,
        "unit": spec.unit,
        "best_dev": best_dev,
        "test": test_scores[metric],
        "test_scores": test_scores,
        "best_step": best_step,
        "best_step_resolution": _optional(int, eval_every_steps),
        "steps": _optional(int, steps),
        "max_steps": _optional(int, max_steps),
        "eval_every_steps": _optional(int, eval_every_steps),
        "paper_max_steps": None if fraction is None else paper_step_budget(task, fraction),
        "dev_curve": [list(point) for point in dev_curve],
        "wall_seconds": None if wall_seconds is None else round(float(wall_seconds), 3),
        "device": device,
        "settings": settings or {},
        **extra,
    }


def _optional(kind, value):
    return None if value is None else kind(value)


def write_results(path, record):
    """Writes ``record`` to ``path`` atomically (never a half-written results.json)."""
    write_json_atomic(path, record)
