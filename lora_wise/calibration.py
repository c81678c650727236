"""Calibrated answers from reference models: training length, intervals, a continuous size, an OOD test.

A baseline's vote says which reference size a LoRA looks like; it does not say how sure that is,
whether the LoRA was trained as long as the references, or whether it resembles them at all.
:class:`Calibration` adds all of that, each part calibrated on the references themselves by
**leaving one micro-dataset out** (LOMO): for every micro-dataset of the references, the models
are refitted on the others and asked about its snapshots, so every calibration score comes from a
micro-dataset the model did not see -- exactly the position of a LoRA from elsewhere.

Every part reads the LoRA's **log spectra**: the log singular values of A, B and BA of every layer,
standardised on the references (and, for the regressions, projected on at most ``MAX_COMPONENTS``
principal components, which changes nothing while the references are fewer).

* **Training length** -- the references hold snapshots at several steps.  Ridge regression
  (scikit-learn) of log step on the log spectra estimates how long the LoRA was trained, also
  beyond the references' steps; the nearest reference step picks the baseline fitted on the
  reference snapshots at that step, which estimates the size.  The size is thus estimated together
  with the step, not assuming the checkpoint's.
* **The classifier's interval** -- split conformal prediction (crepes' ``ConformalClassifier``) on
  an ordinal score: with ``share[s]`` the fraction of classifiers voting size ``s``, size ``c``
  scores ``1 - min(max(share[s <= c]), max(share[s >= c]))``.  The sizes whose conformal p-value
  reaches ``1 - coverage`` are contiguous (the score is unimodal over the ordered sizes), so the
  prediction set is an interval of reference sizes, ``[low, high]``.
* **The continuous estimate** -- ridge regression of log n on the log spectra, its penalty chosen by
  group k-fold over micro-datasets; its interval is split conformal on the LOMO residuals (crepes'
  ``ConformalRegressor``), in log space, so ``[n / f, n * f]``.  It can fall between the reference
  sizes; its interval is calibrated on reference sizes only.
* **Out-of-distribution test** -- conformal p-values that share the false-alarm rate (so a LoRA like
  the references is flagged with at most that rate): the training length beyond the references'
  (how far the step regression puts the LoRA beyond the longest or below the shortest reference
  step, against the references' LOMO residuals; half the rate), and the distance to the nearest
  reference snapshot against the references' own LOMO distances (each snapshot to the nearest
  snapshot of another micro-dataset; half the rate).  The first names the cause when it is the training length; the
  second catches any other difference (learning rate, image domain, backbone version).  With one
  reference step, the distance test alone, at the whole rate.

The standardisation and the principal components are unsupervised and fitted once on all
references; everything that reads the labels (classifiers, regressions) is refitted for every
left-out micro-dataset.  Interval and distance scores are Mondrian by estimated step (calibrated
per step) when every step has enough calibration snapshots, pooled otherwise.  The guarantees hold
for LoRAs exchangeable with the references' micro-datasets; ``bench/estimates.py`` measures them on
micro-datasets the references never saw.
"""

from __future__ import annotations

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
#: Most principal components the regressions read.
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
    step: int  # the reference step nearest the estimated training length
    training_steps: float | None  # the estimated training length (None with one reference step)
    continuous: float  # the regression's size
    continuous_interval: Interval
    distance: float  # to the nearest reference snapshot
    nearest: int  # its row in the reference table
    threshold: float  # the distance test flags beyond this distance
    p_value: float  # of the distance
    length: str | None  # "longer" or "shorter" when the length test flags the LoRA
    length_p_value: float | None  # of the training length (None with one reference step)
    length_bounds: tuple[float, float] | None  # flagged below the first or above the second
    false_alarm_rate: float  # the whole test's (higher than asked when the references are few)
    scale: float  # mean log ||BA|| over layers, to say how the LoRA differs

    @property
    def too_far(self) -> bool:
        return self.distance > self.threshold

    @property
    def in_distribution(self) -> bool:
        """False when either part of the OOD test flags the LoRA."""
        return not self.too_far and self.length is None

    def ood_dict(self) -> dict:
        return {"false_alarm_rate": round(self.false_alarm_rate, 6),
                "distance": round(self.distance, 4), "threshold": round(self.threshold, 4),
                "p_value": round(self.p_value, 4),
                "training_length": None if self.training_steps is None else {
                    "estimate": round(self.training_steps, 1), "flagged": self.length,
                    "flagged_below": round(self.length_bounds[0], 1), "flagged_above": round(self.length_bounds[1], 1),
                    "p_value": round(self.length_p_value, 4)}}


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


