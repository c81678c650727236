"""Work units of a build: one (config, micro-dataset, dataset size) = one fine-tuned model.

A unit is the grain of everything after planning: it is trained as one model
(by the one-model trainer or a batched one), committed atomically as one file
with all its snapshots, skipped on a rerun once committed, and handed to
whichever executor runs it (in-process, or a worker of a distributed build).

:func:`plan_config` turns a config and its micro-datasets into
:class:`PlannedModel` s -- the unit, the images drawn for it, its seed, its
prompt and its training job -- in a fixed order (micro-dataset index, then
size), so every process of a build plans the same list.  :func:`groups_of` cuts
that list into the groups a batched trainer fine-tunes together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from lora_wise.configs import BenchmarkConfig
from lora_wise.errors import OptionError
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


def group_key(job: TrainingJob) -> tuple:
    """What the models trained together in one batched pass must share (seeds, prompts, images are their own)."""
    return (job.rank, job.lora_alpha, job.recipe, tuple(job.snapshot_steps))


def groups_of(models: Sequence[PlannedModel], group_size: int) -> list[list[PlannedModel]]:
    """Consecutive runs of ``group_size`` models (the last of a run may be smaller) sharing a :func:`group_key`.

    Cut from a config's whole plan, the groups are the same in every process of a build;
    cut again from whole groups put back to back (a shard's share), they come out unchanged.
    """
    if group_size < 1:
        raise OptionError(f"--batch-models must be at least 1, not {group_size}")
    groups: list[list[PlannedModel]] = []
    for model in models:
        if groups and len(groups[-1]) < group_size and group_key(groups[-1][0].job) == group_key(model.job):
            groups[-1].append(model)
        else:
            groups.append([model])
    return groups
