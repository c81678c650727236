"""The Hub dataset layout: Parquet shards under ``data/<config>/`` and a card that maps them.

A LoRA-WiSE folder is laid out exactly as its Hub dataset repo::

    README.md                                         card; its ``configs:`` YAML lists every config and split
    data/<config>/<split>-NNNNN-<digest>.parquet            one row per model, at the config's checkpoint
    data/<config>_snapshots/<split>-NNNNN-<digest>.parquet  every snapshot of every model

so ``datasets.load_dataset(folder_or_repo, config)`` reads it with no loading
script.  Each config has two *views*, each a config of the card: the default one
(``<config>``: one row per model, at its checkpoint step) and ``<config>_snapshots``
(every training snapshot, the checkpoint's included), with the same schema.

A shard's name ends with the first hex digits of its bytes' SHA-256, so a shard whose
content changes gets a new name, and the card's ``configs:`` lists each split's shards by
name (not by a glob).  ``datasets`` keys its cache for ``load_dataset(folder, config)`` on
the card's ``data_files``, so a rebuilt folder is read afresh, never from a stale cache.

This module owns the layout: the builder, the importer and exporter of the
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
#: The suffix of a config's view holding every snapshot: ``mini_low_r8_snapshots``.
SNAPSHOTS = "_snapshots"
#: Hex digits of a shard's SHA-256 in its name.
DIGEST_LENGTH = 16
#: ``<split>-NNNNN-<digest>.parquet``; ``<split>-NNNNN.parquet`` (no digest) is what older versions wrote.
_SHARD = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})(-(?P<digest>[0-9a-f]{%d}))?\.parquet$" % DIGEST_LENGTH)


def snapshots_config(config: str) -> str:
    """The name of the view of ``config`` that holds every snapshot: ``<config>_snapshots``."""
    return config + SNAPSHOTS


def views(config: str) -> tuple[str, str]:
    """A config's two views, as configs of the card: ``(config, config_snapshots)``."""
    return config, snapshots_config(config)


def split_view(name: str) -> tuple[str, bool]:
    """``("mini_low_r8", True)`` for ``mini_low_r8_snapshots``; ``(name, False)`` for a default view."""
    if name.endswith(SNAPSHOTS) and len(name) > len(SNAPSHOTS):
        return name[: -len(SNAPSHOTS)], True
    return name, False


def data_path(config: str) -> str:
    """``data/<config>``: where a config's shards live, as a path inside a dataset repo."""
    return f"{DATA}/{config}"


def data_dir(root: str | os.PathLike, config: str) -> Path:
    """The folder of a config's shards under ``root``."""
    return Path(root) / data_path(config)


def shard_name(split: str, index: int, digest: str) -> str:
    """``<split>-NNNNN-<digest>.parquet``: ``digest`` is the shard's :func:`file_digest`."""
    if len(digest) != DIGEST_LENGTH:
        raise ValueError(f"a shard's digest has {DIGEST_LENGTH} hex digits, not {digest!r}")
    return f"{split}-{index:05d}-{digest}.parquet"


def is_shard_name(name: str) -> bool:
    """Whether a file name is a shard's, ``<split>-NNNNN-<digest>.parquet`` (or an older ``<split>-NNNNN.parquet``)."""
    return _SHARD.match(name) is not None


def shard_digest(name: str) -> str | None:
    """The digest in a shard's name (None for an older name without one)."""
    match = _SHARD.match(name)
    return match["digest"] if match else None


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex (read in blocks: memory stays flat)."""
    import hashlib

    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """A shard's digest: the first :data:`DIGEST_LENGTH` hex digits of its bytes' SHA-256."""
    return file_sha256(path)[:DIGEST_LENGTH]


def write_shard(table: pa.Table, folder: str | os.PathLike, split: str, index: int, prefix: str = "",
                dictionary_columns: list[str] | None = None) -> tuple[Path, str]:
    """Write ``table`` as shard ``index`` of ``split`` into ``folder``, named after its content.

    Returns the path written (``folder/<prefix><name>``) and the shard's name. The file is
    written under a temporary name, hashed, then renamed: it appears whole or not at all.
    ``dictionary_columns`` as :func:`write_table` takes them.
    """
    folder = Path(folder)
    tmp = folder / f".{split}-{index:05d}.{os.getpid()}.parquet.tmp"
    write_table(table, tmp, dictionary_columns)
    try:
        name = shard_name(split, index, file_digest(tmp))
        path = folder / f"{prefix}{name}"
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path, name


def shard_pattern(config: str, split: str) -> str:
    """The glob of one split's shards inside a repo."""
    return f"{data_path(config)}/{split}-*.parquet"


def card_files(root: str | os.PathLike, config: str, split: str) -> list[str]:
    """One split's shards as the card's ``configs:`` lists them: by name, relative to the repo."""
    return [f"{data_path(config)}/{p.name}" for p in shard_paths(root, config, split)]


def shard_paths(root: str | os.PathLike, config: str, split: str) -> list[Path]:
    """Existing shards of one split, in index order."""
    folder = data_dir(root, config)
    if not folder.is_dir():
        return []
    found = [(int(m["index"]), p) for p in folder.iterdir()
             if (m := _SHARD.match(p.name)) and m["split"] == split]
    return [p for _, p in sorted(found)]


def built_views(root: str | os.PathLike) -> list[str]:
    """Every view (a default view or a ``_snapshots`` one) with at least one shard under ``root/data``."""
    base = Path(root) / DATA
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir()
                  if p.is_dir() and any(shard_paths(root, p.name, s) for s in SPLITS))


