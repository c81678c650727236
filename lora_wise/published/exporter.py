"""``export_official``: one of our configs written in the published release's layout.

``out/data/<subset>/train-NNNNN-<digest>.parquet`` with every model at the config's checkpoint (label,
name and one nested-list column per LoRA tensor), and ``out/README.md`` whose ``configs:`` YAML
makes ``load_dataset(out, subset)`` work; so tools written for the release read our builds.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..configs import get_config
from ..errors import DatasetLayoutError
from ..layout import (DEFAULT_MAX_SHARD_BYTES, card_files, data_dir, read_card_data_files, shard_paths, write_card,
                      write_shard)
from ..lora import LoRAWeights
from .naming import (LABEL, NAME, PUBLISHED_REPO, PUBLISHED_SPLIT, is_config, published_column, published_name,
                     published_subset)


@dataclass
class ExportedSubset:
    """What :func:`export_official` wrote."""

    subset: str
    config: str
    models: int
    files: list[Path]
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        where = self.files[0].parent if self.files else "?"
        lines = [f"exported {self.models} models of {self.config} as subset {self.subset} "
                 f"({len(self.files)} file{'s' if len(self.files) != 1 else ''} in {where})"]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _matrix_cell(matrix: np.ndarray):
    """One matrix as a length-1 Arrow ``list<list<float>>`` array."""
    import pyarrow as pa

    d, k = matrix.shape
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, d * k + 1, k, dtype=np.int32)),
                                     pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel()))
    return pa.ListArray.from_arrays(pa.array([0, d], type=pa.int32()), inner)


def _published_table(rows: list[tuple[int, object, LoRAWeights]], layers: tuple[str, ...], named: bool):
    import pyarrow as pa

    columns = {LABEL: pa.array([r[0] for r in rows], pa.int64()),
               NAME: pa.array([r[1] for r in rows], pa.string() if named else pa.int64())}
    for layer in layers:
        for role in ("A", "B"):
            columns[published_column(layer, role)] = pa.concat_arrays(
                [_matrix_cell(getattr(w[layer], role)) for _, _, w in rows])
    return pa.table(columns)


def _write_published_card(out: Path, subset: str) -> Path:
    """``out/README.md`` mapping ``subset`` and the other subsets already there, as the release's card does."""
    data_files = {name: splits for name, splits in read_card_data_files(out).items() if name != subset}
    data_files[subset] = {PUBLISHED_SPLIT: card_files(out, subset, PUBLISHED_SPLIT)}
    names = sorted(data_files)
    subsets = ", ".join(f"`{name}`" for name in names)
    steps = ", ".join(f"`{name}` step {get_config(name).checkpoint_step}" for name in names if is_config(name))
    body = (f"# LoRA-WiSE in the published layout\n\nSubsets {subsets}, exported by `lora-wise export-official` "
            f"in the layout of the published release ({PUBLISHED_REPO}): one split `{PUBLISHED_SPLIT}`, one row per "
            f"model, `label` (dataset size), `name` (micro-dataset), and one nested-list column per LoRA tensor "
            f"named `unet.<module>.lora.down.weight` / `.lora.up.weight`. Every model is its config's default "
            f"checkpoint ({steps}).\n")
    return write_card(out, data_files, body, pretty_name="LoRA-WiSE (published layout)",
                      tags=["lora", "dataset-size-recovery", "model-weights"])


def export_official(dataset: str | os.PathLike, config: str, out: str | os.PathLike, *, progress: bool = True,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> ExportedSubset:
    """Write ``config`` of a LoRA-WiSE dataset (folder or repo id) under ``out`` in the published layout.

    ``out/data/<subset>/train-NNNNN-<digest>.parquet`` with every model at the config's
    checkpoint, and ``out/README.md`` whose ``configs:`` YAML makes
    ``load_dataset(out, subset)`` work.  Other subsets already in ``out`` are kept.
    """
    from ..data import iter_models

    cfg = get_config(config)
    subset, out = published_subset(cfg), Path(out)
    target = data_dir(out, subset)
    staging = target / f".staging-{os.getpid()}"
    named = bool(cfg.micro_dataset_names)
    layers: tuple[str, ...] | None = None
    scales: set[float] = set()
    batch: list = []
    size, count, written = 0, 0, []

    def flush() -> None:
        nonlocal batch, size
        # Dictionary encoding only for ``label`` and ``name``: on float matrices it never pays, and
        # skipping it wrote an SD-1.5 shard 5x faster and 1/3 smaller.
        path, _ = write_shard(_published_table(batch, layers, named), staging, PUBLISHED_SPLIT, len(written),
                              dictionary_columns=[LABEL, NAME])
        written.append(path)
        batch, size = [], 0

    try:
        for labels, weights in iter_models(dataset, cfg.name, progress=progress):
            if layers is None:
                layers = tuple(weights)
            elif tuple(weights) != layers:
                raise DatasetLayoutError(f"{labels['model_id']} adapts other layers than the first model; the "
                                         f"published layout needs one column set per subset")
            scales |= {1.0 if layer.scale is None else round(layer.scale, 6) for layer in weights.values()}
            row_bytes = sum(layer.A.nbytes + layer.B.nbytes for layer in weights.values())
            if batch and size + row_bytes > max_shard_bytes:
                flush()
            batch.append((int(labels["dataset_size"]), published_name(cfg, int(labels["micro_dataset_index"])),
                          weights))
            size += row_bytes
            count += 1
        if batch:
            flush()
        for old in shard_paths(out, subset, PUBLISHED_SPLIT):
            old.unlink()
        final = []
        for path in written:
            os.replace(path, target / path.name)
            final.append(target / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_published_card(out, subset)
    notes = []
    if scales - {1.0}:
        notes.append(f"the LoRAs' scale alpha/r is {', '.join(f'{s:g}' for s in sorted(scales))}; the published "
                     f"layout carries no alpha, so readers will assume 1")
    return ExportedSubset(subset=subset, config=cfg.name, models=count, files=final, notes=notes)
