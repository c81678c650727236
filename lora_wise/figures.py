"""Matplotlib figures shared by the leaderboard Space and the project's report (hence in the library).

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no
global state, no GUI backend, safe in the Space's worker threads) and never shows
it; callers save it (``fig.savefig``) or hand it to ``gr.Plot``.  matplotlib is
imported inside the functions, so importing this module costs nothing.

Leaderboard: ``plot_confusion_matrix`` (one entry: true size against predicted size,
as the metric counts them), ``plot_metrics_by_method`` (MAE, MAPE and
accuracy per config and method) and ``plot_accuracy_per_size`` (accuracy per true
dataset size, one line per entry).  Report, after the paper: ``plot_norm_vs_size``
(Fig. 2a: the spread of the mean Frobenius norm per dataset size),
``plot_layer_accuracy`` (Fig. 3: accuracy of each layer on its own) and
``plot_accuracy_vs_train_size`` (Fig. 5: accuracy against the number of training
micro-datasets).

Every text in these figures is drawn as plain text: each function ends with
:func:`as_plain_text`, which turns off matplotlib's mathtext (``$...$``) and TeX on every text
object of the figure, so a method name such as ``math $\\foo$ x`` shows as typed instead of
failing to parse (or rendering markup).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .metrics.dataset_size_recovery.scores import for_display

METRIC_LABELS = {"mae": "MAE (images) ↓", "mape": "MAPE (%) ↓", "accuracy": "accuracy (%) ↑"}


def _figure(width: float = 6.4, height: float = 4.8, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def as_plain_text(fig):
    """Draw every text object of ``fig`` as the literal string it holds: no mathtext, no TeX."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_parse_math(False)
        text.set_usetex(False)
    return fig


def plot_confusion_matrix(labels: Sequence, matrix, title: str = "Confusion matrix"):
    """Counts of (true size, predicted size) over the metric's ``labels``; annotated up to 20 sizes."""
    matrix = np.asarray(matrix)
    if matrix.shape != (len(labels), len(labels)):
        raise ValueError(f"a confusion matrix over {len(labels)} sizes must be {len(labels)}x{len(labels)}, "
                         f"got {matrix.shape}")
    fig, (ax,) = _figure(5.2, 4.6)
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, label="models")
    ticks = np.arange(len(labels))[:: max(1, len(labels) // 20)]  # a regressor's many sizes: thin the ticks
    ax.set_xticks(ticks, [str(labels[i]) for i in ticks], rotation=90 if len(labels) > 10 else 0)
    ax.set_yticks(ticks, [str(labels[i]) for i in ticks])
    ax.set_xlabel("predicted size (rounded)")
    ax.set_ylabel("true size")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix if len(labels) <= 20 else np.zeros((0, 0))):
        ax.text(j, i, str(int(count)), ha="center", va="center",
                color="white" if count > threshold else "black", fontsize=8)
    return as_plain_text(fig)


def _value(entry, key):
    return entry[key] if isinstance(entry, dict) else getattr(entry, key)


def plot_metrics_by_method(entries: Iterable, title: str = "Leaderboard by config and method"):
    """Grouped bars of MAE, MAPE and accuracy: one group per config, one bar per method.

    ``entries`` are leaderboard ``Entry`` objects (or dicts with config, method, mae,
    mape, accuracy, MAPE and accuracy as the metric's fractions, drawn in percent); where a
    method has several entries on a config, its best (lowest MAE) is drawn.  Bar containers are labelled with the method name.
    """
    best: dict[tuple[str, str], object] = {}
    for entry in entries:
        key = (_value(entry, "config"), _value(entry, "method"))
        if key not in best or _value(entry, "mae") < _value(best[key], "mae"):
            best[key] = entry
    configs = sorted({c for c, _ in best})
    methods = sorted({m for _, m in best})
    fig, axes = _figure(5.0 * 3, 4.2, ncols=3)
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(configs))
    for ax, metric in zip(axes, ("mae", "mape", "accuracy")):
        for i, method in enumerate(methods):
            heights = [for_display(metric, float(_value(best[(c, method)], metric))) if (c, method) in best
                       else np.nan for c in configs]  # MAPE and accuracy are fractions: bars in percent
            ax.bar(x + (i - (len(methods) - 1) / 2) * width, heights, width, label=method)
        ax.set_xticks(x, configs, rotation=20, ha="right")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.set_title(METRIC_LABELS[metric].split(" ")[0])
        ax.grid(axis="y", alpha=0.3)
    if methods:
        axes[0].legend(fontsize=8)
    else:
        axes[1].text(0.5, 0.5, "no entries yet", ha="center", va="center", transform=axes[1].transAxes)
    fig.suptitle(title)
    return as_plain_text(fig)


