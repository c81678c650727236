"""Frobenius-NN, the paper's baseline: layer-wise nearest neighbours on Frobenius norms.

The same layer-wise vote as DSiRe with a one-number feature per (layer,
matrix): the Frobenius norm, which the paper's Fig. 2a shows falls with the
dataset size.
"""

from __future__ import annotations

from .layerwise import LayerwiseVote


class FrobeniusNN(LayerwiseVote):
    """Nearest neighbour on per-layer Frobenius norms, majority vote."""

    name = "frobenius-nn"
    title = "Frobenius-NN"
    reference = True

    def __init__(self, matrices="all", k: int = 1, vote: str = "majority", normalize: str = "global"):
        super().__init__(feature="norm", matrices=matrices, k=k, vote=vote, normalize=normalize)
