"""Snapshots -> rows -> atomic unit commits -> size-bounded Parquet shards and the card.

A build writes into the Hub layout of ``lora_wise.layout`` (``data/<config>/<split>-NNNNN.parquet``
and ``README.md``) and keeps its bookkeeping beside it, in ``.lora-wise-build/<config>/``:

``units/<unit>.parquet``
    one file per finished model, all its snapshots; written to a temporary name and
    renamed, so it either exists whole or not at all.  A unit is *done* once its file
    exists (or once it is sealed).
``pending/<split>-NNNNN.parquet``
    shards being sealed.
``manifest.json``
    the truth about the sealed state: which units are sealed, which shards make each
    split, the next free shard index, and the build's fingerprint (recipe, backbone,
    precision) so a rerun cannot mix models trained differently.

Sealing packs staged units into new shards under ``pending/`` (merging the last
small shard of a split, so shards stay near the size bound), then commits by
replacing ``manifest.json`` atomically -- the single commit point -- then *rolls
forward*: moves the manifest's pending shards into ``data/<config>/``, deletes
shards the manifest no longer lists and the staged units it has absorbed.
Rolling forward is idempotent and runs again at the start of every build, so a
build killed at any moment -- mid-training, mid-sealing, mid-card -- restarts
into a state where every snapshot is present exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow.parquet as pq

from lora_wise.configs import BenchmarkConfig
from lora_wise.layout import (DEFAULT_MAX_SHARD_BYTES, ROW_LABEL_BYTES, atomic_write_bytes, data_dir, render_card,
                              rows_to_table, shard_name, shard_paths, write_table)
from lora_wise.schema import SPLITS

from .plan import PlannedModel
from .train import Snapshot

#: Bookkeeping folder inside the output folder (never uploaded).
BUILD_DIR = ".lora-wise-build"
MANIFEST_VERSION = 1
_SHARD = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})\.parquet$")


class BuildStateError(RuntimeError):
    """The output folder holds something this build must not touch or mix with."""


def snapshot_rows(cfg: BenchmarkConfig, model: PlannedModel, snapshots: Sequence[Snapshot],
                  recipe_json: str) -> list[dict]:
    """One row per snapshot, in the schema of ``lora_wise.schema``."""
    unit = model.unit
    return [{"model_id": unit.model_id, "config": cfg.name, "micro_dataset": unit.micro_dataset,
             "micro_dataset_index": unit.micro_dataset_index, "dataset_size": unit.dataset_size,
             "rank": cfg.rank, "backbone": cfg.backbone_name, "step": snap.step, "seed": model.job.seed,
             "image_ids": list(model.image_ids), "recipe": recipe_json, "lora": snap.lora}
            for snap in snapshots]


def _payload_bytes(table) -> int:
    """Approximate size of rows in a shard: their LoRA bytes plus a little for the labels."""
    return int(table.column("lora").nbytes) + ROW_LABEL_BYTES * table.num_rows


class ConfigStore:
    """The committed state of one config in one output folder."""

    def __init__(self, root: str | os.PathLike, cfg: BenchmarkConfig, fingerprint: dict):
        from lora_wise.splits import standard_split

        self.root = Path(root)
        self.config = config = cfg.name
        self.split_of = standard_split(cfg).side
        self.fingerprint = fingerprint
        self.dir = self.root / BUILD_DIR / config
        self.units_dir = self.dir / "units"
        self.pending_dir = self.dir / "pending"
        self.manifest_path = self.dir / "manifest.json"
        self.data_dir = data_dir(self.root, config)

    # -------------------------------------------------------------- manifest

    def _read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text())

    def _write_manifest(self, manifest: dict) -> None:
        atomic_write_bytes(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())

    def manifest(self) -> dict:
        manifest = self._read_manifest()
        if manifest is None:
            raise BuildStateError(f"{self.dir}: no manifest; call open() first")
        return manifest

    @contextlib.contextmanager
    def lock(self):
        """Exclusive lock on this config's state (several builders may share an output folder)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def open(self) -> "ConfigStore":
        """Create or check the manifest, then roll any interrupted seal forward."""
        with self.lock():
            manifest = self._read_manifest()
            if manifest is None:
                existing = [p.name for s in SPLITS for p in shard_paths(self.root, self.config, s)]
                if existing:
                    raise BuildStateError(
                        f"{self.data_dir} already holds shards ({', '.join(existing[:3])}) that `lora-wise build` "
                        f"did not write (no {BUILD_DIR} manifest); build into another --out folder or remove "
                        f"{self.data_dir} first.")
                self._write_manifest({"version": MANIFEST_VERSION, "config": self.config,
                                      "fingerprint": self.fingerprint, "units": [],
                                      "shards": {s: [] for s in SPLITS}, "next_index": {s: 0 for s in SPLITS}})
            elif manifest["fingerprint"] != self.fingerprint and not manifest["units"] and not self.staged_units():
                manifest["fingerprint"] = self.fingerprint  # nothing was built under the old one: no mixing
                self._write_manifest(manifest)
            elif manifest["fingerprint"] != self.fingerprint:
                diff = sorted(k for k in set(manifest["fingerprint"]) | set(self.fingerprint)
                              if manifest["fingerprint"].get(k) != self.fingerprint.get(k))
                raise BuildStateError(
                    f"{self.root} already holds {self.config} built with a different {', '.join(diff)} "
                    f"({ {k: manifest['fingerprint'].get(k) for k in diff} }); resuming would mix models trained "
                    f"differently. Build into another --out folder, or delete {self.data_dir} and {self.dir}.")
            self._roll_forward()
        return self

    # -------------------------------------------------------------- units

    def _unit_path(self, key: str) -> Path:
        return self.units_dir / f"{key}.parquet"

    def staged_units(self) -> list[str]:
        if not self.units_dir.is_dir():
            return []
        return sorted(p.stem for p in self.units_dir.glob("*.parquet"))

    def done_units(self) -> set[str]:
        """Units committed: sealed into shards, or staged and waiting to be sealed."""
        return set(self.manifest()["units"]) | set(self.staged_units())

    def commit_unit(self, key: str, rows: list[dict]) -> Path:
        """Stage one finished model atomically; from now on the unit counts as done."""
        path = self._unit_path(key)
        write_table(rows_to_table(rows), path)
        _crash_hook("unit-committed")
        return path

    def staged_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.units_dir.glob("*.parquet")) if self.units_dir.is_dir() else 0

    # -------------------------------------------------------------- sealing

    def seal(self, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> int:
        """Pack staged units into shards and commit them; returns how many units were sealed."""
        import pyarrow as pa
        import pyarrow.compute as pc

        with self.lock():
            self._roll_forward()
            manifest = self.manifest()
            staged = [k for k in self.staged_units() if k not in set(manifest["units"])]
            if not staged:
                return 0
            staged_rows = pa.concat_tables([pq.read_table(self._unit_path(k)) for k in staged])
            sides = pa.array([self.split_of(i) for i in staged_rows.column("micro_dataset_index").to_pylist()])
            shards = {s: list(manifest["shards"][s]) for s in SPLITS}
            next_index = dict(manifest["next_index"])
            self.pending_dir.mkdir(parents=True, exist_ok=True)
            for split in SPLITS:
                rows = staged_rows.filter(pc.equal(sides, split))
                if rows.num_rows == 0:
                    continue
                rows = rows.sort_by([("micro_dataset_index", "ascending"), ("dataset_size", "ascending"),
                                     ("step", "ascending")])
                if shards[split]:  # reopen the last shard when it is small, to keep shards near the bound
                    last = pq.read_table(self.data_dir / shards[split][-1])
                    if _payload_bytes(last) < max_shard_bytes // 2:
                        rows = pa.concat_tables([last, rows])
                        shards[split].pop()
                for part in _pack(rows, max_shard_bytes):
                    name = shard_name(split, next_index[split])
                    next_index[split] += 1
                    write_table(part, self.pending_dir / name)
                    shards[split].append(name)
                    _crash_hook("sealing")
            manifest.update(units=sorted(set(manifest["units"]) | set(staged)), shards=shards, next_index=next_index)
            self._write_manifest(manifest)  # the commit point
            _crash_hook("after-manifest")
            self._roll_forward()
            return len(staged)

    def _roll_forward(self) -> None:
        """Make the folder match the manifest (idempotent; safe to repeat after any crash).

        Shards the manifest no longer lists go first, then its new shards move in: a
        reader looking between two steps may miss rows, but never sees one twice.
        """
        manifest = self._read_manifest()
        if manifest is None:
            return
        listed = {name for s in SPLITS for name in manifest["shards"][s]}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for path in list(self.data_dir.iterdir()):
            if _SHARD.match(path.name) and path.name not in listed:
                path.unlink()  # a shard replaced by a reseal
            elif path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink()  # a half-written file
        for name in sorted(listed):
            src, dst = self.pending_dir / name, self.data_dir / name
            if src.exists():
                os.replace(src, dst)
                _crash_hook("rolling-forward")
            elif not dst.exists():
                raise BuildStateError(f"{dst} is listed in {self.manifest_path} but missing; the build folder was "
                                      f"changed by hand. Delete {self.data_dir} and {self.dir} and rebuild.")
        if self.pending_dir.is_dir():
            for path in self.pending_dir.iterdir():
                path.unlink()  # shards of a seal that never committed
        sealed = set(manifest["units"])
        if self.units_dir.is_dir():
            for path in self.units_dir.iterdir():
                if path.suffix == ".parquet" and path.stem in sealed:
                    path.unlink()
                elif path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink()


def _pack(table, max_bytes: int) -> Iterable:
    """Slices of ``table`` (rows in order), each under ``max_bytes`` of LoRA payload (at least one row)."""
    sizes = [len(b) + ROW_LABEL_BYTES for b in table.column("lora").to_pylist()]
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > max_bytes:
            yield table.slice(start, i - start)
            start, total = i, 0
        total += size
    if start < len(sizes):
        yield table.slice(start, len(sizes) - start)


def render(root: str | os.PathLike, repo: str | None = None) -> Path | None:
    """(Re)write the card over every config with shards; None when nothing is sealed yet."""
    from lora_wise.layout import built_configs

    if not built_configs(root):
        return None
    _crash_hook("card")
    return render_card(root, repo=repo)


_crash_counts: dict[str, int] = {}


def _crash_hook(point: str) -> None:
    """Fault injection for the resumability tests: ``LORA_WISE_TEST_CRASH_AT=<point>[:<n>]``.

    SIGKILLs this process the ``n``-th time (default the first) it passes ``point``:
    ``unit-committed``, ``sealing``, ``after-manifest``, ``rolling-forward``, ``card``.
    """
    wanted = os.environ.get("LORA_WISE_TEST_CRASH_AT")
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name != point:
        return
    _crash_counts[point] = _crash_counts.get(point, 0) + 1
    if _crash_counts[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
