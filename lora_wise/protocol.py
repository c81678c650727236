"""Run a method over the standard split or the paper's 10 draws and summarise it.

A method is anything with ``fit(train, sizes)`` and ``predict(test)`` over model sets
(:mod:`lora_wise.methods`); the built-in baselines are methods like any other.  For each
draw a fresh instance is fitted on the models of the train micro-datasets and predicts
the models of the test micro-datasets, which it sees without their sizes, under opaque ids and
in a shuffled order (:func:`blind`); the runner maps the predictions back to the real model ids
and the dataset size recovery metric scores them.  The summary is the mean and standard deviation
over draws (``numpy.std``, ddof=0), printed beside the paper's figure where the paper
reports one (for the built-in baselines).
"""

from __future__ import annotations

import copy
import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .baselines import BASELINES, baseline_class, parse_matrices
from .configs import BenchmarkConfig, get_config
from .errors import DatasetLayoutError, MethodError, OptionError
from .features import MATRICES, FeatureTable
from .methods import ModelSet, check_predictions, class_reference, method_name, method_params
from .metrics.dataset_size_recovery.scores import DISPLAY_LABELS, compute_metrics, for_display
from .paper import PaperResult, paper_result
from .results import METRICS, PROTOCOLS
from .splits import SEED, Split, draws

if TYPE_CHECKING:
    from .data import WeightsByModel


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
    #: Where the method's class lives: ``module:Class`` or ``file.py:Class``.
    method_class: str = ""
    #: A built-in baseline (``BASELINES``): the paper may report a figure for it.
    builtin: bool = False

    def mean(self, metric: str) -> float:
        return float(np.mean([d.metrics[metric] for d in self.draws]))

    def std(self, metric: str) -> float:
        return float(np.std([d.metrics[metric] for d in self.draws]))

    def summary(self) -> dict:
        return {m: {"mean": self.mean(m), "std": self.std(m)} for m in METRICS}

    @property
    def paper(self) -> PaperResult | None:
        """The paper's row for exactly this experiment, or None where the paper reports none."""
        if not self.builtin:
            return None
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
        for metric in METRICS:  # MAPE and accuracy are fractions; the table prints percent
            ours = f"{for_display(metric, self.mean(metric)):.2f} ± {for_display(metric, self.std(metric)):.2f}"
            theirs = (f"{for_display(metric, getattr(paper, metric)):.2f} ± "
                      f"{for_display(metric, getattr(paper, metric + '_std')):.2f}" if paper else "-")
            lines.append(f"{DISPLAY_LABELS[metric]:<14}{ours:>20}{theirs:>20}")
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


def _options(cls: type) -> list[str]:
    import inspect

    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]


def method_factory(method: Any, options: dict) -> tuple[Callable[[], Any], Any]:
    """A maker of fresh, unfitted instances of ``method`` (a baseline name, a class or an instance), and one instance."""
    if isinstance(method, (str, type)):
        cls = baseline_class(method) if isinstance(method, str) else method
        try:
            template = cls(**options)
        except TypeError as exc:  # an option the constructor does not take
            given = ", ".join(f"{k}={v!r}" for k, v in options.items())
            raise MethodError(f"{cls.__name__}({given}): {exc}; its options: "
                              f"{', '.join(_options(cls)) or 'none'}") from None
        if isinstance(method, type):
            return (lambda: method(**options)), template
    else:
        if options:
            raise MethodError("options go with a method's name or class, not with an instance (it has its own)")
        template = method
    if not callable(getattr(template, "fit", None)) or not callable(getattr(template, "predict", None)):
        raise MethodError(f"{type(template).__name__} is not a method: it needs fit(train, sizes) and predict(test)")
    if callable(getattr(template, "clone", None)):
        return template.clone, template
    return (lambda: copy.deepcopy(template)), template


