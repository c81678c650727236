"""Spreading a build's work over processes and machines: groups, ``--shard i/N``, and Ray.

The grain of distribution is a **group**: consecutive planned models of a config,
``group_size`` at a time (:func:`lora_wise.builder.plan.groups_of`), which the batched trainer fine-tunes
in one pass.  Groups are cut from the config's plan (all its planned models, never
what is left to do), so every process of a build -- a resumed one, a shard, a worker
-- trains the same models side by side; a group with any model left is trained whole
(the finished ones are not committed again).  With the same group size, threads per
process and hardware the snapshots therefore have the same bytes however the work was
spread, and :class:`lora_wise.builder.write.ConfigStore` seals the same shards from them.  (On a
GPU the default group size comes from a memory probe; pass ``--batch-models`` to every
process of a spread build so that they agree.)

Three ways to spread the groups:

* **worker processes** on one machine (:func:`worker_pool`, :func:`train_in_processes`,
  ``--workers N``): the default for the miniature backbone on a CPU, one single-threaded
  process per core, each training whole groups;
* ``--shard i/N`` (:func:`parse_shard`, :func:`shard_groups`): a process builds the
  groups whose index is ``i`` modulo ``N`` -- one task of a Slurm job array, say
  ``lora-wise build --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT --out /shared/lw``.
  All shards write into one output folder on a shared filesystem, concurrently or
  not; each commits its units and seals what has become sealable, so the last shard
  to finish leaves the complete dataset (a later plain ``lora-wise build`` does too,
  and trains whatever a failed shard left).  Every shard must get the same flags.
* **Ray** (:func:`train_on_ray`, ``--ray [ADDRESS]``): the driver plans and checks as
  usual, then submits one Ray task per group -- ``num_gpus=1`` where the cluster has
  GPUs, ``num_cpus=<training threads>`` otherwise.  A task loads the backbone (once
  per worker process), trains its group with the batched trainer and *returns* the
  snapshots (safetensors bytes); the driver commits and seals them as they arrive, so
  the output folder needs to exist on the driver's machine only.  Workers must import
  this package and reach the backbone and images: a Hub id, or a path every node sees.

Ray (the ``distributed`` extra) and torch are imported only inside the functions that use them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from lora_wise.errors import BuildError, MissingDependencyError, OptionError

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``; a clear error otherwise."""
    match = _SHARD.match(text or "")
    if not match:
        raise OptionError(f"--shard takes INDEX/COUNT, e.g. 0/4 for the first of four shards, not {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 0 <= index < count:
        raise OptionError(f"--shard {text}: the index must be between 0 and COUNT-1 (COUNT >= 1), e.g. "
                          f"0/{max(count, 1)} .. {max(count, 1) - 1}/{max(count, 1)}")
    return index, count


def shard_groups(groups: Sequence[list], shard: tuple[int, int] | None) -> list[list]:
    """The groups shard ``(i, N)`` builds: those whose index is ``i`` modulo ``N`` (all without a shard)."""
    if shard is None:
        return list(groups)
    index, count = shard
    return [g for position, g in enumerate(groups) if position % count == index]


@dataclass(frozen=True)
class BackboneRef:
    """What a worker needs to load the backbone itself: where from, and in which precision."""

    source: str
    mixed_precision: str


# ----------------------------------------------------------------------------- Ray

def _import_ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is in the `distributed` extra
        raise MissingDependencyError("--ray needs Ray: pip install 'lora-wise[distributed]' (or pip install ray), "
                                     "or build without --ray.") from exc
    return ray


def connect_ray(address: str | None = None):
    """Join (or start) a Ray cluster once per process; ``address`` as ``ray.init`` takes it.

    An empty or None address lets Ray decide: ``RAY_ADDRESS`` when set, else a local
    cluster on this machine.  ``"auto"`` joins a cluster started with ``ray start``.
    """
    ray = _import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BuildError(f"could not connect to the Ray cluster at {address or 'RAY_ADDRESS/local'}: {exc}. "
                             f"Start one with `ray start --head`, pass its address to --ray, or drop --ray.") from exc
    return ray


def cluster_has_gpus() -> bool:
    ray = _import_ray()
    return ray.cluster_resources().get("GPU", 0) > 0


#: Backbones loaded in this (worker) process, reused by its later tasks.
_BACKBONES: dict = {}


def _worker_backbone(backbone: BackboneRef, device: str):
    from .train import load_backbone

    key = (backbone.source, device, backbone.mixed_precision)
    if key not in _BACKBONES:
        _BACKBONES[key] = load_backbone(backbone.source, device=device, mixed_precision=backbone.mixed_precision)
    return _BACKBONES[key]


def train_group_task(models: Sequence, backbone: BackboneRef, source, group_size: int, threads: int | None,
                     ticks=None, task: int = 0) -> list[tuple[str, list]]:
    """One task's work: train ``models`` and return ``[(unit key, snapshots)]``.

    ``ticks``: a queue that receives ``(task, models advanced)`` after every step, for the
    driver's progress bar.
    """
    import torch

    from .batched import train_units_batched
    from .train import torch_threads, train_units

    loaded = _worker_backbone(backbone, "cuda" if torch.cuda.is_available() else "cpu")
    results: list[tuple[str, list]] = []

    def keep(model, snapshots) -> None:
        results.append((model.key, snapshots))

    def tick(share: float) -> None:
        ticks.put((task, share))

    with torch_threads(threads):
        if group_size > 1:
            train_units_batched(models, loaded, source, keep, progress=False, group_size=group_size,
                                on_step=tick if ticks is not None else None)
        else:
            train_units(models, loaded, source, keep, progress=False)
    return results


def _hand_over(finished: Iterable[tuple[int, list[tuple[str, list]]]], groups: Sequence[list], on_done: Callable,
               progress: bool, where: str, ticks, cancel: Callable[[], None]) -> None:
    """``on_done(model, snapshots)`` for each model of each finished task, as the tasks finish.

    ``finished`` yields ``(task, result)``, or None now and then while nothing finishes;
    ``ticks`` (a queue, or None) carries the step ticks that move the bar (in models,
    fractionally) while groups train.  On any error, or an interrupt, ``cancel()`` stops
    the tasks still pending before the error propagates.
    """
    from tqdm.auto import tqdm

    by_key = {m.key: m for group in groups for m in group}
    shown = [0.0] * len(groups)
    desc = f"{groups[0][0].unit.config if groups else 'models'} ({where})"
    try:
        with tqdm(total=len(by_key), desc=desc, unit="model", disable=not progress, dynamic_ncols=True,
                  bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}]") as bar:
            for item in finished:
                for task, share in _drain(ticks) if ticks is not None else []:
                    shown[task] = min(shown[task] + share, len(groups[task]))
                if item is not None:
                    task, result = item
                    for key, snapshots in result:
                        on_done(by_key[key], snapshots)
                    shown[task] = len(groups[task])
                bar.n = min(float(bar.total), round(sum(shown), 6))
                bar.refresh()
    except BaseException:
        cancel()
        raise


