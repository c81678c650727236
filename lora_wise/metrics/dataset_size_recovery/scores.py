"""The numbers behind the dataset size recovery metric, with no dependency beyond numpy (and lora_wise.errors).

``dataset_size_recovery.py`` (the ``evaluate`` module) wraps these functions; the
leaderboard and the protocol runner call them directly, so scoring a submission
does not import ``evaluate`` (which pulls in much of transformers).  ``evaluate``
copies this file next to the script when it loads the module.
"""

from __future__ import annotations

import numpy as np

# Absolute, not relative: `evaluate` runs a copy of this file outside the package.
from lora_wise.errors import DatasetSizeRecoveryInputError

#: The metrics returned as fractions, as ``evaluate``'s own metrics return them (accuracy 0.861,
#: MAPE 0.0397); tables print them in percent through :func:`for_display`.
FRACTIONS = ("mape", "accuracy")
#: How tables head each metric's column, in the units :func:`for_display` gives.
DISPLAY_LABELS = {"mae": "MAE", "mape": "MAPE (%)", "accuracy": "accuracy (%)"}


def for_display(metric: str, value: float) -> float:
    """A metric as tables print it: MAE in images, MAPE and accuracy in percent.

    >>> for_display("accuracy", 0.861), for_display("mae", 1.48)
    (86.1, 1.48)
    """
    return round(value * 100.0, 12) if metric in FRACTIONS else value


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
        "mape": float((errors / references).mean()),
        "accuracy": float((np.rint(predictions) == references).mean()),
    }


def compute_metrics(predictions, references, per_size: bool = False, confusion_matrix: bool = False) -> dict:
    """The metric without ``evaluate``'s machinery: same inputs, same checks, same numbers."""
    predictions = _as_array(predictions, "predictions")
    references = _as_array(references, "references")
    _check(predictions, references)
    result = _summary(predictions, references)
    sizes = np.unique(references)
    if per_size:
        result["per_size"] = {
            int(size) if float(size).is_integer() else float(size):
                dict(_summary(predictions[references == size], references[references == size]),
                     count=int((references == size).sum()))
            for size in sizes
        }
    if confusion_matrix:
        # As scikit-learn's: one row and column per size that is true or predicted (a prediction
        # read as the integer it rounds to, as accuracy reads it), so the diagonal is the hits.
        predicted = np.round(predictions)
        labels = np.union1d(sizes, predicted)
        matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
        np.add.at(matrix, (np.searchsorted(labels, references), np.searchsorted(labels, predicted)), 1)
        result["confusion_matrix"] = {"labels": [int(x) if float(x).is_integer() else float(x) for x in labels],
                                      "matrix": matrix.tolist()}
    return result
