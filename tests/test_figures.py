"""The shared figures draw the data they are given (checked on the axes, not just 'no exception')."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from lora_wise import figures
from lora_wise.leaderboard.entries import Entry


def _png_ok(fig) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


def test_importing_figures_does_not_import_matplotlib():
    # the module is already imported above; matplotlib only appears once a function is called
    import subprocess

    code = "import lora_wise.figures, sys; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_confusion_matrix_shows_counts_and_labels():
    labels = [1, 10, 50]
    matrix = [[3, 1, 0], [0, 4, 2], [0, 0, 5]]
    fig = figures.plot_confusion_matrix(labels, matrix, title="demo")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), np.array(matrix))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "10", "50"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "10", "50"]
    assert [t.get_text() for t in ax.texts] == [str(v) for row in matrix for v in row]
    assert ax.get_title() == "demo"
    _png_ok(fig)
    with pytest.raises(ValueError, match="must be 3x3"):
        figures.plot_confusion_matrix(labels, [[1, 2], [3, 4]])


def _entry(method, config, mae, mape, accuracy):
    return Entry(method=method, config=config, split="test", dataset="d",
                 metrics={"mae": mae, "mape": mape, "accuracy": accuracy}, predictions={"m": 1.0})


def test_metrics_by_method_draws_the_best_entry_per_method_and_config():
    # the metric's fractions for MAPE and accuracy, drawn in percent
    entries = [_entry("DSiRe", "mini_low_r8", 0.7, 0.16, 0.48), _entry("DSiRe", "mini_low_r8", 0.5, 0.12, 0.6),
               _entry("Frob", "mini_low_r8", 0.6, 0.15, 0.51), _entry("Frob", "mini_medium_r8", 6.4, 0.24, 0.53)]
    fig = figures.plot_metrics_by_method(entries)
    mae_ax, mape_ax, acc_ax = fig.axes[:3]
    assert [t.get_text() for t in mae_ax.get_xticklabels()] == ["mini_low_r8", "mini_medium_r8"]
    bars = {c.get_label(): [b.get_height() for b in c] for c in mae_ax.containers}
    assert bars["DSiRe"][0] == 0.5 and np.isnan(bars["DSiRe"][1])  # best of two; absent on medium
    assert bars["Frob"] == [0.6, 6.4]
    assert [b.get_height() for b in acc_ax.containers[0]][0] == 60.0  # fractions drawn in percent
    assert [b.get_height() for b in mape_ax.containers[1]] == pytest.approx([15.0, 24.0])
    _png_ok(fig)
    assert figures.plot_metrics_by_method([]).axes[1].texts[0].get_text() == "no entries yet"


def test_norm_vs_size_boxes_hold_each_sizes_norms():
    sizes = [1, 1, 1, 10, 10, 10, 50, 50, 50]
    norms = [3.0, 4.0, 5.0, 2.0, 2.5, 3.0, 1.0, 1.2, 1.4]
    fig = figures.plot_norm_vs_size(sizes, norms)
    ax = fig.axes[0]
    medians = [(line.get_xdata().mean(), line.get_ydata()[0]) for line in ax.lines if line.get_gid() == "median"]
    assert medians == [(1.0, 4.0), (2.0, 2.5), (3.0, 1.2)]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "10", "50"]
    _png_ok(fig)
    with pytest.raises(ValueError, match="one norm per model"):
        figures.plot_norm_vs_size([1, 2], [1.0])


def test_layer_accuracy_one_bar_per_layer():
    names = ["down.0.to_q", "down.0.to_k", "mid.to_v"]
    fig = figures.plot_layer_accuracy(names, [40.0, 55.5, 70.0])
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [40.0, 55.5, 70.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    with pytest.raises(ValueError):
        figures.plot_layer_accuracy(names, [1.0])


def test_accuracy_vs_train_size_plots_mean_and_std():
    n, mean, std = [1, 3, 5, 10, 15], [20.0, 35.0, 45.0, 55.0, 60.0], [5.0, 4.0, 3.0, 2.0, 1.0]
    fig = figures.plot_accuracy_vs_train_size(n, mean, std)
    ax = fig.axes[0]
    line = ax.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), n)
    np.testing.assert_array_equal(line.get_ydata(), mean)
    (band,) = ax.collections[-1:]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(15.0) and ys.max() == pytest.approx(61.0)
    _png_ok(fig)


def test_user_text_is_drawn_as_typed_never_as_mathtext():
    """A method name with mathtext, which crashed `leaderboard serve` (ParseFatalException), draws as typed."""
    from matplotlib.text import Text

    hostile = "math $\\foo$ x"
    figs = [figures.plot_metrics_by_method([_entry(hostile, "mini_low_r8", 0.5, 0.1, 0.5)]),
            figures.plot_confusion_matrix([1, 2], [[1, 0], [0, 1]], title=f"{hostile} on mini_low_r8"),
            figures.plot_accuracy_per_size({hostile: {"1": 0.5, "2": 1.0}})]
    for fig in figs:
        texts = [t for t in fig.findobj(Text) if hostile in t.get_text()]
        assert texts and all(not t.get_parse_math() and not t.get_usetex() for t in texts)
        _png_ok(fig)  # draws: mathtext would raise "Unknown symbol: \\foo"
    unprotected = figures._figure()[0]
    unprotected.suptitle(hostile)
    with pytest.raises(ValueError, match=r"Unknown symbol: \\foo"):  # what as_plain_text prevents
        _png_ok(unprotected)


def test_accuracy_per_size_one_line_per_entry_in_percent():
    fig = figures.plot_accuracy_per_size({"a": {"1": 0.5, "10": 1.0, "2": 0.25}, "b": {"1": 1.0, "2": 0.0}})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "10"]
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}
    assert lines == {"a": ([0, 1, 2], [50.0, 25.0, 100.0]), "b": ([0, 1], [100.0, 0.0])}
    _png_ok(fig)
    assert figures.plot_accuracy_per_size({}).axes[0].texts[0].get_text() == "no entries yet"
