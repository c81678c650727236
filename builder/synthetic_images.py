"""Procedural images: the synthetic concepts of the miniature configs and the backbone's pre-training data.

A *concept* is a style -- a shape, a palette, a texture, a background -- drawn
from a generator seeded by ``(family, concept index)``; an *image* of it varies
position, scale, rotation, colour and noise, drawn from a generator seeded by
``(family, concept index, image index)``.  Nothing is stored: any image of any
concept is re-rendered, bit for bit, from its indices, at any resolution, and
a concept has as many distinct images as asked for (the high range needs 1000).

Two families keep the data apart: ``"concept"`` renders the benchmark's
micro-datasets, ``"generic"`` renders the broad distribution the miniature
backbone is pre-trained on (its own random concepts, never the benchmark's),
as SD was pre-trained on natural images before anyone fine-tuned it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "ring", "cross", "diamond", "star", "bar")
TEXTURES: tuple[str, ...] = ("plain", "stripes", "dots", "checker")
#: Named colours (RGB in [0, 1]); names feed the pre-training captions.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10), "orange": (0.95, 0.55, 0.10), "yellow": (0.95, 0.88, 0.15),
    "lime": (0.55, 0.85, 0.15), "green": (0.10, 0.60, 0.25), "teal": (0.05, 0.55, 0.55),
    "cyan": (0.20, 0.80, 0.90), "blue": (0.12, 0.25, 0.85), "purple": (0.50, 0.20, 0.75),
    "pink": (0.95, 0.45, 0.70), "brown": (0.50, 0.30, 0.12), "white": (0.95, 0.95, 0.92),
    "black": (0.08, 0.08, 0.10), "grey": (0.50, 0.50, 0.52),
}
_FAMILIES = {"concept": 1, "generic": 2}
#: How much of an image's background is drawn per image rather than fixed by its concept.
BACKGROUND_VARIATION = 0.8


@dataclass(frozen=True)
class ConceptStyle:
    """What every image of one concept shares."""

    shape: str
    colour_name: str
    colour: tuple[float, float, float]
    texture: str
    texture_frequency: float
    texture_angle: float
    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    size: float

    @property
    def class_word(self) -> str:
        """The noun a DreamBooth prompt uses for this concept (``"a photo of sks star"``)."""
        return self.shape

    @property
    def caption(self) -> str:
        return f"a photo of a {self.colour_name} {self.shape}"


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([0x10AA, *key])


def concept_style(index: int, family: str = "concept") -> ConceptStyle:
    """The style of concept ``index``; successive concepts cycle shapes so neighbours differ."""
    fam = _FAMILIES[family]
    rng = _rng(fam, index)
    names = list(COLOURS)
    shape = SHAPES[index % len(SHAPES)] if family == "concept" else SHAPES[int(rng.integers(len(SHAPES)))]
    # Colour: successive concepts step through the palette with a stride coprime to its length.
    colour_name = names[(index * 5 + index // len(SHAPES)) % len(names)] if family == "concept" \
        else names[int(rng.integers(len(names)))]
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    bg_a = tuple(float(x) for x in rng.uniform(0.0, 1.0, 3))
    bg_b = tuple(float(x) for x in np.clip(np.asarray(bg_a) + rng.uniform(-0.35, 0.35, 3), 0, 1))
    return ConceptStyle(shape=shape, colour_name=colour_name, colour=COLOURS[colour_name], texture=texture,
                        texture_frequency=float(rng.uniform(3.0, 8.0)),
                        texture_angle=float(rng.uniform(0, np.pi)), background=(bg_a, bg_b),
                        size=float(rng.uniform(0.35, 0.6)))


def _signed_distance(shape: str, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
    """Positive inside the shape, in the same units as ``x``, ``y`` (image half-widths)."""
    r = np.hypot(x, y)
    if shape == "circle":
        return s - r
    if shape == "square":
        return 0.85 * s - np.maximum(np.abs(x), np.abs(y))
    if shape == "triangle":
        return np.minimum(0.5 * s - (np.abs(x) * 0.866 + y * 0.5), 0.5 * s + y) * 1.2
    if shape == "ring":
        return 0.22 * s - np.abs(r - 0.75 * s)
    if shape == "cross":
        a, b = s, 0.3 * s
        return np.maximum(np.minimum(a - np.abs(x), b - np.abs(y)), np.minimum(b - np.abs(x), a - np.abs(y)))
    if shape == "diamond":
        return (s - (np.abs(x) + np.abs(y))) * 0.707
    if shape == "star":
        theta = np.arctan2(y, x)
        return s * (0.62 + 0.38 * np.cos(5 * theta)) - r
    if shape == "bar":
        return np.minimum(s - np.abs(x), 0.32 * s - np.abs(y))
    raise ValueError(f"unknown shape {shape!r}")


def _texture(style: ConceptStyle, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A multiplier in [0.55, 1] that patterns the object."""
    f, a = style.texture_frequency, style.texture_angle
    u = x * np.cos(a) + y * np.sin(a)
    v = -x * np.sin(a) + y * np.cos(a)
    if style.texture == "plain":
        return np.ones_like(x)
    if style.texture == "stripes":
        pattern = 0.5 + 0.5 * np.sin(np.pi * f * u)
    elif style.texture == "dots":
        pattern = (np.sin(np.pi * f * u) * np.sin(np.pi * f * v) > 0.3).astype(np.float64)
    else:  # checker
        pattern = ((np.floor(f * u / 2) + np.floor(f * v / 2)) % 2).astype(np.float64)
    return 0.55 + 0.45 * pattern


