"""Calibrated answers from reference models: training step, intervals, a continuous size, an OOD test.

A baseline's vote says which reference size a LoRA looks like; it does not say how sure that is,
whether the LoRA was trained as long as the references, or whether it resembles them at all.
:class:`Calibration` adds all of that, each part calibrated on the references themselves by
**leaving one micro-dataset out** (LOMO): for every micro-dataset of the references, the models
are refitted on the others and asked about its snapshots, so every calibration score comes from a
micro-dataset the model did not see -- exactly the position of a LoRA from elsewhere.

* **Training step** -- the references hold snapshots at several steps; the baseline is fitted on
  all of them, and a second copy of it, fitted with the steps as labels, estimates the step of
  the LoRA.  The size is thus estimated together with the step, not assuming the checkpoint's.
* **The classifier's interval** -- split conformal prediction (crepes' ``ConformalClassifier``) on
  an ordinal score: with ``share[s]`` the fraction of classifiers voting size ``s``, size ``c``
  scores ``1 - min(max(share[s <= c]), max(share[s >= c]))``.  The sizes whose conformal p-value
  reaches ``1 - coverage`` are contiguous (the score is unimodal over the ordered sizes), so the
  prediction set is an interval of reference sizes, ``[low, high]``.
* **The continuous estimate** -- ridge regression (scikit-learn) of log n on the LoRA's
  standardised log singular values (all layers and matrices; projected on at most
  ``MAX_COMPONENTS`` principal components, which changes nothing while the references are fewer),
  its penalty chosen by group k-fold over micro-datasets; its interval is split conformal on the
  LOMO residuals (crepes' ``ConformalRegressor``), in log space, so ``[n / f, n * f]``.  It can
  fall between the reference sizes; its interval is calibrated on reference sizes only.
* **Out-of-distribution test** -- the distance, in the same standardised log-spectrum space, to the
  nearest reference snapshot, against the LOMO distances of the references (each snapshot to the
  nearest snapshot of another micro-dataset): a conformal p-value; the LoRA is flagged when it is at
  most the false-alarm rate, so a LoRA like the references is flagged with at most that probability.

The standardisation of the log spectra and the principal components are unsupervised and fitted
once on all references; everything that reads the labels (the classifiers, the ridge) is refitted
for every left-out micro-dataset.  Interval and OOD scores are Mondrian by estimated step (calibrated per step) when every step has
enough calibration snapshots, pooled otherwise.  The guarantees hold for LoRAs exchangeable with the
references' micro-datasets; ``bench/estimates.py`` measures them on micro-datasets the references
never saw.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np

from .errors import DatasetLayoutError, OptionError
from .features import MATRICES, FeatureTable

#: Default coverage of the intervals.
COVERAGE = 0.9
#: Default false-alarm rate of the out-of-distribution test.
FALSE_ALARM = 0.01
#: Most principal components the continuous estimate regresses on.
MAX_COMPONENTS = 256
#: Ridge penalties tried (standardised features), chosen by group k-fold over micro-datasets.
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 15))
#: Singular values are floored at this fraction of the references' median before the log.
LOG_FLOOR = 1e-3


@dataclass(frozen=True)
class Interval:
    """``[low, high]`` holding the true dataset size with probability ``coverage``."""

    low: float
    high: float
    coverage: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "coverage": self.coverage}


@dataclass
class Answer:
    """What the calibration says about one LoRA."""

    size: int  # the classifier's answer (a reference size)
    shares: dict[int, float]  # reference size -> share of the classifiers voting it
    interval: Interval  # of reference sizes
    step: int  # the estimated training step (a reference step)
    continuous: float  # the regression's size
    continuous_interval: Interval
    distance: float  # to the nearest reference snapshot
    nearest: int  # its row in the reference table
    threshold: float  # flagged beyond this distance
    p_value: float
    false_alarm_rate: float  # the rate actually tested (higher than asked when the references are few)
    scale: float  # mean log ||BA|| over layers, to say how the LoRA differs

    @property
    def in_distribution(self) -> bool:
        """False when the OOD test flags the LoRA (its distance beyond the threshold, p <= the rate)."""
        return self.distance <= self.threshold


def check_level(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise OptionError(f"{what} must be between 0 and 1 (exclusive), not {value:g}")
    return value


def _crepes():
    """The crepes module, imported so that its import-time ``warnings.simplefilter("always", UserWarning)``
    does not change this process's warning filters."""
    with warnings.catch_warnings():
        import crepes
    return crepes


