"""``evaluate`` modules shipped with LoRA-WiSE.

``load()`` returns the dataset size recovery metric through ``evaluate.load``, from
the module folder inside the installed package (:data:`METRIC_DIR`), so it works offline
and from any working directory.
"""

from __future__ import annotations

from pathlib import Path

#: The ``evaluate`` module's folder inside the installed package: ``evaluate.load(str(METRIC_DIR))``.
METRIC_DIR = Path(__file__).parent / "dataset_size_recovery"


def load(**kwargs):
    """``evaluate.load`` of the dataset size recovery metric."""
    import evaluate

    return evaluate.load(str(METRIC_DIR), **kwargs)