def built_configs(root: str | os.PathLike) -> list[str]:
    """Configs with at least one shard under ``root/data``, in either view."""
    return sorted({split_view(name)[0] for name in built_views(root)})


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
    """Write ``rows`` as the shards of one split of one view (``config`` or ``<config>_snapshots``),
    each under ``max_shard_bytes``.

    With ``replace`` the split's previous shards are removed once the new ones are written.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use {', '.join(SPLITS)}")
    old = shard_paths(root, config, split) if replace else []
    start = 0 if replace else len(shard_paths(root, config, split))
    staging = data_dir(root, config) / f".staging-{split}-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for i, batch in enumerate(_batches(rows, max_shard_bytes)):
            path, _ = write_shard(rows_to_table(batch), staging, split, start + i)
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


#: The Hub's size categories, as (upper bound, label): the first whose bound exceeds the row count.
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (float("inf"), "n>100M"))


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` label for a dataset of ``rows`` examples."""
    return next(label for bound, label in SIZE_CATEGORIES if rows < bound)


def _num_rows(root: Path, view: str) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for s in SPLITS for p in shard_paths(root, view, s))


def _steps(root: Path, view: str) -> list[int]:
    """The snapshot steps a view holds (its ``step`` column only is read)."""
    return sorted({step for s in SPLITS for p in shard_paths(root, view, s)
                   for step in pq.read_table(p, columns=["step"]).column("step").to_pylist()})


def card_metadata(configs: Iterable, models: int) -> dict:
    """The card's YAML besides ``configs:``: what the Hub filters and links by.

    ``license`` is that of what was built: each config's weights inherit their backbone's
    license (``configs.BACKBONE_LICENSES``; a miniature-only build is generated by lora-wise,
    Apache-2.0); several licenses are listed, a Hub backbone of unknown license is ``other``
    with a ``license_link`` to its page.  ``base_model`` lists the backbones that are Hub
    models, ``tags`` carry the paper's arXiv id so the Hub links it.
    """
    from .configs import BACKBONE_LICENSES, MINIATURE
    from .hub import is_repo_id
    from .paper import ARXIV_ID

    licenses, links, hub_models = [], [], []
    for cfg in configs:
        on_hub = cfg.backbone != MINIATURE and is_repo_id(cfg.backbone) and not os.path.exists(cfg.backbone)
        if on_hub and cfg.backbone not in hub_models:
            hub_models.append(cfg.backbone)
        known = BACKBONE_LICENSES.get(cfg.backbone)
        license_id = known or ("other" if on_hub else "unknown")
        if license_id == "other" and f"https://huggingface.co/{cfg.backbone}" not in links:
            links.append(f"https://huggingface.co/{cfg.backbone}")
        if license_id not in licenses:
            licenses.append(license_id)
    metadata = {"license": licenses[0] if len(licenses) == 1 else licenses}
    if links:
        metadata.update(license_name="backbone-license", license_link=links[0] if len(links) == 1 else links)
    metadata.update(pretty_name="LoRA-WiSE", task_categories=["other"], size_categories=[size_category(models)],
                    tags=["lora", "dataset-size-recovery", "stable-diffusion", "model-weights", "benchmark",
                          f"arxiv:{ARXIV_ID}"])
    if hub_models:
        metadata["base_model"] = hub_models
    return metadata


def render_card(root: str | os.PathLike, configs: Iterable[str] | None = None, repo: str | None = None) -> Path:
    """Write ``root/README.md``: YAML metadata (license, tags, ``configs:``) and the card body.

    Every config with shards is listed in both its views (``<config>`` and ``<config>_snapshots``)
    where they exist.
    """
    from . import __version__
    from .configs import get_config

    root = Path(root)
    names = sorted(configs) if configs is not None else built_configs(root)
    data_files = {view: splits for config in names for view in views(config)
                  if (splits := {split: files for split in SPLITS if (files := card_files(root, view, split))})}
    if not data_files:
        raise DatasetLayoutError(f"{root}: no shards to describe; build a config first")
    built = [get_config(name) for name in names if name in data_files or snapshots_config(name) in data_files]
    rows = ["| config | range | sizes | backbone | rank | train / test micro-datasets | models | checkpoint step "
            "| snapshots (`<config>_snapshots`) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    models = 0
    for cfg in built:
        n_test = cfg.num_micro_datasets - cfg.num_train_micro_datasets
        here = _num_rows(root, cfg.name)
        models += here
        view = snapshots_config(cfg.name)
        snapshots = (f"{_num_rows(root, view)} rows, steps {', '.join(map(str, _steps(root, view)))}"
                     if view in data_files else "-")
        rows.append(f"| `{cfg.name}` | {cfg.data_range} | {', '.join(map(str, cfg.dataset_sizes))} | "
                    f"{cfg.backbone_name} | {cfg.rank} | {cfg.num_train_micro_datasets} / {n_test} | "
                    f"{here} of {cfg.num_models} | {cfg.checkpoint_step} | {snapshots} |")
    schema = [f"| `{name}` | {dtype} | {meaning} |" for name, (dtype, meaning) in COLUMNS.items()]
    example = next(cfg.name for cfg in built if cfg.name in data_files) if any(
        cfg.name in data_files for cfg in built) else next(iter(data_files))
    body = Template(template_path().read_text()).substitute(
        version=__version__, configs_table="\n".join(rows), schema_table="\n".join(schema),
        repo=repo or root.name, example_config=example)
    return write_card(root, data_files, body, **card_metadata(built, models))
