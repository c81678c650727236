"""The evaluate metric: loadable from its folder, importable from the package, exact, strict."""

from __future__ import annotations

from pathlib import Path

import evaluate
import numpy as np
import pytest

from lora_wise.metrics import METRIC_DIR, load
from lora_wise.metrics.dataset_size_recovery import DatasetSizeRecoveryInputError, compute_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(str(REPO / "lora_wise" / "metrics" / "dataset_size_recovery"))


def test_loads_from_its_path_in_the_repo_and_from_the_script(metric):
    by_script = evaluate.load(str(METRIC_DIR / "dataset_size_recovery.py"))
    for m in (metric, by_script, load()):
        assert m.compute(predictions=[1, 10, 30, 50], references=[1, 10, 20, 50]) == {
            "mae": 2.5, "mape": 0.125, "accuracy": 0.75}


def test_numbers_equal_an_independent_computation(metric):
    rng = np.random.default_rng(0)
    references = rng.choice([1, 10, 20, 30, 40, 50], size=200)
    predictions = np.where(rng.random(200) < 0.7, references, rng.choice([1, 10, 20, 30, 40, 50], size=200))
    result = metric.compute(predictions=predictions, references=references)
    mae = sum(abs(p - r) for p, r in zip(predictions, references)) / 200
    mape = sum(abs(p - r) / r for p, r in zip(predictions, references)) / 200  # fractions, as evaluate's
    accuracy = sum(p == r for p, r in zip(predictions, references)) / 200
    assert result["mae"] == pytest.approx(mae)
    assert result["mape"] == pytest.approx(mape)
    assert result["accuracy"] == pytest.approx(accuracy)


def test_batches_add_up(metric):
    metric.add_batch(predictions=[1, 2], references=[1, 3])
    metric.add_batch(predictions=[6], references=[6])
    assert metric.compute() == pytest.approx({"mae": 1 / 3, "mape": 1 / 9, "accuracy": 2 / 3})


def test_per_size_breakdown_and_confusion_matrix(metric):
    result = metric.compute(predictions=[1, 2, 2, 6, 5], references=[1, 2, 3, 6, 6],
                            per_size=True, confusion_matrix=True)
    assert result["per_size"][3] == {"mae": 1.0, "mape": pytest.approx(1 / 3), "accuracy": 0.0, "count": 1}
    assert result["per_size"][6]["accuracy"] == 0.5 and result["per_size"][6]["count"] == 2
    assert result["confusion_matrix"]["labels"] == [1, 2, 3, 5, 6]  # true or predicted
    # rows: true size; columns: predicted size (5 is no true size: its own column, and a zero row)
    assert result["confusion_matrix"]["matrix"] == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 0, 0, 0],
                                                    [0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]


def test_confusion_matrix_equals_scikit_learn_and_its_diagonal_is_the_accuracy():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    references = rng.choice([1, 10, 20, 30, 40, 50], size=200)
    predictions = np.clip(references + rng.normal(0, 4, size=200), 0.5, None)  # a regressor
    result = compute_metrics(predictions, references, confusion_matrix=True)
    labels, matrix = result["confusion_matrix"]["labels"], np.array(result["confusion_matrix"]["matrix"])
    assert np.array_equal(matrix, confusion_matrix(references, np.round(predictions), labels=labels))
    assert np.trace(matrix) / len(references) == pytest.approx(result["accuracy"])
    assert matrix.sum() == len(references)


def test_continuous_predictions_count_when_they_round_to_the_size():
    assert compute_metrics([9.6, 10.4, 10.6], [10, 10, 10])["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("predictions,references,message", [
    ([1, float("nan")], [1, 2], "NaN or infinite"),
    ([1, float("inf")], [1, 2], "NaN or infinite"),
    ([1, 0], [1, 2], "non-positive"),
    ([1, 2], [1, -2], "non-positive"),
    ([1, 2, 3], [1, 2], "3 predictions for 2 references"),
    ([], [], "no predictions"),
    (["a"], [1], "must be numbers"),
])
def test_bad_inputs_are_clear_errors(predictions, references, message):
    with pytest.raises(DatasetSizeRecoveryInputError, match=message):
        compute_metrics(predictions, references)


def test_evaluate_module_raises_the_same_errors(metric):
    # evaluate imports its own copy of the script, so its error class is a copy too: match ValueError
    with pytest.raises(ValueError, match="non-positive"):
        metric.compute(predictions=[1, -1], references=[1, 2])
    with pytest.raises(ValueError, match="predictions"):
        metric.compute(predictions=[1, 2], references=[1])


def test_metric_card_has_yaml_front_matter():
    card = (METRIC_DIR / "README.md").read_text()
    assert card.startswith("---\n") and "title: Dataset Size Recovery" in card.split("---")[1]
