"""``lora-wise build``: plan, check, train, commit, seal -- for one config or many.

A build runs in two phases so that bad input costs nothing:

1. **plan and check**, for every config before any training: resolve the image
   source, select the micro-datasets, check their sizes, draw each model's images
   and decode every image that will be used, open the output folder's build state
   (refusing to mix models trained with a different recipe or backbone), and find
   the units already done;
2. **train**: load each backbone once (the miniature one is pre-trained and cached
   on first use), hand the pending units to a trainer (:func:`builder.train.train_units`,
   or any function with its signature -- a batched trainer, a distributed executor),
   commit each finished model atomically as it arrives, seal the config's shards
   and render the card.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from lora_wise.configs import MINIATURE, MINIATURE_CONFIGS, BenchmarkConfig, get_config
from lora_wise.layout import DEFAULT_MAX_SHARD_BYTES

from .backbones import DEFAULT_MINI_SPEC, MiniBackboneSpec, backbone_info, resolve_backbone
from .micro_datasets import (FolderSource, HFImageSource, ImageSource, SyntheticSource, check_images,
                             check_micro_datasets, source_for)
from .plan import PlannedModel, pending, plan_config
from .train import train_units
from .write import ConfigStore, render, snapshot_rows

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
    #: CPU threads while fine-tuning; None: 1 for the miniature backbone on a CPU (its batch-1 steps are
    #: too small to split: measured 28 ms/step on 1 thread vs 34 ms on 2), torch's default otherwise.
    #: Pre-training the miniature backbone always uses torch's default.
    threads: int | None = None
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    progress: bool = True
    #: ``train_units``-compatible trainer: (models, backbone, source, on_done, progress) -> None.
    trainer: Callable | None = None


@dataclass
class BuildSummary:
    configs: list[str]
    models_built: int = 0
    models_skipped: int = 0
    snapshots: int = 0
    wall_seconds: float = 0.0
    per_config: dict = field(default_factory=dict)

    @property
    def models_per_hour(self) -> float:
        return 3600.0 * self.models_built / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def format(self) -> str:
        skipped = f", {self.models_skipped} already done" if self.models_skipped else ""
        return (f"built {self.models_built} models ({self.snapshots} snapshots{skipped}) of "
                f"{', '.join(self.configs)} in {self.wall_seconds:.1f} s: {self.models_per_hour:.0f} models/hour")


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
        return "synthetic-v1"
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
    todo: list[PlannedModel]
    total: int


def _plan(cfg: BenchmarkConfig, options: BuildOptions, device: str) -> _ConfigPlan:
    source = source_for(cfg, images=options.images, image_dataset=options.image_dataset,
                        label_column=options.label_column, image_column=options.image_column,
                        split=options.image_split)
    micros = source.micro_datasets(cfg, options.micro_datasets)
    check_micro_datasets(micros, cfg.dataset_sizes, source)
    planned = plan_config(cfg, micros)
    backbone_name = options.backbone or cfg.backbone
    backbone = resolve_backbone(backbone_name, options.mini_spec, progress=options.progress) \
        if backbone_name != MINIATURE else MINIATURE
    precision = _precision(cfg, device)
    identity = options.mini_spec.key() if backbone == MINIATURE else _backbone_identity(backbone)
    fingerprint = {"recipe": cfg.recipe.to_json(), "rank": cfg.rank, "lora_alpha": cfg.lora_alpha,
                   "dataset_sizes": list(cfg.dataset_sizes), "snapshot_steps": list(cfg.snapshot_steps),
                   "backbone": identity, "precision": precision, "images": _source_identity(source)}
    store = ConfigStore(options.out, cfg, fingerprint).open()
    todo = pending(planned, store.done_units())
    check_images(source, [image for model in todo for image in model.image_ids])
    recipe = json.loads(cfg.recipe.to_json())
    recipe["build"] = {"backbone": identity, "precision": precision, "images": fingerprint["images"]}
    return _ConfigPlan(cfg, source, backbone, precision, store, json.dumps(recipe, sort_keys=True), todo,
                       len(planned))


def _training_threads(options: BuildOptions, device: str, backbone_source: str) -> int | None:
    if options.threads is not None:
        return options.threads
    if device == "cpu" and backbone_info(backbone_source) is not None:  # the miniature backbone
        return 1
    return None


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build(configs: Sequence[str] | None = None, options: BuildOptions | None = None) -> BuildSummary:
    """Build ``configs`` (every miniature config by default) into ``options.out``; resumable."""
    from .backbones import pick_device
    from .train import load_backbone

    options = options or BuildOptions()
    start = time.perf_counter()
    device = pick_device(options.device)
    cfgs = resolve_configs(configs, options)
    plans = [_plan(cfg, options, device) for cfg in cfgs]  # every check before any training
    summary = BuildSummary(configs=[c.name for c in cfgs])
    trainer = options.trainer or train_units
    loaded: dict[tuple[str, str], object] = {}
    for plan in plans:
        cfg, store = plan.cfg, plan.store
        summary.models_skipped += plan.total - len(plan.todo)
        built = 0
        if plan.todo:
            source = resolve_backbone(plan.backbone, options.mini_spec, progress=options.progress)
            key = (source, plan.precision)
            if key not in loaded:
                loaded[key] = load_backbone(source, device=device, mixed_precision=cfg.recipe.mixed_precision)
            backbone = loaded[key]

            staged_bytes = store.staged_bytes()

            def on_done(model: PlannedModel, snapshots, plan=plan) -> None:
                """Commit one finished model; seal once a shard's worth is staged."""
                nonlocal built, staged_bytes
                path = plan.store.commit_unit(model.key, snapshot_rows(plan.cfg, model, snapshots, plan.recipe_json))
                built += 1
                summary.snapshots += len(snapshots)
                staged_bytes += path.stat().st_size
                if staged_bytes >= options.max_shard_bytes:
                    plan.store.seal(options.max_shard_bytes)
                    staged_bytes = 0

            with _torch_threads(_training_threads(options, device, source)):
                trainer(plan.todo, backbone, plan.source, on_done, progress=options.progress)
        store.seal(options.max_shard_bytes)
        render(options.out)  # after each config, so a multi-config build killed later has a valid card
        summary.models_built += built
        summary.per_config[cfg.name] = {"built": built, "planned": plan.total}
    summary.wall_seconds = time.perf_counter() - start
    return summary
