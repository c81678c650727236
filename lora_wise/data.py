"""Open a LoRA-WiSE dataset -- a local folder or a Hub repo id -- and stream its models.

A LoRA-WiSE dataset is a Hub dataset repo (or a folder laid out like one): a
``README.md`` whose ``configs:`` YAML maps each config to Parquet shards under
``data/<config>/<split>-*.parquet``.  ``datasets.load_dataset`` reads both the
same way, so ``load_benchmark("lora-wise", "medium_r32")`` and
``load_benchmark("user/LoRA-WiSE", "medium_r32")`` differ only in where the
shards come from.  Arrow memory-maps the shards: iterating models reads one
LoRA at a time and memory stays flat however large the benchmark is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .cache import cache_dir
from .configs import BenchmarkConfig, UnknownConfigError, canonical_name, get_config
from .features import FeatureTable
from .lora import LoRAWeights, read_lora
from .schema import COLUMNS, LABEL_COLUMNS, SPLITS

#: ``step="checkpoint"`` selects each config's default checkpoint (1200 for the paper's low and
#: medium ranges, 1000 for high); an int selects that step; None keeps every snapshot.
CHECKPOINT = "checkpoint"


class DatasetLayoutError(ValueError):
    """The dataset exists but does not hold what was asked (config, split, step, columns)."""


def _available_configs(path: str) -> list[str]:
    from datasets import get_dataset_config_names

    try:
        return list(get_dataset_config_names(path, download_config=None))
    except Exception:  # noqa: BLE001 - only used to enrich an error message
        return []


def load_benchmark(path: str | os.PathLike, config: str, split: str | None = None):
    """``datasets.load_dataset(path, config)`` with LoRA-WiSE's names and errors.

    Returns a ``DatasetDict`` with ``train`` and ``test`` (or one ``Dataset`` when
    ``split`` is given).  ``config`` may be an alias (``medium_32``).
    """
    import datasets

    name = canonical_name(config)
    if split is not None and split not in SPLITS:
        raise DatasetLayoutError(f"unknown split {split!r}: LoRA-WiSE configs have {', '.join(SPLITS)}")
    where = str(path)
    if os.path.exists(where) and not Path(where, "README.md").is_file():
        raise DatasetLayoutError(f"{where}: no README.md with a `configs:` section; this folder is not a "
                                 f"LoRA-WiSE dataset (build one with `lora-wise build --out {where}`)")
    try:
        loaded = datasets.load_dataset(where, name, split=split, cache_dir=str(cache_dir("datasets")))
    except ValueError as exc:
        if "not found" in str(exc).lower() or "config" in str(exc).lower():
            available = _available_configs(where)
            raise UnknownConfigError(
                f"{where} has no config {name!r}"
                + (f"; it has {', '.join(available)}" if available else "")
                + ". Build it with `lora-wise build --config " + name + "`.") from exc
        raise
    parts = [loaded] if split is not None else [loaded[s] for s in loaded]
    for part in parts:
        missing = [c for c in COLUMNS if c not in part.column_names]
        if missing:
            raise DatasetLayoutError(f"{where} [{name}] lacks columns {missing}; is this the published "
                                     f"layout? Convert it with `lora-wise import-official`.")
    return loaded


def _select_step(dataset, cfg: BenchmarkConfig, step: int | str | None, where: str):
    if step is None:
        return dataset
    wanted = cfg.checkpoint_step if step == CHECKPOINT else int(step)
    steps = dataset.data.column("step").to_numpy()
    rows = np.flatnonzero(steps == wanted)
    if len(rows) == 0 and len(steps):
        raise DatasetLayoutError(f"{where} [{cfg.name}] has no snapshots at step {wanted}; it has steps "
                                 f"{sorted(set(steps.tolist()))}. Pass one of them as the step.")
    return dataset.select(rows)


@dataclass
class SplitLabels:
    """The labels of one split, without the weights (cheap to load)."""

    model_ids: list[str]
    dataset_sizes: np.ndarray
    micro_dataset_indices: np.ndarray

    def references(self) -> dict[str, int]:
        return dict(zip(self.model_ids, self.dataset_sizes.tolist()))


def labels(path: str | os.PathLike, config: str, split: str = "test", step: int | str | None = CHECKPOINT) -> SplitLabels:
    """Model ids and true dataset sizes of one split (what the leaderboard scores against)."""
    cfg = get_config(config)
    ds = _select_step(load_benchmark(path, cfg.name, split), cfg, step, str(path))
    table = ds.data.select(["model_id", "dataset_size", "micro_dataset_index"]).to_pydict()
    return SplitLabels(model_ids=table["model_id"], dataset_sizes=np.asarray(table["dataset_size"]),
                 micro_dataset_indices=np.asarray(table["micro_dataset_index"]))


def iter_models(path: str | os.PathLike, config: str, splits: tuple[str, ...] = SPLITS,
                step: int | str | None = CHECKPOINT, progress: bool = False
                ) -> Iterator[tuple[dict, LoRAWeights]]:
    """Yield ``(labels, weights)`` for every snapshot, one at a time."""
    cfg = get_config(config)
    parts = []
    for split in splits:
        ds = _select_step(load_benchmark(path, cfg.name, split), cfg, step, str(path))
        parts.append((split, ds))
    total = sum(len(ds) for _, ds in parts)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"reading {cfg.name}", unit="model")
    try:
        for split, ds in parts:
            for row in ds:
                meta = {k: row[k] for k in LABEL_COLUMNS}
                meta["split"] = split
                yield meta, read_lora(row["lora"], name=row["model_id"])
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.close()


def feature_table(path: str | os.PathLike, config: str, splits: tuple[str, ...] = SPLITS,
                  step: int | str | None = CHECKPOINT, progress: bool = False) -> FeatureTable:
    """Spectral features of every model of a config, computed streaming (see features.py)."""
    cfg = get_config(config)
    return FeatureTable.build(iter_models(path, cfg.name, splits, step, progress), rank=cfg.rank)
