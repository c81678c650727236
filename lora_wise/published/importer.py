"""``import_official``: the published release's subsets converted into LoRA-WiSE's Hub layout.

Each model becomes a row of :mod:`lora_wise.schema` (its LoRA written by
:func:`lora_wise.lora.peft_safetensors`), on its side of the standard train/test split, in
shards of the config's default view (one row per model, at its checkpoint: the release has no
other snapshots) written through :mod:`lora_wise.layout`, with a card; so the baselines, the metric and
the leaderboard run on the published models.  Rows are streamed in small Arrow batches (an
SD-1.5 model is ~25 MB of floats and a subset holds 300 of them), read with pyarrow straight from
the Parquet files rather than through ``datasets.load_dataset``, which would keep a second copy of
every subset in its Arrow cache.  Nothing in the output changes unless a whole subset converts.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..configs import BenchmarkConfig, get_config
from ..errors import NotFoundError, PublishedLayoutError
from ..hub import is_repo_id
from ..layout import (DEFAULT_MAX_SHARD_BYTES, ROW_LABEL_BYTES, data_dir, render_card, shard_paths, snapshots_config,
                      write_shards)
from ..lora import is_lora_key, peft_safetensors, read_lora
from ..schema import SPLITS, model_id
from ..splits import standard_split
from .find import download_published, published_subsets
from .naming import LABEL, NAME, PUBLISHED_REPO, PUBLISHED_SUBSETS, is_config, micro_dataset_of

#: Rows converted per Arrow batch while importing (memory: batch x one model's nested lists).
IMPORT_BATCH_ROWS = 2


def _positive_int(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return float(value).is_integer() and value >= 1


def _cell_array(cell, key: str, where: str) -> tuple[np.ndarray, bool]:
    """One nested-list cell (a length-1 Arrow list array) -> float32 array; True when values were rounded."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if cell.null_count:
        raise PublishedLayoutError(f"{where}: tensor column {key!r} is empty (null); the row is incomplete")
    shape, level = [], cell
    while pa.types.is_list(level.type) or pa.types.is_large_list(level.type) \
            or pa.types.is_fixed_size_list(level.type):
        lengths = pc.list_value_length(level)
        low, high = pc.min_max(lengths).values()
        if level.null_count or (len(level) and low.as_py() != high.as_py()):
            raise PublishedLayoutError(f"{where}: tensor column {key!r} is not a rectangular matrix (rows of "
                                       f"lengths {low} to {high}, or null rows); the row is corrupt")
        shape.append(high.as_py() if len(level) else 0)
        level = level.flatten()
    if not (pa.types.is_floating(level.type) or pa.types.is_integer(level.type)):
        raise PublishedLayoutError(f"{where}: tensor column {key!r} holds {level.type} values, not numbers")
    values = level.to_numpy(zero_copy_only=False)
    array = values.astype(np.float32)
    rounded = values.dtype == np.float64 and not np.array_equal(array.astype(np.float64), values,
                                                                equal_nan=True)
    return array.reshape(shape), rounded


@dataclass
class _Model:
    """The labels of one published row and where it goes."""

    row: int
    label: int
    name: object
    index: int
    micro_dataset: str
    split: str
    model_id: str


@dataclass
class ImportedSubset:
    """What :func:`import_official` wrote for one published subset."""

    subset: str
    config: str
    models: dict[str, int]
    files: list[Path]
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        counts = ", ".join(f"{split} {n}" for split, n in self.models.items())
        lines = [f"imported {sum(self.models.values())} models of {self.subset} as {self.config} ({counts})"]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


