"""The benchmark registry: every LoRA-WiSE config, defined once.

A *config* fixes everything that makes one slice of the benchmark: the range of
dataset sizes, where the images come from, the backbone, the LoRA rank, the
fine-tuning recipe, which training steps are kept as snapshots and which one is
the default checkpoint that baselines and the leaderboard score.

The paper's eight configs (Table 1, App. Tables 10-11) sit beside miniature
configs built on a small pre-trained SD-architecture backbone that a 2-core CPU
fine-tunes in minutes.  The published release's subset names (``low_8`` ...
``medium_32_2`` ... ``high_32``) are aliases.  Nothing else in the project
hard-codes sizes, ranks or names: the builder, the readers, the splits, the
baselines and the leaderboard all ask this module.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Iterable

from . import jsonio
from .errors import UnknownConfigError

#: The 50 Concept101 micro-datasets of the published low range, in the order the
#: published reference script indexes them (its split draws indices into this list).
CONCEPT101_MICRO_DATASETS: tuple[str, ...] = (
    "wearable_sunglasses1", "wearable_sunglasses2", "plushie_panda", "things_cup2",
    "plushie_tortoise", "person_2", "plushie_pink", "person_1", "pet_cat7", "person_3",
    "jewelry_earring", "plushie_teddybear", "toy_pikachu1", "things_book2",
    "plushie_penguin", "scene_barn", "pet_cat5", "transport_car3", "actionfigure_2",
    "plushie_dice", "luggage_purse4", "things_headphone2", "plushie_bunny",
    "transport_tank", "instrument_music1", "pet_dog4", "decoritems_houseplant2",
    "decoritems_houseplant1", "pet_dog1", "flower_1", "actionfigure_3",
    "things_headphone1", "transport_car2", "plushie_happysad", "scene_waterfall",
    "things_corkscrew", "flower_2", "transport_car1", "wearable_shoes2",
    "things_bottle1", "plushie_lobster", "instrument_music3", "transport_motorbike1",
    "things_cup3", "decoritems_houseplant3", "transport_car6", "instrument_music2",
    "scene_garden", "plushie_cow", "toy_unicorn",
)

#: Hub ids of the paper's backbones.  ``runwayml/stable-diffusion-v1-5`` (the id the
#: paper names) was withdrawn from the Hub; this is its official mirror.
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD2 = "stabilityai/stable-diffusion-2"
#: The miniature backbone is generated locally by ``builder.backbones``; this marker
#: makes the builder create (or reuse) it and load it with ``from_pretrained``.
MINIATURE = "lora-wise/mini-sd"
#: The license a build's weights inherit from their backbone, as the Hub's license ids: the
#: CreativeML OpenRAIL-M of SD 1.5, the CreativeML Open RAIL++-M of SD 2, and Apache-2.0 for
#: the miniature backbone, which lora-wise generates (as it generates the miniature images).
BACKBONE_LICENSES = {SD15: "creativeml-openrail-m", SD2: "openrail++", MINIATURE: "apache-2.0"}

#: UNet attention projections adapted by diffusers' DreamBooth-LoRA example.
ATTENTION_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


#: How models are seeded: ``"fixed"`` (the recipe's one seed for every model, the paper's) or
#: ``"random"`` (one seed per model, derived from its identity: the paper's seeding ablation).
SEED_MODES: tuple[str, ...] = ("fixed", "random")


@dataclass(frozen=True)
class Recipe:
    """Fine-tuning hyper-parameters (paper App. Tables 10-11; diffusers' defaults elsewhere)."""

    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 1400
    seed: int = 0
    #: ``"fixed"``: every model uses ``seed`` (the paper's recipe); ``"random"``: each
    #: model gets its own seed derived from its identity (the paper's seeding ablation).
    seed_mode: str = "fixed"
    resolution: int = 512
    #: ``"fp16"`` on a GPU as the paper's runs; the CPU always trains in float32.
    mixed_precision: str = "fp16"
    #: Random horizontal flips: the paper's defense (Table 6).
    flip_augmentation: bool = False
    instance_prompt: str = "a photo of sks {concept}"
    #: ``None`` means ``lora_alpha = rank`` (scale 1), as diffusers' script sets it.
    lora_alpha: int | None = None
    target_modules: tuple[str, ...] = ATTENTION_TARGETS

    def to_json(self) -> str:
        """Stable JSON used in every dataset row, so a snapshot carries its own recipe."""
        return jsonio.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass(frozen=True)
class BenchmarkConfig:
    """One slice of LoRA-WiSE: which models exist and how they were fine-tuned."""

    name: str
    description: str
    data_range: str  # "low" | "medium" | "high"
    dataset_sizes: tuple[int, ...]
    image_source: str  # "concept101" | "imagenet" | "synthetic-objects" | "synthetic-classes"
    backbone: str  # a hub id, a local folder, or MINIATURE
    backbone_name: str  # short label: "sd1.5", "sd2", "mini-sd"
    rank: int
    recipe: Recipe
    snapshot_steps: tuple[int, ...]
    checkpoint_step: int
    num_micro_datasets: int = 50
    num_train_micro_datasets: int = 15
    miniature: bool = False
    aliases: tuple[str, ...] = ()
    #: For a config derived by ablation options, the config it derives from.
    base: str | None = None
    #: Micro-dataset names in split order (empty: ``"0" .. "M-1"`` from the source).
    micro_dataset_names: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.checkpoint_step not in self.snapshot_steps:
            raise ValueError(f"{self.name}: checkpoint step {self.checkpoint_step} is not a snapshot step")
        if max(self.snapshot_steps) > self.recipe.max_train_steps:
            raise ValueError(f"{self.name}: snapshot steps go past max_train_steps")
        if not 0 < self.num_train_micro_datasets < self.num_micro_datasets:
            raise ValueError(f"{self.name}: need 0 < train micro-datasets < micro-datasets")
        if self.micro_dataset_names and len(self.micro_dataset_names) != self.num_micro_datasets:
            raise ValueError(f"{self.name}: {len(self.micro_dataset_names)} names for "
                             f"{self.num_micro_datasets} micro-datasets")

    @property
    def num_models(self) -> int:
        """Fine-tuned models in the full config: one per micro-dataset and size."""
        return self.num_micro_datasets * len(self.dataset_sizes)

    @property
    def size_range(self) -> str:
        """The paper's label for the range, e.g. ``"1-50"``."""
        return f"{min(self.dataset_sizes)}-{max(self.dataset_sizes)}"

    @property
    def lora_alpha(self) -> int:
        return self.recipe.lora_alpha if self.recipe.lora_alpha is not None else self.rank

    def micro_dataset_name(self, index: int) -> str:
        """Name of the micro-dataset at ``index`` in split order."""
        if self.micro_dataset_names:
            return self.micro_dataset_names[index]
        return str(index)

    def with_overrides(self, *, batch_size: int | None = None, seed_mode: str | None = None,
                       max_train_steps: int | None = None,
                       flip_augmentation: bool | None = None) -> "BenchmarkConfig":
        """Derive an ablation config (paper Sec. 7, App. 11) with a name that says what changed.

        ``batch_size``, ``seed_mode="random"``, ``max_train_steps`` and ``flip_augmentation``
        change how models are trained, so the derived config gets its own name
        (``medium_r32-bs8-flip`` ...) and its own data files.
        """
        recipe = self.recipe
        suffix = []
        if batch_size is not None and batch_size != recipe.train_batch_size:
            recipe = dataclasses.replace(recipe, train_batch_size=batch_size)
            suffix.append(f"bs{batch_size}")
        if seed_mode is not None and seed_mode != recipe.seed_mode:
            if seed_mode not in SEED_MODES:
                raise ValueError(f"seed mode must be one of {', '.join(SEED_MODES)}, not {seed_mode!r}")
            recipe = dataclasses.replace(recipe, seed_mode=seed_mode)
            suffix.append(f"seed{seed_mode}")
        steps = self.snapshot_steps
        checkpoint = self.checkpoint_step
        if max_train_steps is not None and max_train_steps != recipe.max_train_steps:
            recipe = dataclasses.replace(recipe, max_train_steps=max_train_steps)
            steps = tuple(s for s in steps if s <= max_train_steps)
            if max_train_steps not in steps:
                steps = steps + (max_train_steps,)
            checkpoint = min(checkpoint, max_train_steps)
            if checkpoint not in steps:
                checkpoint = max_train_steps
            suffix.append(f"steps{max_train_steps}")
        if flip_augmentation is not None and flip_augmentation != recipe.flip_augmentation:
            recipe = dataclasses.replace(recipe, flip_augmentation=flip_augmentation)
            suffix.append("flip" if flip_augmentation else "noflip")
        name = self.name + "".join("-" + s for s in suffix)
        if not suffix:
            return self
        return dataclasses.replace(self, name=name, recipe=recipe, snapshot_steps=steps,
                                   checkpoint_step=checkpoint, aliases=(), base=self.name)

    def summary(self) -> dict:
        """Plain-data description, for ``lora-wise configs`` and the dataset card."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "range": self.data_range,
            "sizes": list(self.dataset_sizes),
            "source": self.image_source,
            "backbone": self.backbone_name,
            "rank": self.rank,
            "micro_datasets": self.num_micro_datasets,
            "train_micro_datasets": self.num_train_micro_datasets,
            "models": self.num_models,
            "checkpoint_step": self.checkpoint_step,
            "snapshot_steps": list(self.snapshot_steps),
            "miniature": self.miniature,
            "description": self.description,
        }


LOW_SIZES = (1, 2, 3, 4, 5, 6)
MEDIUM_SIZES = (1, 10, 20, 30, 40, 50)
HIGH_SIZES = (1, 50, 100, 500, 1000)
#: Table 8 evaluates checkpoints every 100 steps from 300 to 1400.
PAPER_SNAPSHOTS_1400 = tuple(range(300, 1401, 100))
PAPER_SNAPSHOTS_1000 = tuple(range(300, 1001, 100))


def _paper_config(name: str, data_range: str, rank: int, *, backbone: str = SD15,
                  backbone_name: str = "sd1.5", alias: str) -> BenchmarkConfig:
    high = data_range == "high"
    sizes = {"low": LOW_SIZES, "medium": MEDIUM_SIZES, "high": HIGH_SIZES}[data_range]
    source = "concept101" if data_range == "low" else "imagenet"
    recipe = Recipe(train_batch_size=8 if high else 1, max_train_steps=1000 if high else 1400,
                    resolution=768 if backbone == SD2 else 512)
    where = "Concept101 micro-datasets" if data_range == "low" else "ImageNet classes"
    return BenchmarkConfig(
        name=name,
        description=(f"Paper config: {backbone_name.upper()} DreamBooth-LoRA rank {rank}, "
                     f"{len(sizes)} dataset sizes {min(sizes)}-{max(sizes)} from {where}."),
        data_range=data_range, dataset_sizes=sizes, image_source=source, backbone=backbone,
        backbone_name=backbone_name, rank=rank, recipe=recipe,
        snapshot_steps=PAPER_SNAPSHOTS_1000 if high else PAPER_SNAPSHOTS_1400,
        checkpoint_step=1000 if high else 1200, aliases=(alias,),
        micro_dataset_names=CONCEPT101_MICRO_DATASETS if data_range == "low" else (),
    )


#: Miniature recipe: the paper's optimiser, schedule, batch size and fixed seed; float32 (CPU) at
#: the miniature backbone's 32 px.  The learning rate and the length are the miniature's own,
#: chosen by the sweeps of bench/miniature.py (docs/miniature.md): Adam moves every weight by
#: about the learning rate per step wherever the gradient keeps its sign, so what matters is how
#: far the LoRA travels relative to the weights it adapts.  The miniature's weights are ~5x
#: larger than SD 1.5's and its budget is 300 steps, not 1400, so it takes 3e-4 where SD takes
#: 1e-4; snapshots every quarter of training, the last one the checkpoint.
MINI_RECIPE = Recipe(learning_rate=3e-4, max_train_steps=300, resolution=32, mixed_precision="no")
MINI_SNAPSHOTS = (75, 150, 225, 300)


def _mini_config(name: str, data_range: str, sizes: tuple[int, ...], source: str, description: str) -> BenchmarkConfig:
    return BenchmarkConfig(
        name=name, description=description, data_range=data_range, dataset_sizes=sizes,
        image_source=source, backbone=MINIATURE, backbone_name="mini-sd", rank=8,
        recipe=MINI_RECIPE, snapshot_steps=MINI_SNAPSHOTS, checkpoint_step=MINI_SNAPSHOTS[-1],
        num_micro_datasets=50, num_train_micro_datasets=15, miniature=True,
    )


_ALL: tuple[BenchmarkConfig, ...] = (
    _paper_config("low_r8", "low", 8, alias="low_8"),
    _paper_config("low_r16", "low", 16, alias="low_16"),
    _paper_config("low_r32", "low", 32, alias="low_32"),
    _paper_config("medium_r16", "medium", 16, alias="medium_16"),
    _paper_config("medium_r32", "medium", 32, alias="medium_32"),
    _paper_config("medium_r64", "medium", 64, alias="medium_64"),
    _paper_config("medium_sd2_r32", "medium", 32, backbone=SD2, backbone_name="sd2", alias="medium_32_2"),
    _paper_config("high_r32", "high", 32, alias="high_32"),
    _mini_config("mini_low_r8", "low", LOW_SIZES, "synthetic-objects",
                 "Miniature: pre-trained mini SD backbone, rank 8, sizes 1-6 of one particular synthetic object "
                 "each (Concept101's stand-in); CPU minutes."),
    _mini_config("mini_medium_r8", "medium", MEDIUM_SIZES, "synthetic-classes",
                 "Miniature: pre-trained mini SD backbone, rank 8, sizes 1-50 of one synthetic class each "
                 "(ImageNet's stand-in); CPU minutes."),
)

CONFIGS: dict[str, BenchmarkConfig] = {c.name: c for c in _ALL}
ALIASES: dict[str, str] = {alias: c.name for c in _ALL for alias in c.aliases}
PAPER_CONFIGS: tuple[str, ...] = tuple(c.name for c in _ALL if not c.miniature)
MINIATURE_CONFIGS: tuple[str, ...] = tuple(c.name for c in _ALL if c.miniature)


def canonical_name(name: str) -> str:
    """Resolve an alias (``medium_32``) to its config name (``medium_r32``); check it exists.

    Derived ablation names (``medium_r32-flip``) resolve when their base does.
    """
    if name in CONFIGS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    base, _, rest = name.partition("-")
    if rest and (base in CONFIGS or base in ALIASES):
        return canonical_name(base) + "-" + rest
    known = sorted(CONFIGS) + sorted(ALIASES)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownConfigError(
        f"unknown config {name!r}.{hint} Known configs: {', '.join(sorted(CONFIGS))} "
        f"(aliases: {', '.join(sorted(ALIASES))}); `lora-wise configs` lists them.")


_DERIVED_PARTS = {"flip": dict(flip_augmentation=True), "noflip": dict(flip_augmentation=False),
                  **{f"seed{mode}": dict(seed_mode=mode) for mode in SEED_MODES}}


def get_config(name: str) -> BenchmarkConfig:
    """The config called ``name`` (or one of its aliases, or a derived ablation name)."""
    canonical = canonical_name(name)
    if canonical in CONFIGS:
        return CONFIGS[canonical]
    base, *parts = canonical.split("-")
    options: dict = {}
    for part in parts:
        if part in _DERIVED_PARTS:
            options.update(_DERIVED_PARTS[part])
        elif part.startswith("bs") and part[2:].isdigit():
            options["batch_size"] = int(part[2:])
        elif part.startswith("steps") and part[5:].isdigit():
            options["max_train_steps"] = int(part[5:])
        else:
            raise UnknownConfigError(
                f"unknown ablation suffix {part!r} in config {name!r}: expected bsN, stepsN, "
                f"flip, noflip, seedrandom or seedfixed")
    derived = CONFIGS[base].with_overrides(**options)
    if derived.name != canonical:
        raise UnknownConfigError(f"config {name!r} is not in canonical form; use {derived.name!r}")
    return derived


def iter_configs(names: Iterable[str] | None = None) -> list[BenchmarkConfig]:
    """Configs by name (all registered ones when ``names`` is None)."""
    return [get_config(n) for n in names] if names is not None else list(CONFIGS.values())


def register_config(config: BenchmarkConfig, *, replace: bool = False) -> BenchmarkConfig:
    """Add a config to the registry, so a benchmark can be extended without editing this file.

    New backbones, sizes or ranks become first-class: the builder builds them, the
    readers, splits, baselines and leaderboard accept their name.
    """
    if not replace and (config.name in CONFIGS or config.name in ALIASES):
        raise ValueError(f"config {config.name!r} is already registered; pass replace=True to redefine it")
    for alias in config.aliases:
        if ALIASES.get(alias, config.name) != config.name or alias in CONFIGS:
            raise ValueError(f"alias {alias!r} of {config.name!r} is already taken")
    CONFIGS[config.name] = config
    for alias in config.aliases:
        ALIASES[alias] = config.name
    return config
