"""Snapshots -> rows -> atomic unit commits -> size-bounded Parquet shards and the card.

A build writes into the Hub layout of ``lora_wise.layout`` and keeps its bookkeeping beside it,
in ``.lora-wise-build/<config>/``.  Every seal writes both views of a config from the same rows:
``data/<config>/`` (one row per model, its checkpoint snapshot) and ``data/<config>_snapshots/``
(every snapshot), each shard named ``<split>-NNNNN-<digest>.parquet`` after its content.

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
into both views.  Which process *trains* which unit is decided by claims
(:mod:`lora_wise.builder.claims`, the ``claims`` file beside the manifest).

A write the environment refuses -- disk full (ENOSPC, EDQUOT), a file-size limit (EFBIG),
a read-only or unwritable folder, a file where a folder belongs -- is an
:class:`~lora_wise.errors.OutputError` naming the folder and the fix.  Every file is written to a
temporary name and renamed, and the temporary file is removed when the write fails, so a
failed write leaves nothing that looks finished; rerunning the build after the fix resumes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow.parquet as pq

from lora_wise import jsonio
from lora_wise.configs import BenchmarkConfig
from lora_wise.errors import BuildStateError, OutputError, os_failure
from lora_wise.layout import (DEFAULT_MAX_SHARD_BYTES, ROW_LABEL_BYTES, atomic_write_bytes, data_dir,
                              is_shard_name, render_card, rows_to_table, shard_digest, shard_name, shard_paths,
                              views, write_shard, write_table)
from lora_wise.schema import SPLITS

from .backbones import _file_lock
from .claims import UnitClaims
from .plan import PlannedModel, Unit
from .train import Snapshot

#: Bookkeeping folder inside the output folder (never uploaded).
BUILD_DIR = ".lora-wise-build"
MANIFEST_VERSION = 2
#: The tag of each view in pending shards' names: the default view (one row per model), every snapshot.
VIEW_TAGS = ("model", "snapshots")
#: What to do once a refused write's cause is fixed.
RESUME = "then rerun the same `lora-wise build` command: the models finished so far are kept"


@contextlib.contextmanager
def writing_into(root: str | os.PathLike):
    """Writes into the build folder ``root``: an OSError of the environment leaves as an :class:`OutputError`."""
    try:
        yield
    except OSError as exc:
        error = os_failure(exc, f"write the build into {root}", RESUME)
        if error is None:
            raise
        raise error from exc


def prepare_out(root: str | os.PathLike) -> Path:
    """The output folder, created if missing; a clear :class:`OutputError` when it cannot be (before any training)."""
    root = Path(root)
    in_the_way = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
    if in_the_way is not None:
        raise OutputError(f"cannot build into {root}: {in_the_way} is a file, not a folder; build into another "
                          f"--out folder (or remove or rename that file)")
    try:
        (root / BUILD_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        error = os_failure(exc, f"create the output folder {root}", "then run the command again")
        if error is None and isinstance(exc, FileNotFoundError):  # a parent that cannot hold folders (/proc)
            error = OutputError(f"cannot create the output folder {root} ({exc.strerror}); build into another "
                                f"--out folder")
        if error is None:
            raise
        raise error from exc
    return root


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
        self.claims = UnitClaims(self.dir, cfg.dataset_sizes)

    # -------------------------------------------------------------- manifest

    def _read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
            if not isinstance(manifest, dict) or manifest.get("version") not in (1, MANIFEST_VERSION):
                raise ValueError(f"not a version-1 or version-{MANIFEST_VERSION} manifest")
            for key in ("fingerprint", "units", "shards", "next_index"):
                manifest[key]  # noqa: B018 - present, or the file is not ours
            if manifest["version"] == MANIFEST_VERSION and set(manifest["shards"]) != set(self.view_dirs):
                raise KeyError(f"shards of views {sorted(manifest['shards'])}, not {sorted(self.view_dirs)}")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:  # json's errors are ValueErrors
            raise BuildStateError(f"{self.manifest_path} is not a manifest lora-wise can read ({type(exc).__name__}: "
                                  f"{exc}); it was changed by hand. Delete {self._folders()} and rebuild.") from exc
        return manifest

    def _folders(self) -> str:
        """This config's folders in the output folder (both views and the bookkeeping), for messages."""
        return f"{', '.join(map(str, self.view_dirs.values()))} and {self.dir}"

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

    def _check_fingerprint(self) -> None:
        """Under the lock: the folder still holds this build's recipe (another build may have started afresh
        with another one since this one opened it, while nothing was committed)."""
        found = self.manifest()["fingerprint"]
        if found != self.fingerprint:
            raise BuildStateError(f"another build into {self.root} builds {self.config} with a different "
                                  f"{self._differences(found)}; two recipes cannot share one folder. Build into "
                                  f"another --out folder.")

    def _differences(self, found: dict) -> str:
        """What differs between a recorded fingerprint and this build's, for a message."""
        diff = sorted(k for k in set(found) | set(self.fingerprint) if found.get(k) != self.fingerprint.get(k))
        return f"{', '.join(diff)} ({ {k: found.get(k) for k in diff} })"

    def lock(self):
        """Exclusive lock on this config's state (several builders may share an output folder)."""
        return _file_lock(self.dir / ".lock")

    def open(self) -> "ConfigStore":
        """Create or check the manifest (migrating an older one), then roll any interrupted seal forward."""
        with writing_into(self.root), self.lock():
            manifest = self._read_manifest()
            if manifest is not None and manifest["version"] == 1:
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
                raise BuildStateError(
                    f"{self.root} already holds {self.config} built with a different "
                    f"{self._differences(manifest['fingerprint'])}; resuming would mix models trained "
                    f"differently. Build into another --out folder, or delete {self._folders()}.")
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

    def done_units(self, locked: bool = False) -> set[str]:
        """Units committed: sealed into shards, or staged and waiting to be sealed.

        ``locked`` reads under the config's lock, so another process's seal (which moves units
        from staged to sealed) is never seen halfway.
        """
        if locked:
            with writing_into(self.root), self.lock():
                return self.done_units()
        return set(self.manifest()["units"]) | set(self.staged_units())

    def commit_unit(self, key: str, rows: list[dict]) -> int:
        """Stage one finished model atomically; from now on the unit counts as done.  Returns its file's size.

        Under the lock, so another process's roll-forward never takes this write's
        temporary file for a leftover of a killed build (and the size is read before
        another process's seal may absorb the file).
        """
        path = self._unit_path(key)
        table = rows_to_table(rows)
        with writing_into(self.root), self.lock():
            self._check_fingerprint()
            write_table(table, path)
            size = path.stat().st_size
        _crash_hook("unit-committed")
        return size

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
        with writing_into(self.root), self.lock():
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
                                          f"was changed by hand. Delete {self._folders()} and rebuild.")
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

    with _file_lock(Path(root) / BUILD_DIR / ".card.lock"):
        if not built_configs(root):
            return None
        _crash_hook("card")
        return render_card(root, repo=repo)


_crash_counts: dict[str, int] = {}


def _crash_hook(point: str) -> None:
    """Fault injection for the tests, at named points: ``unit-committed``, ``sealing``, ``after-manifest``,
    ``rolling-forward``, ``card``.

    ``LORA_WISE_TEST_CRASH_AT=<point>[:<n>]`` SIGKILLs this process the ``n``-th time (default the
    first) it passes ``point``; ``LORA_WISE_TEST_PAUSE_AT=<point>:<seconds>`` sleeps there every
    time, so that a build lasts while a test acts on it (a second build, a Ctrl-C).
    """
    pause = os.environ.get("LORA_WISE_TEST_PAUSE_AT")
    if pause:
        name, _, seconds = pause.partition(":")
        if name == point:
            import time

            time.sleep(float(seconds or 1))
    wanted = os.environ.get("LORA_WISE_TEST_CRASH_AT")
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name != point:
        return
    _crash_counts[point] = _crash_counts.get(point, 0) + 1
    if _crash_counts[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
