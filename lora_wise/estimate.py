"""Estimate how many images fine-tuned one LoRA, from a reference set of LoRA-WiSE models, and say how sure.

An auditor holds a LoRA file from a model hub or a training tool; the reference
is a LoRA-WiSE config built on the same backbone and rank (a folder or a Hub
repo).  :class:`DatasetSizeEstimator` fits a baseline (DSiRe by default) on
every reference snapshot of the config -- both splits and **every training
step**: nothing is held out, the LoRA to audit is the test -- and answers with
(:mod:`lora_wise.calibration` does the calibrated parts):

* **the classifier's estimate** -- the reference size the layer-wise classifiers vote for, with a
  conformal **interval** of reference sizes at a stated coverage (90% by default);
* **a continuous estimate** -- ridge regression of log n on the spectra, which can fall between
  the reference sizes, with its own conformal interval;
* **the training length** -- estimated by regression on the spectra, also beyond the references'
  steps; the size is estimated against the reference snapshots at the nearest reference step;
* **in distribution or not** -- a conformal out-of-distribution test (a training length beyond the
  references', or a distance to the nearest reference snapshot beyond theirs) at a stated
  false-alarm rate (1% by default); a flagged LoRA gets the reason among its warnings;
* how the classifiers voted and which reference snapshots they found nearest.

Intervals and the test are calibrated on the references by leaving one micro-dataset out;
``bench/estimates.py`` measures their coverage and false alarms on micro-datasets the references
never saw.  Which estimate to read: the classifier's when the LoRA was trained on one of the
reference sizes (the benchmark's setting, where it is exact more often); the continuous one when
its size may lie between them (a LoRA from elsewhere).

A LoRA that does not match the reference never gets a silent answer:

* **layers** -- adapted layers missing from the LoRA or absent from the
  reference raise :class:`IncompatibleLoRAError` naming a few of them and the
  counts; ``allow_partial=True`` restricts both sides to the common layers and
  warns;
* **shapes** -- a layer whose adapted weight has another shape means another
  backbone: an error naming the first such layer and both shapes;
* **rank** -- a LoRA of *higher* rank than the references is an error (its
  extra singular values have no reference to compare with); a LoRA of *lower*
  rank is zero-padded to the reference rank, exactly as the features of a
  rank-deficient layer are, with a warning;
* **scale** -- when the LoRA's ``alpha / r`` differs from the references' the
  spectrum of ``BA`` is scaled by it (A and B are not): a warning;
* **range** -- an estimate at the largest reference size (or the smallest when
  it is above 1) may be an under- (over-) estimate: a warning;
* **distribution** -- a LoRA unlike every reference (another training length, learning rate,
  image domain or backbone version) is flagged ``in_distribution = False`` with the reason.

Warnings are kept on the :class:`Estimate` and also issued as
:class:`EstimateWarning` through :mod:`warnings`.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .baselines import BASELINES, get_baseline
from .calibration import COVERAGE, FALSE_ALARM, Answer, Calibration, Interval, check_level
from .configs import BenchmarkConfig, get_config, iter_configs
from .errors import DatasetLayoutError, IncompatibleLoRAError, OptionError
from .features import FeatureTable, extract
from .lora import LoRASource, LoRAWeights, read_lora

#: How many layer names an error message lists before "...".
SHOWN = 4


class EstimateWarning(UserWarning):
    """The estimate was computed but something makes it less trustworthy."""


@dataclass
class ReferenceProfile:
    """What a LoRA must match: the reference models' layers, their shapes, rank and scale."""

    shapes: dict[str, tuple[int, int]]
    rank: int
    scales: dict[str, float]


@dataclass
class Neighbour:
    """A reference snapshot that some classifiers found nearest to the LoRA."""

    model_id: str
    step: int
    dataset_size: int
    classifiers: int


