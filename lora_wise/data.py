"""Open a LoRA-WiSE dataset -- a local folder or a Hub repo id -- and stream its models.

A LoRA-WiSE dataset is a Hub dataset repo (or a folder laid out like one): a
``README.md`` whose ``configs:`` YAML maps each config to Parquet shards under
``data/<config>/<split>-*.parquet``.  ``datasets.load_dataset`` reads both the
same way, so ``load_benchmark("lora-wise", "medium_r32")`` and
``load_benchmark("user/LoRA-WiSE", "medium_r32")`` differ only in where the
shards come from.  Arrow memory-maps the shards: iterating models reads one
LoRA at a time and memory stays flat however large the benchmark is.

Each config has two views (``lora_wise.layout``): ``<config>``, one row per model at the
config's checkpoint step, and ``<config>_snapshots``, every snapshot.  :func:`labels`,
:func:`iter_models` and :func:`feature_table` take a ``step`` and read the view that holds
it: ``"checkpoint"`` (the default, or the checkpoint's number) reads ``<config>``; another
step number, or ``None`` / ``"all"`` for every snapshot, reads ``<config>_snapshots``.  A
dataset without a snapshots view (the published release, imported) answers every step
from ``<config>``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .cache import cache_dir
from .configs import BenchmarkConfig, canonical_name, get_config
from .errors import DatasetLayoutError, NotFoundError, UnknownConfigError
from .features import FeatureTable
from .hub import is_repo_id, talking_to_hub
from .layout import built_configs, file_sha256, read_card_data_files, snapshots_config, split_view
from .lora import LoRAWeights, read_lora
from .schema import COLUMNS, LABEL_COLUMNS, SPLITS

#: ``step="checkpoint"`` selects each config's default checkpoint (1200 for the paper's low and
#: medium ranges, 1000 for high); an int selects that step; None or ``"all"`` keeps every snapshot.
CHECKPOINT = "checkpoint"
ALL_STEPS = "all"


def _matches(root: Path, pattern: str, config: str) -> list[Path]:
    """The files a card's pattern names: a glob's matches, or the one file it names, which must exist."""
    found = list(root.glob(pattern))
    if not found and not any(c in pattern for c in "*?["):
        raise DatasetLayoutError(f"{root}: the card lists {pattern} for config {config!r} but the file is missing; "
                                 f"the folder is being rebuilt or was changed by hand: rerun the build to finish it")
    return found


def local_data_files(root: str | os.PathLike) -> dict[str, dict[str, list[str]]]:
    """config -> split -> absolute Parquet paths, from a local folder's card ``configs:`` YAML."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise _a_file(root)
    if not (root / "README.md").is_file():
        raise DatasetLayoutError(f"{root}: no README.md with a `configs:` section; this folder is not a "
                                 f"LoRA-WiSE dataset (build one with `lora-wise build --out {root}`)")
    return {config: {split: sorted({str(p.resolve()) for pattern in patterns for p in _matches(root, pattern, config)})
                     for split, patterns in splits.items()}
            for config, splits in read_card_data_files(root).items()}


def view_name(config: str) -> str:
    """The canonical name of a view: ``medium_32`` -> ``medium_r32``, ``medium_32_snapshots`` -> ``medium_r32_snapshots``."""
    base, snapshots = split_view(config)
    name = canonical_name(base)
    return snapshots_config(name) if snapshots else name


def _local_files(where: str, name: str, split: str | None) -> dict[str, list[str]]:
    """split -> absolute Parquet paths of view ``name`` in the folder ``where``; errors naming the fix."""
    available = local_data_files(where)
    if name not in available:
        base, snapshots = split_view(name)
        build = f"`lora-wise build --config {base} --out {where}`"
        configs = sorted({split_view(view)[0] for view in available})
        raise UnknownConfigError(
            f"{where} has no config {name!r}"
            + (f"; it has {', '.join(configs)}" if configs else "")
            + (f". Its snapshots come with a build ({build}); an imported release holds only checkpoints."
               if snapshots else f". Build it with {build}."))
    files = {s: f for s, f in available[name].items() if split in (None, s)}
    empty = [s for s, f in files.items() if not f] or ([] if files else [split])
    if empty:
        raise DatasetLayoutError(f"{where} [{name}]: no Parquet files for split(s) {', '.join(empty)}; "
                                 f"the folder is incomplete: rerun the build to finish it")
    return files


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
    """The configs a dataset holds (each once, whichever of its views exist): a folder's built
    configs, or those a Hub repo's card lists."""
    where = locate(path)
    if os.path.isdir(where):
        return built_configs(where)
    import datasets

    try:
        with talking_to_hub(f"list the configs of {where} (not a folder here either)"):
            return sorted({split_view(view)[0] for view in datasets.get_dataset_config_names(where)})
    except datasets.exceptions.DatasetNotFoundError as exc:
        raise _not_on_hub(where) from exc


