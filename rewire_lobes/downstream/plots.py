"""The dev curves of a run as a PNG beside its results.json."""

import math

from rewire_lobes.plotting import pyplot, save_png

DEV_PLOT = "dev_curves.png"


def plot_dev_scores(dev_scores, best_step, path):
    """One panel per dev score (``{name: [[update, value], ...]}``), the best update marked.

    Written atomically; nothing is written when there is no curve.
    """
    curves = {name: points for name, points in dev_scores.items() if points}
    if not curves:
        return None
    plt = pyplot()
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
    save_png(figure, path)
    return path
