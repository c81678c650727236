"""Procedural images: the miniature configs' micro-datasets and the miniature backbone's pre-training data.

Why these images (``docs/miniature.md`` has the measurements): a LoRA's norm falls with
its dataset size because Adam moves each weight as fast as its gradient is *consistent*
over the steps, and a few images pull the same way at every step while many images pull
many ways.  What the images of one micro-dataset share pulls the same way whatever their
number, so the norm shows the dataset size only where images differ from one another far
more than they resemble one another -- as ImageNet photographs of one class do.  Simple
drawings of one fixed coloured shape share nearly everything and leave the norm flat
beyond ten images; these scenes share only what the paper's micro-datasets share.

* A **class** is a silhouette: a closed outline ``r(t) = s (1 + sum_h a_h cos(h t + p_h))``
  (harmonics 2-6) drawn from a generator seeded by its index, named by a pseudo-word
  (:func:`class_word`, unique for every index below :data:`MAX_CLASSES`).
* An **image** is a scene: a smooth random background (a sum of plane waves), two small
  objects of other classes, and the object of its class -- placed, scaled, rotated and
  stretched, with a texture (shading, stripes, dots or checks), a colour and pixel noise.
* Two kinds of micro-dataset, as the paper's two image sources:
  ``"class"`` (ImageNet, the medium and high ranges): every image draws its own texture,
  colour and pose -- many different things of one kind; ``"object"`` (Concept101, the low
  range): one particular object of its class -- its texture, colour and pattern are fixed,
  its pose, light and surroundings change from photograph to photograph.
* The backbone is pre-trained on scenes of the first :data:`PRETRAIN_CLASSES` classes,
  captioned ``a photo of a <word>`` (:func:`generic_batch`): it knows every class, as SD 1.5
  knows ImageNet's, but never sees a micro-dataset's images (other random streams) or a
  particular object's appearance.

Nothing is stored: every image is re-rendered, bit for bit, from its indices, at any
resolution, and a micro-dataset has as many distinct images as asked for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

#: Bump when any image changes: builds record it (``synthetic-v<N>-<kind>-<first class>``), so a
#: folder built from older images is never resumed with new ones.
SYNTHETIC_VERSION = 2
#: Textures an object's surface can have.
TEXTURES: tuple[str, ...] = ("shaded", "stripes", "dots", "checker")
#: Named colours (RGB in [0, 1]).
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10), "orange": (0.95, 0.55, 0.10), "yellow": (0.95, 0.88, 0.15),
    "lime": (0.55, 0.85, 0.15), "green": (0.10, 0.60, 0.25), "teal": (0.05, 0.55, 0.55),
    "cyan": (0.20, 0.80, 0.90), "blue": (0.12, 0.25, 0.85), "purple": (0.50, 0.20, 0.75),
    "pink": (0.95, 0.45, 0.70), "brown": (0.50, 0.30, 0.12), "white": (0.95, 0.95, 0.92),
    "black": (0.08, 0.08, 0.10), "grey": (0.50, 0.50, 0.52),
}
#: Harmonics of a silhouette's outline.
HARMONICS = np.arange(2, 7)
#: Classes the backbone is pre-trained on; the micro-datasets' classes are among them.
PRETRAIN_CLASSES = 1024
#: Indices below this have distinct class words.
MAX_CLASSES = 4096
#: Kinds of micro-dataset: what the images of one micro-dataset share.  ``"drawing"`` (one object
#: on a plain background, as the v1 miniature drew) is kept to measure what scenes change
#: (bench/miniature.py); the configs use ``"class"`` and ``"object"``.
KINDS: tuple[str, ...] = ("class", "object", "drawing")
_SYLLABLES = ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "ze", "bo", "di", "fa", "gu", "he", "ji")
_STREAMS = {"outline": 8, "class-image": 6, "object": 7, "object-image": 9}


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([0x10AA, *key])


def class_word(index: int) -> str:
    """The pseudo-word naming class ``index`` (``"mipesi"``): three syllables, distinct for every index
    below :data:`MAX_CLASSES`, so a prompt names its class as ``a photo of sks tench`` names one."""
    if not 0 <= index < MAX_CLASSES:
        raise ValueError(f"class index {index} is outside 0..{MAX_CLASSES - 1}")
    scrambled = (index * 1597 + 1013) % MAX_CLASSES  # a bijection of 0..4095: neighbours sound unlike
    return "".join(_SYLLABLES[(scrambled >> shift) & 15] for shift in (8, 4, 0))


@dataclass(frozen=True)
class Appearance:
    """How an object looks: its texture, colour and pattern (a particular object keeps one)."""

    texture: str
    colour: tuple[float, float, float]
    frequency: float
    angle: float
    phase: float

    @classmethod
    def draw(cls, rng: np.random.Generator, colour_jitter: float = 0.07) -> "Appearance":
        names = list(COLOURS)
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        base = np.asarray(COLOURS[names[int(rng.integers(len(names)))]])
        colour = np.clip(0.12 + 0.76 * base + rng.normal(0.0, colour_jitter, 3), 0.0, 1.0)
        return cls(texture=texture, colour=tuple(float(c) for c in colour), frequency=float(rng.uniform(3.0, 8.0)),
                   angle=float(rng.uniform(0.0, np.pi)), phase=float(rng.uniform(0.0, 2.0)))

    def relit(self, rng: np.random.Generator, light: float = 0.12) -> "Appearance":
        """The same object under another light: its colour shifted a little."""
        colour = np.clip(np.asarray(self.colour) * rng.uniform(1 - light, 1 + light) + rng.normal(0, light / 3, 3), 0, 1)
        return Appearance(self.texture, tuple(float(c) for c in colour), self.frequency, self.angle, self.phase)


def _outline(index: int) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(_STREAMS["outline"], index)
    amplitudes = rng.uniform(0.0, 0.22, len(HARMONICS)) / np.sqrt(HARMONICS - 1)
    phases = rng.uniform(0.0, 2 * np.pi, len(HARMONICS))
    return amplitudes, phases


def _signed_distance(index: int, x: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
    """Positive inside class ``index``'s outline (radial distance, in image half-widths)."""
    amplitudes, phases = _outline(index)
    theta = np.arctan2(y, x)
    radius = scale * (1 + (amplitudes[:, None, None] * np.cos(HARMONICS[:, None, None] * theta + phases[:, None, None])).sum(0))
    return radius - np.hypot(x, y)


