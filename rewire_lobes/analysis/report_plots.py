"""The report's figures (PNG, matplotlib Agg), from the blocks of :mod:`.report`.

* ``curves_<task>_<fraction>.png``: dev score over updates, one colour per strategy (the
  mean over seeds thick, each seed thin, each seed's best update marked): the convergence
  that the ⌚ column summarises;
* ``layer_weights_<task>.png``: the featurizer's softmax layer weights per strategy;
* ``rewiring_loss.png``: the rewiring loss of every rewired encoder;
* ``tsne_<task>.png``: one t-SNE panel per encoder, coloured by class.

A figure without data is not written; each function returns the paths it wrote.
"""

import math
import statistics
from collections import defaultdict
from pathlib import Path

from rewire_lobes.analysis.report import fraction_header, strategy_key
from rewire_lobes.plotting import pyplot, running_mean, save_png

MAX_LEGEND_CLASSES = 12
PANEL_SIZE = (4.5, 3.2)


def _panels(count, columns):
    plt = pyplot()
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(PANEL_SIZE[0] * columns,
                                                        PANEL_SIZE[1] * rows), squeeze=False)
    for axis in list(axes.flat)[count:]:
        axis.axis("off")
    return figure, list(axes.flat)[:count]


def _colours(labels):
    """One colour per strategy label, the same in every figure of a report."""
    cycle = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def _all_labels(blocks):
    return sorted({cell.label for block in blocks for cell in block.cells.values()},
                  key=strategy_key)


def fraction_name(fraction):
    """``0.01`` -> ``"0.01"``, ``1.0`` -> ``"1"`` (for file names)."""
    return f"{fraction:g}"


def mean_curve(curves):
    """The mean over curves at the updates all of them reached (a seed that stopped
    early would otherwise make the mean jump); empty when they share none.

    Example
    -------
    >>> mean_curve([[(1, 2.0), (2, 4.0)], [(1, 4.0)]])
    [(1, 3.0)]
    """
    values = [dict(curve) for curve in curves if curve]
    shared = set.intersection(*(set(curve) for curve in values)) if values else set()
    return [(update, statistics.fmean(curve[update] for curve in values))
            for update in sorted(shared)]


def plot_curves(blocks, folder):
    """``curves_<task>_<fraction>.png``: one panel per family × metric."""
    colours = _colours(_all_labels(blocks))
    panels = defaultdict(list)
    for block in blocks:
        for fraction in block.fractions:
            if fraction is not None and any(run.dev_curve for cell in block.cells.values()
                                            if cell.fraction == fraction for run in cell.runs):
                panels[block.task, fraction].append(block)
    written = []
    for (task, fraction), task_blocks in sorted(panels.items()):
        figure, axes = _panels(len(task_blocks), 2)
        for axis, block in zip(axes, task_blocks):
            _curve_panel(axis, block, fraction, colours)
        path = Path(folder) / f"curves_{task}_{fraction_name(fraction)}.png"
        written.append(save_png(figure, path))
    return written


