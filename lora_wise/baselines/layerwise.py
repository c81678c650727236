"""Layer-wise classifiers with a vote: the machinery DSiRe and Frobenius-NN share.

One classifier per (layer, matrix) -- 132 layers x {A, B, BA} = 396 for SD 1.5 --
each fitted on one feature vector per training model (singular values for
DSiRe, the Frobenius norm for Frobenius-NN), each voting for a dataset size; the
votes are pooled into one prediction per model.

The k-nearest-neighbour classifiers are vectorised: all classifiers' distance
matrices come from one batched matrix product, so predicting hundreds of
SD-1.5-sized models takes well under a second.  Other classifiers of the
paper's Table 5 (``lda`` for GDA, ``ridge``) use scikit-learn, one model per
classifier.

Deterministic tie-breaks, documented because they change results:

* a k-NN classifier's nearest neighbours are ordered by distance, then by
  training-row order; among classes with equally many of the k votes, the
  class of the nearest such neighbour wins;
* the ``majority`` vote over classifiers breaks ties toward the **smallest**
  dataset size among the tied classes (the reference script's mode);
* the ``average`` vote averages the classifiers' predicted sizes and returns the
  nearest class, ties toward the smaller size.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from ..errors import DatasetLayoutError, IncompatibleLoRAError, MethodError, OptionError
from ..features import MATRICES, FeatureTable
from ..methods import Method, ModelSet, as_model_set

#: What the baselines take: a method's model set, or a feature table (whose labels ``fit`` then reads).
Models = ModelSet | FeatureTable

VOTES = ("majority", "average")
NORMALIZATIONS = ("global", "per-classifier", "none")
CLASSIFIERS = ("knn", "lda", "ridge")


def parse_matrices(matrices) -> tuple[str, ...]:
    """``"all"``, ``"A"``, ``"A+B"``, ``("B", "BA")`` -> a tuple of matrix names."""
    if isinstance(matrices, str):
        matrices = MATRICES if matrices == "all" else tuple(m for m in matrices.replace(",", "+").split("+") if m)
    matrices = tuple(matrices)
    unknown = [m for m in matrices if m not in MATRICES]
    if unknown or not matrices:
        raise OptionError(f"unknown matrices {unknown or matrices}: choose from {', '.join(MATRICES)} or 'all'")
    return matrices


@dataclass
class Explanation:
    """Why a model got its prediction: the vote and each classifier's nearest training models."""

    prediction: int
    votes: dict[int, int]
    classifier_votes: np.ndarray  # (C,) predicted size per classifier
    classifier_names: list[str]
    neighbour_ids: list[list[str]]  # per classifier, the k nearest training model ids
    neighbour_sizes: np.ndarray  # (C, k)
    neighbour_rows: np.ndarray  # (C, k) their rows in the training table