def plot_accuracy_per_size(series: dict[str, dict], title: str = "Accuracy per dataset size"):
    """Accuracy against the true dataset size: one line per entry.

    ``series`` maps a label (an entry's method) to ``{size: accuracy}``, accuracy as a
    fraction (drawn in percent), e.g. the ``per_size`` numbers of the metric.
    """
    fig, (ax,) = _figure(7.2, 4.4)
    sizes = sorted({float(s) for values in series.values() for s in values})
    positions = {size: i for i, size in enumerate(sizes)}
    for label, values in series.items():
        points = sorted((float(s), for_display("accuracy", float(a))) for s, a in values.items())
        ax.plot([positions[s] for s, _ in points], [a for _, a in points], marker="o", label=label)
    ax.set_xticks(range(len(sizes)), [f"{s:g}" for s in sizes])
    ax.set_xlabel("true dataset size (images)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no entries yet", ha="center", va="center", transform=ax.transAxes)
    return as_plain_text(fig)


def plot_norm_vs_size(dataset_sizes: Sequence, norms: Sequence, title: str = "LoRA norm against dataset size"):
    """The paper's Fig. 2a: the distribution of a per-model norm (e.g. the mean Frobenius
    norm over layers) for each dataset size, as one box per size."""
    sizes = np.asarray(dataset_sizes)
    values = np.asarray(norms, dtype=float)
    if sizes.shape != values.shape:
        raise ValueError(f"{len(sizes)} dataset sizes for {len(values)} norms: give one norm per model")
    labels = sorted(set(sizes.tolist()))
    fig, (ax,) = _figure()
    positions = np.arange(1, len(labels) + 1)
    ax.boxplot([values[sizes == s] for s in labels], positions=positions, medianprops={"gid": "median"})
    ax.set_xticks(positions, [str(s) for s in labels])
    ax.set_xlabel("dataset size (images)")
    ax.set_ylabel("mean Frobenius norm of BA")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return as_plain_text(fig)


def plot_layer_accuracy(layer_names: Sequence[str], accuracies: Sequence, title: str = "Accuracy per layer"):
    """Fig. 3-style: the accuracy of each layer's classifier alone, one bar per layer."""
    accuracies = np.asarray(accuracies, dtype=float)
    if len(layer_names) != len(accuracies):
        raise ValueError(f"{len(layer_names)} layer names for {len(accuracies)} accuracies")
    fig, (ax,) = _figure(max(6.4, 0.18 * len(layer_names)), 4.8)
    ax.bar(np.arange(len(layer_names)), accuracies, color="tab:blue")
    ax.set_xticks(np.arange(len(layer_names)), list(layer_names), rotation=90, fontsize=6)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("layer")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return as_plain_text(fig)


def plot_accuracy_vs_train_size(n_train: Sequence, mean: Sequence, std: Sequence | None = None,
                                title: str = "Accuracy against training micro-datasets"):
    """Fig. 5: mean accuracy (± std over draws) against the number of training micro-datasets."""
    n_train = np.asarray(n_train)
    mean = np.asarray(mean, dtype=float)
    std = np.zeros_like(mean) if std is None else np.asarray(std, dtype=float)
    if not (n_train.shape == mean.shape == std.shape):
        raise ValueError(f"n_train, mean and std must have one value each per point, got "
                         f"{n_train.shape}, {mean.shape}, {std.shape}")
    fig, (ax,) = _figure()
    ax.errorbar(n_train, mean, yerr=std, marker="o", capsize=3)
    ax.fill_between(n_train, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("training micro-datasets")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return as_plain_text(fig)
