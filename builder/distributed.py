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

Whichever way, the executors pull the groups from a :class:`lora_wise.builder.claims.GroupQueue`
one at a time, as a worker becomes free: each is claimed just before it trains, so other
builds into the same folder (started at the same time, or a rerun while one still runs)
take the groups this one has not, instead of training them twice.

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
from concurrent.futures import ProcessPoolExecutor
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


def _hand_over(finished: Iterable[tuple[int, list, list[tuple[str, list]]] | None], queue, on_done: Callable,
               progress: bool, where: str, ticks, cancel: Callable[[], None]) -> None:
    """``on_done(model, snapshots)`` for each model of each finished task, as the tasks finish.

    ``finished`` yields ``(task, group, result)``, or None now and then while nothing finishes;
    ``ticks`` (a queue, or None) carries the step ticks that move the bar (in models,
    fractionally) while groups train; the bar also counts the models other builds into
    the folder finish (``queue.settled``).  On any error, or an interrupt, ``cancel()``
    stops the tasks still pending before the error propagates.
    """
    from tqdm.auto import tqdm

    shown: dict[int, float] = {}  # task -> models of its group advanced so far
    desc = f"{queue.config} ({where})"
    try:
        with tqdm(total=queue.total, desc=desc, unit="model", disable=not progress, dynamic_ncols=True,
                  bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}]{postfix}") as bar:
            for item in finished:
                for task, share in _drain(ticks) if ticks is not None else []:
                    shown[task] = shown.get(task, 0.0) + share
                if item is not None:
                    task, group, result = item
                    by_key = {m.key: m for m in group}
                    for key, snapshots in result:
                        on_done(by_key[key], snapshots)
                    shown.pop(task, None)
                _show(bar, queue, sum(shown.values()))
    except BaseException:
        cancel()
        raise


def _show(bar, queue, training: float) -> None:
    """Move ``bar`` to the models settled plus ``training`` (those partly trained); say when others hold the rest."""
    bar.n = min(float(bar.total), round(queue.settled + training, 6))
    held = queue.groups_left if not queue.taken and queue.groups_left else 0
    bar.set_postfix_str(f"waiting for {held} group(s) another build is training" if held else "", refresh=False)
    bar.refresh()