class _PublishedReader:
    """The Parquet files of one published subset: schema checks, a label pass, batches of tensors."""

    def __init__(self, subset: str, files: list[Path], cfg: BenchmarkConfig):
        import pyarrow.parquet as pq

        self.subset, self.files, self.cfg = subset, files, cfg
        schema = pq.read_schema(files[0])
        columns = schema.names
        missing = [c for c in (LABEL, NAME) if c not in columns]
        if missing:
            hint = ("it is already in LoRA-WiSE's own layout: load it with `lora_wise.load_benchmark`"
                    if "lora" in columns and "model_id" in columns
                    else "the published layout has `label`, `name` and one column per LoRA tensor")
            raise PublishedLayoutError(f"{subset} ({files[0]}) lacks the column{'s' if len(missing) > 1 else ''} "
                                       f"{', '.join(missing)} (columns: {', '.join(columns[:6])}"
                                       f"{', ...' if len(columns) > 6 else ''}); {hint}.")
        import pyarrow as pa

        nested = [f.name for f in schema if f.name not in (LABEL, NAME)
                  and (pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
                       or pa.types.is_fixed_size_list(f.type))]
        self.tensor_columns = [c for c in nested if is_lora_key(c)]
        self.ignored = [c for c in columns if c not in (LABEL, NAME) and c not in self.tensor_columns]
        if not self.tensor_columns:
            raise PublishedLayoutError(f"{subset} ({files[0]}) has no LoRA tensor columns: expected nested-list "
                                       f"columns named like `unet.<module>.lora.down.weight`; found "
                                       f"{', '.join(c for c in columns if c not in (LABEL, NAME)) or 'none'}.")

    def plan(self) -> list[_Model]:
        """Labels of every row, checked, with the split each goes to (reads two columns only)."""
        import pyarrow.parquet as pq

        cfg, split = self.cfg, standard_split(self.cfg)
        models, seen = [], {}
        for path in self.files:
            table = pq.read_table(path, columns=[LABEL, NAME])
            for label, name in zip(table.column(LABEL).to_pylist(), table.column(NAME).to_pylist()):
                where = f"{self.subset} row {len(models)} ({path.name})"
                if not _positive_int(label) or name is None:
                    raise PublishedLayoutError(f"{where}: label {label!r} / name {name!r}: every row needs a positive "
                                               f"integer label (its dataset size) and a name")
                index, micro = micro_dataset_of(cfg, name)
                identity = model_id(cfg.name, micro, int(label))
                if identity in seen:
                    raise PublishedLayoutError(f"{where}: a second model for micro-dataset {name!r} with {label} "
                                               f"images (first at row {seen[identity]}); the subset holds duplicates: "
                                               f"keep one row per (name, label)")
                seen[identity] = len(models)
                models.append(_Model(len(models), int(label), name, index, micro, split.side(index), identity))
        return models

    def rows(self, batch_rows: int) -> Iterator[tuple[int, object, int]]:
        """(row number, Arrow batch, index in the batch) for every row, in the order of :meth:`plan`.

        Only the tensor columns are read, ``batch_rows`` rows at a time.
        """
        import pyarrow.parquet as pq

        row = 0
        for path in self.files:
            # A buffered stream without pre-buffering and a single decoding thread: measured on
            # SD-1.5-sized rows, this reads as fast as the defaults with about half the memory.
            parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=self.tensor_columns,
                                              use_threads=False):
                for i in range(batch.num_rows):
                    yield row, batch, i
                    row += 1

    def tensors(self, batch, i: int, where: str) -> tuple[dict[str, np.ndarray], int]:
        """The tensors of row ``i`` of ``batch`` as float32 arrays, and how many had to be rounded."""
        tensors, rounded = {}, 0
        for key in self.tensor_columns:
            tensors[key], was_rounded = _cell_array(batch.column(key).slice(i, 1), key, where)
            rounded += was_rounded
        return tensors, rounded


def _import_subset(subset: str, files: list[Path], out: Path, staging: Path, batch_rows: int,
                   max_shard_bytes: int, progress: bool) -> ImportedSubset:
    from tqdm.auto import tqdm

    cfg = get_config(subset)
    reader = _PublishedReader(subset, files, cfg)
    models = reader.plan()
    notes = []
    if reader.ignored:
        notes.append(f"ignored {len(reader.ignored)} column(s) that are not LoRA tensors: "
                     f"{', '.join(reader.ignored[:4])}{', ...' if len(reader.ignored) > 4 else ''}")
    odd = sorted({m.label for m in models} - set(cfg.dataset_sizes))
    if odd:
        notes.append(f"labels {odd} are not among {cfg.name}'s dataset sizes {list(cfg.dataset_sizes)}; "
                     f"kept as published")
    if len(models) != cfg.num_models:
        notes.append(f"{len(models)} models; the full config has {cfg.num_models}")
    rounded, layers = 0, None
    recipe = cfg.recipe.to_json()
    pending: dict[str, list[dict]] = {split: [] for split in SPLITS}
    pending_bytes = dict.fromkeys(SPLITS, 0)

    def flush(split: str) -> None:  # one more shard of ``split`` in the staging folder
        write_shards(pending[split], staging, cfg.name, split, max_shard_bytes=max_shard_bytes, replace=False)
        pending[split], pending_bytes[split] = [], 0

    # One pass over the source: decoding nested lists is the slow part, so each row is
    # decoded once and routed to its split's buffer, which is written out shard by shard.
    with tqdm(total=len(models), desc=f"importing {subset}", unit="model", disable=not progress) as bar:
        for row, batch, i in reader.rows(batch_rows):
            model = models[row]
            where = f"{subset} row {row} (name {model.name!r}, label {model.label})"
            tensors, was_rounded = reader.tensors(batch, i, where)
            rounded += was_rounded
            weights = read_lora(tensors, name=where)
            if layers is None:
                layers = tuple(weights)
            elif tuple(weights) != layers:
                missing = sorted(set(layers) - set(weights))
                raise PublishedLayoutError(f"{where}: adapts other layers than the first row (missing "
                                           f"{missing[:3]}); every model of a subset must adapt the same layers")
            if weights.ranks != {cfg.rank}:
                raise PublishedLayoutError(f"{where}: LoRA of rank {'/'.join(map(str, sorted(weights.ranks)))} but "
                                           f"{cfg.name} has rank {cfg.rank}; is the subset name right?")
            lora = peft_safetensors(weights, alpha=cfg.lora_alpha)
            row_bytes = len(lora) + ROW_LABEL_BYTES
            if pending[model.split] and pending_bytes[model.split] + row_bytes > max_shard_bytes:
                flush(model.split)
            pending[model.split].append({
                "model_id": model.model_id, "config": cfg.name, "micro_dataset": model.micro_dataset,
                "micro_dataset_index": model.index, "dataset_size": model.label, "rank": cfg.rank,
                "backbone": cfg.backbone_name, "step": cfg.checkpoint_step, "seed": cfg.recipe.seed,
                "image_ids": [], "recipe": recipe, "lora": lora})
            pending_bytes[model.split] += row_bytes
            bar.update()
    for split in SPLITS:
        if pending[split]:
            flush(split)
    if rounded:
        notes.append(f"{rounded} tensors held float64 values that float32 cannot represent exactly; "
                     f"they were rounded to float32")
    files_written = _commit(staging, out, cfg.name)
    counts = Counter(m.split for m in models)
    for split in SPLITS:
        if not counts[split]:
            notes.append(f"no model falls on the {split} side of the standard split")
    return ImportedSubset(subset=subset, config=cfg.name, models={s: counts[s] for s in SPLITS},
                          files=files_written, notes=notes)


