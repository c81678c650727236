"""``lora-wise build``: plan, check, train, commit, seal -- for one config or many.

A build runs in two phases so that bad input costs nothing:

1. **plan and check**, for every config before any training: resolve the image
   source, select the micro-datasets, check their sizes, draw each model's images
   and decode every image that will be used, open the output folder's build state
   (refusing to mix models trained with a different recipe or backbone), and find
   the units already done;
2. **train**: cut each config's plan into groups of ``batch_models`` models
   (:func:`lora_wise.builder.plan.groups_of`), keep this process's share (``--shard i/N``) and
   the groups with work left, load each backbone once (the miniature one is
   pre-trained and cached on first use), hand the groups, each claimed just before it
   trains (:mod:`lora_wise.builder.claims`: builds sharing a folder split its work), to the trainer -- the
   batched one (:func:`lora_wise.builder.batched.train_units_batched`) by default, the
   one-model PEFT loop (:func:`lora_wise.builder.train.train_units`) with ``batch_models=1``,
   or Ray tasks (:func:`lora_wise.builder.distributed.train_on_ray`) -- commit each finished
   model atomically as it arrives, seal the config's shards and render the card.

The batched trainer is the default wherever it is faster: on a CPU it fine-tunes 64
miniature models at once, one group per core in worker processes of one thread each
(bench/build.py measures models/hour for K = 1, 4, 16, 64 against one model at a
time), on a GPU as many as a probe step says fit in free memory (at most 64).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from lora_wise import jsonio
from lora_wise.configs import MINIATURE, MINIATURE_CONFIGS, BenchmarkConfig, get_config
from lora_wise.errors import OptionError
from lora_wise.layout import DEFAULT_MAX_SHARD_BYTES

from .backbones import DEFAULT_MINI_SPEC, MiniBackboneSpec, backbone_info, resolve_backbone
from .claims import GroupQueue
from .micro_datasets import (FolderSource, HFImageSource, ImageSource, SyntheticSource, check_images,
                             check_micro_datasets, source_for)
from .distributed import shard_groups
from .plan import PlannedModel, groups_of, pending, plan_config
from .synthetic_images import SYNTHETIC_VERSION
from .train import torch_threads, train_units
from .write import ConfigStore, prepare_out, render, snapshot_rows, writing_into

DEFAULT_OUT = "lora-wise"


@dataclass
class BuildOptions:
    """How to build; the CLI's flags map one to one onto these fields."""

    out: str | os.PathLike = DEFAULT_OUT
    #: Build only the first N micro-datasets of each config (a partial, resumable build).
    micro_datasets: int | None = None
    #: Ablation options (paper Sec. 7): each derives a config with its own name.
    steps: int | None = None
    batch_size: int | None = None
    seed_mode: str | None = None
    flip: bool | None = None
    #: Image sources for configs whose images are not synthetic.
    images: str | None = None
    image_dataset: str | None = None
    label_column: str = "label"
    image_column: str = "image"
    image_split: str = "train"
    #: A Hub id or local pipeline folder replacing the config's backbone.
    backbone: str | None = None
    mini_spec: MiniBackboneSpec = DEFAULT_MINI_SPEC
    device: str | None = None
    #: CPU threads per training process; None: 1 for the miniature backbone on a CPU (its small operations
    #: split badly: one model's batch-1 steps took 28 ms on 1 thread vs 34 ms on 2, and a group's steps gain
    #: less from a second thread than from a second process -- see ``workers``), torch's default otherwise.
    #: Pre-training the miniature backbone always uses torch's default.
    threads: int | None = None
    #: Models fine-tuned together by the batched trainer; 1: one at a time with PEFT (``train_units``);
    #: None: ``DEFAULT_CPU_GROUP_SIZE`` on a CPU, from a memory probe on a GPU.  Snapshots have the same
    #: bytes in every build with the same group size, threads and hardware.
    batch_models: int | None = None
    #: ``(i, N)``: build only the groups whose index is ``i`` modulo ``N`` (``--shard i/N``).
    shard: tuple[int, int] | None = None
    #: Training processes on this machine, each taking whole groups; None: one per core for the miniature
    #: backbone on a CPU (one thread each), else 1.  Bytes do not depend on it.
    workers: int | None = None
    #: Train on Ray: None in this process; "" Ray's default cluster (RAY_ADDRESS or a local one), or an address.
    ray: str | None = None
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    progress: bool = True
    #: ``train_units``-compatible trainer replacing the default one in this process:
    #: (models, backbone, source, on_done, progress) -> None.
    trainer: Callable | None = None


