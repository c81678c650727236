"""The dataset size recovery metric, importable from the package (see its README.md card)."""

from .dataset_size_recovery import (DatasetSizeRecovery, DatasetSizeRecoveryInputError,
                                    compute_metrics)

__all__ = ["DatasetSizeRecovery", "DatasetSizeRecoveryInputError", "compute_metrics"]
