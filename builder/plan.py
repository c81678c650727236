"""Work units of a build: one (config, micro-dataset, dataset size) = one fine-tuned model.

A unit is the grain of everything after planning: it is trained as one model
(by the one-model trainer or a batched one), committed atomically as one file
with all its snapshots, skipped on a rerun once committed, and handed to
whichever executor runs it (in-process, or a worker of a distributed build).

:func:`plan_config` turns a config and its micro-datasets into
:class:`PlannedModel` s -- the unit, the images drawn for it, its seed, its
prompt and its training job -- in a fixed order (micro-dataset index, then
size), so every process of a build plans the same list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from lora_wise.configs import BenchmarkConfig
from lora_wise.schema import model_id
from lora_wise.splits import standard_split

from .micro_datasets import MicroDataset, draw_image_ids
from .synthetic_images import stable_seed
from .train import TrainingJob


@dataclass(frozen=True)
class Unit:
    """One model to fine-tune."""

    config: str
    micro_dataset_index: int
    micro_dataset: str
    dataset_size: int

    @property
    def key(self) -> str:
        """File-name-safe, sortable identity inside a config (``m0003-n00010``)."""
        return f"m{self.micro_dataset_index:04d}-n{self.dataset_size:05d}"

    @property
    def model_id(self) -> str:
        return model_id(self.config, self.micro_dataset, self.dataset_size)


@dataclass(frozen=True)
class PlannedModel:
    """A unit with everything its training needs except the pixels."""

    unit: Unit
    split: str
    image_ids: tuple[str, ...]
    job: TrainingJob

    @property
    def key(self) -> str:
        return self.unit.key


def model_seed(cfg: BenchmarkConfig, unit: Unit) -> int:
    """The recipe's seed (the paper's fixed seed), or one per model for the random-seed ablation."""
    if cfg.recipe.seed_mode == "random":
        return stable_seed("lora-wise/seed", cfg.recipe.seed, unit.model_id)
    return cfg.recipe.seed


def plan_config(cfg: BenchmarkConfig, micro_datasets: Sequence[MicroDataset]) -> list[PlannedModel]:
    """Every model of ``cfg`` over ``micro_datasets``: micro-dataset by micro-dataset, sizes ascending."""
    split = standard_split(cfg)
    planned = []
    for micro in micro_datasets:
        for size in cfg.dataset_sizes:
            unit = Unit(cfg.name, micro.index, micro.name, size)
            job = TrainingJob(
                model_id=unit.model_id, seed=model_seed(cfg, unit),
                prompt=cfg.recipe.instance_prompt.format(concept=micro.class_word),
                rank=cfg.rank, lora_alpha=cfg.lora_alpha, recipe=cfg.recipe,
                snapshot_steps=tuple(cfg.snapshot_steps))
            planned.append(PlannedModel(unit=unit, split=split.side(micro.index),
                                        image_ids=tuple(draw_image_ids(micro, size, cfg.recipe.seed)), job=job))
    return planned


def pending(planned: Iterable[PlannedModel], done: set[str]) -> list[PlannedModel]:
    """The planned models whose unit is not committed yet."""
    return [p for p in planned if p.key not in done]