@dataclass
class Estimate:
    """The estimated dataset size of one LoRA, how sure it is, and why."""

    source: str
    naming: str
    config: str
    method: str
    params: dict
    prediction: int  # the classifier's answer: a reference size
    interval: Interval  # of reference sizes, at interval.coverage
    continuous: float  # the regression's answer, between reference sizes where it falls there
    continuous_interval: Interval
    step: int  # the reference step nearest the estimated training length: the size is estimated at it
    training_steps: float | None  # the estimated training length (None with references at one step)
    in_distribution: bool
    ood: dict  # false_alarm_rate, distance, threshold, p_value, training_length, nearest
    votes: dict[int, int]  # every reference size -> classifiers voting for it
    num_classifiers: int
    neighbours: list[Neighbour]  # most often nearest reference snapshots first
    layers_used: int
    lora_rank: int
    reference_rank: int
    reference_models: int
    reference_snapshots: int
    reference_sizes: tuple[int, ...]
    reference_steps: tuple[int, ...]
    reference_micro_datasets: int
    warnings: list[str] = field(default_factory=list)

    @property
    def vote_share(self) -> float:
        """Fraction of the classifiers that voted for the estimate (not a calibrated probability: see
        :attr:`interval`)."""
        return self.votes.get(self.prediction, 0) / self.num_classifiers

    def to_dict(self) -> dict:
        return {
            "lora": self.source, "naming": self.naming, "config": self.config, "method": self.method,
            "params": self.params, "estimated_dataset_size": self.prediction, "interval": self.interval.to_dict(),
            "continuous_estimate": {"dataset_size": round(self.continuous, 3),
                                    "interval": {k: round(v, 3) if isinstance(v, float) and k != "coverage" else v
                                                 for k, v in self.continuous_interval.to_dict().items()}},
            "estimated_step": self.step,
            "estimated_training_steps": None if self.training_steps is None else round(self.training_steps, 1),
            "in_distribution": self.in_distribution,
            "out_of_distribution_test": dict(self.ood),
            "calibration": {"method": "split conformal, leave one micro-dataset out (crepes)",
                            "micro_datasets": self.reference_micro_datasets,
                            "reference_snapshots": self.reference_snapshots},
            "vote_share": self.vote_share, "num_classifiers": self.num_classifiers,
            "votes": [{"dataset_size": size, "classifiers": count} for size, count in self.votes.items()],
            "neighbours": [n.__dict__ for n in self.neighbours],
            "layers_used": self.layers_used, "lora_rank": self.lora_rank,
            "reference_rank": self.reference_rank, "reference_models": self.reference_models,
            "reference_sizes": list(self.reference_sizes), "reference_steps": list(self.reference_steps),
            "warnings": list(self.warnings),
        }

    def format(self, top: int = 5, width: int = 30) -> str:
        """A human-readable report with a text histogram of the votes."""
        level = f"{100 * self.interval.coverage:g}%"
        low, high = self.interval.low, self.interval.high
        span = f"{low}" if low == high else f"{low} to {high}"
        c_low, c_high = self.continuous_interval.low, self.continuous_interval.high
        ood = self.ood
        lines = [
            f"LoRA           {self.source} ({self.naming} naming, {self.layers_used} layers used, "
            f"rank {self.lora_rank})",
            f"reference      {self.config}: {self.reference_models} models ({self.reference_snapshots} snapshots at "
            f"step{'s' if len(self.reference_steps) != 1 else ''} {', '.join(map(str, self.reference_steps))}), "
            f"rank {self.reference_rank}, sizes {', '.join(map(str, self.reference_sizes))}",
            f"method         {self.method} ({', '.join(f'{k}={v}' for k, v in self.params.items())})",
            "",
            f"estimated dataset size: {self.prediction} image{'s' if self.prediction != 1 else ''} "
            f"({level} interval: {span}; a reference size, from the classifiers' vote)",
            f"continuous estimate:    {self.continuous:.3g} images ({level} interval: {c_low:.3g} to {c_high:.3g}; "
            f"by regression, may fall between reference sizes)",
            f"estimated training:     "
            + (f"{self.training_steps:.0f} steps (sizes compared at the nearest reference step, {self.step}; "
               if self.training_steps is not None else f"{self.step} steps (")
            + f"the references': {', '.join(map(str, self.reference_steps))})",
            f"in distribution:        "
            + (f"yes (nearest reference snapshot at {ood['distance']:.3g}, flagged beyond {ood['threshold']:.3g}; "
               f"{100 * ood['false_alarm_rate']:.2g}% false alarms)" if self.in_distribution
               else "NO: the estimates may be wrong (see the warnings)"),
            "",
            f"votes across layers (dataset size: classifiers; the estimate has {self.votes.get(self.prediction, 0)} "
            f"of {self.num_classifiers}, {100 * self.vote_share:.0f}%)",
        ]
        most = max(self.votes.values()) or 1
        pad = max(len(str(s)) for s in self.votes)
        for size, count in self.votes.items():
            bar = "#" * round(width * count / most)
            mark = "  <- estimate" if size == self.prediction else ""
            lines.append(f"  {size:>{pad}} | {bar:<{width}} {count}{mark}")
        lines += ["", "nearest reference snapshots (how many classifiers found each nearest)"]
        for n in self.neighbours[:top]:
            lines.append(f"  {n.model_id} at step {n.step}  size {n.dataset_size}  {n.classifiers} classifier"
                         f"{'s' if n.classifiers != 1 else ''}")
        if len(self.neighbours) > top:
            lines.append(f"  ... {len(self.neighbours) - top} more")
        if self.warnings:
            lines += ["", "warnings"] + [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)