def load_benchmark(path: str | os.PathLike, config: str, split: str | None = None,
                   columns: list[str] | None = None, streaming: bool = False):
    """``datasets.load_dataset(path, config)`` with LoRA-WiSE's names and errors.

    Returns a ``DatasetDict`` with ``train`` and ``test`` (or one ``Dataset`` when
    ``split`` is given).  ``config`` is a view: ``mini_low_r8`` (one row per model, at its
    checkpoint) or ``mini_low_r8_snapshots`` (every snapshot); an alias works too
    (``medium_32``, ``medium_32_snapshots``).  ``columns`` reads only
    those columns (Parquet is columnar: the LoRA bytes are then never read); ``streaming``
    returns iterable datasets (on the Hub, only the needed column chunks are fetched).

    A local folder is read through the Parquet files its card lists, by absolute path:
    ``datasets`` keys its cache for ``load_dataset(folder, config)`` on the folder's name and
    card, so a rebuilt folder (or another folder of the same name) would come back stale,
    while the Parquet loader keys on the files themselves.  A Hub repo id goes to
    ``load_dataset(repo_id, config)``, whose cache follows the repo's revision.
    """
    import datasets

    name = view_name(config)
    if split is not None and split not in SPLITS:
        raise DatasetLayoutError(f"unknown split {split!r}: LoRA-WiSE configs have {', '.join(SPLITS)}")
    where = locate(path)
    cache = str(cache_dir("datasets"))
    if os.path.isdir(where):
        files = _local_files(where, name, split)
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


def wanted_step(cfg: BenchmarkConfig, step: int | str | None) -> int | None:
    """The step number ``step`` stands for: the checkpoint's for ``"checkpoint"``, None for every step."""
    if step is None or step == ALL_STEPS:
        return None
    if step == CHECKPOINT:
        return cfg.checkpoint_step
    try:
        return int(step)
    except (TypeError, ValueError):
        raise DatasetLayoutError(f"step {step!r}: give a step number, {CHECKPOINT!r} or {ALL_STEPS!r}") from None


def load_steps(path: str | os.PathLike, config: str, step: int | str | None = CHECKPOINT, split: str | None = None,
               columns: list[str] | None = None, streaming: bool = False):
    """The view of ``config`` that holds ``step`` (see the module's docstring), loaded as :func:`load_benchmark`.

    Rows are not filtered here: a view may hold other steps than the one asked for
    (``<config>_snapshots`` holds them all), so callers keep the rows whose ``step`` is
    :func:`wanted_step` (None: all of them).
    """
    cfg = get_config(config)
    wanted = wanted_step(cfg, step)
    if wanted == cfg.checkpoint_step:
        return load_benchmark(path, cfg.name, split, columns, streaming)
    try:
        return load_benchmark(path, snapshots_config(cfg.name), split, columns, streaming)
    except UnknownConfigError:  # no snapshots view (an imported release): its one view has every step there is
        return load_benchmark(path, cfg.name, split, columns, streaming)


def _step_mask(steps: np.ndarray, cfg: BenchmarkConfig, step: int | str | None, where: str) -> np.ndarray:
    """Which rows are at ``step`` (the config's checkpoint, a number, or None / "all" for every one)."""
    wanted = wanted_step(cfg, step)
    if wanted is None:
        return np.ones(len(steps), dtype=bool)
    keep = steps == wanted
    if not keep.any() and len(steps):
        raise DatasetLayoutError(f"{where} [{cfg.name}] has no snapshots at step {wanted}; it has steps "
                                 f"{sorted(set(steps.tolist()))}. Pass one of them as the step.")
    return keep


