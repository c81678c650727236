"""The dataset size recovery metric, importable from the package (see its README.md card).

``compute_metrics`` needs only numpy; ``DatasetSizeRecovery``, the ``evaluate`` module class,
imports ``evaluate`` when first used.
"""

from .scores import DatasetSizeRecoveryInputError, compute_metrics


def __getattr__(name: str):
    if name == "DatasetSizeRecovery":
        from .dataset_size_recovery import DatasetSizeRecovery

        return DatasetSizeRecovery
    raise AttributeError(name)


__all__ = ["DatasetSizeRecovery", "DatasetSizeRecoveryInputError", "compute_metrics"]
