"""The dev curves of a run as a PNG beside its results.json."""

import math

from rewire_lobes.io_utils import atomic_path

DEV_PLOT = "dev_curves.png"


def plot_dev_scores(dev_scores, best_step, path):
    """One panel per dev score (``{name: [[update, value], ...]}``), the best update marked.

    Written atomically; nothing is written when there is no curve.
    """
    curves = {name: points for name, points in dev_scores.items() if points}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(curves))
    rows = math.ceil(len(curves) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, (name, points) in zip(axes.flat, curves.items()):
        steps, values = zip(*points)
        axis.plot(steps, values, marker=".")
        if best_step is not None:
            axis.axvline(best_step, color="grey", linestyle="--", linewidth=0.8)
        axis.set_xlabel("update")
        axis.set_title(f"dev {name}")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(curves):]:
        axis.axis("off")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path
