"""LoRA-WiSE: dataset size recovery from LoRA weights, as a benchmark.

Light to import: reading LoRAs, spectral features, configs and splits need only
numpy.  The dataset loader, the metric and the protocol runner import
``datasets`` / ``evaluate`` when first used.

>>> import lora_wise
>>> weights = lora_wise.read_lora("pytorch_lora_weights.safetensors")   # doctest: +SKIP
>>> features = lora_wise.extract(weights)                               # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from .baselines import DSiRe, FrobeniusNN, NNFullModel, get_baseline
from .configs import BenchmarkConfig, get_config, iter_configs, register_config
from .errors import LoRAWiSEError
from .features import FeatureTable, ModelFeatures, extract
from .lora import LoRAFormatError, LoRAWeights, PickleRefusedError, read_lora
from .splits import draws, standard_split

_LAZY = {
    "load_benchmark": "data", "feature_table": "data", "iter_models": "data", "labels": "data",
    "run_protocol": "protocol", "compute_metrics": "metrics.dataset_size_recovery.scores",
    "evaluate": "evaluation", "Method": "methods", "ModelSet": "methods",
}


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in ("metrics", "results"):  # the evaluate module package (imports evaluate on demand); the records
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'lora_wise' has no attribute {name!r}")


__all__ = ["BenchmarkConfig", "DSiRe", "FeatureTable", "FrobeniusNN", "LoRAFormatError", "LoRAWeights",
           "LoRAWiSEError", "ModelFeatures", "NNFullModel", "PickleRefusedError", "draws", "extract",
           "get_baseline", "get_config", "iter_configs", "read_lora", "register_config", "standard_split", *_LAZY]