class LayerwiseVote(Method):
    """Fit one classifier per (layer, matrix) and pool their votes.

    A method of the interface of :mod:`lora_wise.methods`: ``fit(train, sizes)`` and
    ``predict(test)`` on model sets (a :class:`~lora_wise.features.FeatureTable` works too, and
    ``fit`` then takes the sizes from it).

    Parameters: ``feature`` is ``"sv"`` (singular values) or ``"norm"`` (Frobenius
    norm); ``matrices`` any of A, B, BA; ``k`` neighbours; ``vote`` ``majority`` or
    ``average``; ``normalize`` the min-max scaling fitted on train (``global``:
    one min and max over all train features, as the published reference script;
    ``per-classifier``; ``none``); ``classifier`` ``knn``, ``lda`` or ``ridge``.
    """

    #: The name of the registry (``lora_wise.baselines.BASELINES``), for the command line and the leaderboard.
    name = "layerwise"
    #: How reports and the leaderboard write the method.
    title = "layer-wise vote"
    #: One of the paper's reference baselines, which the report runs and the leaderboard lists.
    reference = False

    def __init__(self, feature: str = "sv", matrices="all", k: int = 1, vote: str = "majority",
                 normalize: str = "global", classifier: str = "knn"):
        if feature not in ("sv", "norm"):
            raise OptionError(f"feature must be 'sv' or 'norm', not {feature!r}")
        if vote not in VOTES:
            raise OptionError(f"vote must be one of {VOTES}, not {vote!r}")
        if normalize not in NORMALIZATIONS:
            raise OptionError(f"normalize must be one of {NORMALIZATIONS}, not {normalize!r}")
        if classifier not in CLASSIFIERS:
            raise OptionError(f"classifier must be one of {CLASSIFIERS}, not {classifier!r}")
        if int(k) < 1:
            raise OptionError(f"k must be at least 1, not {k}")
        self.feature, self.matrices, self.k = feature, parse_matrices(matrices), int(k)
        self.vote, self.normalize, self.classifier = vote, normalize, classifier
        self._fitted = False

    def params(self) -> dict:
        return dict(feature=self.feature, matrices="+".join(self.matrices), k=self.k, vote=self.vote,
                    normalize=self.normalize, classifier=self.classifier)

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The options this baseline takes (its constructor's parameters), e.g. ``("matrices", "k", ...)``."""
        return tuple(name for name in inspect.signature(cls.__init__).parameters if name != "self")

    def clone(self) -> "LayerwiseVote":
        """An unfitted copy with the same options."""
        return type(self)(**{k: v for k, v in self.params().items() if k in self.options()})

    # ------------------------------------------------------------------ features

    def _features(self, models: ModelSet) -> np.ndarray:
        """(C, N, D) float64: one feature matrix per classifier, C = layers x matrices."""
        blocks = []
        for m in self.matrices:
            values = models.spectra(m) if self.feature == "sv" else models.norms(m)[..., None]
            blocks.append(np.transpose(values, (1, 0, 2)))  # (L, N, D)
        return np.concatenate(blocks, axis=0).astype(np.float64)

    def classifier_names(self, table: Models | None = None) -> list[str]:
        layers = table.layer_names if table is not None else self.layer_names_
        return [f"{layer}:{m}" for m in self.matrices for layer in layers]

    # ------------------------------------------------------------------ fit / predict

    def fit(self, train: Models, sizes=None) -> "LayerwiseVote":
        """Fit on the ``train`` models with their dataset ``sizes`` (read from ``train`` when it is a feature table)."""
        if sizes is None:
            if not isinstance(train, FeatureTable):
                raise MethodError(f"{type(self).__name__}.fit(train, sizes): give the training models' sizes")
            sizes = train.dataset_sizes
        models = as_model_set(train)
        if len(models) == 0:
            raise DatasetLayoutError("cannot fit on zero models: the training split is empty")
        if len(sizes) != len(models):
            raise MethodError(f"{len(sizes)} sizes for {len(models)} training models: give one size per model")
        x = self._features(models)
        if self.normalize == "global":
            self.low_, self.span_ = x.min(), x.max() - x.min()
        elif self.normalize == "per-classifier":
            self.low_ = x.min(axis=(1, 2), keepdims=True)
            self.span_ = x.max(axis=(1, 2), keepdims=True) - self.low_
        else:
            self.low_, self.span_ = 0.0, 1.0
        self.span_ = np.where(np.asarray(self.span_) > 0, self.span_, 1.0)
        self.train_x_ = (x - self.low_) / self.span_
        self.train_y_ = np.asarray(sizes).astype(np.int64)
        self.train_ids_ = models.model_ids
        self.classes_ = np.unique(self.train_y_)
        self.layer_names_ = models.layer_names
        if self.classifier != "knn":
            self._fit_sklearn()
        self._fitted = True
        return self

    def _check(self, table: Models) -> np.ndarray:
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(train, sizes) first")
        models = as_model_set(table)
        if models.layer_names != self.layer_names_:
            missing = sorted(set(self.layer_names_) - set(models.layer_names))
            extra = sorted(set(models.layer_names) - set(self.layer_names_))
            raise IncompatibleLoRAError(f"the models to predict adapt other layers than the training models (missing "
                                        f"{missing[:3]}, extra {extra[:3]}); use references of the same backbone")
        x = (self._features(models) - self.low_) / self.span_
        if x.shape[2] != self.train_x_.shape[2]:
            raise IncompatibleLoRAError(f"feature length {x.shape[2]} differs from the training models' "
                                        f"{self.train_x_.shape[2]}: the LoRA ranks differ")
        return x

    def _neighbours(self, x: np.ndarray) -> np.ndarray:
        """(C, N, k) indices of the k nearest training models per classifier."""
        train = self.train_x_
        # |x - y|^2 = |x|^2 + |y|^2 - 2 x.y, batched over classifiers.
        d2 = (np.square(x).sum(-1)[:, :, None] + np.square(train).sum(-1)[:, None, :]
              - 2.0 * np.matmul(x, train.transpose(0, 2, 1)))
        k = min(self.k, train.shape[1])
        if k == 1:
            return np.argmin(d2, axis=2)[..., None]
        order = np.argsort(d2, axis=2, kind="stable")  # ties: training-row order
        return order[..., :k]

    def classifier_votes(self, table: Models) -> np.ndarray:
        """(N, C) dataset size predicted by every classifier for every model."""
        x = self._check(table)
        if self.classifier != "knn":
            return self._sklearn_votes(x)
        neighbours = self._neighbours(x)  # (C, N, k)
        labels = self.train_y_[neighbours]
        if labels.shape[2] == 1:
            return labels[..., 0].T
        # class with most of the k votes; ties -> the class of the nearest such neighbour
        counts = (labels[..., None] == self.classes_).sum(axis=2)  # (C, N, classes)
        best = counts.max(axis=2, keepdims=True)
        tied = counts == best
        first_rank = np.argmax(labels[..., None] == self.classes_, axis=2)  # rank of first occurrence
        first_rank = np.where((labels[..., None] == self.classes_).any(axis=2), first_rank, labels.shape[2])
        choice = np.argmin(np.where(tied, first_rank, np.iinfo(np.int64).max), axis=2)
        return self.classes_[choice].T

    def pool(self, votes: np.ndarray) -> np.ndarray:
        """Pool (N, C) classifier votes into (N,) predictions with the configured rule."""
        if self.vote == "majority":
            counts = (votes[..., None] == self.classes_).sum(axis=1)  # (N, classes)
            return self.classes_[np.argmax(counts, axis=1)]  # argmax: first (smallest) class on ties
        mean = votes.astype(np.float64).mean(axis=1)
        distance = np.abs(mean[:, None] - self.classes_[None, :])
        return self.classes_[np.argmin(distance, axis=1)]

    def predict(self, test: Models) -> np.ndarray:
        """Predicted dataset size of every model in ``test``."""
        return self.pool(self.classifier_votes(test))

    def explain(self, table: Models, row: int = 0) -> Explanation:
        """The vote behind the prediction for one model of ``table``."""
        one = table.subset([row])
        votes = self.classifier_votes(one)[0]
        prediction = int(self.pool(votes[None])[0])
        names = self.classifier_names()
        if self.classifier == "knn":
            neighbours = self._neighbours(self._check(one))[:, 0, :]  # (C, k)
        else:
            neighbours = np.zeros((len(names), 0), dtype=np.int64)
        values, counts = np.unique(votes, return_counts=True)
        return Explanation(
            prediction=prediction, votes={int(v): int(c) for v, c in zip(values, counts)},
            classifier_votes=votes, classifier_names=names,
            neighbour_ids=[[self.train_ids_[j] for j in row_] for row_ in neighbours],
            neighbour_sizes=self.train_y_[neighbours], neighbour_rows=neighbours)

    # ------------------------------------------------------------------ scikit-learn classifiers

    def _fit_sklearn(self) -> None:
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
        from sklearn.linear_model import Ridge

        self.models_ = []
        for x in self.train_x_:
            if self.classifier == "lda":
                model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
                self.models_.append(model.fit(x, self.train_y_) if len(self.classes_) > 1 else None)
            else:
                self.models_.append(Ridge(alpha=1.0).fit(x, self.train_y_.astype(np.float64)))

    def _sklearn_votes(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[1], x.shape[0]), dtype=np.int64)
        for c, (model, features) in enumerate(zip(self.models_, x)):
            if model is None:
                out[:, c] = self.classes_[0]
            elif self.classifier == "lda":
                out[:, c] = model.predict(features)
            else:  # regression on the size, read as the nearest class
                values = model.predict(features)
                out[:, c] = self.classes_[np.argmin(np.abs(values[:, None] - self.classes_[None]), axis=1)]
        return out
