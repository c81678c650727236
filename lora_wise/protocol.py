"""Run a baseline over the standard split or the paper's 10 draws and summarise it.

For each draw the baseline is fitted on the models of the train micro-datasets
and predicts the models of the test micro-datasets; the dataset size recovery
metric scores the predictions.  The summary is the mean and standard deviation
over draws (``numpy.std``, ddof=0), printed beside the paper's figure where the
paper reports one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .baselines import LayerwiseVote, get_baseline, parse_matrices
from .configs import BenchmarkConfig, get_config
from .errors import DatasetLayoutError, OptionError
from .features import MATRICES, FeatureTable
from .metrics.dataset_size_recovery.scores import compute_metrics
from .paper import PaperResult, paper_result
from .splits import PAPER_DRAWS, Split, draws

PROTOCOLS = {"standard": 1, "paper": PAPER_DRAWS}
METRICS = ("mae", "mape", "accuracy")


@dataclass
class DrawResult:
    """One train/test draw: the split, the scores, and the test predictions."""

    split: Split
    metrics: dict
    model_ids: list[str]
    references: np.ndarray
    predictions: np.ndarray


@dataclass
class ProtocolResult:
    method: str
    params: dict
    config: BenchmarkConfig
    protocol: str
    draws: list[DrawResult] = field(default_factory=list)
    step: int | None = None  # the snapshot step of the models scored (None: mixed steps)

    def mean(self, metric: str) -> float:
        return float(np.mean([d.metrics[metric] for d in self.draws]))

    def std(self, metric: str) -> float:
        return float(np.std([d.metrics[metric] for d in self.draws]))

    def summary(self) -> dict:
        return {m: {"mean": self.mean(m), "std": self.std(m)} for m in METRICS}

    @property
    def paper(self) -> PaperResult | None:
        """The paper's row for exactly this experiment, or None where the paper reports none."""
        key = paper_row_key(self.method, self.params, self.config, self.step)
        return paper_result(self.config, *key) if key else None

    @property
    def standard(self) -> DrawResult:
        """The first draw: the standard split, whose predictions go to the leaderboard."""
        return self.draws[0]

    def format(self) -> str:
        """A small table: ours (mean ± std) beside the paper's where it exists."""
        paper = self.paper
        n = len(self.draws)
        title = (f"{self.method} on {self.config.name} ({self.protocol} protocol, {n} draw"
                 f"{'s' if n > 1 else ''}, {len(self.standard.model_ids)} test models in the first)")
        lines = [title, f"{'metric':<14}{'ours':>20}{'paper':>20}"]
        for metric, label, attr in (("mae", "MAE", "mae"), ("mape", "MAPE (%)", "mape"),
                                    ("accuracy", "Acc (%)", "accuracy")):
            ours = f"{self.mean(metric):.2f} ± {self.std(metric):.2f}"
            theirs = (f"{getattr(paper, attr):.2f} ± {getattr(paper, attr + '_std'):.2f}"
                      if paper else "-")
            lines.append(f"{label:<14}{ours:>20}{theirs:>20}")
        if paper is None and self.config.miniature:
            lines.append("(the paper reports no figure for miniature configs)")
        return "\n".join(lines)


#: The paper's Table 5 names for the layer-wise classifiers other than k-NN.
PAPER_CLASSIFIERS = {"lda": "gda", "ridge": "ridge-regression"}


def paper_row_key(method: str, params: dict, config: BenchmarkConfig,
                  step: int | None) -> tuple[str, str] | None:
    """``(method, variant)`` of the paper's row for a baseline run with ``params`` at ``step``.

    None for an experiment the paper never ran: mixed steps, other k or normalisation, or two options
    varied at once.  Table 8 varies the step; Table 5 the vote and the classifier; Table 9
    the matrices (given in any order).
    """
    if step is None or params.get("k", 1) != 1 or params.get("normalize", "global") != "global":
        return None  # models of mixed steps, or an option the paper never varied
    variants = []
    if step != config.checkpoint_step:
        variants.append(f"steps={step}")
    matrices = set(parse_matrices(params.get("matrices", "all")))
    if matrices != set(MATRICES):
        variants.append("matrices=" + "+".join(m for m in MATRICES if m in matrices))
    if params.get("vote", "majority") != "majority":
        variants.append(f"{params['vote']}-vote")
    classifier = params.get("classifier", "knn")
    if classifier != "knn":
        return None if variants else (PAPER_CLASSIFIERS[classifier], "")
    if len(variants) > 1:
        return None
    return method, variants[0] if variants else ""


def run_protocol(table: FeatureTable, config: str | BenchmarkConfig, method: str | LayerwiseVote = "dsire",
                 protocol: str = "standard", train_micro_datasets: int | None = None,
                 **options) -> ProtocolResult:
    """Fit and score ``method`` on each draw of ``protocol`` over the models in ``table``.

    ``train_micro_datasets`` trains on only the first n train micro-datasets of each
    draw (the paper's Fig. 5); ``options`` go to the baseline (k, vote, matrices ...).
    """
    cfg = get_config(config) if isinstance(config, str) else config
    if protocol not in PROTOCOLS:
        raise OptionError(f"unknown protocol {protocol!r}: choose {' or '.join(PROTOCOLS)}")
    template = get_baseline(method, **options) if isinstance(method, str) else method
    steps = np.unique(table.steps)
    result = ProtocolResult(method=template.name, params=template.params(), config=cfg, protocol=protocol,
                            step=int(steps[0]) if len(steps) == 1 else None)
    for i, split in enumerate(draws(cfg, PROTOCOLS[protocol])):
        train_ids = split.train[:train_micro_datasets] if train_micro_datasets else split.train
        train_rows, test_rows = table.rows_of(train_ids), table.rows_of(split.test)
        if len(train_rows) == 0 or len(test_rows) == 0:
            side = "train" if len(train_rows) == 0 else "test"
            raise DatasetLayoutError(
                f"draw {i} of {cfg.name} has no {side} models among the {len(table)} models read "
                f"(its {side} micro-datasets: {sorted(split.train if side == 'train' else split.test)}); "
                f"build more micro-datasets (`lora-wise build --config {cfg.name}`)")
        model = template.clone()
        model.fit(table.subset(train_rows))
        test = table.subset(test_rows)
        predictions = model.predict(test)
        metrics = compute_metrics(predictions, test.dataset_sizes)
        result.draws.append(DrawResult(split=split, metrics=metrics, model_ids=test.model_ids,
                                       references=test.dataset_sizes, predictions=predictions))
    return result


def write_predictions(draw: DrawResult, path: str | Path) -> Path:
    """Write ``model_id,prediction`` rows: the leaderboard's submission format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model_id", "prediction"])
        for model_id, prediction in zip(draw.model_ids, draw.predictions.tolist()):
            writer.writerow([model_id, prediction])
    return path