@dataclass
class BuildSummary:
    configs: list[str]
    models_built: int = 0
    models_skipped: int = 0
    #: Models of this process's share that another build into the same folder trained meanwhile.
    models_by_others: int = 0
    snapshots: int = 0
    wall_seconds: float = 0.0
    per_config: dict = field(default_factory=dict)

    @property
    def models_per_hour(self) -> float:
        return 3600.0 * self.models_built / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def format(self) -> str:
        skipped = f", {self.models_skipped} already done" if self.models_skipped else ""
        others = f", {self.models_by_others} built meanwhile by another build" if self.models_by_others else ""
        return (f"built {self.models_built} models ({self.snapshots} snapshots{skipped}{others}) of "
                f"{', '.join(self.configs)} in {self.wall_seconds:.1f} s: {self.models_per_hour:.0f} models/hour")

    @property
    def complete(self) -> bool:
        """Every planned model of every config is sealed (False while other shards are still at work)."""
        return all(c.get("complete", True) for c in self.per_config.values())


def resolve_configs(names: Sequence[str] | None, options: BuildOptions) -> list[BenchmarkConfig]:
    """The configs to build (every miniature config by default), with the ablation options applied."""
    configs = [get_config(n) for n in (names or MINIATURE_CONFIGS)]
    return [c.with_overrides(batch_size=options.batch_size, seed_mode=options.seed_mode,
                             max_train_steps=options.steps, flip_augmentation=options.flip) for c in configs]


def _precision(cfg: BenchmarkConfig, device: str) -> str:
    return cfg.recipe.mixed_precision if device.startswith("cuda") and cfg.recipe.mixed_precision != "no" else "fp32"


def _backbone_identity(source: str) -> str:
    """What the rows and the build manifest record as the backbone: portable, no local paths."""
    info = backbone_info(source) if os.path.isdir(source) else None
    if info is not None:
        return info["key"]
    if os.path.isdir(source):
        return f"local:{Path(source).name}"
    return source


def _source_identity(source: ImageSource) -> str:
    if isinstance(source, SyntheticSource):
        return f"synthetic-v{SYNTHETIC_VERSION}-{source.kind}-{source.first_class}"
    if isinstance(source, FolderSource):
        return f"folder:{source.root.name}"
    if isinstance(source, HFImageSource):
        return f"datasets:{source.description}"
    return type(source).__name__


@dataclass
class _ConfigPlan:
    cfg: BenchmarkConfig
    source: ImageSource
    backbone: str
    precision: str
    store: ConfigStore
    recipe_json: str
    planned: list[PlannedModel]
    done: set[str]

    @property
    def todo(self) -> list[PlannedModel]:
        return [m for m in self.planned if m.key not in self.done]