def train_here(queue, trainer: Callable, on_done: Callable, progress: bool = True) -> None:
    """Train the queue's groups in this process, one at a time: ``trainer(group, on_done=..., progress=False)``.

    A trainer that takes ``on_step`` (the batched one) moves the bar at every step.
    """
    import inspect

    from tqdm.auto import tqdm

    steps = "on_step" in inspect.signature(trainer).parameters
    with tqdm(total=queue.total, desc=queue.config, unit="model", disable=not progress, dynamic_ncols=True,
              bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}]{postfix}") as bar:
        training = 0.0

        def tick(share: float) -> None:
            nonlocal training
            training += share
            _show(bar, queue, training)

        for group in queue.groups():
            training = 0.0
            _show(bar, queue, training)
            trainer(group, on_done=on_done, progress=False, **({"on_step": tick} if steps else {}))
            training = 0.0
        _show(bar, queue, 0.0)


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
    one as each worker starts.  Close it with ``shutdown()`` (or use it as a context manager:
    leaving the block on an error or an interrupt stops the workers at once, see
    :class:`_WorkerPool`).
    """
    import multiprocessing

    return _WorkerPool(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                       initializer=_start_worker, initargs=(preload,))


def _start_worker(preload: BackboneRef | None) -> None:
    """Set a worker up to be stopped cleanly by the driver (:meth:`_WorkerPool.stop`).

    It ignores Ctrl-C, which the driver gets too: a worker dying of it could leave the pool's
    task queue locked, and the other workers waiting on it forever.  Its progress bars (off)
    lock with a thread lock, not tqdm's default inter-process semaphore, which a stopped
    worker would leave behind for the resource tracker to complain about.
    """
    import signal
    import threading

    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())
    if preload is not None:
        _preload(preload)


def _preload(backbone: BackboneRef) -> None:
    import torch

    _worker_backbone(backbone, "cuda" if torch.cuda.is_available() else "cpu")


class _WorkerPool(ProcessPoolExecutor):
    """A process pool that, left on an error or an interrupt, stops its workers instead of waiting for them."""

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return super().__exit__(exc_type, exc, tb)
        self.stop()
        return False

    def stop(self) -> None:
        """Cancel the tasks not started and end the workers now (their groups are lost, never half-written:
        nothing a worker trains is written before the driver commits it)."""
        processes = list((getattr(self, "_processes", None) or {}).values())
        self.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        self.shutdown(wait=True)  # the pool's thread sees its workers gone and frees its queues


def train_in_processes(queue, backbone: BackboneRef, source, on_done: Callable, pool, progress: bool = True,
                       group_size: int = 1, threads: int | None = None) -> None:
    """Train the groups of ``queue`` on a :func:`worker_pool`, one group per task; ``on_done`` in this process.

    ``queue`` is a :class:`~lora_wise.builder.claims.GroupQueue`, or models (cut into groups of ``group_size``).

    Each task runs :func:`train_group_task` on ``threads`` threads; a group is taken from the
    queue (claimed) when a worker is free, and groups finish in any order.  On a CPU,
    processes use cores far better than threads on the miniature's small operations, and a
    one-thread process computes the same bits whatever its group's neighbours, so the
    dataset does not depend on how many workers built it.
    """
    import contextlib
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, wait

    queue = _as_queue(queue, group_size)
    with multiprocessing.get_context("spawn").Manager() if progress else contextlib.nullcontext() as manager:
        ticks = manager.Queue() if progress else None
        futures: dict = {}

        def submit(task: int, group: list):
            return pool.submit(train_group_task, group, backbone, source, group_size, threads, ticks, task)

        def finished_now(wanted: set) -> list:
            done, _ = wait(wanted, timeout=1.0, return_when=FIRST_COMPLETED)
            return [(future, future.result()) for future in done]

        _hand_over(_pulled(queue, futures, pool._max_workers, submit, finished_now), queue, on_done, progress,
                   f"{pool._max_workers} processes", ticks, lambda: [future.cancel() for future in futures])


def _as_queue(work, group_size: int):
    """``work`` as a :class:`~lora_wise.builder.claims.GroupQueue`: a queue stays one, models are cut into groups."""
    from .claims import GroupQueue
    from .plan import groups_of

    return work if isinstance(work, GroupQueue) else GroupQueue(groups_of(list(work), group_size))


def _pulled(queue, running_tasks: dict, window: int, submit: Callable, finished_now: Callable):
    """Tasks fed from ``queue`` (at most ``window`` running), yielded as ``(task, group, result)`` when they end.

    ``submit(task, group)`` starts a task and returns its handle, ``finished_now(handles)``
    waits a little and returns ``[(handle, result)]`` for those that ended.  A group is
    released (its claims given up) once :func:`_hand_over` has committed its models.
    Yields None as a heartbeat, and while the groups left are held by other builds.
    """
    counter = 0
    try:
        while True:
            while len(running_tasks) < window:
                group = queue.take()
                if group is None:
                    break
                running_tasks[submit(counter, group)] = (counter, group)
                counter += 1
            if not running_tasks:
                if queue.exhausted:
                    return
                queue.wait()
                yield None
                continue
            for handle, result in finished_now(set(running_tasks)):
                task, group = running_tasks.pop(handle)
                try:
                    yield task, group, result
                finally:
                    queue.release(group)
            yield None  # a heartbeat: the bar moves on the step ticks meanwhile
    finally:
        queue.release_all()


def train_on_ray(queue, backbone: BackboneRef, source, on_done: Callable, progress: bool = True,
                 group_size: int = 1, threads: int | None = None, address: str | None = None) -> None:
    """Train the groups of ``queue`` on a Ray cluster, one task per group; ``on_done(model, snapshots)`` in the driver.

    ``queue`` is a :class:`~lora_wise.builder.claims.GroupQueue`, or models (cut into groups of ``group_size``).

    As many groups run at once as the cluster has GPUs (or CPUs for ``threads`` each); a
    group is taken from the queue (claimed) when one finishes, and tasks finish in any order.
    """
    queue = _as_queue(queue, group_size)
    ray = connect_ray(address)
    resources = ray.cluster_resources()
    if resources.get("GPU", 0) > 0:
        options = {"num_gpus": 1, "num_cpus": 1}
        window = int(resources["GPU"])
    else:
        options = {"num_cpus": max(1, threads or 1)}
        window = int(resources.get("CPU", 1)) // options["num_cpus"]
    remote = ray.remote(**options)(train_group_task)
    from ray.util.queue import Queue

    source_ref = ray.put(source)
    ticks = Queue() if progress else None
    pending: dict = {}

    def submit(task: int, group: list):
        return remote.remote(group, backbone, source_ref, group_size, threads, ticks, task)

    def finished_now(wanted: set) -> list:
        ready, _ = ray.wait(list(wanted), num_returns=1, timeout=1.0)
        return [(ref, ray.get(ref)) for ref in ready]

    try:
        _hand_over(_pulled(queue, pending, max(1, window), submit, finished_now), queue, on_done, progress,
                   "on Ray", ticks, lambda: [ray.cancel(ref, force=True) for ref in pending])
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