def _curve_panel(axis, block, fraction, colours):
    for label in block.labels:
        cell = block.cells.get((label, fraction))
        if cell is None or not any(run.dev_curve for run in cell.runs):
            continue
        colour = colours[label]
        for run in cell.runs:
            if run.dev_curve:
                axis.plot(*zip(*run.dev_curve), color=colour, linewidth=0.7, alpha=0.35)
            if run.best_step is not None and run.best_dev is not None:
                axis.plot(run.best_step, run.best_dev, marker="*", color=colour,
                          markersize=8, linestyle="none")
        mean = mean_curve([run.dev_curve for run in cell.runs])
        axis.plot(*(zip(*mean) if mean else ([], [])), color=colour, linewidth=1.8,
                  label=f"{label} (n={cell.seeds})")
        if cell.mean_updates is not None:
            axis.axvline(cell.mean_updates, color=colour, linestyle="--", linewidth=0.8)
    unit = f" ({block.unit})" if block.unit else ""
    axis.set_xlabel("update")
    axis.set_ylabel(f"dev {block.dev_metric}{unit}")
    axis.set_title(f"{block.title} at {fraction_header(fraction)}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def plot_layer_weights(blocks, folder):
    """``layer_weights_<task>.png``: one panel per family × metric × fraction, a line per
    strategy (mean over the chosen lr's seeds) over the layer index."""
    colours = _colours(_all_labels(blocks))
    panels = defaultdict(list)
    for block in blocks:
        for fraction in block.fractions:
            weights = _mean_weights(block, fraction)
            if weights:
                panels[block.task].append((block, fraction, weights))
    written = []
    for task, entries in sorted(panels.items()):
        figure, axes = _panels(len(entries), 4)
        for axis, (block, fraction, weights) in zip(axes, entries):
            for label, (mean, seeds) in weights.items():
                axis.plot(range(len(mean)), mean, marker="o", markersize=3,
                          color=colours[label], label=f"{label} (n={seeds})")
            axis.xaxis.get_major_locator().set_params(integer=True)
            axis.set_xlabel("layer (0 = CNN features)")
            axis.set_ylabel("softmax weight")
            axis.set_title(f"{block.title} at {fraction_header(fraction)}")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        written.append(save_png(figure, Path(folder) / f"layer_weights_{task}.png"))
    return written


def _mean_weights(block, fraction):
    """``{label: (mean weights, seeds)}`` of the cells at ``fraction`` that record them."""
    found = {}
    for label in block.labels:
        cell = block.cells.get((label, fraction))
        weights = [run.layer_weights for run in cell.runs if run.layer_weights] if cell else []
        weights = [w for w in weights if len(w) == len(weights[0])] if weights else []
        if weights:
            found[label] = ([statistics.fmean(column) for column in zip(*weights)], len(weights))
    return found


def plot_rewiring_loss(rewirings, names, folder):
    """``rewiring_loss.png``: the loss per update of every rewired encoder (thin) and its
    running mean (labelled); None when no record has a loss curve."""
    curves = [item for item in rewirings if item.loss_curve]
    if not curves:
        return None
    several_families = len({item.family_hash for item in curves}) > 1
    curves.sort(key=lambda i: (names.family(i.family_hash), strategy_key(names.label(i))))
    figure, (axis,) = _panels(1, 1)
    figure.set_size_inches(7, 4)
    for item, colour in zip(curves, _colours(range(len(curves))).values()):
        label = names.label(item)
        if several_families:
            label = f"{names.family(item.family_hash)}: {label}"
        steps, losses = zip(*item.loss_curve)
        axis.plot(steps, losses, color=colour, linewidth=0.5, alpha=0.3)
        axis.plot(steps, running_mean(losses, len(losses) // 10), color=colour, linewidth=1.5,
                  label=f"{label} ({item.updates} updates)")
    axis.set_xlabel("update")
    axis.set_ylabel("InfoNCE loss (running mean bold)")
    axis.set_title("Rewiring loss")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_png(figure, Path(folder) / "rewiring_loss.png")


def plot_tsne(isotropy_rows, folder):
    """``tsne_<task>.png``: one panel per encoder (and layer) with a t-SNE, coloured by
    class, titled with its silhouette and k-NN accuracy."""
    by_task = defaultdict(list)
    for row in isotropy_rows:
        tsne = row["record"].tsne
        if tsne and tsne.get("points"):
            by_task[row["dataset"]].append(row)
    written = []
    for task, rows in sorted(by_task.items()):
        figure, axes = _panels(len(rows), 3)
        several_families = len({row["encoder"] for row in rows}) > 1
        several_layers = len({row["layer"] for row in rows}) > 1
        for axis, row in zip(axes, rows):
            _tsne_panel(axis, row, several_families, several_layers)
        written.append(save_png(figure, Path(folder) / f"tsne_{task}.png"))
    return written


def _tsne_panel(axis, row, several_families, several_layers):
    tsne = row["record"].tsne
    points = tsne["points"]
    labels = tsne.get("labels") or [""] * len(points)
    classes = sorted({str(label) for label in labels})
    cmap = pyplot().get_cmap("tab20" if len(classes) > 10 else "tab10")
    for i, name in enumerate(classes):
        chosen = [p for p, label in zip(points, labels) if str(label) == name]
        # matplotlib leaves labels that start with "_" out of legends (KS's _unknown_).
        axis.scatter(*zip(*chosen), s=6, color=cmap(i % cmap.N), label=name.strip("_") or name)
    if 1 < len(classes) <= MAX_LEGEND_CLASSES:
        axis.legend(fontsize=6, markerscale=2, loc="best")
    who = f"{row['encoder']}: " if several_families else ""
    layer = f", layer {row['layer']}" if several_layers else ""
    axis.set_title(f"{who}{row['strategy']}{layer}\n{separation_text(row)}", fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])


def separation_text(row):
    """``silhouette s, k-NN acc a (chance c)`` of an isotropy row.

    Example
    -------
    >>> separation_text({"silhouette": 0.1234, "knn_accuracy": 0.5, "chance": 0.25})
    'silhouette 0.123, k-NN acc 0.500 (chance 0.250)'
    """
    def number(value):
        return "–" if value is None else f"{value:.3f}"

    return (f"silhouette {number(row['silhouette'])}, k-NN acc {number(row['knn_accuracy'])} "
            f"(chance {number(row['chance'])})")