def _plan(cfg: BenchmarkConfig, options: BuildOptions, device: str) -> _ConfigPlan:
    source = source_for(cfg, images=options.images, image_dataset=options.image_dataset,
                        label_column=options.label_column, image_column=options.image_column,
                        split=options.image_split)
    micros = source.micro_datasets(cfg, options.micro_datasets)
    check_micro_datasets(micros, cfg.dataset_sizes, source)
    planned = plan_config(cfg, micros)
    prepare_out(options.out)  # before the backbone, which may take minutes
    backbone_name = options.backbone or cfg.backbone
    backbone = resolve_backbone(backbone_name, options.mini_spec, progress=options.progress) \
        if backbone_name != MINIATURE else MINIATURE
    precision = _precision(cfg, device)
    identity = options.mini_spec.key() if backbone == MINIATURE else _backbone_identity(backbone)
    fingerprint = {"recipe": cfg.recipe.to_json(), "rank": cfg.rank, "lora_alpha": cfg.lora_alpha,
                   "dataset_sizes": list(cfg.dataset_sizes), "snapshot_steps": list(cfg.snapshot_steps),
                   "backbone": identity, "precision": precision, "images": _source_identity(source)}
    store = ConfigStore(options.out, cfg, fingerprint).open()
    done = store.done_units()
    check_images(source, [image for model in pending(planned, done) for image in model.image_ids])
    recipe = json.loads(cfg.recipe.to_json())
    recipe["build"] = {"backbone": identity, "precision": precision, "images": fingerprint["images"]}
    return _ConfigPlan(cfg, source, backbone, precision, store, jsonio.dumps(recipe, sort_keys=True), planned, done)


def _training_threads(options: BuildOptions, device: str, backbone_source: str) -> int | None:
    """Threads per training process, decided once per build so every process (worker, shard, Ray task)
    computes with the same number: float sums, and so the last bits, depend on it."""
    import torch

    if options.threads is not None:
        return options.threads
    if device != "cpu":
        return None
    if backbone_info(backbone_source) is not None:  # the miniature backbone
        return 1
    return torch.get_num_threads()