def _select_step(dataset, cfg: BenchmarkConfig, step: int | str | None, where: str):
    if wanted_step(cfg, step) is None:
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
    repos) fetches just those column chunks instead of downloading whole shards.  ``step``
    as :func:`load_steps` takes it; every snapshot (None) lists a model once per step.
    """
    cfg = get_config(config)
    where = locate(path)
    if streaming is None:
        streaming = not os.path.isdir(where)
    ds = load_steps(path, cfg.name, step, split, columns=_LABELS, streaming=streaming)
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
    """Yield ``(labels, weights)`` for every model at ``step`` (every snapshot for None / "all"), one at a time."""
    cfg = get_config(config)
    parts = []
    for split in splits:
        ds = _select_step(load_steps(path, cfg.name, step, split), cfg, step, str(path))
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
    """Spectral features of every model of a config, computed streaming (see features.py).

    ``step``: ``"checkpoint"`` (one row per model), a step number, or None / ``"all"`` (one
    row per snapshot; ``table.steps`` tells them apart).
    """
    cfg = get_config(config)
    return FeatureTable.build(iter_models(path, cfg.name, splits, step, progress), rank=cfg.rank)


class WeightsByModel:
    """The LoRA weights of a config's models at one step, by model id, read only when asked for.

    Opens the view holding ``step`` (memory-mapped Arrow: nothing but the model ids is read
    up front) and reads one model's LoRA per call; :class:`lora_wise.methods.ModelSet` hands it
    to a method as ``weights(i)``.  It keeps the ``lora`` column alone (no label column), and the
    protocol gives a method a reader of only the models it is shown (:meth:`only`).
    """

    def __init__(self, path: str | os.PathLike, config: str, step: int | str = CHECKPOINT,
                 splits: tuple[str, ...] = SPLITS):
        cfg = get_config(config)
        if wanted_step(cfg, step) is None:
            raise DatasetLayoutError("weights by model need one step (a model has one row per step); "
                                     f"pass {CHECKPOINT!r} or a step number")
        self._parts: dict[str, object] = {}
        self._where: dict[str, tuple[str, int]] = {}
        self._metadata = True
        for split in splits:
            ds = _select_step(load_steps(path, cfg.name, step, split), cfg, step, str(path))
            for row, model_id in enumerate(ds.data.column("model_id").to_pylist() if len(ds) else []):
                self._where[model_id] = (split, row)
            self._parts[split] = ds.select_columns(["lora"])

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __call__(self, model_id: str) -> LoRAWeights:
        try:
            split, row = self._where[model_id]
        except KeyError:
            raise NotFoundError(f"no model {model_id!r} in this dataset at this step") from None
        weights = read_lora(self._parts[split][row]["lora"], name=model_id)
        return weights if self._metadata else replace(weights, metadata={})

    def only(self, model_ids: Sequence[str], names: Sequence[str] | None = None,
             metadata: bool = True) -> "WeightsByModel":
        """A reader of ``model_ids`` alone, asked for by ``names`` (default: the ids themselves).

        What the protocol hands a method: the training models' reader knows no test model, and
        the test models' reader knows them by their opaque names only and, with
        ``metadata=False``, reads them without their safetensors metadata (the layers, ranks
        and alphas stay; alpha is already in each layer).
        """
        names = list(model_ids if names is None else names)
        if len(names) != len(model_ids) or len(set(names)) != len(names):
            raise ValueError(f"{len(names)} names for {len(model_ids)} models: give one distinct name per model")
        missing = [m for m in model_ids if m not in self._where]
        if missing:
            raise NotFoundError(f"no model {missing[0]!r} in this dataset at this step")
        reader = object.__new__(WeightsByModel)
        reader._parts = self._parts
        reader._where = {name: self._where[m] for name, m in zip(names, model_ids)}
        reader._metadata = self._metadata and metadata
        return reader


def dataset_source(path: str | os.PathLike) -> str:
    """How a results record names a dataset: its Hub repo id, or its folder's name (never a path)."""
    where = locate(path)
    return Path(where).resolve().name if os.path.isdir(where) else where


def fingerprint(path: str | os.PathLike, config: str) -> str:
    """What identifies the data a method was scored on, for its results record.

    A folder: ``sha256:<hex>`` over the names and SHA-256 of the shards of ``config``'s view
    (both splits); a Hub repo: ``hub:<repo>@<revision>``, the commit the Hub serves now.
    """
    name = view_name(config)
    where = locate(path)
    if os.path.isdir(where):
        digest = hashlib.sha256()
        for split, files in sorted(_local_files(where, name, None).items()):
            for file in files:
                digest.update(f"{split}/{Path(file).name} {file_sha256(file)}\n".encode())
        return "sha256:" + digest.hexdigest()
    from huggingface_hub import HfApi

    with talking_to_hub(f"read the revision of {where}"):
        return f"hub:{where}@{HfApi().dataset_info(where).sha}"
