"""Snapshots -> rows -> atomic unit commits -> size-bounded Parquet shards and the card.

A build writes into the Hub layout of ``lora_wise.layout`` and keeps its bookkeeping beside it,
in ``.lora-wise-build/<config>/``.  Every seal writes both views of a config from the same rows:
``data/<config>/`` (one row per model, its checkpoint snapshot) and ``data/<config>_snapshots/``
(every snapshot), each shard named ``<split>-NNNNN-<digest>.parquet`` after its content.

``units/<unit>.parquet``

``units/<unit>.parquet``
    one file per finished model, all its snapshots; written to a temporary name and
    renamed, so it either exists whole or not at all.  A unit is *done* once its file
    exists (or once it is sealed).
``pending/sNNNNNN-<view>-<shard name>``
    shards being sealed, named after their seal and view (``model`` or ``snapshots``).
``manifest.json``
    the truth about the sealed state: which units are sealed, which shards make each
    split of each view, the next free shard index, and the build's fingerprint (recipe,
    backbone, precision) so a rerun cannot mix models trained differently.

Sealing packs staged units into new shards under ``pending/`` (merging the last
small shard of a split, so shards stay near the size bound), then commits by
replacing ``manifest.json`` atomically -- the single commit point -- then *rolls
forward*: moves the manifest's pending shards into ``data/<config>/``, deletes
shards the manifest no longer lists and the staged units it has absorbed.
Rolling forward is idempotent and runs again at the start of every build, so a
build killed at any moment -- mid-training, mid-sealing, mid-card -- restarts
into a state where every snapshot is present exactly once.

Several processes may build one config into one folder at once (``--shard i/N``
on a shared filesystem, a distributed driver): unit commits, seals and roll-forwards
each hold the config's file lock, and the sealed shards are a function of the set of
rows alone, whichever process trained, committed or sealed which unit:

* a seal given the build's planned units packs only the *sealable prefix* -- the
  staged units before the first unit (in key order, which is row order) that is
  not done yet -- so rows always reach the shards in sorted order;
* the last shard of a split is reopened whenever the next row fits, so packing in
  several seals cuts shards exactly where one greedy pass over all rows would;
* once every planned unit is sealed, shards are renumbered ``00000, 00001, ...``
  per split (hard links, committed like a seal), the names one seal would give.

Pending shards carry their seal's number (``s000007-model-train-00003-<digest>.parquet``),
so a roll-forward installs only the committed seal's files.  A folder sealed by an older
version (manifest version 1: one view, every snapshot in ``data/<config>/``) is migrated
when a build opens it: its sealed rows go back to staged units, which the next seal packs
into both views.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow.parquet as pq

from lora_wise import jsonio
from lora_wise.configs import BenchmarkConfig
from lora_wise.errors import BuildStateError
from lora_wise.layout import (DEFAULT_MAX_SHARD_BYTES, ROW_LABEL_BYTES, atomic_write_bytes, data_dir,
                              is_shard_name, render_card, rows_to_table, shard_digest, shard_name, shard_paths,
                              views, write_shard, write_table)
from lora_wise.schema import SPLITS

from .plan import PlannedModel, Unit
from .train import Snapshot

#: Bookkeeping folder inside the output folder (never uploaded).
BUILD_DIR = ".lora-wise-build"
MANIFEST_VERSION = 2
#: The tag of each view in pending shards' names: the default view (one row per model), every snapshot.
VIEW_TAGS = ("model", "snapshots")


def snapshot_rows(cfg: BenchmarkConfig, model: PlannedModel, snapshots: Sequence[Snapshot],
                  recipe_json: str) -> list[dict]:
    """One row per snapshot, in the schema of ``lora_wise.schema``."""
    unit = model.unit
    return [{"model_id": unit.model_id, "config": cfg.name, "micro_dataset": unit.micro_dataset,
             "micro_dataset_index": unit.micro_dataset_index, "dataset_size": unit.dataset_size,
             "rank": cfg.rank, "backbone": cfg.backbone_name, "step": snap.step, "seed": model.job.seed,
             "image_ids": list(model.image_ids), "recipe": recipe_json, "lora": snap.lora}
            for snap in snapshots]


class ConfigStore:
    """The committed state of one config (both its views) in one output folder."""

    def __init__(self, root: str | os.PathLike, cfg: BenchmarkConfig, fingerprint: dict):
        from lora_wise.splits import standard_split

        self.root = Path(root)
        self.cfg = cfg
        self.config = config = cfg.name
        self.split_of = standard_split(cfg).side
        self.fingerprint = fingerprint
        self.dir = self.root / BUILD_DIR / config
        self.units_dir = self.dir / "units"
        self.pending_dir = self.dir / "pending"
        self.manifest_path = self.dir / "manifest.json"
        #: view (``<config>``, ``<config>_snapshots``) -> its folder of shards
        self.view_dirs = {view: data_dir(self.root, view) for view in views(config)}
        self.data_dir = self.view_dirs[config]

    # -------------------------------------------------------------- manifest

    def _read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text())

    def _write_manifest(self, manifest: dict) -> None:
        atomic_write_bytes(self.manifest_path, jsonio.dumps(manifest, indent=1, sort_keys=True).encode())

    def manifest(self) -> dict:
        manifest = self._read_manifest()
        if manifest is None:
            raise BuildStateError(f"{self.dir}: no manifest; call open() first")
        return manifest

    def _empty_manifest(self, fingerprint: dict, seal: int = 0) -> dict:
        return {"version": MANIFEST_VERSION, "config": self.config, "fingerprint": fingerprint, "units": [],
                "shards": {v: {s: [] for s in SPLITS} for v in self.view_dirs},
                "next_index": {v: {s: 0 for s in SPLITS} for v in self.view_dirs}, "seal": seal}

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
        """Create or check the manifest (migrating an older one), then roll any interrupted seal forward."""
        with self.lock():
            manifest = self._read_manifest()
            if manifest is not None and manifest.get("version", 1) == 1:
                manifest = self._migrate_v1(manifest)
            if manifest is None:
                existing = [p.name for v in self.view_dirs for s in SPLITS for p in shard_paths(self.root, v, s)]
                if existing:
                    raise BuildStateError(
                        f"{self.data_dir} already holds shards ({', '.join(existing[:3])}) that `lora-wise build` "
                        f"did not write (no {BUILD_DIR} manifest); build into another --out folder or remove "
                        f"{', '.join(map(str, self.view_dirs.values()))} first.")
                self._write_manifest(self._empty_manifest(self.fingerprint))
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

    def _migrate_v1(self, old: dict) -> dict:
        """A version-1 manifest (one view: every snapshot in ``data/<config>/``) -> version 2.

        The sealed rows go back to staged units (a unit's rows may span two shards), then an
        empty version-2 manifest commits, and the roll-forward drops the old shards; the next
        seal packs the units into both views.  Killed midway, it simply runs again.
        """
        generation = old.get("seal", 0)
        rows: list = []
        key = None

        def flush() -> None:
            if rows:
                import pyarrow as pa

                write_table(pa.concat_tables(rows), self._unit_path(key))
                rows.clear()

        for split in SPLITS:
            for name in old["shards"][split]:
                path = self.data_dir / name
                if not path.exists():  # an interrupted version-1 seal left it pending
                    path = self.pending_dir / (f"s{generation:06d}-{name}" if generation else name)
                table = pq.read_table(path)
                labels = zip(*(table.column(c).to_pylist()
                               for c in ("micro_dataset_index", "micro_dataset", "dataset_size")))
                start = 0
                for i, (index, micro, size) in enumerate(labels):
                    here = Unit(self.config, index, micro, size).key
                    if here != key:
                        if i > start:
                            rows.append(table.slice(start, i - start))
                        flush()
                        key, start = here, i
                if table.num_rows > start:
                    rows.append(table.slice(start, table.num_rows - start))
        flush()
        manifest = self._empty_manifest(old["fingerprint"], seal=generation)
        self._write_manifest(manifest)
        return manifest

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
        """Stage one finished model atomically; from now on the unit counts as done.

        Under the lock, so another process's roll-forward never takes this write's
        temporary file for a leftover of a killed build.
        """
        path = self._unit_path(key)
        table = rows_to_table(rows)
        with self.lock():
            write_table(table, path)
        _crash_hook("unit-committed")
        return path

    def staged_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.units_dir.glob("*.parquet")) if self.units_dir.is_dir() else 0

    # -------------------------------------------------------------- sealing

    def sealable_units(self, planned: Iterable[str] | None = None) -> list[str]:
        """Staged units a seal may pack now: all of them, or with ``planned`` the sealable prefix.

        The prefix: in key order over the planned, staged and sealed units, the staged
        ones before the first unit that is not done.  Sealing only prefixes keeps rows
        reaching the shards in sorted order however the units finish.
        """
        manifest = self.manifest()
        sealed = set(manifest["units"])
        staged = [k for k in self.staged_units() if k not in sealed]
        if planned is None:
            return staged
        done = sealed | set(staged)
        prefix = []
        for key in sorted(set(planned) | done):
            if key not in done:
                break
            if key not in sealed:
                prefix.append(key)
        return prefix

    def _view_rows(self, view: str, rows):
        """The rows of ``view``: those at the checkpoint step for the default view, all for the snapshots."""
        import pyarrow.compute as pc

        if view == self.config:
            return rows.filter(pc.equal(rows.column("step"), self.cfg.checkpoint_step))
        return rows

    def seal(self, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, planned: Iterable[str] | None = None) -> int:
        """Pack staged units into both views' shards and commit them; returns how many units were sealed.

        With ``planned`` (the build's unit keys) only the sealable prefix is packed, and
        once every planned unit is sealed the shards get their canonical names.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        planned = None if planned is None else sorted(planned)
        with self.lock():
            self._roll_forward()
            manifest = self.manifest()
            staged = self.sealable_units(planned)
            if staged:
                staged_rows = pa.concat_tables([pq.read_table(self._unit_path(k)) for k in staged])
                sides = pa.array([self.split_of(i) for i in staged_rows.column("micro_dataset_index").to_pylist()])
                shards = {v: {s: list(manifest["shards"][v][s]) for s in SPLITS} for v in self.view_dirs}
                next_index = {v: dict(manifest["next_index"][v]) for v in self.view_dirs}
                generation = manifest.get("seal", 0) + 1
                self.pending_dir.mkdir(parents=True, exist_ok=True)
                for view, tag in zip(self.view_dirs, VIEW_TAGS):
                    for split in SPLITS:
                        rows = self._view_rows(view, staged_rows.filter(pc.equal(sides, split)))
                        if rows.num_rows == 0:
                            continue
                        rows = rows.sort_by([("micro_dataset_index", "ascending"), ("dataset_size", "ascending"),
                                             ("step", "ascending")])
                        listed = shards[view][split]
                        if listed:  # reopen the last shard while the next row fits, as one greedy pass would
                            last = pq.read_table(self.view_dirs[view] / listed[-1])
                            if _packed_bytes(last) + _packed_bytes(rows.slice(0, 1)) <= max_shard_bytes:
                                rows = pa.concat_tables([last, rows])
                                listed.pop()
                        for part in _pack(rows.combine_chunks(), max_shard_bytes):
                            _, name = write_shard(part, self.pending_dir, split, next_index[view][split],
                                                  prefix=_pending_prefix(generation, tag))
                            next_index[view][split] += 1
                            listed.append(name)
                            _crash_hook("sealing")
                manifest.update(units=sorted(set(manifest["units"]) | set(staged)), shards=shards,
                                next_index=next_index, seal=generation)
                self._write_manifest(manifest)  # the commit point
                _crash_hook("after-manifest")
                self._roll_forward()
            if planned is not None and set(planned) <= set(manifest["units"]) and not self.sealable_units():
                self._renumber(manifest)
            return len(staged)

    def _renumber(self, manifest: dict) -> None:
        """Give a complete config's shards the names one seal would: ``<split>-00000-<digest>`` upwards.

        A seal that reopens a shard writes it under a new index, so shards sealed over
        several seals have gaps.  Each renamed shard is hard-linked (or copied) into
        ``pending/`` under its new name and the manifest commits the new names; the
        roll-forward then moves them in and drops the old names -- the seal protocol,
        crash-safe as a seal.
        """
        renames = {v: {s: {old: shard_name(s, i, shard_digest(old)) for i, old in enumerate(manifest["shards"][v][s])}
                       for s in SPLITS} for v in self.view_dirs}
        if all(old == new for v in renames.values() for split in v.values() for old, new in split.items()):
            return
        generation = manifest.get("seal", 0) + 1
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        for view, tag in zip(self.view_dirs, VIEW_TAGS):
            for split in SPLITS:
                for old, new in renames[view][split].items():
                    if old != new:
                        _link_or_copy(self.view_dirs[view] / old,
                                      self.pending_dir / (_pending_prefix(generation, tag) + new))
        manifest.update(shards={v: {s: list(renames[v][s].values()) for s in SPLITS} for v in self.view_dirs},
                        next_index={v: {s: len(renames[v][s]) for s in SPLITS} for v in self.view_dirs},
                        seal=generation)
        self._write_manifest(manifest)
        _crash_hook("after-manifest")
        self._roll_forward()

    def _roll_forward(self) -> None:
        """Make the folder match the manifest (idempotent; safe to repeat after any crash).

        Shards the manifest no longer lists go first, then its seal's pending shards move
        in, highest index first (a renamed shard never shows twice): a reader looking
        between two steps may miss rows, but never sees one twice.
        """
        manifest = self._read_manifest()
        if manifest is None:
            return
        generation = manifest.get("seal", 0)
        for view, tag in zip(self.view_dirs, VIEW_TAGS):
            folder = self.view_dirs[view]
            listed = {name for s in SPLITS for name in manifest["shards"][view][s]}
            folder.mkdir(parents=True, exist_ok=True)
            for path in list(folder.iterdir()):
                if is_shard_name(path.name) and path.name not in listed:
                    path.unlink()  # a shard replaced by a reseal
                elif path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink()  # a half-written file
            for name in sorted(listed, reverse=True):
                src, dst = self.pending_dir / (_pending_prefix(generation, tag) + name), folder / name
                if src.exists():
                    os.replace(src, dst)
                    _crash_hook("rolling-forward")
                elif not dst.exists():
                    raise BuildStateError(f"{dst} is listed in {self.manifest_path} but missing; the build folder "
                                          f"was changed by hand. Delete {', '.join(map(str, self.view_dirs.values()))}"
                                          f" and {self.dir} and rebuild.")
            if not listed and not any(folder.iterdir()):
                folder.rmdir()
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


def _pending_prefix(generation: int, tag: str) -> str:
    """A pending shard's name is the shard's, prefixed by its seal's number and its view's tag."""
    return f"s{generation:06d}-{tag}-"


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` with ``src``'s bytes: a hard link where the filesystem allows, a copy otherwise."""
    import shutil

    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _packed_bytes(table) -> int:
    """A table's rows as :func:`_pack` counts them: LoRA bytes plus a little for the labels."""
    import pyarrow.compute as pc

    return int(pc.sum(pc.binary_length(table.column("lora"))).as_py() or 0) + ROW_LABEL_BYTES * table.num_rows


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
    """(Re)write the card over every config with shards; None when nothing is sealed yet.

    The card lists every shard by name, so processes sharing the folder render it one at a
    time, each listing the shards under the lock: the last card written lists the shards of
    the last seal.
    """
    from lora_wise.layout import built_configs

    folder = Path(root) / BUILD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".card.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if not built_configs(root):
                return None
            _crash_hook("card")
            return render_card(root, repo=repo)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
