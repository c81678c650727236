"""Find the published release's subsets: in a local folder, or downloaded from the Hub into the cache.

A folder's subsets are the files its ``README.md`` ``configs:`` YAML declares, then any
``<subset>/`` or ``data/<subset>/`` folder named like a config holding Parquet files.  A Hub id
is first materialised into the cache with ``huggingface_hub`` (only the files of the requested
subsets), then read the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..hub import talking_to_hub
from ..layout import DATA, data_path, read_card_data_files
from .naming import PUBLISHED_REPO, is_config


def _declared_data_files(root: Path) -> dict[str, list[str]]:
    """config_name -> file patterns (all splits), from ``root/README.md``'s ``configs:`` YAML."""
    return {name: [pattern for patterns in splits.values() for pattern in patterns]
            for name, splits in read_card_data_files(root).items()}


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def published_subsets(src: str | os.PathLike) -> dict[str, list[Path]]:
    """Subsets of a local folder in the published layout -> their Parquet files, in order.

    Declared in ``README.md``'s ``configs:`` YAML first, then any ``<subset>/`` or
    ``data/<subset>/`` folder named like a config holding ``*.parquet`` files.
    """
    root = Path(src)
    found: dict[str, list[Path]] = {}
    for name, patterns in _declared_data_files(root).items():
        files = sorted({p for pattern in patterns for p in root.glob(pattern)
                        if p.is_file() and p.suffix == ".parquet" and _visible(p, root)})
        if files:
            found[name] = files
    for base in (root, root / DATA):
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            if folder.is_dir() and folder.name not in found and is_config(folder.name):
                files = sorted(p for p in folder.rglob("*.parquet") if _visible(p, root))
                if files:
                    found[folder.name] = files
    return found


def download_published(repo: str = PUBLISHED_REPO, subsets: Iterable[str] | None = None) -> Path:
    """Bring the files of ``subsets`` (all when None) of a Hub dataset into the cache; return the folder."""
    from huggingface_hub import HfApi

    from ..cache import cache_dir

    folder = cache_dir("published", repo.replace("/", "--"))
    api = HfApi()
    with talking_to_hub(f"download {repo}"):
        api.hf_hub_download(repo, "README.md", repo_type="dataset", local_dir=folder)
        declared = _declared_data_files(folder)
        wanted = list(subsets) if subsets else list(declared)
        patterns = None
        if wanted:
            patterns = ["README.md"]
            for subset in wanted:
                patterns += declared.get(subset) or [f"{subset}/**", f"{data_path(subset)}/**"]
        api.snapshot_download(repo, repo_type="dataset", allow_patterns=patterns, local_dir=folder)
    return folder
