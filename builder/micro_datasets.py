"""Micro-datasets: where a config's images come from, which n are drawn, and checks before training.

A *micro-dataset* is one concept (a Concept101 folder, an ImageNet class, a
synthetic concept) whose images fine-tune one model per dataset size.  Three
sources provide them, all behind :class:`ImageSource`:

* :class:`FolderSource` -- an image-folder tree, one sub-folder per concept;
* :class:`HFImageSource` -- a ``datasets`` image dataset with a label column
  (ImageNet-style), grouped by label;
* :class:`SyntheticSource` -- procedural concepts (``synthetic_images``),
  deterministic, with as many distinct images per concept as asked.

For each model the ``n`` images are drawn at random, as in the paper, with a
seed that depends only on the micro-dataset, the size and the recipe seed
(:func:`draw_image_ids`), so every rebuild -- and every ablation of the same
config -- draws the same images; the ids are recorded in every row.

:func:`check_micro_datasets` runs before any training: too few micro-datasets,
an empty folder, too few images for the largest size, an image that does not
decode -- each is a :class:`MicroDatasetError` naming the culprit and the fix.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from lora_wise.configs import BenchmarkConfig
from lora_wise.errors import MicroDatasetError

#: Extensions read from image folders (PIL decodes them all).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Images each synthetic concept offers (the high range draws up to 1000).
SYNTHETIC_IMAGES_PER_CONCEPT = 1000


@dataclass(frozen=True)
class MicroDataset:
    """One concept: its name, the word its DreamBooth prompt uses, and its image ids."""

    index: int
    name: str
    class_word: str
    image_ids: tuple[str, ...]


class ImageSource:
    """Micro-datasets by name and images by id; subclasses say where they live."""

    description = "images"

    def names(self) -> list[str]:
        """Every micro-dataset the source holds, in its natural order."""
        raise NotImplementedError

    def image_ids(self, name: str) -> list[str]:
        raise NotImplementedError

    def class_word(self, name: str) -> str:
        return _class_word(name)

    def load(self, image_id: str):
        """The image as a PIL RGB image."""
        raise NotImplementedError

    def micro_datasets(self, cfg: BenchmarkConfig, count: int | None = None) -> list[MicroDataset]:
        """The first ``count`` (default: all) micro-datasets of ``cfg``, in the config's index order.

        A config that names its micro-datasets (the low range's Concept101 list) takes
        those names from the source; otherwise the source's first names, in order.
        """
        count = cfg.num_micro_datasets if count is None else count
        if not 0 < count <= cfg.num_micro_datasets:
            raise MicroDatasetError(f"{cfg.name} has {cfg.num_micro_datasets} micro-datasets; "
                                    f"--micro-datasets must be between 1 and {cfg.num_micro_datasets}, not {count}")
        available = self.names()
        if cfg.micro_dataset_names:
            wanted = list(cfg.micro_dataset_names[:count])
            missing = [n for n in wanted if n not in set(available)]
            if missing:
                raise MicroDatasetError(
                    f"{self.description} lacks {len(missing)} micro-dataset(s) that {cfg.name} needs: "
                    f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}. Add one sub-folder (or label) "
                    f"per concept with these names, or build fewer with --micro-datasets.")
        else:
            if len(available) < count:
                raise MicroDatasetError(
                    f"{self.description} holds {len(available)} micro-dataset(s) but {cfg.name} needs {count}; "
                    f"add concepts or build a partial benchmark with --micro-datasets {len(available)}.")
            wanted = available[:count]
        return [MicroDataset(index=i, name=name, class_word=self.class_word(name),
                             image_ids=tuple(self.image_ids(name))) for i, name in enumerate(wanted)]


def _class_word(name: str) -> str:
    """``pet_cat7`` -> ``pet cat``; ``n01440764`` stays; ``tench, Tinca tinca`` -> ``tench``."""
    word = name.split(",")[0]
    cleaned = re.sub(r"[_\-]+", " ", word)
    cleaned = re.sub(r"(?<=[a-zA-Z])\d+$", "", cleaned).strip()
    return cleaned or word


# ----------------------------------------------------------------------------- sources

#: The synthetic image sources a config can name, and what they stand for: the kind of
#: micro-dataset (``synthetic_images.KINDS``) and the first class their micro-datasets take.
#: Objects and classes use disjoint classes, as the paper's Concept101 and ImageNet hold
#: different things.
SYNTHETIC_SOURCES: dict[str, tuple[str, int]] = {
    "synthetic-classes": ("class", 0),      # ImageNet's stand-in: many things of one kind
    "synthetic-objects": ("object", 512),   # Concept101's stand-in: one particular object
    "synthetic-drawings": ("drawing", 512),  # one object on a plain background (bench/miniature.py)
}


class SyntheticSource(ImageSource):
    """Procedural micro-datasets ``concept-00``, ``concept-01``, ...: deterministic, any resolution.

    ``kind`` is ``"class"`` (every image a different thing of one class) or ``"object"`` (one
    particular object in different scenes); ``first_class`` is the class of ``concept-00``.
    """

    def __init__(self, resolution: int, num_concepts: int = 100,
                 images_per_concept: int = SYNTHETIC_IMAGES_PER_CONCEPT, kind: str = "class", first_class: int = 0):
        from .synthetic_images import KINDS, PRETRAIN_CLASSES

        if kind not in KINDS:
            raise MicroDatasetError(f"unknown synthetic kind {kind!r}; expected one of {', '.join(KINDS)}")
        if not 0 <= first_class <= PRETRAIN_CLASSES - num_concepts:
            raise MicroDatasetError(f"synthetic classes {first_class}..{first_class + num_concepts - 1} are not all "
                                    f"among the backbone's {PRETRAIN_CLASSES} pre-training classes")
        self.resolution = resolution
        self.num_concepts = num_concepts
        self.images_per_concept = images_per_concept
        self.kind = kind
        self.first_class = first_class
        self.description = f"the synthetic source ({num_concepts} {kind} concepts)"

    @classmethod
    def named(cls, name: str, resolution: int, num_concepts: int = 100) -> "SyntheticSource":
        """The source a config's ``image_source`` names (:data:`SYNTHETIC_SOURCES`)."""
        kind, first = SYNTHETIC_SOURCES[name]
        return cls(resolution, num_concepts=num_concepts, kind=kind, first_class=first)

    def names(self) -> list[str]:
        return [f"concept-{i:02d}" for i in range(self.num_concepts)]

    def _index(self, name: str) -> int:
        match = re.fullmatch(r"concept-(\d+)", name)
        if not match or int(match[1]) >= self.num_concepts:
            raise MicroDatasetError(f"{name!r} is not a synthetic concept name (concept-00 .. "
                                    f"concept-{self.num_concepts - 1:02d})")
        return self.first_class + int(match[1])

    def image_ids(self, name: str) -> list[str]:
        return [f"{name}/{j:04d}" for j in range(self.images_per_concept)]

    def class_word(self, name: str) -> str:
        from .synthetic_images import class_word

        return class_word(self._index(name))

    def load(self, image_id: str):
        from PIL import Image

        from .synthetic_images import concept_image

        name, _, image = image_id.partition("/")
        return Image.fromarray(concept_image(self._index(name), int(image), self.resolution, kind=self.kind))


class FolderSource(ImageSource):
    """An image-folder tree: ``root/<concept>/<image files>``; image ids are ``<concept>/<file>``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.description = f"image folder {self.root}"
        if not self.root.is_dir():
            raise MicroDatasetError(f"image folder {self.root} does not exist; pass a folder with one "
                                    f"sub-folder of images per concept")
        self._folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self._folders:
            raise MicroDatasetError(f"image folder {self.root} has no sub-folders; put each concept's images "
                                    f"in its own sub-folder (root/<concept>/<image>.jpg)")

    def names(self) -> list[str]:
        return list(self._folders)

    def image_ids(self, name: str) -> list[str]:
        folder = self.root / name
        return sorted(f"{name}/{p.name}" for p in folder.iterdir()
                      if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))

    def load(self, image_id: str):
        from PIL import Image

        with Image.open(self.root / image_id) as image:
            return image.convert("RGB")


class HFImageSource(ImageSource):
    """A ``datasets`` image dataset grouped by a label column; image ids are ``<label>/<row>``."""

    def __init__(self, dataset, label_column: str = "label", image_column: str = "image",
                 split: str = "train", description: str | None = None):
        import datasets

        if isinstance(dataset, str):
            try:
                dataset = datasets.load_dataset(dataset, split=split)
            except Exception as exc:  # noqa: BLE001 - re-raised with the fix
                raise MicroDatasetError(f"could not load image dataset {dataset!r} (split {split!r}): {exc}. "
                                        f"Pass a local folder or a Hub id that datasets can load.") from exc
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise MicroDatasetError(f"image dataset has splits {list(dataset)}, not {split!r}")
            dataset = dataset[split]
        for column in (label_column, image_column):
            if column not in dataset.column_names:
                raise MicroDatasetError(f"image dataset has no column {column!r} (columns: "
                                        f"{', '.join(dataset.column_names)}); pass --label-column / --image-column")
        self.dataset = dataset
        self.image_column = image_column
        self.description = description or f"image dataset ({len(dataset)} rows)"
        feature = dataset.features[label_column]
        labels = dataset.data.column(label_column).to_pylist()
        to_name = feature.int2str if hasattr(feature, "int2str") else str
        self._rows: dict[str, list[int]] = {}
        for row, label in enumerate(labels):
            self._rows.setdefault(str(to_name(label)), []).append(row)
        order = ([to_name(i) for i in range(feature.num_classes)] if hasattr(feature, "num_classes")
                 else sorted(self._rows))
        self._names = [str(n) for n in order if str(n) in self._rows]

    def names(self) -> list[str]:
        return list(self._names)

    def image_ids(self, name: str) -> list[str]:
        return [f"{name}/{row}" for row in self._rows[name]]

    def load(self, image_id: str):
        row = int(image_id.rsplit("/", 1)[1])
        image = self.dataset[row][self.image_column]
        if image is None:
            raise OSError("empty image cell")
        return image.convert("RGB")


def source_for(cfg: BenchmarkConfig, images: str | None = None, image_dataset: str | None = None,
               label_column: str = "label", image_column: str = "image", split: str = "train") -> ImageSource:
    """The image source of a build: explicit images, or the config's own synthetic concepts."""
    if images and image_dataset:
        raise MicroDatasetError("pass either an image folder or an image dataset, not both")
    if images:
        return FolderSource(images)
    if image_dataset:
        return HFImageSource(image_dataset, label_column=label_column, image_column=image_column, split=split)
    if cfg.image_source in SYNTHETIC_SOURCES:
        return SyntheticSource.named(cfg.image_source, cfg.recipe.resolution,
                                     num_concepts=max(100, cfg.num_micro_datasets))
    raise MicroDatasetError(
        f"{cfg.name} fine-tunes on {cfg.image_source} images, which cannot be downloaded here: pass "
        f"--images DIR (one sub-folder per concept) or --image-dataset NAME with a label column.")


# ----------------------------------------------------------------------------- draws and checks

def draw_image_ids(micro: MicroDataset, size: int, seed: int) -> list[str]:
    """``size`` images drawn at random, without replacement, from the micro-dataset.

    The draw depends on (micro-dataset name, size, seed) only, so it is the same in
    every rebuild, every shard of a distributed build and every ablation of a config.
    """
    if size > len(micro.image_ids):
        raise MicroDatasetError(f"micro-dataset {micro.name!r} has {len(micro.image_ids)} images, too few for "
                                f"dataset size {size}")
    rng = random.Random(f"lora-wise/images/{micro.name}/{size}/{seed}")
    return rng.sample(list(micro.image_ids), size)


def preprocess(image, resolution: int) -> np.ndarray:
    """DreamBooth's preprocessing: resize the short side, centre-crop, scale to [-1, 1]; (3, R, R) float32."""
    from PIL import Image

    w, h = image.size
    scale = resolution / min(w, h)
    if (w, h) != (resolution, resolution):
        image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))),
                             Image.BILINEAR)
        w, h = image.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def load_pixels(source: ImageSource, image_ids: Sequence[str], resolution: int) -> np.ndarray:
    """The images as one (n, 3, R, R) float32 array, or a MicroDatasetError naming the bad file."""
    out = np.empty((len(image_ids), 3, resolution, resolution), dtype=np.float32)
    for i, image_id in enumerate(image_ids):
        try:
            out[i] = preprocess(source.load(image_id), resolution)
        except MicroDatasetError:
            raise
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
            raise MicroDatasetError(f"image {image_id!r} in {source.description} cannot be read ({exc}); "
                                    f"remove or replace it, then rerun") from exc
    return out


