"""Builds that share an output folder split its work: a claim per unit, given up however its holder ends.

Two ``lora-wise build --out X`` running at once (on one machine, or on several that mount
``X``) would each train every model that is not done yet.  Instead, before training a group
a build *claims* the group's units that are not done, all or none, without waiting:

* a claim is a POSIX record lock (``fcntl.lockf``) on one byte of
  ``.lora-wise-build/<config>/claims`` -- the unit's slot, from its micro-dataset index
  and dataset size, so every process of a build (whatever its group size, ``--shard`` or
  ``--micro-datasets``) agrees on it;
* it is held while the group trains and released once the group's models are committed;
* the kernel releases it when its process ends, however it ends (SIGKILL included), so
  a killed build never blocks another; on NFS the server's lock manager does the same
  (after its lease time when a whole machine dies).  A process that is alive but stopped
  (``kill -STOP``) keeps its claims: resume it or end it.

:class:`GroupQueue` hands a build its groups one at a time: the first whose units no other
process holds, claimed, with the units another process has committed meanwhile counted
as done.  Once only groups held by others are left, it waits for them -- it takes one over
if its holder dies -- so every build of the folder ends when the dataset is complete.

POSIX locks belong to a process, not to a file descriptor, and closing *any* descriptor of
the file drops them all; so each process opens a folder's claims file once
(:func:`_claims_fd`) and keeps it, and claims within one process are kept apart in memory.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

from .plan import PlannedModel

CLAIMS_FILE = "claims"
#: Seconds between two looks at the folder while the groups left are held by other processes.
POLL_S = 1.0

_open: dict[str, tuple[int, int, int]] = {}  # real path -> (fd, st_dev, st_ino), for the life of the process
_held: dict[tuple[int, int], set[int]] = {}  # (st_dev, st_ino) -> slots this process holds
_guard = threading.Lock()


def _claims_fd(path: Path) -> tuple[int, tuple[int, int]]:
    """This process's descriptor of the claims file at ``path`` (opened once, reopened if the file was replaced)."""
    key = os.path.realpath(path)
    found = _open.get(key)
    try:
        stat = os.stat(path)
        current = (stat.st_dev, stat.st_ino)
    except FileNotFoundError:
        current = None
    if found is not None and current == found[1:]:
        return found[0], current
    if found is not None and not _held.get(found[1:]):
        os.close(found[0])  # a claims file that was deleted with its folder; none of its locks are held
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    stat = os.fstat(fd)
    _open[key] = (fd, stat.st_dev, stat.st_ino)
    return fd, (stat.st_dev, stat.st_ino)


class UnitClaims:
    """The claims of one config's units in one build folder (``folder`` is ``.lora-wise-build/<config>``)."""

    def __init__(self, folder: str | os.PathLike, dataset_sizes: Sequence[int]):
        self.path = Path(folder) / CLAIMS_FILE
        self.sizes = tuple(dataset_sizes)

    def slot(self, model: PlannedModel) -> int:
        """The byte that stands for ``model``'s unit: the same in every process of the build."""
        unit = model.unit
        return unit.micro_dataset_index * len(self.sizes) + self.sizes.index(unit.dataset_size)

    def try_claim(self, models: Sequence[PlannedModel]) -> bool:
        """Claim every one of ``models``, or none when another process (or this one) holds any; never waits."""
        slots = sorted({self.slot(m) for m in models})
        with _guard:
            fd, inode = _claims_fd(self.path)
            held = _held.setdefault(inode, set())
            if held.intersection(slots):
                return False
            taken: list[int] = []
            for slot in slots:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot, os.SEEK_SET)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    for back in taken:
                        fcntl.lockf(fd, fcntl.LOCK_UN, 1, back, os.SEEK_SET)
                    return False
                taken.append(slot)
            held.update(taken)
            return True

    def release(self, models: Sequence[PlannedModel]) -> None:
        """Give up the claims on ``models`` (those this process holds)."""
        with _guard:
            fd, inode = _claims_fd(self.path)
            held = _held.setdefault(inode, set())
            for slot in sorted({self.slot(m) for m in models} & held):
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, slot, os.SEEK_SET)
                held.discard(slot)


class GroupQueue:
    """This process's groups of one config, handed out as they are claimed (see the module's docstring).

    ``done`` is the set of committed unit keys the build keeps (its commits add to it); the
    queue adds the units other processes commit.  ``store`` is the config's
    :class:`~lora_wise.builder.write.ConfigStore`; without a store and claims (``GroupQueue(groups)``)
    the queue hands out every group in order, for work no other process shares.
    """

    def __init__(self, groups: Sequence[list[PlannedModel]], store=None, claims: UnitClaims | None = None,
                 done: set[str] | None = None, poll_s: float = POLL_S):
        self.store, self.claims, self.poll_s = store, claims, poll_s
        self.done = done if done is not None else set()
        self.config = store.config if store is not None else (groups[0][0].unit.config if groups else "models")
        self.waiting = [list(g) for g in groups if any(m.key not in self.done for m in g)]
        self.todo = {m.key for g in self.waiting for m in g if m.key not in self.done}
        self.taken: list[list[PlannedModel]] = []

    @property
    def total(self) -> int:
        """Models this process had to see done when it started."""
        return len(self.todo)

    @property
    def settled(self) -> int:
        """Of those, the models done by now (by this process or another)."""
        return len(self.todo & self.done)

    @property
    def exhausted(self) -> bool:
        """No group is left to take (those taken may still be training)."""
        return not self.waiting

    @property
    def groups_left(self) -> int:
        return len(self.waiting)

    def _refresh(self) -> None:
        if self.store is not None:
            self.done |= self.store.done_units(locked=True)

    def take(self) -> list[PlannedModel] | None:
        """The next group no other process holds, claimed; None when none is free now (or none is left)."""
        if not self.waiting:
            return None
        self._refresh()
        for group in list(self.waiting):
            left = [m for m in group if m.key not in self.done]
            if not left:
                self.waiting.remove(group)  # another process finished it
                continue
            if self.claims is not None and not self.claims.try_claim(left):
                continue
            self._refresh()  # its holder may have committed it just before letting go
            if all(m.key in self.done for m in left):
                self.release(left)
                self.waiting.remove(group)
                continue
            self.waiting.remove(group)
            self.taken.append(group)
            return group
        return None

    def release(self, group: list[PlannedModel]) -> None:
        """The group's models are committed (or will not be): let other processes have its units."""
        if self.claims is not None:
            self.claims.release(group)
        if group in self.taken:
            self.taken.remove(group)

    def release_all(self) -> None:
        for group in list(self.taken):
            self.release(group)

    def wait(self) -> None:
        """Pause while the groups left are held by other processes."""
        time.sleep(self.poll_s)

    def groups(self) -> Iterator[list[PlannedModel]]:
        """Every group this process trains, one at a time: each claimed before and released after its turn."""
        try:
            while True:
                group = self.take()
                if group is None:
                    if self.exhausted:
                        return
                    self.wait()
                    continue
                try:
                    yield group
                finally:
                    self.release(group)
        finally:
            self.release_all()