def _names(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:SHOWN])
    return shown + (f", ... ({len(names) - SHOWN} more)" if len(names) > SHOWN else "")


def _restrict(table: FeatureTable, layers: tuple[str, ...]) -> FeatureTable:
    """The same models with only ``layers`` (in that order)."""
    if layers == table.layer_names:
        return table
    index = [table.layer_names.index(name) for name in layers]
    return FeatureTable(layer_names=layers, rank=table.rank,
                        sv={m: v[:, index] for m, v in table.sv.items()},
                        norms={m: v[:, index] for m, v in table.norms.items()},
                        model_ids=table.model_ids, dataset_sizes=table.dataset_sizes,
                        micro_dataset_indices=table.micro_dataset_indices, steps=table.steps)


def _same_backbone_configs(cfg: BenchmarkConfig, rank: int) -> list[str]:
    """Configs on the same backbone whose rank is at least ``rank``, same range first."""
    fitting = [c for c in iter_configs() if c.backbone_name == cfg.backbone_name and c.rank >= rank]
    return [c.name for c in sorted(fitting, key=lambda c: (c.data_range != cfg.data_range, c.rank))]


class DatasetSizeEstimator:
    """A baseline fitted on every reference snapshot of one config, calibrated, ready to estimate LoRAs.

    Build it once with :meth:`from_reference` and call :meth:`estimate` for each
    LoRA: the reference features are computed once, and the calibration (leave one
    micro-dataset out) once per set of layers used.  ``coverage`` is the intervals'
    (default 0.9), ``false_alarm`` the out-of-distribution test's rate (default 0.01).
    """

    def __init__(self, table: FeatureTable, profile: ReferenceProfile, config: str | BenchmarkConfig,
                 method: str = "dsire", *, coverage: float = COVERAGE, false_alarm: float = FALSE_ALARM,
                 progress: bool = False, **options):
        if method not in BASELINES:
            raise OptionError(f"unknown method {method!r}: choose {', '.join(BASELINES)}")
        self.table, self.profile = table, profile
        self.config = get_config(config) if isinstance(config, str) else config
        self.method, self.options = method, options
        self.coverage = check_level(coverage, "coverage")
        self.false_alarm = check_level(false_alarm, "the false-alarm rate")
        self.progress = progress
        self._template = get_baseline(method, **options)  # validates the options now
        self._fitted: dict[tuple[str, ...], Calibration] = {}

    @classmethod
    def from_reference(cls, reference: str | os.PathLike, config: str, method: str = "dsire",
                       progress: bool = False, *, coverage: float = COVERAGE, false_alarm: float = FALSE_ALARM,
                       **options) -> "DatasetSizeEstimator":
        """Read the reference snapshots of ``config`` (all splits, every step) from a folder or repo."""
        from .data import ALL_STEPS, feature_table, iter_models

        cfg = get_config(config)
        check_level(coverage, "coverage"), check_level(false_alarm, "the false-alarm rate")
        models = iter_models(reference, cfg.name)
        try:
            _, first = next(models)
        except StopIteration:
            raise DatasetLayoutError(f"{reference} [{cfg.name}] holds no models to compare with") from None
        finally:
            models.close()
        profile = ReferenceProfile(shapes={name: layer.shape for name, layer in first.items()}, rank=cfg.rank,
                                   scales={name: 1.0 if layer.scale is None else layer.scale
                                           for name, layer in first.items()})
        table = feature_table(reference, cfg.name, step=ALL_STEPS, progress=progress)
        return cls(table, profile, cfg, method, coverage=coverage, false_alarm=false_alarm, progress=progress,
                   **options)

    # ------------------------------------------------------------------ compatibility

    def _compatible_layers(self, weights: LoRAWeights, allow_partial: bool, source: str,
                           notes: list[str]) -> tuple[str, ...]:
        reference = self.table.layer_names
        missing = [n for n in reference if n not in weights]
        extra = [n for n in weights if n not in self.profile.shapes]
        common = tuple(n for n in reference if n in weights)
        if missing or extra:
            what = []
            if missing:
                what.append(f"{len(missing)} of the {len(reference)} reference layers are missing from it "
                            f"({_names(missing)})")
            if extra:
                what.append(f"it adapts {len(extra)} layer{'s' if len(extra) != 1 else ''} the references "
                            f"do not ({_names(extra)})")
            detail = "; ".join(what)
            if not common:
                raise IncompatibleLoRAError(
                    f"{source} shares no adapted layer with the {self.config.name} references: {detail}. "
                    f"It was fine-tuned on another backbone or adapts other modules; use references built "
                    f"on its backbone.")
            if not allow_partial:
                raise IncompatibleLoRAError(
                    f"{source} does not adapt the same layers as the {self.config.name} references: {detail}. "
                    f"Use references built with the same target modules, or pass --allow-partial "
                    f"(allow_partial=True) to estimate from the {len(common)} common layers only.")
            notes.append(f"estimated from the {len(common)} layers the LoRA shares with the references "
                         f"only ({detail})")
        for name in common:
            theirs, ours = self.profile.shapes[name], weights[name].shape
            if theirs != ours:
                others = sum(self.profile.shapes[n] != weights[n].shape for n in common)
                raise IncompatibleLoRAError(
                    f"{source} adapts {name} with a weight of shape {ours[0]}x{ours[1]} (out x in) but the "
                    f"{self.config.name} references' is {theirs[0]}x{theirs[1]} ({others} layer"
                    f"{'s' if others != 1 else ''} differ): it was fine-tuned on another backbone than "
                    f"{self.config.backbone_name}; use references built on its backbone.")
        return common

    def _check_rank(self, weights: LoRAWeights, layers: tuple[str, ...], source: str, notes: list[str]) -> int:
        ranks = {weights[n].rank for n in layers}
        rank, reference = max(ranks), self.profile.rank
        if rank > reference:
            bigger = _same_backbone_configs(self.config, rank)
            hint = (f"use references of rank {rank} or more (e.g. --config {bigger[0]})" if bigger
                    else f"build references of rank {rank} or more")
            raise IncompatibleLoRAError(
                f"{source} has rank {rank} but the {self.config.name} references have rank {reference}: its "
                f"extra singular values have nothing to compare with; {hint}.")
        if min(ranks) < reference:
            notes.append(f"the LoRA's rank ({'/'.join(map(str, sorted(ranks)))}) is below the references' "
                         f"({reference}): its spectra were zero-padded to rank {reference}; the estimate "
                         f"assumes rank does not change the spectrum's shape, which the paper does not test")
        return rank

    def _check_scale(self, weights: LoRAWeights, layers: tuple[str, ...], notes: list[str]) -> None:
        differ = Counter()
        unknown = 0
        for name in layers:
            theirs, ours = self.profile.scales[name], weights[name].scale
            if ours is None:
                unknown += theirs != 1.0
            elif not np.isclose(ours, theirs, rtol=1e-6):
                differ[(round(ours, 6), round(theirs, 6))] += 1
        for (ours, theirs), count in differ.items():
            notes.append(f"the LoRA's scale alpha/r is {ours:g} on {count} layer{'s' if count != 1 else ''} "
                         f"but the references' is {theirs:g}: the spectrum of BA is scaled by it and those "
                         f"of A and B are not, so the estimate may be off")
        if unknown:
            notes.append(f"the LoRA carries no alpha ({weights.naming} naming without metadata), so its "
                         f"scale was read as 1 on {unknown} layers where the references' differs")

    # ------------------------------------------------------------------ estimate

    def calibration(self, layers: tuple[str, ...] | None = None) -> Calibration:
        """The calibrated baseline on ``layers`` (default: all the references'), fitted on first use."""
        layers = self.table.layer_names if layers is None else layers
        fitted = self._fitted.get(layers)
        if fitted is None:
            fitted = self._fitted[layers] = Calibration(
                _restrict(self.table, layers), self._template, coverage=self.coverage,
                false_alarm=self.false_alarm).fit(progress=self.progress)
        return fitted

    def estimate(self, lora: LoRASource | LoRAWeights, *, allow_partial: bool = False,
                 name: str | None = None) -> Estimate:
        """Estimate the dataset size of one LoRA (a path, bytes, state dict or :class:`LoRAWeights`)."""
        source = name or (str(lora) if isinstance(lora, (str, os.PathLike)) else "the LoRA")
        weights = lora if isinstance(lora, LoRAWeights) else read_lora(lora, name=source)
        notes: list[str] = []
        layers = self._compatible_layers(weights, allow_partial, source, notes)
        rank = self._check_rank(weights, layers, source, notes)
        self._check_scale(weights, layers, notes)

        ordered = LoRAWeights(layers={n: weights[n] for n in layers}, naming=weights.naming,
                              metadata=weights.metadata)
        feats = extract(ordered, rank=self.table.rank)
        query = FeatureTable(layer_names=layers, rank=self.table.rank,
                             sv={m: v[None] for m, v in feats.sv.items()},
                             norms={m: v[None] for m, v in feats.norms.items()},
                             model_ids=[source], dataset_sizes=np.zeros(1, dtype=np.int64),
                             micro_dataset_indices=np.full(1, -1, dtype=np.int64),
                             steps=np.zeros(1, dtype=np.int64))
        calibration = self.calibration(layers)
        answer: Answer = calibration.answer(query)[0]
        model = calibration.size_model(answer.step)
        why = model.explain(query, 0)

        sizes = tuple(int(s) for s in model.classes_)
        votes = {size: int(why.votes.get(size, 0)) for size in sizes}
        table, rows_of = calibration.table, calibration.size_rows(answer.step)
        chosen = Counter(int(rows_of[row]) for rows in why.neighbour_rows for row in rows)
        neighbours = [Neighbour(model_id=table.model_ids[row], step=int(table.steps[row]),
                                dataset_size=int(table.dataset_sizes[row]), classifiers=c)
                      for row, c in sorted(chosen.items(),
                                           key=lambda item: (-item[1], table.model_ids[item[0]], item[0]))]
        notes.extend(calibration.notes)
        if not answer.in_distribution:
            notes.append(calibration.describe_outlier(answer))
        if why.prediction == max(sizes):
            notes.append(f"the estimate is the largest reference size ({max(sizes)}): the dataset may be "
                         f"larger than any reference model's; use references of a higher range")
        elif why.prediction == min(sizes) and min(sizes) > 1:
            notes.append(f"the estimate is the smallest reference size ({min(sizes)}): the dataset may be "
                         f"smaller than any reference model's; use references of a lower range")
        for note in notes:
            warnings.warn(f"{source}: {note}", EstimateWarning, stacklevel=2)
        nearest = answer.nearest
        return Estimate(
            source=source, naming=weights.naming, config=self.config.name, method=self.method,
            params=model.params(), prediction=int(why.prediction), interval=answer.interval,
            continuous=answer.continuous, continuous_interval=answer.continuous_interval, step=answer.step,
            training_steps=answer.training_steps, in_distribution=answer.in_distribution,
            ood={**answer.ood_dict(),
                 "nearest": {"model_id": table.model_ids[nearest], "step": int(table.steps[nearest]),
                             "dataset_size": int(table.dataset_sizes[nearest])}},
            votes=votes, num_classifiers=len(why.classifier_votes), neighbours=neighbours, layers_used=len(layers),
            lora_rank=rank, reference_rank=self.profile.rank, reference_models=len(set(table.model_ids)),
            reference_snapshots=len(table), reference_sizes=sizes,
            reference_steps=tuple(int(s) for s in calibration.steps),
            reference_micro_datasets=len(calibration.groups), warnings=notes)


def estimate_dataset_size(lora: LoRASource, reference: str | os.PathLike, config: str,
                          method: str = "dsire", *, allow_partial: bool = False, progress: bool = False,
                          coverage: float = COVERAGE, false_alarm: float = FALSE_ALARM, **options) -> Estimate:
    """Estimate the dataset size of ``lora`` with ``method`` fitted on ``reference`` [``config``].

    ``options`` go to the baseline (``k``, ``matrices``, ...); ``coverage`` is the intervals',
    ``false_alarm`` the out-of-distribution test's rate.  Raises :class:`IncompatibleLoRAError`
    when the LoRA does not match the references and :class:`~lora_wise.lora.LoRAFormatError`
    when it cannot be read.
    """
    name = str(lora) if isinstance(lora, (str, os.PathLike)) else None
    weights = read_lora(lora, name=name)  # fail on an unreadable LoRA before reading the references
    estimator = DatasetSizeEstimator.from_reference(reference, config, method, progress=progress,
                                                    coverage=coverage, false_alarm=false_alarm, **options)
    return estimator.estimate(weights, allow_partial=allow_partial, name=name)
