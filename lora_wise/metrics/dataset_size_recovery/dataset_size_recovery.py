"""Dataset size recovery metric: MAE, MAPE (%) and accuracy (%) of predicted dataset sizes.

An ``evaluate`` module: ``evaluate.load("lora_wise/metrics/dataset_size_recovery")`` loads it
from a checkout, and ``from lora_wise.metrics.dataset_size_recovery import DatasetSizeRecovery``
imports it from the installed package.  The numbers are the paper's (Salama et al. 2024, Sec. 6.1):

* ``mae``: mean absolute error in images;
* ``mape``: mean of ``|prediction - size| / size``, in percent of the true size;
* ``accuracy``: percent of predictions equal to the true size (a prediction counts when it
  rounds to the true integer size).

On request, ``per_size=True`` adds the three numbers for each true size and
``confusion_matrix=True`` adds the confusion matrix over the true sizes (predictions are
assigned to the nearest true size).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_CITATION = """\
@article{salama2024dataset,
  title={Dataset Size Recovery from LoRA Weights},
  author={Salama, Mohammad and Kahana, Jonathan and Horwitz, Eliahu and Hoshen, Yedid},
  journal={arXiv preprint arXiv:2406.19395},
  year={2024}
}
"""

_DESCRIPTION = """\
Scores predictions of the number of images a LoRA was fine-tuned on, as the LoRA-WiSE
benchmark reports them: mean absolute error (MAE), mean absolute percentage error (MAPE, in
percent of the true size) and accuracy (in percent). Optionally a per-size breakdown and a
confusion matrix over the true sizes.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): predicted dataset sizes, finite and positive.
    references (`list` of `int`): true dataset sizes, positive.
    per_size (`bool`, default False): also return `per_size`, the metrics for each true size.
    confusion_matrix (`bool`, default False): also return `confusion_matrix`, a dict with
        `labels` (the sorted true sizes) and `matrix` (rows: true size, columns: predicted
        size snapped to the nearest label).
Returns:
    mae (`float`): mean absolute error, in images. Lower is better.
    mape (`float`): mean absolute percentage error, in percent of the true size. Lower is better.
    accuracy (`float`): percent of predictions that round to the true size. Higher is better.
Examples:
    >>> metric = evaluate.load("lora_wise/metrics/dataset_size_recovery")
    >>> metric.compute(predictions=[1, 10, 30, 50], references=[1, 10, 20, 50])
    {'mae': 2.5, 'mape': 12.5, 'accuracy': 75.0}
"""


class DatasetSizeRecoveryInputError(ValueError):
    """Predictions or references that cannot be scored; the message says which and why."""


def _as_array(values, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DatasetSizeRecoveryInputError(f"{name} must be numbers: {exc}") from exc
    if array.ndim != 1:
        raise DatasetSizeRecoveryInputError(f"{name} must be a flat list of numbers, got shape {array.shape}")
    return array


def _check(predictions: np.ndarray, references: np.ndarray) -> None:
    if len(predictions) != len(references):
        raise DatasetSizeRecoveryInputError(
            f"{len(predictions)} predictions for {len(references)} references: give one prediction per model")
    if len(references) == 0:
        raise DatasetSizeRecoveryInputError("no predictions to score")
    for name, values in (("predictions", predictions), ("references", references)):
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise DatasetSizeRecoveryInputError(
                f"{name} hold {len(bad)} NaN or infinite values (first at position {bad[0]}); "
                f"every {name[:-1]} must be a finite number of images")
        bad = np.flatnonzero(values <= 0)
        if len(bad):
            raise DatasetSizeRecoveryInputError(
                f"{name} hold {len(bad)} non-positive values (first: {values[bad[0]]:g} at position "
                f"{bad[0]}); a dataset size is at least 1 image")


def _summary(predictions: np.ndarray, references: np.ndarray) -> dict:
    errors = np.abs(predictions - references)
    return {
        "mae": float(errors.mean()),
        "mape": float((errors / references).mean() * 100.0),
        "accuracy": float((np.rint(predictions) == references).mean() * 100.0),
    }


def compute_metrics(predictions, references, per_size: bool = False, confusion_matrix: bool = False) -> dict:
    """The metric without ``evaluate``'s machinery: same inputs, same checks, same numbers."""
    predictions = _as_array(predictions, "predictions")
    references = _as_array(references, "references")
    _check(predictions, references)
    result = _summary(predictions, references)
    labels = np.unique(references)
    if per_size:
        result["per_size"] = {
            int(size) if float(size).is_integer() else float(size):
                dict(_summary(predictions[references == size], references[references == size]),
                     count=int((references == size).sum()))
            for size in labels
        }
    if confusion_matrix:
        snapped = labels[np.argmin(np.abs(predictions[:, None] - labels[None, :]), axis=1)]
        matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
        np.add.at(matrix, (np.searchsorted(labels, references), np.searchsorted(labels, snapped)), 1)
        result["confusion_matrix"] = {"labels": [int(x) if float(x).is_integer() else float(x) for x in labels],
                                      "matrix": matrix.tolist()}
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DatasetSizeRecovery(evaluate.Metric):
    """MAE, MAPE (%) and accuracy (%) of dataset-size predictions (LoRA-WiSE)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("float64"),
                "references": datasets.Value("float64"),
            }),
            reference_urls=["https://arxiv.org/abs/2406.19395"],
        )

    def _compute(self, predictions, references, per_size: bool = False, confusion_matrix: bool = False):
        return compute_metrics(predictions, references, per_size=per_size, confusion_matrix=confusion_matrix)
