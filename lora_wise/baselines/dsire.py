"""DSiRe (Salama et al., 2024): layer-wise nearest neighbours on LoRA singular values.

For every adapted layer and each of its matrices A, B and BA, the vector of
singular values is a feature; a 1-nearest-neighbour classifier per (layer,
matrix) votes for the dataset size of its nearest training model, and the
majority of the votes is the prediction.  Options reproduce the paper's
ablations: ``k`` neighbours, the ``vote`` rule (Table 5: majority vs average),
the ``matrices`` used (Table 9: A, B, BA or all) and the ``classifier``
(Table 5: GDA as ``lda``, ``ridge``).
"""

from __future__ import annotations

from .layerwise import LayerwiseVote


class DSiRe(LayerwiseVote):
    """Dataset Size Recovery from the spectra of LoRA matrices."""

    name = "dsire"
    title = "DSiRe"
    reference = True

    def __init__(self, matrices="all", k: int = 1, vote: str = "majority", normalize: str = "global",
                 classifier: str = "knn"):
        super().__init__(feature="sv", matrices=matrices, k=k, vote=vote, normalize=normalize,
                         classifier=classifier)
