"""Reference baselines for dataset size recovery: fit on train models, predict test models.

``BASELINES`` maps the names used on the command line and the leaderboard to classes:

* ``dsire`` -- :class:`DSiRe`, layer-wise 1-NN on singular values, majority vote;
* ``frobenius-nn`` -- :class:`FrobeniusNN`, the same on Frobenius norms;
* ``nn-full-model`` -- :class:`NNFullModel`, one k-NN on all layers (Table 5).
"""

from ..errors import OptionError
from .dsire import DSiRe
from .frobenius import FrobeniusNN
from .full_model import NNFullModel
from .layerwise import Explanation, LayerwiseVote, parse_matrices

BASELINES = {cls.name: cls for cls in (DSiRe, FrobeniusNN, NNFullModel)}


def get_baseline(name: str, **options) -> LayerwiseVote:
    """Instantiate a baseline by its name (``dsire``, ``frobenius-nn``, ``nn-full-model``)."""
    try:
        cls = BASELINES[name]
    except KeyError:
        raise OptionError(f"unknown baseline {name!r}: choose from {', '.join(BASELINES)}") from None
    return cls(**options)


__all__ = ["BASELINES", "DSiRe", "Explanation", "FrobeniusNN", "LayerwiseVote", "NNFullModel",
           "get_baseline", "parse_matrices"]