def _beyond(scores: np.ndarray, level: float) -> float:
    """The score above which a new one has a conformal p-value of at most ``level`` (or the largest score)."""
    ranked = np.sort(scores)[::-1]
    k = max(0, int(math.floor(level * (len(scores) + 1) + 1e-9)) - 1)
    return float(ranked[min(k, len(ranked) - 1)])


class LogSpectra:
    """Standardised log singular values of every layer and matrix: the space of distances and regressions."""

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


@dataclass
class _Parts:
    """What one fit produces: the step regression, the size model of each step, the size regression."""

    step_regression: object | None
    size_models: dict  # reference step -> the baseline fitted on the snapshots at it
    size_rows: dict  # reference step -> those snapshots' rows in the reference table
    regression: object
    owner: "Calibration"

    def predict(self, part: FeatureTable, projected: np.ndarray):
        """Per model of ``part`` (``projected``: its projected log spectra): the estimated log step (None
        with one reference step), the nearest reference step, the shares of the classifiers voting each
        reference size, the classifier's size and the regression's log n."""
        owner = self.owner
        if self.step_regression is None:
            log_step = None
            steps = np.full(len(part), owner.steps[0], dtype=np.int64)
        else:
            log_step = self.step_regression.predict(projected)
            nearest = np.abs(log_step[:, None] - np.log(owner.steps.astype(np.float64))[None, :]).argmin(axis=1)
            steps = owner.steps[nearest].astype(np.int64)
        shares = np.zeros((len(part), len(owner.sizes)))
        sizes = np.zeros(len(part), dtype=np.int64)
        for step in np.unique(steps):
            rows = np.flatnonzero(steps == step)
            model = self.size_models[int(step)]
            votes = model.classifier_votes(part.subset(rows))
            shares[rows] = (votes[..., None] == owner.sizes).mean(axis=1)
            sizes[rows] = model.pool(votes)
        return log_step, steps, shares, sizes, self.regression.predict(projected)