def run_protocol(table: FeatureTable, config: str | BenchmarkConfig, method: Any = "dsire",
                 protocol: str = "standard", train_micro_datasets: int | None = None,
                 weights: "WeightsByModel | None" = None, **options) -> ProtocolResult:
    """Fit and score ``method`` on each draw of ``protocol`` over the models in ``table``.

    ``method`` is a baseline's name (``dsire``; ``options`` go to it: k, vote, matrices ...), a
    method class (instantiated for each draw with ``options``) or a method instance (copied,
    unfitted, for each draw): anything with ``fit(train, sizes)`` and ``predict(test)`` over
    :class:`~lora_wise.methods.ModelSet` s.  ``weights`` (a ``lora_wise.data.WeightsByModel``)
    reads a model's LoRA by id, for methods that call ``models.weights(i)``; each set gets a
    reader of its own models only.  The test set is shown as :func:`blind` makes it; the
    results (``DrawResult.model_ids``, ``predictions``) are in the table's order, by real id.
    ``train_micro_datasets`` trains on only the first n train micro-datasets of each draw (the
    paper's Fig. 5).
    """
    cfg = get_config(config) if isinstance(config, str) else config
    if protocol not in PROTOCOLS:
        raise OptionError(f"unknown protocol {protocol!r}: choose {' or '.join(PROTOCOLS)}")
    make, template = method_factory(method, options)
    params = method_params(template) or dict(options)
    steps = np.unique(table.steps)
    result = ProtocolResult(method=method_name(template), params=params, config=cfg, protocol=protocol,
                            step=int(steps[0]) if len(steps) == 1 else None,
                            method_class=class_reference(type(template)),
                            builtin=type(template) in BASELINES.values())
    for i, split in enumerate(draws(cfg, PROTOCOLS[protocol])):
        train_ids = split.train[:train_micro_datasets] if train_micro_datasets else split.train
        train_rows, test_rows = table.rows_of(train_ids), table.rows_of(split.test)
        if len(train_rows) == 0 or len(test_rows) == 0:
            side = "train" if len(train_rows) == 0 else "test"
            raise DatasetLayoutError(
                f"draw {i} of {cfg.name} has no {side} models among the {len(table)} models read "
                f"(its {side} micro-datasets: {sorted(split.train if side == 'train' else split.test)}); "
                f"build more micro-datasets (`lora-wise build --config {cfg.name}`)")
        train, test = table.subset(train_rows), table.subset(test_rows)
        test_set, order = blind(test, i, weights)  # opaque ids, shuffled: nothing that names a size
        model = make()
        model.fit(ModelSet.from_table(train, weights.only(train.model_ids) if weights is not None else None),
                  train.dataset_sizes.copy())
        shown = check_predictions(model.predict(test_set), test_set, result.method)
        predictions = np.empty_like(shown)
        predictions[order] = shown  # back to the table's order, whose real ids the results carry
        metrics = compute_metrics(predictions, test.dataset_sizes)
        result.draws.append(DrawResult(split=split, metrics=metrics, model_ids=test.model_ids,
                                       references=test.dataset_sizes, predictions=predictions))
    return result


def blind(test: FeatureTable, draw: int, weights: "WeightsByModel | None" = None) -> tuple[ModelSet, np.ndarray]:
    """The test models as a method is shown them, and the order they are shown in.

    Returns a :class:`~lora_wise.methods.ModelSet` of fresh arrays holding the models in a
    shuffled order under opaque ids (``model-0000``, ``model-0001``, ... in the order shown) and
    ``order``, the table row of each model shown: test model ``j`` is ``test``'s row
    ``order[j]``, so ``predictions[order] = shown`` puts a method's predictions back in the
    table's order.  A row id (``<config>/<micro_dataset>/n<size>``) names its size and the table
    is sorted by micro-dataset and size, so neither reaches the method.  ``weights(i)`` reads
    the model shown at ``i`` without its safetensors metadata, through a reader that knows only
    the opaque names (:meth:`lora_wise.data.WeightsByModel.only`).

    The order is seeded by the split seed, the draw and the test models' ‖BA‖_F in the table's
    order: the same dataset gives the same order on every run, while a method, which sees the
    features only shuffled, cannot recompute the seed (a seed it could recompute would undo the
    shuffle).
    """
    n = len(test)
    digest = hashlib.sha256(f"lora-wise test order/{SEED}/{draw}/{n}/".encode())
    digest.update(np.ascontiguousarray(test.norms["BA"], dtype=np.float32).tobytes())
    order = np.random.default_rng(int.from_bytes(digest.digest()[:8], "little")).permutation(n)
    names = [f"model-{j:0{max(4, len(str(n - 1)))}d}" for j in range(n)]
    reader = weights.only([test.model_ids[k] for k in order], names, metadata=False) if weights is not None else None
    spectra = {m: np.ascontiguousarray(v[order]) for m, v in test.sv.items()}
    norms = {m: np.ascontiguousarray(v[order]) for m, v in test.norms.items()}
    return ModelSet(names, test.layer_names, spectra, norms, reader), order


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
