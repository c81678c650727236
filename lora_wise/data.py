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
from .configs import BenchmarkConfig, canonical_name, get_config
from .errors import DatasetLayoutError, NotFoundError, UnknownConfigError
from .features import FeatureTable
from .hub import is_repo_id, talking_to_hub
from .layout import built_configs, read_card_data_files
from .lora import LoRAWeights, read_lora
from .schema import COLUMNS, LABEL_COLUMNS, SPLITS

#: ``step="checkpoint"`` selects each config's default checkpoint (1200 for the paper's low and
#: medium ranges, 1000 for high); an int selects that step; None keeps every snapshot.
CHECKPOINT = "checkpoint"


def local_data_files(root: str | os.PathLike) -> dict[str, dict[str, list[str]]]:
    """config -> split -> absolute Parquet paths, from a local folder's card ``configs:`` YAML."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise _a_file(root)
    if not (root / "README.md").is_file():
        raise DatasetLayoutError(f"{root}: no README.md with a `configs:` section; this folder is not a "
                                 f"LoRA-WiSE dataset (build one with `lora-wise build --out {root}`)")
    return {config: {split: sorted({str(p.resolve()) for pattern in patterns for p in root.glob(pattern)})
                     for split, patterns in splits.items()}
            for config, splits in read_card_data_files(root).items()}


def locate(path: str | os.PathLike) -> str:
    """What a dataset argument names, decided here before any Hub call: an existing folder, or a Hub repo id.

    Returns ``path`` as a string; a :class:`NotFoundError` when it is neither a folder here nor
    a well-formed Hub dataset repo id (``<user or org>/<name>``), a :class:`DatasetLayoutError`
    when it is a file.
    """
    where = str(path)
    if os.path.exists(where):
        if not os.path.isdir(where):
            raise _a_file(where)
        return where
    if not is_repo_id(where):
        raise NotFoundError(f"{where}: no such folder, and not a Hub dataset repo id (<user or org>/<name>); give a "
                            f"LoRA-WiSE folder (`lora-wise build --out {where}` makes one) or a Hub repo id")
    return where


def _a_file(where) -> DatasetLayoutError:
    return DatasetLayoutError(f"{where} is a file, not a LoRA-WiSE dataset folder; give the folder that holds "
                              f"README.md and data/ (or a Hub dataset repo id, <user or org>/<name>)")


def _not_on_hub(where: str) -> NotFoundError:
    return NotFoundError(f"{where}: no such folder, and no dataset of that id on the Hub (a private one needs "
                         f"`hf auth login`); give a LoRA-WiSE folder or Hub dataset repo id")


def dataset_configs(path: str | os.PathLike) -> list[str]:
    """The configs a dataset holds: a folder's built configs, or those a Hub repo's card lists."""
    where = locate(path)
    if os.path.isdir(where):
        return built_configs(where)
    import datasets

    try:
        with talking_to_hub(f"list the configs of {where} (not a folder here either)"):
            return sorted(datasets.get_dataset_config_names(where))
    except datasets.exceptions.DatasetNotFoundError as exc:
        raise _not_on_hub(where) from exc


def load_benchmark(path: str | os.PathLike, config: str, split: str | None = None,
                   columns: list[str] | None = None, streaming: bool = False):
    """``datasets.load_dataset(path, config)`` with LoRA-WiSE's names and errors.

    Returns a ``DatasetDict`` with ``train`` and ``test`` (or one ``Dataset`` when
    ``split`` is given).  ``config`` may be an alias (``medium_32``).  ``columns`` reads only
    those columns (Parquet is columnar: the LoRA bytes are then never read); ``streaming``
    returns iterable datasets (on the Hub, only the needed column chunks are fetched).

    A local folder is read through the Parquet files its card lists, by absolute path:
    ``datasets`` keys its cache for ``load_dataset(folder, config)`` on the folder's name and
    card, so a rebuilt folder (or another folder of the same name) would come back stale,
    while the Parquet loader keys on the files themselves.  A Hub repo id goes to
    ``load_dataset(repo_id, config)``, whose cache follows the repo's revision.
    """
    import datasets

    name = canonical_name(config)
    if split is not None and split not in SPLITS:
        raise DatasetLayoutError(f"unknown split {split!r}: LoRA-WiSE configs have {', '.join(SPLITS)}")
    where = locate(path)
    cache = str(cache_dir("datasets"))
    if os.path.isdir(where):
        available = local_data_files(where)
        if name not in available:
            raise UnknownConfigError(
                f"{where} has no config {name!r}"
                + (f"; it has {', '.join(sorted(available))}" if available else "")
                + f". Build it with `lora-wise build --config {name} --out {where}`.")
        files = {s: f for s, f in available[name].items() if split in (None, s)}
        empty = [s for s, f in files.items() if not f] or ([] if files else [split])
        if empty:
            raise DatasetLayoutError(f"{where} [{name}]: no Parquet files for split(s) {', '.join(empty)}; "
                                     f"the folder is incomplete: rerun the build to finish it")
        loaded = datasets.load_dataset("parquet", data_files=files, split=split, cache_dir=cache,
                                       columns=columns, streaming=streaming)
    else:
        try:
            with talking_to_hub(f"load {where} (not a folder here either)"):
                loaded = datasets.load_dataset(where, name, split=split, cache_dir=cache, columns=columns,
                                               streaming=streaming)
        except datasets.exceptions.DatasetNotFoundError as exc:
            raise _not_on_hub(where) from exc
        except ValueError as exc:
            if "not found" in str(exc).lower() or "config" in str(exc).lower():
                raise UnknownConfigError(f"{where} has no config {name!r} ({exc}).") from exc
            raise
    parts = [loaded] if split is not None else [loaded[s] for s in loaded]
    for part in parts:
        present = part.column_names or list(part.features or {})
        missing = [c for c in (columns or COLUMNS) if c not in present]
        if missing:
            raise DatasetLayoutError(f"{where} [{name}] lacks columns {missing}; is this the published "
                                     f"layout? Convert it with `lora-wise import-official`.")
    return loaded


def _step_mask(steps: np.ndarray, cfg: BenchmarkConfig, step: int | str | None, where: str) -> np.ndarray:
    """Which snapshots are at ``step`` (the config's checkpoint, a number, or None for all)."""
    if step is None:
        return np.ones(len(steps), dtype=bool)
    wanted = cfg.checkpoint_step if step == CHECKPOINT else int(step)
    keep = steps == wanted
    if not keep.any() and len(steps):
        raise DatasetLayoutError(f"{where} [{cfg.name}] has no snapshots at step {wanted}; it has steps "
                                 f"{sorted(set(steps.tolist()))}. Pass one of them as the step.")
    return keep


def _select_step(dataset, cfg: BenchmarkConfig, step: int | str | None, where: str):
    if step is None:
        return dataset
    return dataset.select(np.flatnonzero(_step_mask(dataset.data.column("step").to_numpy(), cfg, step, where)))


@dataclass
class SplitLabels:
    """The labels of one split, without the weights (cheap to load)."""

    model_ids: list[str]
    dataset_sizes: np.ndarray
    micro_dataset_indices: np.ndarray

    def references(self) -> dict[str, int]:
        return dict(zip(self.model_ids, self.dataset_sizes.tolist()))


_LABELS = ["model_id", "dataset_size", "micro_dataset_index", "step"]


def labels(path: str | os.PathLike, config: str, split: str = "test", step: int | str | None = CHECKPOINT,
           streaming: bool | None = None) -> SplitLabels:
    """Model ids and true dataset sizes of one split (what the leaderboard scores against).

    Reads only the label columns: never the LoRA weights.  ``streaming`` (default: for Hub
    repos) fetches just those column chunks instead of downloading whole shards.
    """
    cfg = get_config(config)
    where = str(path)
    if streaming is None:
        streaming = not os.path.exists(where)
    ds = load_benchmark(path, cfg.name, split, columns=_LABELS, streaming=streaming)
    if hasattr(ds, "data"):
        table = ds.data.select(_LABELS).to_pydict()
    else:  # streamed from the Hub
        table = {c: [] for c in _LABELS}
        for row in ds:
            for c in _LABELS:
                table[c].append(row[c])
    keep = _step_mask(np.asarray(table["step"]), cfg, step, where)
    return SplitLabels(model_ids=[m for m, k in zip(table["model_id"], keep) if k],
                       dataset_sizes=np.asarray(table["dataset_size"])[keep],
                       micro_dataset_indices=np.asarray(table["micro_dataset_index"])[keep])


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