def render(style: ConceptStyle, variation: np.random.Generator, resolution: int) -> np.ndarray:
    """One image (resolution x resolution x 3, uint8) of ``style`` varied by ``variation``."""
    coords = (np.arange(resolution) + 0.5) / resolution * 2 - 1
    y, x = np.meshgrid(coords, coords, indexing="ij")
    # background: a two-colour gradient at a per-image angle
    angle = variation.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * x + np.sin(angle) * y + 1.0) / 2.0
    # the concept's background colours, mostly replaced per image: the object is the concept,
    # the scene changes (as DreamBooth photographs a subject in different places)
    bg_a, bg_b = ((1 - BACKGROUND_VARIATION) * np.asarray(c) + BACKGROUND_VARIATION * variation.uniform(0, 1, 3)
                  for c in style.background)
    image = bg_a[None, None] * (1 - t[..., None]) + bg_b[None, None] * t[..., None]
    # the object: placed, scaled and rotated per image
    cx, cy = variation.uniform(-0.25, 0.25, 2)
    scale = style.size * variation.uniform(0.8, 1.2)
    rot = variation.uniform(0, 2 * np.pi)
    xr = (x - cx) * np.cos(rot) + (y - cy) * np.sin(rot)
    yr = -(x - cx) * np.sin(rot) + (y - cy) * np.cos(rot)
    distance = _signed_distance(style.shape, xr, yr, scale)
    mask = np.clip(distance * resolution / 2.0 + 0.5, 0.0, 1.0)
    colour = np.clip(np.asarray(style.colour) + variation.normal(0, 0.06, 3), 0, 1)
    body = colour[None, None] * _texture(style, xr, yr)[..., None]
    image = image * (1 - mask[..., None]) + body * mask[..., None]
    image = image + variation.normal(0, 0.02, image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def concept_image(concept: int, image: int, resolution: int, family: str = "concept") -> np.ndarray:
    """Image ``image`` of concept ``concept``: deterministic from the indices."""
    style = concept_style(concept, family)
    return render(style, _rng(_FAMILIES[family], concept, image, 7), resolution)


def generic_batch(batch: int, resolution: int, rng: np.random.Generator,
                  pool: int = 4096) -> tuple[np.ndarray, list[str]]:
    """Pre-training images: ``batch`` images of random generic concepts, with their captions."""
    images, captions = [], []
    for _ in range(batch):
        concept = int(rng.integers(pool))
        style = concept_style(concept, "generic")
        images.append(render(style, rng, resolution))
        captions.append(style.caption)
    return np.stack(images), captions


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from any printable key, identical across processes and platforms."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