def _local_workers(options: BuildOptions, device: str, backbone_source: str, threads: int | None) -> int:
    """Training processes on this machine: one per core (per ``threads`` cores) for the miniature on a CPU."""
    import torch

    if options.workers is not None:
        if options.workers < 1:
            raise OptionError(f"--workers must be at least 1, not {options.workers}")
        return options.workers
    if device == "cpu" and backbone_info(backbone_source) is not None:
        return max(1, torch.get_num_threads() // max(threads or 1, 1))
    return 1


class _Trainers:
    """What a build keeps between configs: loaded backbones, worker pools (their workers keep backbones too)."""

    def __init__(self, stack: contextlib.ExitStack, device: str):
        self.stack, self.device = stack, device
        self.backbones: dict[tuple[str, str], object] = {}
        self.pools: dict[int, object] = {}

    def backbone(self, source: str, plan: _ConfigPlan):
        from .train import load_backbone

        key = (source, plan.precision)
        if key not in self.backbones:
            self.backbones[key] = load_backbone(source, device=self.device,
                                                mixed_precision=plan.cfg.recipe.mixed_precision)
        return self.backbones[key]

    def pool(self, workers: int):
        from .distributed import worker_pool

        if workers not in self.pools:
            self.pools[workers] = self.stack.enter_context(worker_pool(workers))
        return self.pools[workers]


def _group_size(options: BuildOptions, plan: _ConfigPlan, source: str, trainers: _Trainers) -> int:
    """``options.batch_models``, else the default for the device (a memory probe on a GPU)."""
    from .batched import DEFAULT_CPU_GROUP_SIZE, probe_group_size

    if options.batch_models is not None:
        if options.batch_models < 1:
            raise OptionError(f"--batch-models must be at least 1, not {options.batch_models}")
        return options.batch_models
    if not trainers.device.startswith("cuda"):
        return DEFAULT_CPU_GROUP_SIZE
    job = plan.planned[0].job
    if options.ray is not None:
        from .distributed import BackboneRef, probe_group_size_on_ray

        return probe_group_size_on_ray(BackboneRef(source, plan.cfg.recipe.mixed_precision), job)
    return probe_group_size(trainers.backbone(source, plan), job)


def build(configs: Sequence[str] | None = None, options: BuildOptions | None = None) -> BuildSummary:
    """Build ``configs`` (every miniature config by default) into ``options.out``; resumable.

    With ``options.shard`` only that shard's groups are trained; the dataset is complete
    once every shard has finished (each seals what has become sealable).
    """
    from .backbones import pick_device

    options = options or BuildOptions()
    start = time.perf_counter()
    if options.ray is not None:
        from .distributed import cluster_has_gpus, connect_ray

        connect_ray(options.ray)
        device = "cuda" if cluster_has_gpus() else "cpu"  # where the training runs: the workers
    else:
        device = pick_device(options.device)
    cfgs = resolve_configs(configs, options)
    plans = [_plan(cfg, options, device) for cfg in cfgs]  # every check before any training
    summary = BuildSummary(configs=[c.name for c in cfgs])
    with contextlib.ExitStack() as stack:
        trainers = _Trainers(stack, device)
        for plan in plans:
            _build_config(plan, options, trainers, summary)
    summary.wall_seconds = time.perf_counter() - start
    return summary


def _build_config(plan: _ConfigPlan, options: BuildOptions, trainers: _Trainers, summary: BuildSummary) -> None:
    """Train this process's share of one config's groups, commit each model, seal, render the card.

    The groups go through a :class:`~lora_wise.builder.claims.GroupQueue`: each is claimed before it
    trains, those another build into the folder holds are left to it (and waited for), so builds
    sharing the folder split the work.
    """
    cfg, store = plan.cfg, plan.store
    keys = [m.key for m in plan.planned]
    built = 0
    group_size = 1
    if plan.todo:
        source = resolve_backbone(plan.backbone, options.mini_spec, progress=options.progress)
        group_size = _group_size(options, plan, source, trainers)
        mine = shard_groups(groups_of(plan.planned, group_size), options.shard)
        summary.models_skipped += sum(m.key in plan.done for group in mine for m in group)
        queue = GroupQueue(mine, store, store.claims, plan.done)
        staged_bytes = store.staged_bytes()

        def on_done(model: PlannedModel, snapshots) -> None:
            """Commit a finished model (not again if its retrained group brought it back); seal when a
            shard's worth is staged."""
            nonlocal built, staged_bytes
            if model.key in plan.done:
                return
            size = store.commit_unit(model.key, snapshot_rows(cfg, model, snapshots, plan.recipe_json))
            plan.done.add(model.key)
            built += 1
            summary.snapshots += len(snapshots)
            staged_bytes += size
            if staged_bytes >= options.max_shard_bytes:
                store.seal(options.max_shard_bytes, planned=keys)
                staged_bytes = store.staged_bytes()

        if queue.total:
            _train(queue, plan, source, group_size, on_done, options, trainers)
        summary.models_by_others += queue.total - built
    else:
        summary.models_skipped += len(plan.planned)
    store.seal(options.max_shard_bytes, planned=keys)
    with writing_into(options.out):
        render(options.out)  # after each config, so a multi-config build killed later has a valid card
    summary.models_built += built
    summary.per_config[cfg.name] = {"built": built, "planned": len(plan.planned), "group_size": group_size,
                                    "complete": set(keys) <= set(store.manifest()["units"])}


def _train(queue: GroupQueue, plan: _ConfigPlan, source: str, group_size: int, on_done: Callable,
           options: BuildOptions, trainers: _Trainers) -> None:
    """Run the groups of ``queue``: on Ray, in worker processes, or in this process."""
    import functools

    from .distributed import BackboneRef

    device = trainers.device
    threads = _training_threads(options, device, source)
    workers = min(_local_workers(options, device, source, threads), queue.groups_left)
    ref = BackboneRef(source, plan.cfg.recipe.mixed_precision)
    if options.ray is not None:
        from .distributed import train_on_ray

        train_on_ray(queue, ref, plan.source, on_done, progress=options.progress, group_size=group_size,
                     threads=threads, address=options.ray)
    elif workers > 1 and options.trainer is None:
        from .distributed import train_in_processes

        train_in_processes(queue, ref, plan.source, on_done, trainers.pool(workers), progress=options.progress,
                           group_size=group_size, threads=threads)
    else:
        from .distributed import train_here

        trainer = options.trainer
        if trainer is None:
            from .batched import train_units_batched

            trainer = functools.partial(train_units_batched, group_size=group_size) if group_size > 1 \
                else train_units
        with torch_threads(threads):
            train_here(queue, functools.partial(trainer, backbone=trainers.backbone(source, plan), source=plan.source),
                       on_done, progress=options.progress)
