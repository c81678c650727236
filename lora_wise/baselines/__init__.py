"""Reference baselines for dataset size recovery: fit on train models, predict test models.

``BASELINES`` maps the names used on the command line and the leaderboard to classes; it is the
one list of baselines (the command's choices, the report's methods and the leaderboard's
reference entries all come from it):

* ``dsire`` -- :class:`DSiRe`, layer-wise 1-NN on singular values, majority vote;
* ``frobenius-nn`` -- :class:`FrobeniusNN`, the same on Frobenius norms;
* ``nn-full-model`` -- :class:`NNFullModel`, one k-NN on all layers (Table 5).

The first two are the paper's reference baselines (``REFERENCE_BASELINES``).
"""


from ..errors import OptionError
from .dsire import DSiRe
from .frobenius import FrobeniusNN
from .full_model import NNFullModel
from .layerwise import Explanation, LayerwiseVote, parse_matrices

BASELINES = {cls.name: cls for cls in (DSiRe, FrobeniusNN, NNFullModel)}
#: The paper's reference baselines: what the report runs and the leaderboard lists as reference entries.
REFERENCE_BASELINES = tuple(name for name, cls in BASELINES.items() if cls.reference)


def baseline_class(name: str) -> type[LayerwiseVote]:
    """The baseline registered as ``name``; an :class:`~lora_wise.errors.OptionError` listing them otherwise."""
    try:
        return BASELINES[name]
    except KeyError:
        raise OptionError(f"unknown baseline {name!r}: choose from {', '.join(BASELINES)}") from None


def get_baseline(name: str, **options) -> LayerwiseVote:
    """Instantiate a baseline by its name (``dsire``, ``frobenius-nn``, ``nn-full-model``)."""
    return baseline_class(name)(**options)


__all__ = ["BASELINES", "REFERENCE_BASELINES", "DSiRe", "Explanation", "FrobeniusNN", "LayerwiseVote",
           "NNFullModel", "baseline_class", "get_baseline", "parse_matrices"]