def _pattern(look: Appearance, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A brightness multiplier in [0.5, 1] that patterns the object."""
    cos, sin = np.cos(look.angle), np.sin(look.angle)
    a, b = u * cos + v * sin + look.phase, -u * sin + v * cos + look.phase
    if look.texture == "shaded":
        return 0.75 + 0.25 * np.clip(a - look.phase, -1.0, 1.0)
    f = look.frequency
    if look.texture == "stripes":
        pattern = 0.5 + 0.5 * np.sin(np.pi * f * a)
    elif look.texture == "dots":
        pattern = (np.sin(np.pi * f * a) * np.sin(np.pi * f * b) > 0.3).astype(np.float64)
    else:  # checker
        pattern = ((np.floor(f * a / 2) + np.floor(f * b / 2)) % 2).astype(np.float64)
    return 0.55 + 0.45 * pattern


def _paint(image, x, y, index, look: Appearance, pose, resolution: int) -> np.ndarray:
    cx, cy, scale, rotation, aspect = pose
    u = ((x - cx) * np.cos(rotation) + (y - cy) * np.sin(rotation)) * aspect
    v = (-(x - cx) * np.sin(rotation) + (y - cy) * np.cos(rotation)) / aspect
    mask = np.clip(_signed_distance(index, u, v, scale) * resolution / 2.0 + 0.5, 0.0, 1.0)[..., None]
    body = np.asarray(look.colour)[None, None] * _pattern(look, u, v)[..., None]
    return image * (1 - mask) + body * mask


def scene(index: int, rng: np.random.Generator, resolution: int, look: Appearance | None = None,
          distractors: int = 2, waves: int = 6) -> np.ndarray:
    """One image (resolution x resolution x 3, uint8) of class ``index``'s object, in a random scene.

    ``look`` fixes the object's appearance (a particular object); by default each image draws its own.
    """
    coords = (np.arange(resolution) + 0.5) / resolution * 2 - 1
    y, x = np.meshgrid(coords, coords, indexing="ij")
    image = np.broadcast_to(rng.uniform(0.2, 0.8, 3), (resolution, resolution, 3)).copy()
    for _ in range(waves):  # a smooth random background
        frequency, angle, phase = rng.uniform(0.5, 4.0), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = np.sin(np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)
        image += rng.normal(0.0, 0.12, 3) * wave[..., None]
    for _ in range(distractors):  # small things of other classes around it
        pose = (rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0.12, 0.25), rng.uniform(0, 2 * np.pi), 1.0)
        image = _paint(image, x, y, int(rng.integers(PRETRAIN_CLASSES)), Appearance.draw(rng), pose, resolution)
    look = Appearance.draw(rng) if look is None else look
    pose = (rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25), rng.uniform(0.35, 0.55), rng.uniform(0, 2 * np.pi),
            float(np.exp(rng.uniform(-0.3, 0.3))))
    image = _paint(image, x, y, index, look, pose, resolution)
    image = image + rng.normal(0.0, 0.03, image.shape)
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def object_appearance(index: int) -> Appearance:
    """The fixed appearance of the particular object of class ``index`` (an ``"object"`` micro-dataset)."""
    return Appearance.draw(_rng(_STREAMS["object"], index))


def concept_image(index: int, image: int, resolution: int, kind: str = "class") -> np.ndarray:
    """Image ``image`` of micro-dataset ``index`` of ``kind`` (:data:`KINDS`): deterministic from the indices."""
    if kind == "class":
        return scene(index, _rng(_STREAMS["class-image"], index, image), resolution)
    if kind == "object":
        rng = _rng(_STREAMS["object-image"], index, image)
        return scene(index, rng, resolution, look=object_appearance(index).relit(rng))
    if kind == "drawing":
        rng = _rng(_STREAMS["object-image"], index, image)
        return scene(index, rng, resolution, look=object_appearance(index), distractors=0, waves=0)
    raise ValueError(f"unknown micro-dataset kind {kind!r}; expected one of {', '.join(KINDS)}")


def generic_batch(batch: int, resolution: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Pre-training images: ``batch`` scenes of random classes, captioned ``a photo of a <word>``."""
    images, captions = [], []
    for _ in range(batch):
        index = int(rng.integers(PRETRAIN_CLASSES))
        images.append(scene(index, rng, resolution))
        captions.append(f"a photo of a {class_word(index)}")
    return np.stack(images), captions


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from any printable key, identical across processes and platforms."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