def _commit(staging: Path, out: Path, config: str) -> list[Path]:
    """Move a staged config's shards over ``out``'s, then drop ``out``'s shards that were not replaced.

    The release holds one row per model (its checkpoint): the config's default view.  A
    snapshots view of the same config left in ``out`` by a build would describe other models,
    so it goes too.
    """
    target = data_dir(out, config)
    target.mkdir(parents=True, exist_ok=True)
    final = []
    for split in SPLITS:
        new = shard_paths(staging, config, split)
        old = shard_paths(out, config, split) + shard_paths(out, snapshots_config(config), split)
        for path in new:
            os.replace(path, target / path.name)
            final.append(target / path.name)
        keep = {target / p.name for p in new}
        for path in old:
            if path not in keep:
                path.unlink()
    return final


def import_official(src: str | os.PathLike, out: str | os.PathLike, subsets: Iterable[str] | None = None,
                    *, progress: bool = True, batch_rows: int = IMPORT_BATCH_ROWS,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[ImportedSubset]:
    """Convert published-layout subsets (a local folder or a Hub id) into LoRA-WiSE's layout under ``out``.

    Every subset found is imported unless ``subsets`` names some.  A subset's models
    replace that config's shards in ``out``; other configs there are kept and the
    card lists them all.  Nothing in ``out`` changes unless the whole subset converts.
    """
    src_text, out = str(src), Path(out)
    subsets = list(dict.fromkeys(subsets or ()))
    for subset in subsets:
        get_config(subset)  # an unknown name gets the registry's error with suggestions
    if os.path.exists(src_text):
        root = Path(src_text)
        if not root.is_dir():
            raise PublishedLayoutError(f"{root} is a file; pass the folder holding the published subsets")
    elif is_repo_id(src_text):
        root = download_published(src_text, subsets or None)
    else:
        raise NotFoundError(f"{src_text}: no such folder, and not a Hub dataset id like {PUBLISHED_REPO}")
    found = published_subsets(root)
    if subsets:
        wanted = subsets
        absent = [s for s in wanted if s not in found]
        if absent:
            raise PublishedLayoutError(f"{src_text} has no subset {', '.join(absent)}; it has "
                                       f"{', '.join(found) or 'none'} (looked in README.md's `configs:`, <subset>/ and "
                                       f"data/<subset>/ folders of *.parquet files).")
    else:
        wanted = [s for s in found if is_config(s)]
        if not wanted:
            raise PublishedLayoutError(f"{src_text} holds no published subset: expected README.md `configs:` YAML or "
                                       f"folders named like {', '.join(PUBLISHED_SUBSETS[:3])}, ... (<subset>/ or "
                                       f"data/<subset>/) holding *.parquet files.")
    configs = [get_config(s).name for s in wanted]
    clash = [c for c, n in Counter(configs).items() if n > 1]
    if clash:
        raise PublishedLayoutError(f"several subsets map to config {clash[0]}; import them one at a time with --subset")
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".import-staging-{os.getpid()}"
    results = []
    try:
        for subset in wanted:
            results.append(_import_subset(subset, found[subset], out, staging, batch_rows, max_shard_bytes,
                                          progress))
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if results:
            render_card(out)
    return results