def check_micro_datasets(micros: Sequence[MicroDataset], sizes: Sequence[int], source: ImageSource) -> None:
    """Fail before training if any micro-dataset is empty or has fewer images than the largest size."""
    largest = max(sizes)
    problems = []
    for micro in micros:
        if not micro.image_ids:
            problems.append(f"micro-dataset {micro.name!r} is empty (no image files)")
        elif len(micro.image_ids) < largest:
            problems.append(f"micro-dataset {micro.name!r} has {len(micro.image_ids)} images, fewer than the "
                            f"largest dataset size {largest}")
    if problems:
        raise MicroDatasetError(f"{source.description}: " + "; ".join(problems)
                                + ". Add images, or build a config whose sizes fit. Nothing was trained.")


def check_images(source: ImageSource, image_ids: Sequence[str]) -> None:
    """Decode every image a build will use; the first that fails is an error naming it.

    Synthetic images are rendered on demand and cannot fail, so they are not checked.
    """
    if isinstance(source, SyntheticSource):
        return
    for image_id in dict.fromkeys(image_ids):
        try:
            source.load(image_id)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
            raise MicroDatasetError(
                f"image {image_id!r} in {source.description} cannot be read ({exc}); remove or replace it, "
                f"then rerun. Nothing was trained.") from exc