def _usable(n: int, level: float) -> bool:
    """Whether ``n`` calibration scores give a finite quantile at ``level`` (crepes' own test)."""
    return int(level * (n + 1)) - 1 >= 0


class LogSpectra:
    """Standardised log singular values of every layer and matrix: the space of distances and regression."""

    def fit(self, table: FeatureTable) -> "LogSpectra":
        raw = self._raw(table)
        self.floor_ = np.maximum(LOG_FLOOR * np.median(raw, axis=0), np.finfo(np.float32).tiny)
        logs = np.log(np.maximum(raw, self.floor_))
        self.mean_ = logs.mean(axis=0)
        self.std_ = np.maximum(logs.std(axis=0), 1e-6)
        return self

    @staticmethod
    def _raw(table: FeatureTable) -> np.ndarray:
        return np.concatenate([table.sv[m].reshape(len(table), -1) for m in MATRICES], axis=1).astype(np.float64)

    def transform(self, table: FeatureTable) -> np.ndarray:
        return (np.log(np.maximum(self._raw(table), self.floor_)) - self.mean_) / self.std_


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d2 = np.square(x).sum(1)[:, None] + np.square(y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.maximum(d2, 0.0)


def scale_of(table: FeatureTable) -> np.ndarray:
    """Mean over layers of log ||s BA|| per model: how large the update is."""
    return np.log(np.maximum(table.norms["BA"].astype(np.float64), 1e-30)).mean(axis=1)


class Calibration:
    """A baseline fitted on reference snapshots at every step, calibrated by leaving one micro-dataset out.

    ``template`` is an unfitted baseline (:class:`~lora_wise.baselines.LayerwiseVote`); it is cloned
    for the size, for the step and for every left-out micro-dataset.
    """

    def __init__(self, table: FeatureTable, template, coverage: float = COVERAGE,
                 false_alarm: float = FALSE_ALARM):
        self.table, self.template = table, template
        self.coverage = check_level(coverage, "coverage")
        self.false_alarm = check_level(false_alarm, "the false-alarm rate")
        self.groups = np.unique(table.micro_dataset_indices)
        if len(self.groups) < 2:
            raise DatasetLayoutError(
                f"the references hold {len(self.groups)} micro-dataset; intervals and the out-of-distribution "
                f"test are calibrated by leaving one micro-dataset out, which needs at least 2 (build more "
                f"with `lora-wise build --micro-datasets N`)")
        self.sizes = np.unique(table.dataset_sizes)
        self.steps = np.unique(table.steps)
        self.log_n = np.log(table.dataset_sizes.astype(np.float64))
        self.notes: list[str] = []

    # ------------------------------------------------------------------ the parts

    def _fit_parts(self, rows: np.ndarray, alpha: float):
        """Size model, step model and regression fitted on ``rows`` of the reference table."""
        part = self.table.subset(rows)
        size_model = self.template.clone().fit(part)
        step_model = None
        if len(self.steps) > 1:
            step_model = self.template.clone().fit(dataclasses.replace(part, dataset_sizes=part.steps))
        regression = self._ridge(alpha).fit(self.projected_[rows], self.log_n[rows])
        return size_model, step_model, regression

    @staticmethod
    def _ridge(alpha: float):
        from sklearn.linear_model import Ridge

        return Ridge(alpha=alpha)

    def _shares(self, model, part: FeatureTable) -> np.ndarray:
        """(N, S): share of the classifiers voting each reference size."""
        votes = model.classifier_votes(part)
        return (votes[..., None] == self.sizes).mean(axis=1)

    def _steps_of(self, model, part: FeatureTable) -> np.ndarray:
        return model.predict(part) if model is not None else np.full(len(part), self.steps[0])

    def _choose_alpha(self) -> float:
        from sklearn.model_selection import GridSearchCV, GroupKFold

        folds = GroupKFold(n_splits=min(5, len(self.groups)))
        search = GridSearchCV(self._ridge(1.0), {"alpha": list(RIDGE_ALPHAS)}, cv=folds,
                              scoring="neg_mean_absolute_error")
        search.fit(self.projected_, self.log_n, groups=self.table.micro_dataset_indices)
        return float(search.best_params_["alpha"])

    # ------------------------------------------------------------------ fit

    def fit(self, progress: bool = False) -> "Calibration":
        from sklearn.decomposition import PCA

        table = self.table
        self.space_ = LogSpectra().fit(table)
        z = self.space_.transform(table)
        components = min(MAX_COMPONENTS, len(table) - 1, z.shape[1])
        self.projection_ = PCA(n_components=max(1, components), svd_solver="full" if len(table) <= 2000 else "auto",
                               random_state=0).fit(z)
        self.projected_ = self.projection_.transform(z)
        self.alpha_ = self._choose_alpha()
        everything = np.arange(len(table))
        self.size_model_, self.step_model_, self.regression_ = self._fit_parts(everything, self.alpha_)

        shares = np.zeros((len(table), len(self.sizes)))
        steps = np.zeros(len(table), dtype=np.int64)
        predicted = np.zeros(len(table))
        d2 = _squared_distances(z, z)
        distances = np.sqrt(np.where(table.micro_dataset_indices[:, None] == table.micro_dataset_indices[None, :],
                                     np.inf, d2).min(axis=1))
        groups = self.groups
        if progress:
            from tqdm.auto import tqdm

            groups = tqdm(groups, desc="calibrating (leave one micro-dataset out)", unit="micro-dataset")
        for group in groups:
            out = table.micro_dataset_indices == group
            size_model, step_model, regression = self._fit_parts(np.flatnonzero(~out), self.alpha_)
            held = table.subset(np.flatnonzero(out))
            shares[out] = self._shares(size_model, held)
            steps[out] = self._steps_of(step_model, held)
            predicted[out] = regression.predict(self.projected_[out])
        self.lomo_ = {"shares": shares, "steps": steps, "predicted": predicted, "distances": distances}
        self._calibrate(shares, steps, predicted, distances)
        return self

    def _bins(self, steps: np.ndarray, level: float) -> np.ndarray | None:
        """Mondrian categories (the estimated step) when every step has enough scores, else None."""
        if len(self.steps) < 2:
            return None
        counts = [int((steps == s).sum()) for s in self.steps]
        return steps if all(_usable(c, level) for c in counts) else None

    def _calibrate(self, shares, steps, predicted, distances) -> None:
        crepes = _crepes()
        ConformalClassifier, ConformalRegressor = crepes.ConformalClassifier, crepes.ConformalRegressor
        n = len(self.table)
        truth = np.searchsorted(self.sizes, self.table.dataset_sizes)
        interval_level = 1.0 - self.coverage
        self.interval_ready_ = _usable(n, interval_level)
        if not self.interval_ready_:
            self.notes.append(f"the references hold {n} snapshots, too few to calibrate a {self.coverage:.0%} "
                              f"interval; the intervals span every reference size")
        self.interval_bins_ = self._bins(steps, interval_level)
        scores = self.ordinal_scores(shares)[np.arange(n), truth]
        self.classifier_ = ConformalClassifier().fit(scores, bins=self.interval_bins_)
        self.regressor_ = ConformalRegressor().fit(self.log_n - predicted, bins=self.interval_bins_)

        rate = self.false_alarm
        if not _usable(n, rate):
            rate = 1.0 / (n + 1)
            self.notes.append(f"the references hold {n} snapshots, too few to test at a {self.false_alarm:.2%} "
                              f"false-alarm rate; a LoRA is flagged only beyond every reference distance "
                              f"(a {rate:.2%} rate)")
        self.rate_ = rate
        self.ood_bins_ = self._bins(steps, rate)
        self.ood_ = ConformalClassifier().fit(distances, bins=self.ood_bins_)
        self.thresholds_ = {}
        for step in (self.steps if self.ood_bins_ is not None else [None]):
            cal = distances if step is None else distances[steps == step]
            ranked = np.sort(cal)[::-1]
            k = max(0, int(math.floor(rate * (len(cal) + 1) + 1e-9)) - 1)
            self.thresholds_[step] = float(ranked[min(k, len(ranked) - 1)])
        self.scales_ = scale_of(self.table)

    @staticmethod
    def ordinal_scores(shares: np.ndarray) -> np.ndarray:
        """(N, S) non-conformity of every size: ``1 - min(max share at or below it, max share at or above it)``."""
        below = np.maximum.accumulate(shares, axis=1)
        above = np.maximum.accumulate(shares[:, ::-1], axis=1)[:, ::-1]
        return 1.0 - np.minimum(below, above)

    # ------------------------------------------------------------------ answer

    def answer(self, query: FeatureTable) -> list[Answer]:
        """Calibrated answers for every LoRA of ``query`` (same layers as the references)."""
        shares = self._shares(self.size_model_, query)
        sizes = self.size_model_.predict(query)
        steps = self._steps_of(self.step_model_, query)
        z = self.space_.transform(query)
        log_n = self.regression_.predict(self.projection_.transform(z))
        interval_bins = steps if self.interval_bins_ is not None else None
        if self.interval_ready_:
            sets = self.classifier_.predict_set(self.ordinal_scores(shares), bins=interval_bins,
                                                confidence=self.coverage, smoothing=False).astype(bool)
            bounds = self.regressor_.predict_int(log_n, bins=interval_bins, confidence=self.coverage)
        else:
            sets = np.ones_like(shares, dtype=bool)
            bounds = np.column_stack([np.full(len(query), -np.inf), np.full(len(query), np.inf)])
        d2 = _squared_distances(z, self.space_.transform(self.table))
        nearest = d2.argmin(axis=1)
        distance = np.sqrt(d2[np.arange(len(query)), nearest])
        p_values = self.ood_.predict_p(distance, bins=steps if self.ood_bins_ is not None else None,
                                       smoothing=False)
        scales = scale_of(query)
        largest = float(np.log(max(self.sizes)) + math.log(100.0))  # keeps the estimate finite far outside
        answers = []
        for i in range(len(query)):
            member = np.flatnonzero(sets[i])
            index = np.searchsorted(self.sizes, sizes[i])
            low = int(self.sizes[min(member[0], index)]) if len(member) else int(sizes[i])
            high = int(self.sizes[max(member[-1], index)]) if len(member) else int(sizes[i])
            point = float(np.clip(log_n[i], 0.0, largest))
            lo, hi = (float(np.clip(b, 0.0, largest)) for b in bounds[i])
            step = int(steps[i])
            answers.append(Answer(
                size=int(sizes[i]), shares={int(s): float(v) for s, v in zip(self.sizes, shares[i])},
                interval=Interval(low, high, self.coverage), step=step,
                continuous=math.exp(point),
                continuous_interval=Interval(math.exp(min(lo, point)), math.exp(max(hi, point)), self.coverage),
                distance=float(distance[i]), nearest=int(nearest[i]),
                threshold=self.thresholds_[step if self.ood_bins_ is not None else None],
                p_value=float(p_values[i]), false_alarm_rate=self.rate_, scale=float(scales[i])))
        return answers

    def describe_outlier(self, answer: Answer) -> str:
        """Why an answer is flagged, in words: how far, and what the LoRA's scale suggests."""
        low, high = float(self.scales_.min()), float(self.scales_.max())
        steps = ", ".join(map(str, self.steps))
        if answer.scale > high:
            hint = (f" Its updates are {math.exp(answer.scale - high):.1f}x larger than any reference's: it was "
                    f"probably trained longer (the references: steps {steps}) or at a higher learning rate.")
        elif answer.scale < low:
            hint = (f" Its updates are {math.exp(low - answer.scale):.1f}x smaller than any reference's: it was "
                    f"probably trained shorter (the references: steps {steps}) or at a lower learning rate.")
        else:
            hint = (" Its update size is within the references' range: another image domain, recipe or backbone "
                    "version may explain it.")
        return (f"the LoRA is out of distribution: its spectra lie {answer.distance:.3g} from the nearest reference "
                f"snapshot, beyond {answer.threshold:.3g}, which only {answer.false_alarm_rate:.2%} of the reference "
                f"snapshots exceed from the nearest snapshot of another micro-dataset (p = {answer.p_value:.3g})."
                f"{hint} The estimates and their intervals hold only for LoRAs like the references.")