class Calibration:
    """A baseline fitted on reference snapshots at every step, calibrated by leaving one micro-dataset out.

    ``template`` is an unfitted baseline (:class:`~lora_wise.baselines.LayerwiseVote`); it is cloned
    for every reference step and every left-out micro-dataset.
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
        self.log_step = np.log(np.maximum(table.steps, 1).astype(np.float64))
        self.notes: list[str] = []

    # ------------------------------------------------------------------ the parts

    def _fit_parts(self, rows: np.ndarray) -> _Parts:
        """The step regression, one size model per step and the size regression, fitted on ``rows``."""
        from sklearn.linear_model import Ridge

        steps = self.table.steps[rows]
        step_regression = None
        if len(self.steps) > 1:
            step_regression = Ridge(alpha=self.step_alpha_).fit(self.projected_[rows], self.log_step[rows])
        size_rows = {int(step): rows[steps == step] for step in np.unique(steps)}
        size_models = {step: self.template.clone().fit(self.table.subset(at)) for step, at in size_rows.items()}
        regression = Ridge(alpha=self.alpha_).fit(self.projected_[rows], self.log_n[rows])
        return _Parts(step_regression, size_models, size_rows, regression, self)

    def _choose_alpha(self, target: np.ndarray) -> float:
        from sklearn.linear_model import Ridge
        from sklearn.model_selection import GridSearchCV, GroupKFold

        folds = GroupKFold(n_splits=min(5, len(self.groups)))
        search = GridSearchCV(Ridge(), {"alpha": list(RIDGE_ALPHAS)}, cv=folds, scoring="neg_mean_absolute_error")
        search.fit(self.projected_, target, groups=self.table.micro_dataset_indices)
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
        self.alpha_ = self._choose_alpha(self.log_n)
        self.step_alpha_ = self._choose_alpha(self.log_step) if len(self.steps) > 1 else None
        self.parts_ = self._fit_parts(np.arange(len(table)))

        n = len(table)
        shares, steps = np.zeros((n, len(self.sizes))), np.zeros(n, dtype=np.int64)
        predicted, log_step = np.zeros(n), np.zeros(n)
        d2 = _squared_distances(z, z)
        distances = np.sqrt(np.where(table.micro_dataset_indices[:, None] == table.micro_dataset_indices[None, :],
                                     np.inf, d2).min(axis=1))
        groups = self.groups
        if progress:
            from tqdm.auto import tqdm

            groups = tqdm(groups, desc="calibrating (leave one micro-dataset out)", unit="micro-dataset")
        for group in groups:
            out = table.micro_dataset_indices == group
            held = np.flatnonzero(out)
            fold_step, steps[out], shares[out], _, predicted[out] = self._fit_parts(np.flatnonzero(~out)).predict(
                table.subset(held), self.projected_[held])
            if fold_step is not None:
                log_step[out] = fold_step
        self.lomo_ = {"shares": shares, "steps": steps, "predicted": predicted, "distances": distances,
                      "log_step": log_step}
        self._calibrate(shares, steps, predicted, distances, log_step)
        return self

    def size_model(self, step: int):
        """The baseline fitted on the reference snapshots at ``step``; its training row ``i`` is row
        ``size_rows(step)[i]`` of the reference table."""
        return self.parts_.size_models[step]

    def size_rows(self, step: int) -> np.ndarray:
        return self.parts_.size_rows[step]

    # ------------------------------------------------------------------ calibrate

    def _bins(self, steps: np.ndarray, level: float) -> np.ndarray | None:
        """Mondrian categories (the estimated step) when every step has enough scores, else None."""
        if len(self.steps) < 2:
            return None
        counts = [int((steps == s).sum()) for s in self.steps]
        return steps if all(_usable(c, level) for c in counts) else None

    def _level(self, n: int, level: float, what: str) -> float:
        """``level``, or the smallest rate ``n`` scores can test (with a note) when they are too few."""
        if _usable(n, level):
            return level
        self.notes.append(f"the references hold {n} snapshots, too few to test the {what} at a {level:.2%} "
                          f"false-alarm rate; it flags only beyond every reference's ({1 / (n + 1):.2%})")
        return 1.0 / (n + 1)

    def _calibrate(self, shares, steps, predicted, distances, log_step) -> None:
        crepes = _crepes()
        n = len(self.table)
        truth = np.searchsorted(self.sizes, self.table.dataset_sizes)
        interval_level = 1.0 - self.coverage
        self.interval_ready_ = _usable(n, interval_level)
        if not self.interval_ready_:
            self.notes.append(f"the references hold {n} snapshots, too few to calibrate a {self.coverage:.0%} "
                              f"interval; the intervals span every reference size")
        self.interval_bins_ = self._bins(steps, interval_level)
        scores = self.ordinal_scores(shares)[np.arange(n), truth]
        self.classifier_ = crepes.ConformalClassifier().fit(scores, bins=self.interval_bins_)
        self.regressor_ = crepes.ConformalRegressor().fit(self.log_n - predicted, bins=self.interval_bins_)

        lengths = len(self.steps) > 1
        distance_level = self._level(n, self.false_alarm / 2 if lengths else self.false_alarm,
                                     "distance to the references")
        self.distance_bins_ = self._bins(steps, distance_level)
        self.distance_test_ = crepes.ConformalClassifier().fit(distances, bins=self.distance_bins_)
        self.thresholds_ = {step: _beyond(distances if step is None else distances[steps == step], distance_level)
                            for step in (self.steps if self.distance_bins_ is not None else [None])}
        self.rate_ = distance_level
        if lengths:
            # a LoRA trained s steps, min <= s <= max, scores max(est - log max, log min - est) <= |est - log s|:
            # compared with the references' |LOMO residuals|, it is flagged with at most the test's rate
            length_level = self._level(n, self.false_alarm / 2, "training length")
            self.rate_ += length_level
            residuals = np.abs(log_step - self.log_step)
            self.length_test_ = crepes.ConformalClassifier().fit(residuals)
            self.length_margin_ = _beyond(residuals, length_level)
            self.length_bounds_ = (math.exp(math.log(self.steps.min()) - self.length_margin_),
                                   math.exp(math.log(self.steps.max()) + self.length_margin_))
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
        z = self.space_.transform(query)
        log_step, steps, shares, sizes, log_n = self.parts_.predict(query, self.projection_.transform(z))
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
        p_values = self.distance_test_.predict_p(distance, bins=steps if self.distance_bins_ is not None else None,
                                                 smoothing=False)
        if log_step is not None:
            low, high = math.log(self.steps.min()), math.log(self.steps.max())
            beyond = np.maximum(log_step - high, low - log_step)  # > 0 outside the references' steps
            p_length = self.length_test_.predict_p(beyond, smoothing=False)
        scales = scale_of(query)
        largest = float(np.log(max(self.sizes)) + math.log(100.0))  # keeps the estimate finite far outside
        answers = []
        for i in range(len(query)):
            member = np.flatnonzero(sets[i])
            index = np.searchsorted(self.sizes, sizes[i])
            low_size = int(self.sizes[min(member[0], index)]) if len(member) else int(sizes[i])
            high_size = int(self.sizes[max(member[-1], index)]) if len(member) else int(sizes[i])
            point = float(np.clip(log_n[i], 0.0, largest))
            lo, hi = (float(np.clip(b, 0.0, largest)) for b in bounds[i])
            step = int(steps[i])
            length, length_p, training = None, None, None
            if log_step is not None:
                length_p = float(p_length[i])
                training = math.exp(float(np.clip(log_step[i], -50.0, 50.0)))
                if beyond[i] > self.length_margin_:  # i.e. p_length at most the test's share of the rate
                    length = "longer" if log_step[i] > high else "shorter"
            answers.append(Answer(
                size=int(sizes[i]), shares={int(s): float(v) for s, v in zip(self.sizes, shares[i])},
                interval=Interval(low_size, high_size, self.coverage), step=step, training_steps=training,
                continuous=math.exp(point),
                continuous_interval=Interval(math.exp(min(lo, point)), math.exp(max(hi, point)), self.coverage),
                distance=float(distance[i]), nearest=int(nearest[i]),
                threshold=self.thresholds_[step if self.distance_bins_ is not None else None],
                p_value=float(p_values[i]), length=length, length_p_value=length_p,
                length_bounds=self.length_bounds_ if log_step is not None else None,
                false_alarm_rate=self.rate_, scale=float(scales[i])))
        return answers

    def describe_outlier(self, answer: Answer) -> str:
        """Why an answer is flagged, in words: its training length, or how far it is and what its scale suggests."""
        steps = ", ".join(map(str, self.steps))
        if answer.length is not None:
            low, high = answer.length_bounds
            which = ("longer than any reference's" if answer.length == "longer"
                     else "shorter than any reference's")
            bound = f"flagged above {high:.0f}" if answer.length == "longer" else f"flagged below {low:.0f}"
            return (f"the LoRA is out of distribution: its training length is estimated at "
                    f"{answer.training_steps:.0f} steps, {which} (the references: steps {steps}; {bound}, "
                    f"p = {answer.length_p_value:.3g}). The estimates and their intervals hold "
                    f"only for LoRAs trained like the references: build references trained about as long "
                    f"(`lora-wise build --steps N`).")
        low, high = float(self.scales_.min()), float(self.scales_.max())
        if answer.scale > high:
            hint = (f" Its updates are {math.exp(answer.scale - high):.1f}x larger than any reference's: it was "
                    f"probably trained longer (the references: steps {steps}) or at a higher learning rate.")
        elif answer.scale < low:
            hint = (f" Its updates are {math.exp(low - answer.scale):.1f}x smaller than any reference's: it was "
                    f"probably trained shorter (the references: steps {steps}) or at a lower learning rate.")
        else:
            hint = (" Its update size is within the references' range: another image domain, learning rate, "
                    "recipe or backbone version may explain it.")
        return (f"the LoRA is out of distribution: its spectra lie {answer.distance:.3g} from the nearest reference "
                f"snapshot, farther than {answer.threshold:.3g}, which few reference snapshots exceed from the "
                f"nearest snapshot of another micro-dataset (p = {answer.p_value:.3g}).{hint} The estimates and "
                f"their intervals hold only for LoRAs like the references.")
