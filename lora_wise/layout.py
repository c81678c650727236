"""The Hub dataset layout: Parquet shards under ``data/<config>/`` and a card that maps them.

A LoRA-WiSE folder is laid out exactly as its Hub dataset repo::

    README.md                          card; its ``configs:`` YAML lists every config and split
    data/<config>/<split>-NNNNN.parquet

so ``datasets.load_dataset(folder_or_repo, config)`` reads it with no loading
script.  This module owns the layout: the builder, the importer of the
published release and the tests all write through it.  Every file appears
atomically (written to a temporary name, then renamed), so a reader or a killed
writer never sees half a shard.
"""

from __future__ import annotations

import os
import re
import sysconfig
import tempfile
from pathlib import Path
from string import Template
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import COLUMNS, SCHEMA, SPLITS

#: Upper bound on a shard's size; the Hub and ``datasets`` work best with shards of a few hundred MB.
DEFAULT_MAX_SHARD_BYTES = 256 * 1024 * 1024
#: What a row costs in a shard besides its LoRA bytes (labels, image ids, recipe), for sizing shards.
ROW_LABEL_BYTES = 1024
_SHARD = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})\.parquet$")


def data_dir(root: str | os.PathLike, config: str) -> Path:
    return Path(root) / "data" / config


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"


def shard_paths(root: str | os.PathLike, config: str, split: str) -> list[Path]:
    """Existing shards of one split, in index order."""
    folder = data_dir(root, config)
    if not folder.is_dir():
        return []
    found = [(int(m["index"]), p) for p in folder.iterdir()
             if (m := _SHARD.match(p.name)) and m["split"] == split]
    return [p for _, p in sorted(found)]


def built_configs(root: str | os.PathLike) -> list[str]:
    """Configs with at least one shard under ``root/data``."""
    base = Path(root) / "data"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir()
                  if p.is_dir() and any(shard_paths(root, p.name, s) for s in SPLITS))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Arrow table with the LoRA-WiSE schema; a row missing a column is an error naming it."""
    for row in rows:
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"row {row.get('model_id', '?')} lacks columns {missing}")
    return pa.Table.from_pylist([{c: row[c] for c in COLUMNS} for row in rows], schema=SCHEMA)


def write_table(table: pa.Table, path: Path, dictionary_columns: list[str] | None = None) -> None:
    """Write one Parquet file atomically.

    zstd compresses the labels well and costs little on weights; dictionary encoding is kept to
    the label columns (``dictionary_columns``, default: every column but ``lora``), since on
    tensor bytes it is slow and saves nothing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if dictionary_columns is None:
        dictionary_columns = [c for c in table.column_names if c != "lora"]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=64, use_dictionary=dictionary_columns)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _batches(rows: Iterable[dict], max_bytes: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    size = 0
    for row in rows:
        row_bytes = len(row["lora"]) + ROW_LABEL_BYTES
        if batch and size + row_bytes > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += row_bytes
    if batch:
        yield batch


def write_shards(rows: Iterable[dict], root: str | os.PathLike, config: str, split: str,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, replace: bool = True) -> list[Path]:
    """Write ``rows`` as the shards of one split, each under ``max_shard_bytes``.

    With ``replace`` the split's previous shards are removed once the new ones are written.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use {', '.join(SPLITS)}")
    old = shard_paths(root, config, split) if replace else []
    start = 0 if replace else len(shard_paths(root, config, split))
    staging = data_dir(root, config) / f".staging-{split}-{os.getpid()}"
    written = []
    try:
        for i, batch in enumerate(_batches(rows, max_shard_bytes)):
            path = staging / shard_name(split, start + i)
            write_table(rows_to_table(batch), path)
            written.append(path)
        for path in old:
            path.unlink()
        final = []
        for path in written:
            target = data_dir(root, config) / path.name
            os.replace(path, target)
            final.append(target)
        return final
    finally:
        for leftover in staging.glob("*") if staging.exists() else []:
            leftover.unlink()
        if staging.exists():
            staging.rmdir()


# --------------------------------------------------------------------------- the card

def template_path() -> Path:
    """``dataset_card.md``: beside the source tree, or where the wheel installed it."""
    candidates = [Path(__file__).resolve().parents[1] / "dataset_card.md",
                  Path(sysconfig.get_path("data")) / "share" / "lora-wise" / "dataset_card.md"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("dataset_card.md template not found; reinstall lora-wise")


def card_configs(root: str | os.PathLike, configs: Iterable[str]) -> list[dict]:
    """The ``configs:`` YAML entries: one per config, a data_files entry per split with shards."""
    entries = []
    for config in configs:
        files = [{"split": split, "path": f"data/{config}/{split}-*.parquet"}
                 for split in SPLITS if shard_paths(root, config, split)]
        if files:
            entries.append({"config_name": config, "data_files": files})
    return entries


def render_card(root: str | os.PathLike, configs: Iterable[str] | None = None, repo: str | None = None) -> Path:
    """Write ``root/README.md``: YAML metadata (license, tags, ``configs:``) and the card body."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from . import __version__
    from .configs import get_config

    root = Path(root)
    names = sorted(configs) if configs is not None else built_configs(root)
    entries = card_configs(root, names)
    if not entries:
        raise ValueError(f"{root}: no shards to describe; build a config first")
    data = DatasetCardData(
        license="other", license_name="lora-wise", pretty_name="LoRA-WiSE",
        tags=["lora", "dataset-size-recovery", "stable-diffusion", "model-weights", "benchmark"],
        configs=entries)
    rows = ["| config | range | sizes | backbone | rank | train / test micro-datasets | models |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for entry in entries:
        cfg = get_config(entry["config_name"])
        n_test = cfg.num_micro_datasets - cfg.num_train_micro_datasets
        rows.append(f"| `{cfg.name}` | {cfg.data_range} | {', '.join(map(str, cfg.dataset_sizes))} | "
                    f"{cfg.backbone_name} | {cfg.rank} | {cfg.num_train_micro_datasets} / {n_test} | "
                    f"{cfg.num_models} |")
    schema = [f"| `{name}` | {dtype} | {meaning} |" for name, (dtype, meaning) in COLUMNS.items()]
    body = Template(template_path().read_text()).substitute(
        version=__version__, configs_table="\n".join(rows), schema_table="\n".join(schema),
        repo=repo or root.name, example_config=entries[0]["config_name"])
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    atomic_write_bytes(root / "README.md", str(card).encode())
    return root / "README.md"
