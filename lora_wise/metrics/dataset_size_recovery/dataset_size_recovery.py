"""Dataset size recovery metric: MAE, MAPE and accuracy of predicted dataset sizes.

An ``evaluate`` module: ``evaluate.load(str(lora_wise.metrics.METRIC_DIR))`` loads it from the
installed package (``lora_wise.metrics.load()`` does just that), and ``from
lora_wise.metrics.dataset_size_recovery import DatasetSizeRecovery`` imports it.  The numbers
are the paper's (Salama et al. 2024, Sec. 6.1), returned as ``evaluate``'s own metrics return
theirs, rates as fractions:

* ``mae``: mean absolute error in images;
* ``mape``: mean of ``|prediction - size| / size``, a fraction of the true size (0.0397 is 3.97%);
* ``accuracy``: the fraction of predictions equal to the true size (a prediction counts when it
  rounds to the true integer size).

Tables print MAPE and accuracy in percent (``scores.for_display``), as the paper does.

On request, ``per_size=True`` adds the three numbers for each true size and
``confusion_matrix=True`` adds the confusion matrix over the sizes that are true or
predicted (predictions rounded as accuracy reads them, so the diagonal holds the hits).
"""

from __future__ import annotations

import datasets
import evaluate

from .scores import DatasetSizeRecoveryInputError, compute_metrics

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
benchmark reports them: mean absolute error (MAE, in images), mean absolute percentage error
(MAPE, a fraction of the true size) and accuracy (a fraction of the models). Optionally a
per-size breakdown and a confusion matrix over the true sizes.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): predicted dataset sizes, finite and positive.
    references (`list` of `int`): true dataset sizes, positive.
    per_size (`bool`, default False): also return `per_size`, the metrics for each true size.
    confusion_matrix (`bool`, default False): also return `confusion_matrix`, a dict with
        `labels` (the sorted sizes that are true or predicted, predictions rounded) and
        `matrix` (rows: true size, columns: predicted size).
Returns:
    mae (`float`): mean absolute error, in images. Lower is better.
    mape (`float`): mean absolute percentage error, as a fraction of the true size (0.125 is
        12.5%). Lower is better.
    accuracy (`float`): the fraction of predictions that round to the true size, in [0, 1].
        Higher is better.
Examples:
    >>> import evaluate
    >>> from lora_wise.metrics import METRIC_DIR
    >>> metric = evaluate.load(str(METRIC_DIR))  # the module inside the installed package
    >>> metric.compute(predictions=[1, 10, 30, 50], references=[1, 10, 20, 50])
    {'mae': 2.5, 'mape': 0.125, 'accuracy': 0.75}
    >>> result = metric.compute(predictions=[1, 2, 2, 6], references=[1, 2, 3, 6], per_size=True)
    >>> result["per_size"][3]
    {'mae': 1.0, 'mape': 0.333..., 'accuracy': 0.0, 'count': 1}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DatasetSizeRecovery(evaluate.Metric):
    """MAE, MAPE and accuracy (fractions) of dataset-size predictions (LoRA-WiSE)."""

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
