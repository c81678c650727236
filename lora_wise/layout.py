"""The Hub dataset layout: Parquet shards under ``data/<config>/`` and a card that maps them.

A LoRA-WiSE folder is laid out exactly as its Hub dataset repo::

    README.md                          card; its ``configs:`` YAML lists every config and split
    data/<config>/<split>-NNNNN.parquet

so ``datasets.load_dataset(folder_or_repo, config)`` reads it with no loading
script.  This module owns the layout: the builder, the importer and exporter of the
published release, the loader and the tests all go through it for shard paths and
names, and for the card's ``configs:`` YAML, which is read and written only with
huggingface_hub's card classes (``DatasetCard``, ``DatasetCardData``).  Every file
appears atomically (written to a temporary name, then renamed), so a reader or a
killed writer never sees half a shard.
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

from .errors import DatasetLayoutError, NotFoundError
from .schema import COLUMNS, SCHEMA, SPLITS

#: Upper bound on a shard's size; the Hub and ``datasets`` work best with shards of a few hundred MB.
DEFAULT_MAX_SHARD_BYTES = 256 * 1024 * 1024
#: What a row costs in a shard besides its LoRA bytes (labels, image ids, recipe), for sizing shards.
ROW_LABEL_BYTES = 1024
#: The folder of a dataset (or repo) that holds one sub-folder of shards per config.
DATA = "data"
_SHARD = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})\.parquet$")


def data_path(config: str) -> str:
    """``data/<config>``: where a config's shards live, as a path inside a dataset repo."""
    return f"{DATA}/{config}"


def data_dir(root: str | os.PathLike, config: str) -> Path:
    """The folder of a config's shards under ``root``."""
    return Path(root) / data_path(config)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"


def is_shard_name(name: str) -> bool:
    """Whether a file name is a shard's, ``<split>-NNNNN.parquet``."""
    return _SHARD.match(name) is not None


def shard_pattern(config: str, split: str) -> str:
    """The glob of one split's shards inside a repo, as the card's ``configs:`` lists it."""
    return f"{data_path(config)}/{split}-*.parquet"


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
    base = Path(root) / DATA
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
    raise NotFoundError("dataset_card.md template not found; reinstall lora-wise")


#: What the card's ``configs:`` YAML maps: config -> split -> file patterns (relative to the folder).
DataFiles = dict[str, dict[str, list[str]]]


def _split_patterns(data_files) -> dict[str, list[str]]:
    """One config's ``data_files`` in any form a card allows -> split -> patterns.

    A pattern, a list of patterns (both the ``train`` split's, as ``datasets`` reads them),
    ``{split, path}`` entries (``path`` one pattern or a list), or a ``{split: patterns}`` map.
    """
    if isinstance(data_files, dict) and "path" not in data_files:
        data_files = [{"split": split, "path": path} for split, path in data_files.items()]
    out: dict[str, list[str]] = {}
    for item in data_files if isinstance(data_files, list) else [data_files]:
        split, path = (item.get("split", "train"), item.get("path")) if isinstance(item, dict) else ("train", item)
        paths = path if isinstance(path, list) else [path]
        out.setdefault(str(split), []).extend(p for p in paths if isinstance(p, str))
    return out


def read_card_data_files(root: str | os.PathLike) -> DataFiles:
    """config -> split -> file patterns, from ``root/README.md``'s ``configs:`` YAML; {} without a card."""
    import yaml
    from huggingface_hub import DatasetCard

    readme = Path(root) / "README.md"
    if not readme.is_file():
        return {}
    try:
        card = DatasetCard.load(readme, ignore_metadata_errors=True)
    except (yaml.YAMLError, ValueError) as exc:
        raise DatasetLayoutError(f"{readme}: its YAML header does not parse ({exc}); fix or remove it") from exc
    return {str(entry["config_name"]): _split_patterns(entry.get("data_files") or [])
            for entry in card.data.to_dict().get("configs") or []
            if isinstance(entry, dict) and "config_name" in entry}


def write_card(root: str | os.PathLike, data_files: DataFiles, body: str, **metadata) -> Path:
    """Write ``root/README.md``: ``metadata`` and the ``configs:`` of ``data_files`` as YAML, then ``body``."""
    from huggingface_hub import DatasetCard, DatasetCardData

    configs = [{"config_name": config,
                "data_files": [{"split": split, "path": paths[0] if len(paths) == 1 else paths}
                               for split, paths in data_files[config].items()]}
               for config in sorted(data_files)]
    data = DatasetCardData(**metadata, configs=configs)
    path = Path(root) / "README.md"
    atomic_write_bytes(path, str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")).encode())
    return path


def render_card(root: str | os.PathLike, configs: Iterable[str] | None = None, repo: str | None = None) -> Path:
    """Write ``root/README.md``: YAML metadata (license, tags, ``configs:``) and the card body."""
    from . import __version__
    from .configs import get_config

    root = Path(root)
    names = sorted(configs) if configs is not None else built_configs(root)
    data_files = {config: splits for config in names
                  if (splits := {split: [shard_pattern(config, split)]
                                 for split in SPLITS if shard_paths(root, config, split)})}
    if not data_files:
        raise DatasetLayoutError(f"{root}: no shards to describe; build a config first")
    rows = ["| config | range | sizes | backbone | rank | train / test micro-datasets | models |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in data_files:
        cfg = get_config(name)
        n_test = cfg.num_micro_datasets - cfg.num_train_micro_datasets
        rows.append(f"| `{cfg.name}` | {cfg.data_range} | {', '.join(map(str, cfg.dataset_sizes))} | "
                    f"{cfg.backbone_name} | {cfg.rank} | {cfg.num_train_micro_datasets} / {n_test} | "
                    f"{cfg.num_models} |")
    schema = [f"| `{name}` | {dtype} | {meaning} |" for name, (dtype, meaning) in COLUMNS.items()]
    body = Template(template_path().read_text()).substitute(
        version=__version__, configs_table="\n".join(rows), schema_table="\n".join(schema),
        repo=repo or root.name, example_config=next(iter(data_files)))
    return write_card(root, data_files, body, license="other", license_name="lora-wise", pretty_name="LoRA-WiSE",
                      tags=["lora", "dataset-size-recovery", "stable-diffusion", "model-weights", "benchmark"])