def _drain(queue) -> list:
    """Everything waiting in ``queue`` (a ``multiprocessing`` or Ray queue), without blocking."""
    import queue as queues

    items = []
    while True:
        try:
            items.append(queue.get_nowait())
        except queues.Empty:  # ray.util.queue.Empty is one too
            return items


def worker_pool(workers: int, preload: BackboneRef | None = None):
    """A pool of ``workers`` training processes (``spawn``-ed: fresh interpreters, safe with torch).

    Workers load a backbone on first use and keep it for later groups; ``preload`` loads
    one as each worker starts.  Close it with ``shutdown()`` (or use it as a context manager).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_preload if preload else None, initargs=(preload,) if preload else ())


def _preload(backbone: BackboneRef) -> None:
    import torch

    _worker_backbone(backbone, "cuda" if torch.cuda.is_available() else "cpu")


def train_in_processes(models: Sequence, backbone: BackboneRef, source, on_done: Callable, pool,
                       progress: bool = True, group_size: int = 1, threads: int | None = None) -> None:
    """Train ``models`` on a :func:`worker_pool`, one group per task; ``on_done`` in this process.

    Each task runs :func:`train_group_task` on ``threads`` threads; groups finish in any
    order.  On a CPU, processes use cores far better than threads on the miniature's small
    operations, and a one-thread process computes the same bits whatever its group's
    neighbours, so the dataset does not depend on how many workers built it.
    """
    import contextlib
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, wait

    from .plan import groups_of

    groups = groups_of(models, group_size)
    with multiprocessing.get_context("spawn").Manager() if progress else contextlib.nullcontext() as manager:
        ticks = manager.Queue() if progress else None
        futures = {pool.submit(train_group_task, group, backbone, source, group_size, threads, ticks, task): task
                   for task, group in enumerate(groups)}

        def finished():
            waiting = set(futures)
            while waiting:
                done, waiting = wait(waiting, timeout=1.0, return_when=FIRST_COMPLETED)
                yield from ((futures[future], future.result()) for future in done)
                yield None  # a heartbeat: the bar moves on the step ticks meanwhile

        _hand_over(finished(), groups, on_done, progress, f"{pool._max_workers} processes", ticks,
                   lambda: [future.cancel() for future in futures])


def train_on_ray(models: Sequence, backbone: BackboneRef, source, on_done: Callable, progress: bool = True,
                 group_size: int = 1, threads: int | None = None, address: str | None = None) -> None:
    """Train ``models`` on a Ray cluster, one task per group; ``on_done(model, snapshots)`` in the driver.

    ``models`` are whole groups back to back (as the build passes them); tasks finish in
    any order and each model is handed to ``on_done`` as its task returns.
    """
    from .plan import groups_of

    ray = connect_ray(address)
    if cluster_has_gpus():
        options = {"num_gpus": 1, "num_cpus": 1}
    else:
        options = {"num_cpus": max(1, threads or 1)}
    remote = ray.remote(**options)(train_group_task)
    from ray.util.queue import Queue

    source_ref = ray.put(source)
    groups = groups_of(models, group_size)
    ticks = Queue() if progress else None
    pending = {remote.remote(group, backbone, source_ref, group_size, threads, ticks, task): task
               for task, group in enumerate(groups)}

    def finished():
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                yield pending.pop(ref), ray.get(ref)
            yield None  # a heartbeat: the bar moves on the step ticks meanwhile

    try:
        _hand_over(finished(), groups, on_done, progress, "on Ray", ticks,
                   lambda: [ray.cancel(ref, force=True) for ref in pending])
    finally:
        if ticks is not None:
            ticks.shutdown()


def probe_group_size_on_ray(backbone: BackboneRef, job) -> int:
    """:func:`lora_wise.builder.batched.probe_group_size` run on one of the cluster's GPU workers."""
    ray = _import_ray()

    def probe(backbone: BackboneRef, job) -> int:
        from .batched import probe_group_size

        return probe_group_size(_worker_backbone(backbone, "cuda"), job)

    return ray.get(ray.remote(num_gpus=1, num_cpus=1)(probe).remote(backbone, job))
