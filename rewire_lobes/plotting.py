"""What every figure of the project shares: matplotlib without a display, PNGs written
atomically, and a trailing running mean for loss curves."""

from pathlib import Path

from rewire_lobes.io_utils import atomic_path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure, path, dpi=100):
    """Lays out ``figure``, writes it to ``path`` through a temporary name, closes it."""
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(figure)
    return Path(path)


def running_mean(values, window):
    """The trailing mean of ``values`` over ``window`` points (fewer at the start).

    Example
    -------
    >>> running_mean([1.0, 3.0, 5.0, 7.0], 2)
    [1.0, 2.0, 4.0, 6.0]
    """
    window = max(1, int(window))
    means, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        means.append(total / min(i + 1, window))
    return means
