"""NN-full-model (paper Table 5): one nearest-neighbour classifier on all layers at once.

The spectra of every layer and matrix are concatenated into one vector per
model; the prediction is the size of the nearest training model.  The paper
uses it to show that pooling per-layer votes (DSiRe) beats one global distance.
"""

from __future__ import annotations

import numpy as np

from ..methods import ModelSet
from .layerwise import LayerwiseVote, Models


class NNFullModel(LayerwiseVote):
    """k-NN over the concatenated singular values of all layers."""

    name = "nn-full-model"
    title = "NN-full-model"

    def __init__(self, matrices="all", k: int = 1, normalize: str = "global"):
        super().__init__(feature="sv", matrices=matrices, k=k, vote="majority", normalize=normalize)

    def _features(self, models: ModelSet) -> np.ndarray:
        per_classifier = super()._features(models)  # (C, N, D)
        n = per_classifier.shape[1]
        return np.transpose(per_classifier, (1, 0, 2)).reshape(1, n, -1)  # one classifier

    def classifier_names(self, table: Models | None = None) -> list[str]:
        return ["all-layers"]
