"""The published LoRA-WiSE release's names: its repo, subsets, split, columns and micro-dataset names.

The release (Hub dataset ``MoSalama98/LoRA-WiSE``) has one Parquet subset per config
(``low_8`` ... ``medium_32_2`` ... ``high_32``, the configs' aliases), one split ``train``
holding every model, and one row per model: ``label`` (the dataset size), ``name`` (the
micro-dataset: a Concept101 name in the low range, a number 1-50 in the medium and high
ranges) and one column per LoRA tensor holding the matrix as nested lists, in the old
diffusers naming ``unet.<module path>.lora.down.weight`` (A) / ``.lora.up.weight`` (B).
"""

from __future__ import annotations

import numpy as np

from ..configs import BenchmarkConfig, UnknownConfigError, get_config
from ..errors import PublishedLayoutError

#: The release on the Hub.
PUBLISHED_REPO = "MoSalama98/LoRA-WiSE"
#: The subsets of the published release, in its order.
PUBLISHED_SUBSETS = ("low_8", "low_16", "low_32", "medium_16", "medium_32", "medium_32_2", "high_32")
#: The one split of the published release.
PUBLISHED_SPLIT = "train"
LABEL, NAME = "label", "name"


def published_subset(config: str | BenchmarkConfig) -> str:
    """The published subset name of a config (its alias, e.g. ``medium_32``), else the config name."""
    cfg = get_config(config) if isinstance(config, str) else config
    return cfg.aliases[0] if cfg.aliases else cfg.name


def published_column(layer: str, role: str) -> str:
    """Column of one factor in the published layout: ``unet.<layer>.lora.down.weight`` for A, ``up`` for B."""
    if role not in ("A", "B"):
        raise ValueError(f"role must be 'A' or 'B', not {role!r}")
    return f"unet.{layer}.lora.{'down' if role == 'A' else 'up'}.weight"


def published_name(cfg: BenchmarkConfig, index: int):
    """The ``name`` the release gives micro-dataset ``index``: its Concept101 name, or its number 1..M."""
    return cfg.micro_dataset_names[index] if cfg.micro_dataset_names else index + 1


def micro_dataset_of(cfg: BenchmarkConfig, name) -> tuple[int, str]:
    """(micro_dataset_index, micro_dataset) of a published ``name``; a clear error for an unknown one."""
    count = cfg.num_micro_datasets
    if cfg.micro_dataset_names:
        key = str(name)
        if key not in cfg.micro_dataset_names:
            raise PublishedLayoutError(
                f"name {name!r} is not one of the {count} micro-datasets of {cfg.name} (they are "
                f"{', '.join(cfg.micro_dataset_names[:3])}, ...; `lora_wise.configs.get_config({cfg.name!r})"
                f".micro_dataset_names` lists them); is the subset name right?")
        return cfg.micro_dataset_names.index(key), key
    number = None
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        number = int(name)
    elif isinstance(name, str) and name.strip().isdigit():
        number = int(name)
    if number is None or not 1 <= number <= count:
        raise PublishedLayoutError(f"name {name!r} is not a micro-dataset number of {cfg.name}: the published layout "
                                   f"numbers them 1..{count}; is the subset name right?")
    return number - 1, str(number)


def is_config(name: str) -> bool:
    """Whether ``name`` is a config (or an alias of one), as published subsets are named."""
    try:
        get_config(name)
    except UnknownConfigError:
        return False
    return True
